"""Independent jobs (trainings, evaluations) run in worker processes, one CPU thread each.

Tiny models use a CPU badly from one process: most of a step is small matrix products and Python
overhead, so two single-threaded processes on a 2-core machine do nearly twice the work of one
two-threaded process. Workers are spawned (no forked JAX state) with XLA's CPU thread pool at one
thread and a persistent compilation cache shared by all of them, so the second and later runs of
a shape load its compiled program instead of compiling it again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    "TQDM_DISABLE": "1",
}


def compilation_cache(root: Path) -> dict:
    return {"JAX_COMPILATION_CACHE_DIR": str(root / "xla")}


def _call(fn: Callable, arg, log_path: str):
    """Run fn(arg) with the worker's output going to `log_path`."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        import logging

        logging.basicConfig(stream=log, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
        logging.getLogger("absl").setLevel(logging.WARNING)
        return fn(arg)


def run_jobs(fn: Callable, args: Sequence, logs: Sequence[Path], workers: int, env: dict,
             progress: Callable[[str], None] = print) -> list:
    """[fn(a) for a in args] over `workers` spawned processes (results in order); a failed job
    raises with its log file named."""
    saved = {k: os.environ.get(k) for k in {**WORKER_ENV, **env}}
    os.environ.update({**WORKER_ENV, **env})  # spawned workers inherit the environment at start
    try:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_call, fn, a, str(log)): i for i, (a, log) in enumerate(zip(args, logs))}
            results = [None] * len(args)
            for done in concurrent.futures.as_completed(futures):
                i = futures[done]
                try:
                    results[i] = done.result()
                except Exception as e:
                    pool.shutdown(wait=True, cancel_futures=True)  # let running jobs end, start no others
                    raise RuntimeError(f"job {i} failed ({e!r}); see {logs[i]}") from e
                finished = sum(r is not None for r in results)
                progress(f"  done {'/'.join(Path(logs[i]).parts[-3:-1])} ({finished}/{len(args)})")
            return results
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout.flush()
