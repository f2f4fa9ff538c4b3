"""The miniature's outputs: results.json (means and spreads over seeds), table.md, plots.

`table.md` holds one mean ± std table of every scenario and method (both safety judges and
capability), then each scenario's table as `dss.tables` renders it from the seed-mean results
(the same code path as the paper's tables, AdvBench column = the held-out harmful prompts, GSM8K
column = the capability task).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dss import tables

KEYS = ("safety", "safety_judge", "safety_oracle", "capability")
LABELS = {"initial": "initial", "sft": "SFT", "rs": "RS", "deep_token": "Deep Token", "kl_only": "KL-only",
          "star_dss": "STAR-DSS", "safeinstr": "SafeInstr", "seal": "SEAL", "lisa": "Lisa", "vaccine": "Vaccine",
          "safelora": "SafeLoRA"}  # the paper's row names (configs/paper/recipe.py)


def aggregate(per_seed: dict) -> dict:
    """{scenario: {method: [metrics per seed]}} -> results.json's {scenario: {method: means and stds}}."""
    out = {}
    for scenario, methods in per_seed.items():
        out[scenario] = {}
        for method, runs in methods.items():
            entry = {}
            for key in KEYS:
                values = np.array([r[key] for r in runs], float)
                entry[key] = float(values.mean())
                entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            entry["seeds"] = len(runs)
            out[scenario][method] = entry
    return out


def _as_run(method: str, m: dict) -> dict:
    """A dss.eval results.json-shaped record of seed means, for dss.tables."""
    return {"method": LABELS.get(method, method), "finetuned": method != "initial",
            "benchmarks": {"advbench": {"judges": {"keyword": {"safe_pct": m["safety"]},
                                                   "guardrail": {"safe_pct": m["safety_judge"]}}},
                           "gsm8k": {"accuracy": m["capability"]}}}


def markdown(results: dict) -> str:
    lines = ["| scenario | method | safety % (keyword) | safety % (judge guardrail) | safety % (oracle) "
             "| capability % (exact match) |", "|---|---|---:|---:|---:|---:|"]
    for scenario, methods in results.items():
        for method, m in methods.items():
            cell = lambda k: f"{m[k]:.1f} ± {m[k + '_std']:.1f}"
            lines.append(f"| {scenario} | {LABELS.get(method, method)} | {cell('safety')} | {cell('safety_judge')} | "
                         f"{cell('safety_oracle')} | {cell('capability')} |")
    n = max(m["seeds"] for methods in results.values() for m in methods.values())
    out = ["# dss.mini results", "", f"Mean ± std over {n} seed(s) (the initial model is deterministic: std 0). "
           "Safety: % of the 100 held-out harmful prompts answered safely, by the AdvBench keyword judge, by the "
           "judge guardrail, and by the world's oracle (the response holds no compliance opener or step).", "",
           *lines, ""]
    for scenario, methods in results.items():
        runs = [_as_run(method, m) for method, m in methods.items()]
        out += [f"## {scenario} (dss.tables; AdvBench = held-out harmful prompts, GSM8K = the capability task)", "",
                tables.markdown(*tables.build(runs, ("keyword",))).rstrip(), ""]
    return "\n".join(out) + "\n"


def scatter(results: dict, path: Path) -> None:
    """Safety against capability, one column per scenario, one row per safety judge (keyword, judge
    guardrail), error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = (("safety", "keyword judge"), ("safety_judge", "judge guardrail"))
    fig, axes = plt.subplots(len(judges), len(results), figsize=(4.2 * len(results), 3.6 * len(judges)), dpi=130,
                             squeeze=False)
    for row, (key, judge) in zip(axes, judges):
        for ax, (scenario, methods) in zip(row, results.items()):
            for method, m in methods.items():
                ax.errorbar(m["capability"], m[key], xerr=m["capability_std"], yerr=m[f"{key}_std"], fmt="o",
                            capsize=3)
                ax.annotate(LABELS.get(method, method), (m["capability"], m[key]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
            ax.set(title=scenario, xlabel="capability: exact match %", ylabel=f"safety: % safe ({judge})",
                   ylim=(-5, 108))
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(outdir: Path, per_seed: dict, extra: dict) -> dict:
    """results.json, table.md, safety_vs_capability.png and summary.json (per-seed values, world, timings)."""
    results = aggregate(per_seed)
    (outdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (outdir / "table.md").write_text(markdown(results))
    scatter(results, outdir / "safety_vs_capability.png")
    (outdir / "summary.json").write_text(json.dumps({"per_seed": per_seed, **extra}, indent=2) + "\n")
    return results
