"""`python -m dss.tables <run dirs...> [--out DIR] [--judge guardrail,llm,keyword] [--layout table1|table2]`

The paper's main table from `dss.eval` results: one row per method (initial models first, then
the runs in the order given, or with `--layout` in the paper's row order of that table), columns HEx-PHI and AdvBench safety (% judged safe) and MMLU, ARC-C
and GSM8K accuracy (%), "-" where a run lacks a number. Printed as Markdown and written to
`<out>/table.md`, `<out>/table.tex`, plus `<out>/safety_vs_capability.png` (mean safety vs mean
capability per method, over the columns all runs have). A run directory is an eval outdir (with
results.json) or a training workdir (with eval/results.json). `--out` defaults to `tables/` beside
the runs (in the directory that holds them all), never the current directory: a `tables/` folder
there can shadow this module when Python is started from the checkout's parent.

Each safety column uses one judge for every row: the first of `--judge` that all runs having
that benchmark were judged with (keyword safety = 100 - ASR).
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input before matplotlib loads
    from dss import cli
    from dss.tables import OPTIONS, check

    cli.launch("dss.tables", check=check, config=False, positional="RUN_DIR", options=OPTIONS)

import json
import os
from pathlib import Path
from typing import Sequence

from dss import methods
from dss.errors import UserError

__all__ = ["COLUMNS", "LAYOUTS", "build", "check", "default_out", "latex", "load_run", "main", "markdown", "scatter"]

OPTIONS = {
    "out": ("", "directory for table.md, table.tex and safety_vs_capability.png ('' = tables/ beside the runs)"),
    "judge": ("guardrail,llm,keyword", "safety judges in order of preference"),
    "layout": ("", "table1 | table2: rows in that paper table's order ('' = the order given)"),
}
JUDGES = ("guardrail", "llm", "keyword")

# (header, benchmark name in results.json, "safety" | "capability")
COLUMNS = (("HEx-PHI", "hexphi", "safety"), ("AdvBench", "advbench", "safety"), ("MMLU", "mmlu", "capability"),
           ("ARC-C", "arc_c", "capability"), ("GSM8K", "gsm8k", "capability"))

# The paper's row order per table, by method label (`config.eval.method`, which configs/paper/
# sets to the labels `dss.methods` declares); rows of other methods follow in the order given.
LAYOUTS = {table: methods.table_rows(table) for table in ("table1", "table2")}


def _results_file(path: str | Path) -> Path | None:
    path = Path(path)
    return next((c for c in (path, path / "results.json", path / "eval" / "results.json") if c.is_file()), None)


def load_run(path: str | Path) -> dict:
    """The results.json of an eval outdir or training workdir (or the file itself)."""
    candidate = _results_file(path)
    if candidate is None:
        raise FileNotFoundError(f"{path}: no results.json (nor eval/results.json)")
    try:
        results = json.loads(candidate.read_text())
    except ValueError as err:
        raise UserError(f"{candidate}: not valid JSON ({err})") from None
    if not isinstance(results, dict) or "benchmarks" not in results:
        raise UserError(f"{candidate}: not a dss.eval results.json (no 'benchmarks')")
    return results


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """`tables/` in the directory that holds every run (their common parent)."""
    runs = [Path(p).resolve() for p in run_dirs]
    runs = [p.parent if p.is_file() else p for p in runs]
    return Path(os.path.commonpath([p.parent for p in runs])) / "tables"


def _judges(judge: str) -> list[str]:
    return [j.strip() for j in judge.split(",") if j.strip()]


def check(run_dirs: Sequence[str], out: str = "", judge: str = "guardrail,llm,keyword", layout: str = "") -> None:
    """The command line's check (before matplotlib loads): every run has a results.json, the judges
    and layout are known, and the output directory is not inside the package."""
    from dss.workdir import refuse_package_dir

    for path in run_dirs:
        if _results_file(path) is None:
            what = "no such directory" if not Path(path).exists() else "no results.json (nor eval/results.json)"
            raise UserError(f"{path}: {what}; give dss.eval output directories or training workdirs")
    unknown = [j for j in _judges(judge) if j not in JUDGES]
    if unknown or not _judges(judge):
        raise UserError(f"--judge {judge!r}: use judges among {', '.join(JUDGES)}, in order of preference")
    if layout and layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: unknown; use one of {', '.join(LAYOUTS)}")
    refuse_package_dir(out or default_out(run_dirs), "--out")


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
        raise UserError(f"layout {layout!r}: unknown; use one of {', '.join(LAYOUTS)}")
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
    """Mean safety % (y) against mean capability accuracy % (x), one point per method, each with
    its own colour and marker named in the legend (methods often land on one point, where text
    labels would overlap). Each mean is over the columns every row has, so the points are comparable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def common(kind):
        return [i for i, (_, _, k) in enumerate(COLUMNS) if k == kind and all(v[i] is not None for _, v in rows)]

    safety, capability = common("safety"), common("capability")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
    if rows and safety and capability:
        markers, colours = "osD^vP*Xhp<>", plt.get_cmap("tab10").colors
        points = [(sum(v[i] for i in capability) / len(capability), sum(v[i] for i in safety) / len(safety))
                  for _, v in rows]
        at = [(round(x, 1), round(y, 1)) for x, y in points]
        for k, ((method, _), (x, y)) in enumerate(zip(rows, points)):
            later = at[k + 1:].count(at[k])  # methods on one spot: the earlier drawn larger, beneath
            ax.scatter(x, y, s=60 + 70 * later, marker=markers[k % len(markers)], color=colours[k % len(colours)],
                       edgecolors="black", linewidths=0.6, label=f"{method} ({x:.1f}, {y:.1f})", zorder=3)
        ax.margins(0.15)
        legend = ax.legend(title="method (capability, safety)", fontsize=8, title_fontsize=8, loc="upper left",
                           bbox_to_anchor=(1.02, 1), borderaxespad=0)
        for handle in legend.legend_handles:
            handle.set_sizes([60])
    else:
        ax.text(0.5, 0.5, "no safety and capability column\ncommon to all runs", ha="center", transform=ax.transAxes)
    ax.set_xlabel("capability: mean accuracy % (" + ", ".join(COLUMNS[i][0] for i in capability) + ")")
    ax.set_ylabel("safety: mean % safe (" + ", ".join(COLUMNS[i][0] for i in safety) + ")")
    ax.set_title("safety vs capability", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

def main(run_dirs: Sequence[str], out: str = "", judge: str = "guardrail,llm,keyword", layout: str = "") -> None:
    """Build the table of `run_dirs` and write it (with the plot) to `out` (default: `default_out`)."""
    runs = [load_run(p) for p in run_dirs]
    table = build(runs, _judges(judge), layout)
    out = Path(out) if out else default_out(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(markdown(*table))
    (out / "table.tex").write_text(latex(*table))
    scatter(table[1], out / "safety_vs_capability.png")
    print(markdown(*table))
    print(f"wrote {out / 'table.md'}, {out / 'table.tex'}, {out / 'safety_vs_capability.png'}")

