"""Finetuning rows from local files or hub datasets, normalised to one chat shape.

Every source becomes rows `{"prompt", "response", "messages", "source", "row", "line"}` (`row` 0-based,
`line` the file's 1-based line, None for parquet files and hub datasets): `messages` is the
whole conversation (system prompt first if any, the response as the final assistant turn), so
chat formatting needs nothing else; `prompt` is the last user turn, which STAR's guardrail sees as
the user message. Malformed rows fail loudly with the file and line (1-based, as an editor shows
it; "row N", also 1-based, for parquet files and hub datasets), or are dropped and counted when the
source says `on_bad_row="drop"`; a malformed or empty JSON, JSON-lines or CSV file fails with the
file and line. `check_sources` runs the same reading and row checks on a config's local files
without transformers or datasets (loaded only for parquet files and hub datasets), so the command
line refuses a bad file within seconds of launch.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

from dss import files
from dss.errors import UserError
from dss.files import FILE_FORMATS

log = logging.getLogger(__name__)

SOURCE_KEYS = frozenset({
    "path", "name", "split", "subset", "prompt_field", "response_field", "messages_field",
    "system_prompt", "limit", "on_bad_row", "weight", "size",
})
"""Keys a source may have; `weight` and `size` are read by the mixture step (dss.data.pipeline)."""


class BadRow(UserError):
    """A row that cannot be a finetuning example; the message says why."""


def source_name(source: Mapping) -> str:
    """The name a source is reported under: its `name`, else its path or hub id."""
    return str(source.get("name") or source["path"])


def check_source_keys(source, where: str) -> None:
    """A source dict with known keys (a typo gets the closest one suggested) and a `path`; `where`
    names it in the messages (e.g. "config.data.sources[0]")."""
    if not hasattr(source, "keys"):
        raise UserError(f"{where} = {source!r}: a data source is a dict with a 'path' (and fields, weight, ...)")
    for key in sorted(set(source.keys()) - SOURCE_KEYS):
        close = difflib.get_close_matches(key, SOURCE_KEYS, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(SOURCE_KEYS))}"
        raise UserError(f"{where}: unknown key {key!r} in a data source; {hint}")
    if not source.get("path"):
        raise UserError(f"{where}: a data source needs a 'path' (a .json/.jsonl/.csv/.parquet file, a dataset "
                        f"directory or a hub dataset id); it has {sorted(source.keys())}")
    if (source.get("on_bad_row") or "error") not in ("error", "drop"):
        raise UserError(f"{where}.on_bad_row = {source['on_bad_row']!r}: use 'error' or 'drop'")


def local_file(path) -> bool:
    """Whether `path` names a local file rather than a hub dataset id: a data-file suffix, or an
    absolute, ./ or ~ path."""
    text = str(path)
    return Path(text).suffix.lower() in FILE_FORMATS or text.startswith((".", "/", "~"))


def _read(source: Mapping) -> tuple[list, list[str], list[int] | None]:
    """The raw rows of a source (its first `limit`), their column names, and the line each row
    starts on (None for parquet files and hub datasets: their rows are counted instead). JSON,
    JSON-lines and CSV files are parsed here, once (dss.files), so a malformed or empty one fails
    as `<path> line N: <reason>` and CSV cells stay text as written ("007", ""); parquet files, hub
    datasets and local dataset directories go through `datasets.load_dataset`."""
    path, limit = str(source["path"]), int(source.get("limit") or 0) or None
    fmt = FILE_FORMATS.get(Path(path).suffix.lower())
    if local_file(path) and not Path(path).expanduser().exists():
        raise UserError(f"{path}: no such data file")
    if fmt in ("csv", "json"):
        table = files.read_table(path)
        return table.rows[:limit], table.columns, table.lines[:limit]
    import datasets  # here: config checks and JSON/CSV sources need neither datasets nor its imports

    if fmt == "parquet":
        data = datasets.load_dataset("parquet", data_files=path, split="train")
    else:  # hub dataset name or a local dataset directory
        data = datasets.load_dataset(path, source.get("subset"), split=source.get("split") or "train")
    if limit:
        data = data.select(range(min(limit, len(data))))
    if not len(data):
        raise UserError(f"{path}: no rows (split {source.get('split') or 'train'!r})")
    return data.to_list(), data.column_names, None


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
    """Rows of one source (see the module docstring), each with its index `row` and its place
    `line` (the file's line, 1-based; for parquet files and hub datasets the row, 1-based); `stats`,
    if given, is filled with `rows` (read), `kept`, `bad_rows`, `bad_reasons` (problem -> count)
    and `bad` (messages).

    source: `path` (.json/.jsonl/.csv/.parquet file, or a hub dataset / local dataset directory
    read with `datasets.load_dataset(path, subset, split=split)`), `split` ("train"), `subset`,
    `prompt_field` ("prompt"), `response_field` ("response") or `messages_field` (a chat list whose
    last assistant turn is the response), `system_prompt`, `limit` (first N rows),
    `on_bad_row` ("error" | "drop"), `name` (how it is reported; default the path).
    """
    where = f"data source {source.get('path')!r}" if hasattr(source, "keys") else "data source"
    rows, bad, reasons, read = _examples(source, where)
    if bad:
        log.warning("dropped %d of %d rows of %s: %s", len(bad), read, source["path"], "; ".join(bad[:5]))
    if stats is not None:
        stats.update(rows=read, kept=len(rows), bad_rows=len(bad), bad_reasons=dict(reasons), bad=bad)
    return rows


def _examples(source: Mapping, where: str) -> tuple[list[dict], list[str], Counter, int]:
    """(examples, messages of the dropped rows, their reasons counted, rows read) of a source."""
    check_source_keys(source, where)
    path, name = source["path"], source_name(source)
    fields = ([source["messages_field"]] if source.get("messages_field") else
              [source.get("prompt_field") or "prompt", source.get("response_field") or "response"])
    data, columns, lines = _read(source)
    missing = [f for f in fields if f not in columns]
    if missing:
        close = difflib.get_close_matches(missing[0], columns, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}? (set the source's prompt_field / response_field)" if close else ""
        raise UserError(f"{path}: no field {missing[0]!r} in any row (fields: {columns}){hint}")
    rows, bad, reasons = [], [], Counter()
    for i, raw in enumerate(data):
        line = lines[i] if lines else i + 1
        try:
            rows.append({**normalise_row(raw, source), "source": name, "row": i, "line": lines[i] if lines else None})
        except BadRow as err:
            message = f"{path} {'line' if lines else 'row'} {line}: {err}"
            if (source.get("on_bad_row") or "error") == "error":
                raise BadRow(message) from None
            bad.append(message)
            reasons[str(err)] += 1
    return rows, bad, reasons, len(data)


def check_sources(sources: Sequence, where: str = "config.data.sources") -> None:
    """Refuse a bad source list before anything heavy is loaded: every source's keys (typos
    named, with a suggestion), a local file that is missing, and every row of each local JSON,
    JSON-lines or CSV file read and checked as training will (`<file> line N: <reason>`); parquet
    files and hub datasets are left to the job (reading them needs `datasets`)."""
    if isinstance(sources, (str, Mapping)) or not isinstance(sources, Sequence):
        raise UserError(f"{where} = {sources!r}: a list of data-source dicts")
    for k, source in enumerate(sources):
        check_source_keys(source, f"{where}[{k}]")
        path = str(source["path"])
        if local_file(path) and not Path(path).expanduser().exists():
            raise UserError(f"{where}[{k}].path = {path!r}: no such file")
        if FILE_FORMATS.get(Path(path).suffix.lower()) in ("csv", "json"):
            _examples(source, f"{where}[{k}]")
