"""Local JSON, JSON-lines and CSV files, read with errors that say `<file> line N: <reason>`.

The one place such files are parsed or diagnosed (training sources, eval benchmarks, config
checks): a malformed line used to surface as `DatasetGenerationError` with no file or line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from pathlib import Path
from typing import Any


def _decode(path, data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark dropped); bad bytes refused at their line and column."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = data.count(b"\n", 0, err.start) + 1, err.start - data.rfind(b"\n", 0, err.start)
        raise ValueError(f"{path} line {line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8 text") from None


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true/false", type(None): "null"}


def _json_lines(path, text: str) -> list[dict]:
    rows = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number}: not valid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{path} line {number}: {_JSON_TYPES[type(value)]}, not a JSON object (one object a line)")
        rows.append(value)
    return rows


def read_json(path: str | os.PathLike, data: bytes | None = None, lines: bool | None = None) -> Any:
    """The objects of a JSON-lines file (`lines`, default: a .jsonl name; blank lines skipped) or
    the value of a JSON file; a .json file holding several values is read as JSON lines, as
    `datasets` does. `data`: the file's bytes if already read. Errors: `<path> line N: <reason>`."""
    text = _decode(path, Path(path).read_bytes() if data is None else data)
    if lines is None:
        lines = Path(path).suffix.lower() == ".jsonl"
    if not lines:
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":
                raise ValueError(f"{path} line {err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    return _json_lines(path, text)


def _fields(n: int) -> str:
    return f"{n} field" if n == 1 else f"{n} fields"


def read_csv(path: str | os.PathLike) -> list[list[str]]:
    """The records of a CSV file (the header, if it has one, first), every cell the text as
    written; blank lines are skipped. Every record must have as many fields as the first: a ragged
    row, broken quoting or non-UTF-8 bytes is refused as `<path> line N: <reason>`, N the line the
    record starts on."""
    reader = csv.reader(io.StringIO(_decode(path, Path(path).read_bytes()), newline=""), strict=True)
    records, width, start = [], None, 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return records
        except csv.Error as err:
            raise ValueError(f"{path} line {start}: bad quoting ({err})") from None
        if record:
            width = len(record) if width is None else width
            if len(record) != width:
                raise ValueError(f"{path} line {start}: {_fields(len(record))}, but the first row has {_fields(width)}")
            records.append(record)
        start = reader.line_num + 1
