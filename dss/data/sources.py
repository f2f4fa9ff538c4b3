"""Finetuning rows from local files or hub datasets, normalised to one chat shape.

Every source becomes rows `{"prompt", "response", "messages", "source", "row"}`: `messages` is the
whole conversation (system prompt first if any, the response as the final assistant turn), so
chat formatting needs nothing else; `prompt` is the last user turn, which STAR's guardrail sees as
the user message. Malformed rows fail loudly with the file and row (0-based), or are dropped and
counted when the source says `on_bad_row="drop"`; a malformed JSON, JSON-lines or CSV file fails
with the file and line (1-based, as an editor shows it).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import datasets

from dss import files

log = logging.getLogger(__name__)

FILE_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}

SOURCE_KEYS = frozenset({
    "path", "name", "split", "subset", "prompt_field", "response_field", "messages_field",
    "system_prompt", "limit", "on_bad_row", "weight", "size",
})
"""Keys a source may have; `weight` and `size` are read by the mixture step (dss.data.pipeline)."""


class BadRow(ValueError):
    """A row that cannot be a finetuning example; the message says why."""


def source_name(source: Mapping) -> str:
    """The name a source is reported under: its `name`, else its path or hub id."""
    return str(source.get("name") or source["path"])


def _read(source: Mapping) -> tuple[list, list[str]]:
    """The raw rows of a source (its first `limit`) and their column names. JSON, JSON-lines and
    CSV files are parsed here, once (dss.files), so a malformed one fails as `<path> line N:
    <reason>` (1-based, as an editor counts) and CSV cells stay text as written ("007", "");
    parquet files, hub datasets and local dataset directories go through `datasets.load_dataset`."""
    path, limit = str(source["path"]), int(source.get("limit") or 0) or None
    fmt = FILE_FORMATS.get(Path(path).suffix.lower())
    if fmt is not None and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if fmt == "csv":
        header, *records = files.read_csv(path) or [[]]
        return [dict(zip(header, r)) for r in records[:limit]], header
    if fmt == "json":
        rows = files.read_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of objects, or one object a line")
        return rows[:limit], list(dict.fromkeys(k for r in rows if isinstance(r, Mapping) for k in r))
    if fmt == "parquet":
        data = datasets.load_dataset("parquet", data_files=path, split="train")
    else:  # hub dataset name or a local dataset directory
        data = datasets.load_dataset(path, source.get("subset"), split=source.get("split") or "train")
    if limit:
        data = data.select(range(min(limit, len(data))))
    return data.to_list(), data.column_names


def _text(row: Mapping, field: str) -> str:
    value = row.get(field)
    if value is None:
        raise BadRow(f"missing field {field!r}")
    if not isinstance(value, str):
        raise BadRow(f"field {field!r} is {type(value).__name__}, not a string")
    return value


def _messages(row: Mapping, field: str) -> list[dict]:
    value = row.get(field)
    if value is None:
        raise BadRow(f"missing field {field!r}")
    if not isinstance(value, list) or not value:
        raise BadRow(f"field {field!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise BadRow(f"{field}[{k}] is not a message with a string 'role'")
        if not isinstance(m.get("content"), str):
            raise BadRow(f"{field}[{k}] content is {type(m.get('content')).__name__}, not a string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "assistant":
        raise BadRow(f"{field} must end with an assistant turn (the response), ends with {out[-1]['role']!r}")
    return out


def normalise_row(raw: Mapping, source: Mapping) -> dict:
    """One raw row -> `{"prompt", "response", "messages"}`; BadRow if it cannot be trained on."""
    if not isinstance(raw, Mapping):  # an item of a JSON list that is not an object
        raise BadRow(f"a {type(raw).__name__}, not an object with fields")
    messages_field = source.get("messages_field")
    if messages_field:
        messages = _messages(raw, messages_field)
        users = [m["content"] for m in messages[:-1] if m["role"] == "user"]
        if not users:
            raise BadRow(f"{messages_field} has no user turn before the final assistant turn")
        prompt, response = users[-1], messages[-1]["content"]
    else:
        prompt = _text(raw, source.get("prompt_field") or "prompt")
        response = _text(raw, source.get("response_field") or "response")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if not response.strip():
        raise BadRow("empty response")
    system_prompt = source.get("system_prompt")
    if system_prompt and messages[0]["role"] != "system":  # a row's own system turn wins
        messages.insert(0, {"role": "system", "content": system_prompt})
    return {"prompt": prompt, "response": response, "messages": messages}


def load_examples(source: Mapping, stats: dict | None = None) -> list[dict]:
    """Rows of one source (see the module docstring); `stats`, if given, is filled with
    `rows` (read), `kept`, `bad_rows`, `bad_reasons` (problem -> count) and `bad` (messages).

    source: `path` (.json/.jsonl/.csv/.parquet file, or a hub dataset / local dataset directory
    read with `datasets.load_dataset(path, subset, split=split)`), `split` ("train"), `subset`,
    `prompt_field` ("prompt"), `response_field` ("response") or `messages_field` (a chat list whose
    last assistant turn is the response), `system_prompt`, `limit` (first N rows),
    `on_bad_row` ("error" | "drop"), `name` (how it is reported; default the path).
    """
    unknown = set(source.keys()) - SOURCE_KEYS
    if unknown:
        raise ValueError(f"data source {source.get('path')!r}: unknown keys {sorted(unknown)} "
                         f"(known: {sorted(SOURCE_KEYS)})")
    if not source.get("path"):
        raise ValueError(f"data source with keys {sorted(source.keys())}: 'path' is required")
    on_bad_row = source.get("on_bad_row") or "error"
    if on_bad_row not in ("error", "drop"):
        raise ValueError(f"data source {source['path']!r}: on_bad_row must be 'error' or 'drop', got {on_bad_row!r}")
    name = source_name(source)
    fields = ([source["messages_field"]] if source.get("messages_field") else
              [source.get("prompt_field") or "prompt", source.get("response_field") or "response"])
    data, columns = _read(source)
    missing = [f for f in fields if f not in columns]
    if missing:
        raise ValueError(f"{source['path']}: no field {missing[0]!r} in any row (fields: {columns})")
    rows, bad, reasons = [], [], Counter()
    for i, raw in enumerate(data):
        try:
            rows.append({**normalise_row(raw, source), "source": name, "row": i})
        except BadRow as err:
            message = f"{source['path']} row {i}: {err}"
            if on_bad_row == "error":
                raise BadRow(message) from None
            bad.append(message)
            reasons[str(err)] += 1
    if bad:
        log.warning("dropped %d of %d rows of %s: %s", len(bad), len(data), source["path"], "; ".join(bad[:5]))
    if stats is not None:
        stats.update(rows=len(data), kept=len(rows), bad_rows=len(bad), bad_reasons=dict(reasons), bad=bad)
    return rows
