"""A job's hold on the directory it writes, and the training run a workdir holds.

Two jobs writing one directory corrupt each other (a second `dss.train` on a workdir crashed five
steps later on an orbax `FileExistsError`, and `metrics.jsonl` got every step twice). A job that
writes a directory takes its lock first: `<dir>/dss.lock`, JSON naming the host, pid, start time
and job. A second job is refused at once, naming the holder; a lock left by a job that died (its
pid gone on this host) is taken over, with a log line saying so; on several hosts only process 0
takes it (the others write nothing). The lock is released on every exit the process survives
(return, error, Ctrl-C, SIGTERM); after a SIGKILL the next job takes the stale lock over.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from dss.errors import UserError

log = logging.getLogger("dss.workdir")

LOCK_FILE = "dss.lock"
PACKAGE_DIR = Path(__file__).resolve().parent


def resolve_model(path: str) -> tuple[str, bool]:
    """(HF model to load, whether it came from a training workdir): a workdir (a directory with
    `export/config.json` and no config.json of its own) means its `export/` directory."""
    local = Path(path).expanduser()
    if local.is_dir() and not (local / "config.json").exists() and (local / "export" / "config.json").exists():
        return str(local / "export"), True
    return str(path), False


def refuse_package_dir(path, what: str = "output directory") -> None:
    """A job's outputs never go inside the installed dss package (a folder there can shadow its modules)."""
    resolved = Path(path).expanduser().resolve()
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise UserError(f"{what} {path} is inside the dss package ({PACKAGE_DIR}); choose a directory outside it")


def _holder(job: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "job": job,
            "command": " ".join(sys.argv)}


def _describe(holder: dict) -> str:
    return f"{holder.get('job', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> dict | None:
    """The holder recorded in a lock file; None if it vanished, {} if it cannot be read."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _create(path: Path, holder: dict) -> bool:
    """Write the lock whole or not at all: a hard link of a finished temporary file fails if the
    lock exists, so no reader sees a half-written lock."""
    tmp = path.with_name(f".{path.name}.{holder['host']}.{holder['pid']}")
    tmp.write_text(json.dumps(holder) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive create, then write
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as f:
            f.write(tmp.read_text())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _stale(holder: dict) -> str:
    """Why a recorded holder is gone ("" if it may be alive)."""
    if not holder:
        return "its lock file is unreadable"
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
        return "that process is gone"
    return ""


def _in_use(directory: Path, holder: dict) -> UserError:
    return UserError(f"{directory} is in use by {_describe(holder)}; wait for it to finish or use another directory "
                     f"(if no such job runs any more, delete {directory / LOCK_FILE})")


def check_free(directory, config=None) -> None:
    """Refuse at once, before a job loads anything, a directory another live job holds (the
    job's own `lock` still decides). Skipped for a multi-host run (`config.distributed`): its
    process 0 may already hold the lock for this very job."""
    if config is not None and config.get("distributed"):
        return
    holder = _read(Path(directory) / LOCK_FILE)
    if holder and not _stale(holder):
        raise _in_use(Path(directory), holder)


def acquire(directory, job: str) -> Path:
    """Take `<directory>/dss.lock` for `job` (creating the directory), or raise UserError naming
    the job that holds it. Returns the lock file."""
    directory = Path(directory)
    refuse_package_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path, mine = directory / LOCK_FILE, _holder(job)
    for _ in range(3):  # a holder that finishes, or a stale lock another job takes over, between our looks
        if _create(path, mine):
            return path
        holder = _read(path)
        if holder is None:
            continue
        reason = _stale(holder)
        if not reason:
            raise _in_use(directory, holder)
        if _remove_stale(path, holder):
            log.warning("%s: took over the lock of %s: %s", directory, _describe(holder), reason)
    raise UserError(f"{directory}: could not take {path}; another job is starting there")


def _remove_stale(path: Path, holder: dict) -> bool:
    """Remove the lock judged stale, unless another job replaced it meanwhile (then put theirs back)."""
    grave = path.with_name(f".{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return False
    taken = _read(grave) == holder
    if not taken:
        with contextlib.suppress(FileExistsError):
            os.link(grave, path)
    grave.unlink()
    return taken


def release(path: Path) -> None:
    """Remove the lock if it is still this process's."""
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def lock(directory, job: str, is_writer: bool | None = None) -> Iterator[Path | None]:
    """Hold `directory` for `job` while the block runs; yields the lock file (None on a host
    other than process 0, which takes no lock). `is_writer`: whether this host writes (default
    `dss.distributed.is_writer()`: call after `distributed.initialize`). A directory this call
    created is removed again if the job leaves it empty. SIGTERM raises SystemExit(143) while
    the lock is held unless the job has its own handler, so the lock is released then too; on
    several hosts SIGTERM is left to JAX's preemption notice (a C handler Python cannot see),
    which stops every host at the same step."""
    multihost = False
    if is_writer is None:
        from dss import distributed

        is_writer, multihost = distributed.is_writer(), distributed.is_multihost()
    if not is_writer:
        yield None
        return
    directory = Path(directory)
    created = not directory.exists()
    path = acquire(directory, job)
    restore = (lambda: None) if multihost else _exit_on_sigterm()
    try:
        yield path
    finally:
        restore()
        release(path)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty: a job refused or failed before writing leaves nothing


def _exit_on_sigterm():
    """Make SIGTERM unwind (so `finally` blocks run) if nobody else handles it; returns the undo."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return lambda: None

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    def restore():
        if signal.getsignal(signal.SIGTERM) is stop:  # not if the job installed its own meanwhile
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, stop)
    return restore
