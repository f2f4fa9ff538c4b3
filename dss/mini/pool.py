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
import time
from pathlib import Path
from typing import Callable, Sequence

WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    "TQDM_DISABLE": "1",
}


HEARTBEAT_S = 30  # a progress line at least this often while jobs run (issue #24)


def status_line(done: int, total: int, elapsed: float) -> str:
    """"k/N jobs done, elapsed, ETA" (the ETA assumes the remaining jobs cost the mean so far)."""
    eta = f"ETA {elapsed / done * (total - done) / 60:.1f} min" if done else "ETA -"
    return f"  [{done}/{total} jobs done, {elapsed / 60:.1f} min elapsed, {eta}]"


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
             progress: Callable[[str], None] = print, detail: Callable[[], str] | None = None) -> list:
    """[fn(a) for a in args] over `workers` spawned processes (results in order); see `run_batches`."""
    return run_batches(fn, [args], [logs], workers, env, progress, detail)[0]


def run_batches(fn: Callable, batches: Sequence[Sequence], logs: Sequence[Sequence[Path]], workers: int, env: dict,
                progress: Callable[[str], None] = print, detail: Callable[[], str] | None = None,
                after_batch: Callable[[int, list], None] | None = None) -> list[list]:
    """fn over each batch in turn (a batch starts when the one before it has finished), on one
    pool of `workers` spawned processes that lives for all batches, so each worker starts (and
    loads JAX) once. Returns each batch's results in order; `after_batch(k, results)` runs after
    batch k. A failed job raises with its log file named. A status line (jobs done, ETA, and
    `detail()`) comes at least every HEARTBEAT_S seconds."""
    saved = {k: os.environ.get(k) for k in {**WORKER_ENV, **env}}
    os.environ.update({**WORKER_ENV, **env})  # spawned workers inherit the environment at start
    try:
        context = multiprocessing.get_context("spawn")
        total, finished_jobs, start, out = sum(map(len, batches)), 0, time.time(), []
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for k, (args, batch_logs) in enumerate(zip(batches, logs)):
                futures = {pool.submit(_call, fn, a, str(log)): i for i, (a, log) in enumerate(zip(args, batch_logs))}
                results, pending = [None] * len(args), set(futures)
                while pending:
                    finished, pending = concurrent.futures.wait(pending, timeout=HEARTBEAT_S,
                                                                return_when=concurrent.futures.FIRST_COMPLETED)
                    for done in finished:
                        i = futures[done]
                        try:
                            results[i] = done.result()
                        except Exception as e:
                            progress(f"  FAILED {batch_logs[i]}: {e!r}; waiting for the running jobs to end")
                            pool.shutdown(wait=True, cancel_futures=True)  # let running jobs end, start no others
                            raise RuntimeError(f"job {i} failed ({e!r}); see {batch_logs[i]}") from e
                        finished_jobs += 1
                        progress(f"  done {'/'.join(Path(batch_logs[i]).parts[-3:-1])}")
                    line = status_line(finished_jobs, total, time.time() - start)
                    progress(f"{line} {detail()}" if detail else line)
                out.append(results)
                if after_batch:
                    after_batch(k, results)
        return out
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.stdout.flush()
