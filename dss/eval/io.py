"""Files in and out: benchmark rows from local files or the Hugging Face Hub, and crash-safe
JSON/JSONL outputs.

Evaluation runs for hours and is preempted; every output is either written whole (temp file +
rename) or appended one complete line batch at a time, and a line torn by a crash is dropped (and
cut from the file) when the file is next read, so appends after a resume never glue onto it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from dss.atomic import atomic_file
from dss.errors import UserError
from dss.files import read_csv, read_json

LOCAL_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet")


def is_local(source: str | os.PathLike) -> bool:
    """A path on disk (existing, or written like a path) rather than a hub dataset id."""
    return Path(source).expanduser().exists() or str(source).startswith((".", "/", "~"))


def read_rows(source: str | os.PathLike, config: str | None = None, split: str | None = None) -> list[dict]:
    """Rows (dicts) of a local .csv/.json/.jsonl/.parquet file, or of a hub dataset
    (`datasets.load_dataset(source, config)`, then `split`, or its only split if it has one).
    A malformed local file fails as `<path> line N: <reason>` (dss.checks)."""
    if is_local(source):
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            header, *records = read_csv(path) or [[]]
            return [dict(zip(header, r)) for r in records]
        if suffix == ".jsonl":
            return read_json(path)
        if suffix == ".json":
            rows = read_json(path)
            if not isinstance(rows, list):
                raise UserError(f"{path}: expected a JSON list of objects")
            return rows
        if suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict("records")
        raise UserError(f"{path}: unsupported file type {suffix!r} (one of {LOCAL_SUFFIXES})")
    import datasets

    loaded = datasets.load_dataset(str(source), config)
    if split not in loaded and len(loaded) == 1:  # single-split uploads name their split freely
        split = next(iter(loaded))
    if split not in loaded:
        raise UserError(f"hub dataset {source!r} ({config or 'default'}): no split {split!r}; has {sorted(loaded)}")
    return list(loaded[split])


def column(row: dict, names: Iterable[str], source: Any, index: int, required: bool = True):
    """The first of `names` present in `row`; errors name the file/dataset, the row and the columns."""
    names = tuple(names)
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    if required:
        raise UserError(f"{source}: row {index} has none of the columns {names}; it has {sorted(row)}")
    return None


def read_jsonl(path: str | os.PathLike, repair: bool = True) -> list[dict]:
    """Objects of a JSONL file. With `repair`, an unterminated last line (a write cut short by a
    crash) is dropped and cut from the file; any other bad line is an error naming it."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn.strip() and not repair:
        lines.append(torn)
    elif torn:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(torn))
    return read_json(path, b"\n".join(lines), lines=True)


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows with one write on an O_APPEND descriptor (whole lines, safe across threads)."""
    data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()
    if not data:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temp file next to `path`, fsync it, then rename it over `path`."""
    with atomic_file(path, fsync=True) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_done(path: str | os.PathLike, key, reader: bool) -> dict:
    """What a resumed job finished: the rows of the JSON-lines file at `path` by `key(row)`, read
    by the `reader` host (process 0) and sent to every host, so all resume from one record."""
    from dss import distributed  # joins the hosts: imported by the jobs that run, not by checks

    done = {key(row): row for row in read_jsonl(path)} if reader and Path(path).exists() else {}
    return distributed.broadcast_object(done)
