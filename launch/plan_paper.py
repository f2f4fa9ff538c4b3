"""Plans every paper variant (configs/paper/table1.py, table2.py) on TPU topologies, and their tables.

    python launch/plan_paper.py --outdir plans [--policy DIR] [--base DIR] [--granite DIR] [--llama_guard DIR]
    python launch/plan_paper.py --outdir plans --table_only        # the tables from plans/*.json

Each plan is `python -m dss.plan` in its own process (one compile at a time: they use every core);
a plan already in `--outdir` is kept. The models are hub ids by default (their config.json alone is
fetched); offline, give directories holding the same config.json files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = ("v5e:2x2", "v6e:2x2", "v5p:2x2x1", "v5e:2x4", "v6e:2x4", "v5p:2x2x2")
VARIANTS = ("table1:sft", "table1:rs", "table1:deep_token", "table1:kl_only", "table1:star_dss",
            "table1:star_dss,llama_guard", "table1:vaccine_align", "table1:vaccine", "table1:safelora",
            "table2:safeinstr", "table2:seal", "table2:lisa")
GIB = 2**30


def plan_name(variant: str, topology: str) -> str:
    table, arg = variant.split(":")
    return f"t{table[-1]}_{arg.replace(',', '_')}_{topology.replace(':', '_')}"


def run_plans(args) -> None:
    for topology in args.topologies.split(","):
        for variant in VARIANTS:
            out = args.outdir / f"{plan_name(variant, topology)}.json"
            if out.exists():
                continue
            table, arg = variant.split(":")
            guard = args.llama_guard if "llama_guard" in arg else args.granite
            command = [sys.executable, "-m", "dss.plan", "--config", f"configs/paper/{table}.py:{arg}",
                       "--topology", topology, f"--config.model.path={args.policy}",
                       f"--config.guardrail.paths=['{guard}']", f"--config.safelora.base_path={args.base}",
                       "--out", str(out)]
            start = time.time()
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            print(f"{out.stem}: exit {done.returncode}, {time.time() - start:.0f} s", flush=True)
            if done.returncode:
                print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "(no output)", flush=True)


def read_plans(outdir: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text()) for path in outdir.glob("*.json")}


def table(outdir: Path) -> str:
    """One row per plan (by topology, then name): the train step's memory per chip against HBM, and
    the STAR program that fits worst (or is largest)."""
    rows = ["| plan | topology (hosts) | remat | step fits | step GiB/chip | temporaries GiB | HBM GiB "
            "| STAR GiB/chip (fits) | compile s |", "|---|---|---|---|---:|---:|---:|---|---:|"]
    plans = read_plans(outdir)
    order = lambda item: (TOPOLOGIES.index(item[1]["topology"]) if item[1]["topology"] in TOPOLOGIES else 99, item[0])
    for stem, p in sorted(plans.items(), key=order):
        step = p["train"]["per_device"]
        gib = lambda key, d=step: f"{d[key] / GIB:.2f}" if d.get(key) is not None else "-"
        star = p.get("star", [])
        worst = max(star, key=lambda s: (not s["fits"], s.get("total_bytes") or 0), default=None)
        star_cell = f"{gib('total_bytes', worst)} ({worst['fits']})" if worst else "-"
        compile_s = step.get("compile_s", 0) + sum(s.get("compile_s", 0) for s in p.get("star", []))
        rows.append(f"| {stem} | {p['topology']} ({p['hosts']}) | {p['train']['remat']} | {step['fits']} | "
                    f"{gib('total_bytes')} | {gib('temporaries_bytes')} | {p['hbm_bytes_per_chip'] / GIB:.2f} | "
                    f"{star_cell} | {compile_s:.1f} |")
    return "\n".join(rows)


def grid(outdir: Path) -> str:
    """Variants down, topologies across: the step's GiB per chip (and the STAR program's at its
    largest), or what does not fit."""
    plans = read_plans(outdir)
    hosts = {p["topology"]: p["hosts"] for p in plans.values()}
    head = "| variant | " + " | ".join(f"{t} ({hosts.get(t, '?')} host{'s' * (hosts.get(t) != 1)})"
                                       for t in TOPOLOGIES) + " |"
    rows = [head, "|---|" + "---:|" * len(TOPOLOGIES)]
    for variant in VARIANTS:
        cells = []
        for topology in TOPOLOGIES:
            p = plans.get(plan_name(variant, topology))
            if p is None:
                cells.append("not planned")
                continue
            step, star = p["train"]["per_device"], p.get("star", [])
            cell = f"{step['total_bytes'] / GIB:.1f}" if step["fits"] else "does not fit"
            if star:
                fits = all(s["fits"] for s in star)
                cell += (f" + STAR {max(s['total_bytes'] for s in star) / GIB:.1f}" if fits else
                         " + STAR does not fit")
            cells.append(cell)
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--policy", default="meta-llama/Llama-3.2-1B-Instruct")
    parser.add_argument("--base", default="meta-llama/Llama-3.2-1B", help="SafeLoRA's unaligned base")
    parser.add_argument("--granite", default="ibm-granite/granite-guardian-3.1-2b")
    parser.add_argument("--llama_guard", default="meta-llama/Llama-Guard-3-8B")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--table_only", action="store_true")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        run_plans(args)
    print(grid(args.outdir), table(args.outdir), sep="\n\n")


if __name__ == "__main__":
    main()
