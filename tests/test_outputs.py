"""Outputs where they belong: dss.tables writes beside its runs (or to --out), never into the
current directory by default, and nothing goes inside the package."""

import json
import os
import subprocess
import sys
from pathlib import Path

from dss import tables, workdir

REPO = Path(__file__).resolve().parents[1]


def _run(path: Path, method: str, finetuned: bool = True) -> Path:
    benchmarks = {"advbench": {"n": 2, "judges": {"keyword": {"safe_pct": 50.0}}}, "gsm8k": {"accuracy": 25.0}}
    (path / "eval").mkdir(parents=True)
    (path / "eval" / "results.json").write_text(json.dumps({"method": method, "finetuned": finetuned,
                                                             "benchmarks": benchmarks}))
    return path


def _tables(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dss.tables", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_tables_writes_beside_the_runs_not_into_the_current_directory(tmp_path):
    runs = [_run(tmp_path / "workdir" / "initial", "Initial", False), _run(tmp_path / "workdir" / "sft", "SFT")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = _tables(*runs, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "workdir" / "tables"
    assert sorted(p.name for p in out.iterdir()) == ["safety_vs_capability.png", "table.md", "table.tex"]
    assert list(elsewhere.iterdir()) == []
    assert f"wrote {out / 'table.md'}" in proc.stdout
    assert tables.default_out([runs[0] / "eval" / "results.json", runs[1]]) == out  # a results.json names its run


def test_tables_out_is_honoured_and_the_package_refused(tmp_path):
    run = _run(tmp_path / "runs" / "sft", "SFT")
    proc = _tables(run, f"--out={tmp_path / 'mine'}", cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "mine" / "table.md").exists(), proc.stderr[-2000:]
    proc = _tables(run, f"--out={workdir.PACKAGE_DIR / 'tables'}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: --out {workdir.PACKAGE_DIR / 'tables'} is inside the dss package ({workdir.PACKAGE_DIR}); "
        "choose a directory outside it")
    assert not (workdir.PACKAGE_DIR / "tables").exists()
