"""The command lines of `python -m dss.mini` and `python -m dss.mini.check`: flags and their
checks, importable without JAX so a bad flag is refused in seconds."""

from __future__ import annotations

from dss.errors import UserError

OPTIONS = {
    "outdir": ("", "output directory (required): world.json, results.json, table.md, figures, runs/"),
    "quick": (False, "pipeline smoke run: a tiny world, the suffix scenario, four rows, one seed"),
    "seeds": (0, "seeds per method (0: 3, or 1 with --quick)"),
    "workers": (2, "worker processes (one CPU thread each)"),
}

RESULTS = ("world.json", "summary.json", "results.json", "predictions.json")  # what dss.mini.check reads


def check_outdir(outdir: str, **_) -> None:
    from dss.workdir import refuse_package_dir

    if not outdir:
        raise UserError("--outdir DIR is required")
    refuse_package_dir(outdir, "--outdir")


def check_results(outdir: str) -> None:
    """What `dss.mini.check` reads is there."""
    from pathlib import Path

    if not outdir:
        raise UserError("--outdir DIR is required")
    for name in RESULTS:
        if not (Path(outdir) / name).is_file():
            raise UserError(f"{Path(outdir) / name}: missing; run python -m dss.mini --outdir {outdir} first")


def check(outdir: str, quick: bool = False, seeds: int = 0, workers: int = 2) -> None:
    check_outdir(outdir)
    if seeds < 0:
        raise UserError(f"--seeds {seeds}: give a positive number (0: the default)")
    if workers < 1:
        raise UserError(f"--workers {workers}: at least 1")
