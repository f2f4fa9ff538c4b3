"""Fingerprinted, atomically written array caches (STAR scores, reference log-probs).

A cache file records the fingerprint of everything its numbers depend on (data rows, model
weights and template, settings). Loading with a different expected fingerprint is refused with a
message that says which file and what differs, so stale numbers are never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from dss.atomic import atomic_file

log = logging.getLogger("dss.cache")

_SAMPLE_BYTES = 1 << 20


class StaleCacheError(ValueError):
    """The cache file exists but was made for other inputs."""


def cache_root() -> Path:
    """Where dss keeps what it can rebuild (tiny assets, compiled programs): `$DSS_CACHE`, else
    ~/.cache/dss."""
    return Path(os.environ.get("DSS_CACHE", Path.home() / ".cache" / "dss"))


def fingerprint(*parts) -> str:
    """sha256 of JSON-serialisable parts (dicts are key-sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def weights_fingerprint(model_dir) -> str:
    """Cheap identity of an HF checkpoint: config, file sizes, safetensors headers and the first
    and last MiB of every weight file (reading 16 GB per run to hash it all would be too slow)."""
    model_dir = Path(model_dir)
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for file in sorted(model_dir.glob("*.safetensors")):
        size = file.stat().st_size
        h.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            h.update(f.read(_SAMPLE_BYTES))
            f.seek(max(0, size - _SAMPLE_BYTES))
            h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def save(path, kind: str, fp: str, arrays: dict[str, np.ndarray], meta: dict | None = None) -> Path:
    """Write `arrays` with their fingerprint to `path` (.npz) via a temporary file and rename."""
    path = Path(path)
    header = json.dumps({"kind": kind, "fingerprint": fp, "meta": meta or {}})
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, __header__=np.array(header), **arrays)
    return path


def load(path, kind: str, fp: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, None if there is no file; StaleCacheError if it is foreign or stale."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["__header__"]))
            arrays = {k: f[k] for k in f.files if k != "__header__"}
    except (ValueError, KeyError, OSError) as e:
        raise StaleCacheError(f"{path}: not a dss cache file ({e})") from e
    if header.get("kind") != kind:
        raise StaleCacheError(f"{path}: holds {header.get('kind')!r}, not {kind!r}")
    if header.get("fingerprint") != fp:
        raise StaleCacheError(
            f"{path}: made for other inputs (fingerprint {header.get('fingerprint', '?')[:12]} != "
            f"expected {fp[:12]}): the data rows, model/guardrail weights or template, or settings "
            "changed; delete it or point the cache elsewhere to recompute"
        )
    return arrays


def load_or_compute(path, kind: str, fp: str, compute, what: str, named: bool = False,
                    write: bool = True) -> dict[str, np.ndarray]:
    """The arrays cached at `path` for fingerprint `fp`, else `compute()` (a dict of arrays)
    written there when `write` (process 0). A stale or foreign file is recomputed with a warning
    (`what` says what changes make it stale), unless the user named the file (`named`): then it is
    refused, so a file they chose is never silently replaced."""
    try:
        arrays = load(path, kind, fp)
    except StaleCacheError:
        if named:
            raise
        log.warning("%s is stale (%s changed): recomputing", path, what)
        arrays = None
    if arrays is None:
        arrays = compute()
        if write:
            save(path, kind, fp, arrays)
    return arrays
