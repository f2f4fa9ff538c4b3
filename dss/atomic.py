"""Write files and directories in one piece: into a temporary sibling, renamed into place on success.

    with atomic_file(path) as tmp:      # tmp: a Path next to `path`, not yet created
        tmp.write_text(...)             # or save_file(tensors, str(tmp)), open(tmp, "wb"), ...
    with atomic_dir(out_dir) as tmp:    # tmp: a new empty directory next to `out_dir`
        save_pretrained(model, tmp)

When the block ends normally the temporary is renamed over the target (os.replace: readers of a
file see the old version or the new one, never a mix; a directory is swapped by two renames);
when it raises, the temporary is removed and the target is left as it was. Temporaries are hidden (`.name.<random>.tmp`) in the target's own
directory, so the rename never crosses file systems, and are created with the usual permissions
(umask), not mkstemp's private ones. Parent directories are created as needed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file"]


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path for the file `path`; on success rename it over `path` (after
    flushing it to disk if `fsync`), on any exception delete it. The block must create the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a new empty directory for the directory `path`; on success it takes the place of
    `path` whole (an existing `path` is moved aside, then deleted), on any exception it is deleted.

    `keep_existing`: if `path` exists when the block ends, keep it and delete the new directory
    instead (for deterministic outputs that concurrent processes may race to make)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if keep_existing:
            try:
                os.rename(tmp, path)  # refused where `path` is a non-empty directory or a file
            except OSError:
                if not (path.exists() or path.is_symlink()):
                    raise
                _remove(tmp)
            return
        if path.exists() or path.is_symlink():
            old = _sibling(path, "old")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
                old = None
            raise
    except BaseException:
        _remove(tmp)
        raise
    if old is not None:
        _remove(old)
