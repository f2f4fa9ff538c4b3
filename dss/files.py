"""Local JSON, JSON-lines and CSV files, read with errors that say `<file> line N: <reason>`.

The one place such files are parsed or diagnosed (training sources, eval benchmarks, config
checks): a malformed line used to surface as `DatasetGenerationError` with no file or line.
Lines are counted from 1, as an editor shows them; the errors are `dss.errors.UserError`s.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.errors import UserError

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
"""Data-file suffixes and their formats (JSON and JSON lines are read alike); other paths are
directories or hub dataset ids."""


def _decode(path, data: bytes) -> str:
    """UTF-8 text (a leading byte-order mark dropped); bad bytes refused at their line and column."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line, column = data.count(b"\n", 0, err.start) + 1, err.start - data.rfind(b"\n", 0, err.start)
        raise UserError(f"{path} line {line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8 text") from None


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
            raise UserError(f"{path} line {number}: not valid JSON: {err.msg} (column {err.colno})") from None
        if not isinstance(value, dict):
            raise UserError(f"{path} line {number}: {_JSON_TYPES[type(value)]}, not a JSON object (one object a line)")
        rows.append(value)
    return rows


def read_json(path: str | os.PathLike, data: bytes | None = None, lines: bool | None = None) -> Any:
    """The objects of a JSON-lines file (`lines`, default: a .jsonl name; blank lines skipped) or
    the value of a JSON file; a .json file holding several values is read as JSON lines, as
    `datasets` does, and an empty file as no lines. `data`: the file's bytes if already read.
    Errors: `<path> line N: <reason>`."""
    text = _decode(path, Path(path).read_bytes() if data is None else data)
    if lines is None:
        lines = Path(path).suffix.lower() == ".jsonl"
    if not lines and text.strip():
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":
                raise UserError(f"{path} line {err.lineno}: not valid JSON: {err.msg} (column {err.colno})") from None
    return _json_lines(path, text)


def _item_lines(text: str) -> list[int]:
    """The line each item of a (valid) top-level JSON array starts on."""
    decoder, skip = json.JSONDecoder(), re.compile(r"[\s,]*")
    position, line, counted, starts = text.index("[") + 1, 1, 0, []
    while True:
        position = skip.match(text, position).end()
        if text[position] == "]":
            return starts
        line += text.count("\n", counted, position)
        counted = position
        starts.append(line)
        _, position = decoder.raw_decode(text, position)


def _fields(n: int) -> str:
    return f"{n} field" if n == 1 else f"{n} fields"


def _csv_records(path) -> list[tuple[int, list[str]]]:
    """(line the record starts on, record) of each non-blank record."""
    reader = csv.reader(io.StringIO(_decode(path, Path(path).read_bytes()), newline=""), strict=True)
    records, width, start = [], None, 1
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return records
        except csv.Error as err:
            raise UserError(f"{path} line {start}: bad quoting ({err})") from None
        if record:
            width = len(record) if width is None else width
            if len(record) != width:
                raise UserError(f"{path} line {start}: {_fields(len(record))}, but the first row has {_fields(width)}")
            records.append((start, record))
        start = reader.line_num + 1


def read_csv(path: str | os.PathLike) -> list[list[str]]:
    """The records of a CSV file (the header, if it has one, first), every cell the text as
    written; blank lines are skipped. Every record must have as many fields as the first: a ragged
    row, broken quoting or non-UTF-8 bytes is refused as `<path> line N: <reason>`, N the line the
    record starts on."""
    return [record for _, record in _csv_records(path)]


@dataclass
class Table:
    """The rows of a data file, the line each starts on (1-based) and the column names in order."""

    rows: list
    lines: list[int]
    columns: list[str]


def read_table(path: str | os.PathLike) -> Table:
    """A .json / .jsonl / .csv file of records as rows with their line numbers, so that a bad row
    is reported at the line an editor shows: JSON lines (one object a line), a JSON array of
    objects (a .json file), or a CSV file with a header row (cells stay text as written). An empty
    file, or a CSV file with only its header, is refused as such."""
    empty = "empty file"
    if Path(path).suffix.lower() == ".csv":
        records = _csv_records(path)
        if len(records) == 1:
            empty = "only a header line"
        header = records[0][1] if records else []
        table = Table([dict(zip(header, r)) for _, r in records[1:]], [line for line, _ in records[1:]], header)
    else:
        data = Path(path).read_bytes()
        rows, text = read_json(path, data), _decode(path, data)
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of objects, or one object a line")
        if text.lstrip().startswith("["):  # one array (numbered by a second, cheap scan)
            lines, empty = _item_lines(text), "an empty JSON list"
        else:
            lines = [number for number, line in enumerate(text.split("\n"), 1) if line.strip()]
        columns = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))
        table = Table(rows, lines, columns)
    if not table.rows:
        raise UserError(f"{path}: {empty}, no rows to read")
    return table


def names_local_path(name) -> bool:
    """Whether a model name is a local path rather than a Hugging Face Hub repo id: it starts with
    '.', '/' or '~', or names something that exists."""
    return str(name).startswith((".", "/", "~")) or Path(name).expanduser().exists()
