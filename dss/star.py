"""STAR's public API, and `python -m dss.star --config ... [--plot N]`, which scores a config's
training set into its STAR file (the same rows training will use).

The method lives in dss/star*: `star_score` (Guardrail, score), `star_plan` (packing plans,
length buckets, the compiled-shape bound), `star_kernels` (the jitted device functions),
`star_store` (STAR files, cached_score), `star_plot` (trajectory PNGs) and `star_config` (the
config sections and their check).
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input in seconds, before the imports below load JAX
    from dss import cli, star_config

    cli.launch("dss.star", check=star_config.precheck,
               options={"plot": (0, "draw the STAR trajectory of the first N examples as PNGs")})

import logging
from pathlib import Path

import numpy as np

from dss.segments import Trajectory, token_weights
from dss.star_plot import plot_trajectory
from dss.star_score import HF_SAMPLING, CompileReport, Guardrail, example_cuts, prefix_plans, score
from dss.star_store import cached_score, load_trajectories, save_trajectories, star_fingerprint

log = logging.getLogger("dss.star")

__all__ = ["Guardrail", "Trajectory", "CompileReport", "score", "token_weights", "HF_SAMPLING", "cached_score",
           "plot_trajectory", "star_fingerprint", "save_trajectories", "load_trajectories", "example_cuts",
           "prefix_plans"]


def main(config, workdir, plot: int = 0) -> None:
    """Score the training set of a config (the same rows training will use) into its STAR file,
    holding the workdir (`dss.workdir.lock`) while it writes there."""
    import dss.data
    import dss.hub
    from dss import distributed, templating
    from dss import workdir as workdirs
    from dss.star_config import check_star_config
    from transformers import AutoTokenizer

    check_star_config(config)  # again: main may be called without the command line
    distributed.initialize(config)
    with workdirs.lock(workdir, "dss.star"):
        tokenizer = AutoTokenizer.from_pretrained(dss.hub.resolve_path(config.model.path))
        template_vars = templating.run_template_vars(config.template, workdir)
        _, examples, stats = dss.data.build_dataset(config.data, tokenizer, template_vars)
        log.info("data: %s", stats)
        trajs = cached_score(config, examples, workdir, template_vars)
        if not distributed.is_writer():
            return
        out = Path(workdir) / "star_plots"
        for i in range(min(plot, len(trajs))):
            out.mkdir(parents=True, exist_ok=True)
            plot_trajectory(examples[i], trajs[i], out / f"example_{i:04d}.png")
        if plot:
            log.info("STAR: %d trajectory plots -> %s", min(plot, len(trajs)), out)
    flat = np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0)
    print(f"STAR: {len(trajs)} examples, {flat.size} prefixes, mean P(safe) {np.nanmean(flat):.3f}, "
          f"unsafe at the end: {sum(t.safe_prob[-1] < 0.5 for t in trajs)}")
