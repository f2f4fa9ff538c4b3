"""The shared command line of dss jobs: `--config configs/<x>.py [--config.key=value] [--workdir DIR]`."""

from __future__ import annotations

import logging
from collections.abc import Callable

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "experiment config file (configs/*.py[:variant])", lock_config=True)
flags.DEFINE_string("workdir", None, "output directory (default: config.workdir)")


def enable_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache for this job: a rerun, a resume or the next job of a
    run loads the programs it compiled before instead of compiling them again."""
    if directory == "off":
        return
    import jax

    from dss.cache import cache_root

    jax.config.update("jax_compilation_cache_dir", directory or str(cache_root() / "jax_compile"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)  # skip trivial programs


def run(job: Callable[[object, str], object]) -> None:
    """Parse flags and call `job(config, workdir)`."""

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("absl").setLevel(logging.WARNING)  # orbax and jax are chatty at INFO
        if FLAGS.config is None:
            raise app.UsageError("--config configs/<experiment>.py is required")
        enable_compile_cache(FLAGS.config.get("compile_cache", ""))
        job(FLAGS.config, FLAGS.workdir or FLAGS.config.get("workdir", ""))

    app.run(main)
