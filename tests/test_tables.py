"""Paper tables from fixture results.json files: Markdown, LaTeX, the scatter PNG, and the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dss import tables

REPO = Path(__file__).resolve().parents[1]


def _safety(pct, *judges):
    return {"n": 10, "judges": {j: {"n": 10, "n_safe": round(pct / 10), "safe_pct": pct} for j in judges}}


def _capability(acc):
    return {"n": 200, "correct": round(acc * 2), "accuracy": acc}


RUNS = {
    "sft": {"method": "sft", "finetuned": True, "benchmarks": {
        "hexphi": _safety(40.0, "guardrail", "keyword"), "advbench": _safety(30.0, "keyword"),
        "mmlu": _capability(45.5), "arc_c": _capability(50.0), "gsm8k": _capability(33.5)}},
    "initial": {"method": "Llama-3.2-1B-Instruct", "finetuned": False, "benchmarks": {
        "hexphi": _safety(98.0, "guardrail", "keyword"), "advbench": _safety(99.0, "guardrail", "keyword"),
        "mmlu": _capability(46.0), "arc_c": _capability(51.25), "gsm8k": _capability(30.0)}},
    "star_dss": {"method": "star_dss", "finetuned": True, "benchmarks": {
        "hexphi": _safety(96.67, "guardrail", "keyword"), "advbench": _safety(97.0, "guardrail", "keyword"),
        "gsm8k": _capability(34.0)}},
}
RUNS["sft"]["benchmarks"]["hexphi"]["judges"]["keyword"]["safe_pct"] = 12.0  # differs from its guardrail score


@pytest.fixture
def run_dirs(tmp_path):
    paths = []
    for name, results in RUNS.items():
        # an eval outdir, a training workdir (eval/results.json), and a results.json file
        where = {"sft": tmp_path / "sft", "initial": tmp_path / "initial" / "eval", "star_dss": tmp_path / "star"}[name]
        where.mkdir(parents=True)
        (where / "results.json").write_text(json.dumps({"model": f"/models/{name}", **results}))
        paths.append({"sft": where, "initial": tmp_path / "initial", "star_dss": where / "results.json"}[name])
    return paths


EXPECTED_MD = """\
| Method | HEx-PHI safety | AdvBench safety | MMLU | ARC-C | GSM8K |
|---|---:|---:|---:|---:|---:|
| Llama-3.2-1B-Instruct | 98.0 | 99.0 | 46.0 | 51.2 | 30.0 |
| sft | 40.0 | 30.0 | 45.5 | 50.0 | 33.5 |
| star_dss | 96.7 | 97.0 | - | - | 34.0 |

Safety: % of responses judged safe (hexphi: guardrail, advbench: keyword); capability: accuracy %.
"""


def test_markdown_rows_initial_first_and_one_judge_per_column(run_dirs):
    runs = [tables.load_run(p) for p in run_dirs]
    headers, rows, judges = tables.build(runs)
    assert judges == {"hexphi": "guardrail", "advbench": "keyword"}  # sft has no guardrail AdvBench verdicts
    assert tables.markdown(headers, rows, judges) == EXPECTED_MD
    _, rows, judges = tables.build(runs, ["keyword"])
    assert rows[1] == ("sft", [12.0, 30.0, 45.5, 50.0, 33.5])


def test_latex(run_dirs):
    tex = tables.latex(*tables.build([tables.load_run(p) for p in run_dirs]))
    lines = tex.splitlines()
    assert lines[:6] == [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{lrrrrr}", r"\toprule",
                         r"Method & HEx-PHI safety & AdvBench safety & MMLU & ARC-C & GSM8K \\", r"\midrule"]
    assert lines[6:9] == [r"Llama-3.2-1B-Instruct & 98.0 & 99.0 & 46.0 & 51.2 & 30.0 \\",
                          r"sft & 40.0 & 30.0 & 45.5 & 50.0 & 33.5 \\",
                          r"star\_dss & 96.7 & 97.0 & - & - & 34.0 \\"]
    assert lines[9:11] == [r"\bottomrule", r"\end{tabular}"]
    assert r"\% of responses judged safe" in lines[11] and lines[-1] == r"\end{table}"


def test_scatter_png(tmp_path, run_dirs):
    _, rows, _ = tables.build([tables.load_run(p) for p in run_dirs])
    tables.scatter(rows, tmp_path / "plot.png")
    tables.scatter([("empty", [None] * 5)], tmp_path / "empty.png")
    for name in ("plot.png", "empty.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_cli_writes_all_formats(tmp_path, run_dirs):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dss.tables", *map(str, run_dirs), f"--out={out}"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXPECTED_MD in proc.stdout
    assert (out / "table.md").read_text() == EXPECTED_MD
    assert (out / "table.tex").read_text().startswith(r"\begin{table}")
    assert (out / "safety_vs_capability.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json"):
        tables.load_run(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not a dss.eval results.json"):
        tables.load_run(tmp_path)


def test_layouts_put_rows_in_the_paper_order():
    """--layout orders the finetuned rows as the paper's table (initial models still first;
    methods the layout does not name keep their given order after it); an unknown layout is refused."""
    row = lambda method, finetuned=True: {"method": method, "finetuned": finetuned,  # noqa: E731
                                          "benchmarks": {"gsm8k": _capability(30.0)}}
    given = [row("STAR-DSS"), row("mine"), row("RS"), row("Llama-3.2-1B-Instruct", False), row("SFT"),
             row("Deep Token"), row("SafeLoRA"), row("Vaccine"), row("other")]
    names = lambda layout: [m for m, _ in tables.build(given, layout=layout)[1]]  # noqa: E731
    assert names("table1") == ["Llama-3.2-1B-Instruct", "SFT", "Vaccine", "SafeLoRA", "RS", "Deep Token", "STAR-DSS",
                               "mine", "other"]
    assert names("") == ["Llama-3.2-1B-Instruct", "STAR-DSS", "mine", "RS", "SFT", "Deep Token", "SafeLoRA",
                         "Vaccine", "other"]
    assert names("table2")[:3] == ["Llama-3.2-1B-Instruct", "SFT", "STAR-DSS"]
    with pytest.raises(ValueError, match="layout 'table3': unknown; use one of table1, table2"):
        tables.build(given, layout="table3")
