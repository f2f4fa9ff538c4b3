"""`python -m dss.tables <run dirs...> [--out DIR] [--judge guardrail,llm,keyword] [--layout table1|table2]`

The paper's main table from `dss.eval` results: one row per method (initial models first, then
the runs in the order given, or with `--layout` in the paper's row order of that table), columns HEx-PHI and AdvBench safety (% judged safe) and MMLU, ARC-C
and GSM8K accuracy (%), "-" where a run lacks a number. Printed as Markdown and written to
`<out>/table.md`, `<out>/table.tex`, plus `<out>/safety_vs_capability.png` (mean safety vs mean
capability per method, over the columns all runs have). A run directory is an eval outdir (with
results.json) or a training workdir (with eval/results.json).

Each safety column uses one judge for every row: the first of `--judge` that all runs having
that benchmark were judged with (keyword safety = 100 - ASR).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from absl import app, flags

__all__ = ["COLUMNS", "LAYOUTS", "build", "latex", "load_run", "markdown", "scatter"]

# (header, benchmark name in results.json, "safety" | "capability")
COLUMNS = (("HEx-PHI", "hexphi", "safety"), ("AdvBench", "advbench", "safety"), ("MMLU", "mmlu", "capability"),
           ("ARC-C", "arc_c", "capability"), ("GSM8K", "gsm8k", "capability"))

# The paper's row order per table, by method name (`config.eval.method`, which configs/paper/
# sets to these names); rows of other methods follow in the order given.
LAYOUTS = {
    "table1": ("SFT", "Vaccine", "SafeLoRA", "RS", "Deep Token", "STAR-DSS"),
    "table2": ("SFT", "SafeInstr", "SEAL", "Lisa", "STAR-DSS"),
}


def load_run(path: str | Path) -> dict:
    path = Path(path)
    for candidate in (path, path / "results.json", path / "eval" / "results.json"):
        if candidate.is_file():
            results = json.loads(candidate.read_text())
            if "benchmarks" not in results:
                raise ValueError(f"{candidate}: not a dss.eval results.json (no 'benchmarks')")
            return results
    raise FileNotFoundError(f"{path}: no results.json (nor eval/results.json)")


def _judge_for(runs: Sequence[dict], bench: str, preference: Sequence[str]) -> str | None:
    having = [r["benchmarks"][bench].get("judges", {}) for r in runs if bench in r["benchmarks"]]
    for judge in preference:
        if having and all(judge in j for j in having):
            return judge
    return next((judge for judge in preference if any(judge in j for j in having)), None)


def _row_key(layout: Sequence[str]):
    """Sort key: initial models first, then the layout's methods in its order, then the rest."""
    rank = {name: i for i, name in enumerate(layout)}
    return lambda run: (bool(run.get("finetuned")), rank.get(run.get("method"), len(rank)))


def build(runs: Sequence[dict], preference: Sequence[str] = ("guardrail", "llm", "keyword"), layout: str = ""):
    """(headers, rows [(method, [value or None])], judges {benchmark: judge}); initial models first,
    then the finetuned runs in the given order or in `LAYOUTS[layout]`'s."""
    if layout and layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: unknown; use one of {', '.join(LAYOUTS)}")
    judges = {bench: _judge_for(runs, bench, preference) for _, bench, kind in COLUMNS if kind == "safety"}
    rows = []
    for run in sorted(runs, key=_row_key(LAYOUTS.get(layout, ()))):  # stable: given order otherwise
        values = []
        for _, bench, kind in COLUMNS:
            entry = run["benchmarks"].get(bench, {})
            metric = entry.get("judges", {}).get(judges.get(bench), {}).get("safe_pct") if kind == "safety" \
                else entry.get("accuracy")
            values.append(metric)
        rows.append((run.get("method") or "?", values))
    headers = [f"{h} safety" if kind == "safety" else h for h, _, kind in COLUMNS]
    return headers, rows, judges


def _cell(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _note(judges: dict) -> str:
    used = ", ".join(f"{b}: {j}" for b, j in judges.items() if j)
    return f"Safety: % of responses judged safe ({used or 'no judge'}); capability: accuracy %."


def markdown(headers, rows, judges) -> str:
    lines = ["| Method | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(headers)]
    lines += [f"| {method} | " + " | ".join(map(_cell, values)) + " |" for method, values in rows]
    return "\n".join(lines) + f"\n\n{_note(judges)}\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in text)


def latex(headers, rows, judges) -> str:
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * len(headers) + "}", r"\toprule",
             "Method & " + " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule"]
    lines += [_tex(method) + " & " + " & ".join(map(_cell, values)) + r" \\" for method, values in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _tex(_note(judges)) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def scatter(rows, path: str | Path) -> None:
    """Mean safety % (y) against mean capability accuracy % (x), one labelled point per method.
    Each mean is over the columns every row has, so the points are comparable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def common(kind):
        return [i for i, (_, _, k) in enumerate(COLUMNS) if k == kind and all(v[i] is not None for _, v in rows)]

    safety, capability = common("safety"), common("capability")
    fig, ax = plt.subplots(figsize=(5, 4), dpi=150)
    if rows and safety and capability:
        for method, values in rows:
            x = sum(values[i] for i in capability) / len(capability)
            y = sum(values[i] for i in safety) / len(safety)
            ax.scatter(x, y)
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.margins(0.2)
    else:
        ax.text(0.5, 0.5, "no safety and capability column\ncommon to all runs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("capability: mean accuracy % (" + ", ".join(COLUMNS[i][0] for i in capability) + ")")
    ax.set_ylabel("safety: mean % safe (" + ", ".join(COLUMNS[i][0] for i in safety) + ")")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("usage: python -m dss.tables <run dirs...> [--out DIR] [--judge guardrail,llm,keyword]")
    runs = [load_run(p) for p in argv[1:]]
    table = build(runs, [j.strip() for j in flags.FLAGS.judge.split(",") if j.strip()], flags.FLAGS.layout)
    out = Path(flags.FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(*table))
    (out / "table.tex").write_text(latex(*table))
    scatter(table[1], out / "safety_vs_capability.png")
    print(markdown(*table))
    print(f"wrote {out / 'table.md'}, {out / 'table.tex'}, {out / 'safety_vs_capability.png'}")


if __name__ == "__main__":  # flags defined here only, so importing dss.tables defines none
    flags.DEFINE_string("out", "tables", "directory for table.md, table.tex and safety_vs_capability.png")
    flags.DEFINE_string("judge", "guardrail,llm,keyword", "safety judges in order of preference")
    flags.DEFINE_string("layout", "", "table1 | table2: rows in that paper table's order ('' = the order given)")
    app.run(main)
