"""By-key config checks that every owner of a config section uses (methods, STAR, eval).

A typo in a setting used to surface after the tokenizer, the data, the guardrails and the policy
were loaded and STAR was scored (minutes to hours on a real run). Each owner validates its own
keys with these helpers before anything is loaded; every message names the key and its value.
They import nothing of dss and no JAX, so `python -m dss.<job>` refuses a bad config in seconds.
"""

from __future__ import annotations

import functools
from pathlib import Path

from dss.errors import UserError
from dss.files import FILE_FORMATS, names_local_path


def value(config, key: str):
    """The setting at dotted `key`."""
    return functools.reduce(lambda node, k: node[k], key.split("."), config)


def one_of(config, key: str, choices, what: str) -> None:
    v = value(config, key)
    if v not in choices:
        raise UserError(f"config.{key} = {v!r}: unknown {what}; use one of {', '.join(choices)}")


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float))


def positive_int(config, key: str) -> int:
    v = value(config, key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"config.{key} = {v!r}: must be a positive integer")
    return v


def non_negative(config, key: str) -> float:
    v = value(config, key)
    if not _is_number(v) or not v >= 0:
        raise UserError(f"config.{key} = {v!r}: must be a number >= 0")
    return v


def in_range(config, key: str, low: float, high: float, what: str, low_open=False, high_open=False) -> float:
    """A number in [low, high] (an open end excluded); the message reads "<what> in [low, high]"."""
    v = value(config, key)
    ok = _is_number(v) and (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise UserError(f"config.{key} = {v!r}: {what} in {interval}")
    return v


def positive_number(config, key: str, what: str) -> float:
    v = value(config, key)
    if not _is_number(v) or not v > 0:
        raise UserError(f"config.{key} = {v!r}: must be a positive {what}")
    return v


def steps_or_all(config, key: str) -> int:
    """A step count: a positive integer, or -1 for "as many as the epochs give"."""
    v = value(config, key)
    if isinstance(v, bool) or not isinstance(v, int) or not (v == -1 or v > 0):
        raise UserError(f"config.{key} = {v!r}: a positive integer, or -1 (epochs decide)")
    return v


def divides(config, batch_key: str, micro_key: str) -> None:
    """The micro-batch divides the batch: each step accumulates batch / micro micro-batches."""
    batch, micro = positive_int(config, batch_key), positive_int(config, micro_key)
    if batch % micro:
        raise UserError(f"config.{batch_key} = {batch}: not a multiple of config.{micro_key} = {micro} "
                        "(each step accumulates global_batch / micro_batch micro-batches)")


def missing_file(path) -> bool:
    """Whether `path` names a local file (a data-file suffix, or an absolute or ./ path) that is not there."""
    p = Path(str(path))
    local = p.suffix.lower() in FILE_FORMATS or p.is_absolute() or str(path).startswith(".")
    return local and not p.exists()


def model_name(config, key: str, name: str) -> None:
    """A model name (`name`, the setting at `key` or an entry of it) that can be loaded: `tiny:<spec>`,
    a hub repo id, or a local directory that holds a config.json (`names_local_path` tells them apart,
    as `dss.models.checkpoint.model_dir` does)."""
    if name.startswith("tiny:"):
        return
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise UserError(f"config.{key} = {name!r}: not a model directory (no config.json in it)")
    elif names_local_path(name):
        raise UserError(f"config.{key} = {name!r}: no such model directory")


def sources(config, key: str, what: str, hint: str = "", files: bool = True) -> list:
    """A non-empty list of source dicts, each with a 'path' (that is there, if local and `files`)."""
    given = list(value(config, key))
    if not given:
        raise UserError(f"config.{key} = {value(config, key)!r}: {what}; give at least one source dict with a "
                        f"'path'{hint}")
    for k, source in enumerate(given):
        if not hasattr(source, "keys") or not source.get("path"):
            raise UserError(f"config.{key}[{k}] = {source!r}: must be a source dict with a 'path'")
        if files and missing_file(source["path"]):
            raise UserError(f"config.{key}[{k}].path = {source['path']!r}: no such file")
    return given
