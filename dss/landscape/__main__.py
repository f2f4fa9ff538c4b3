"""`python -m dss.landscape --config C [--config.landscape.x=...] [--workdir DIR]` (dss.landscape.job)."""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input in seconds, before the job's imports load JAX
    from dss import cli
    from dss.landscape.config import check_job

    cli.launch("dss.landscape", check=check_job)  # main: dss.landscape.job.main
