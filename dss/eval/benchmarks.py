"""Safety benchmarks as one record type, from local files or hub datasets.

Every loader returns `Record`s {id, prompt, category, prefill}, so generation and the judges never
care where a prompt came from. The paper's attack variants are options of the loaders: a backdoor
`trigger` appended to every prompt, and (AdvBench) the `target` ("Sure, here is ...") as an
assistant prefill the answer must continue.

Sources (a local file/directory, or a hub id read through `datasets`):
- AdvBench: `harmful_behaviors.csv` (goal, target), or hub `walledai/AdvBench` (prompt, target).
- HEx-PHI (gated, so a path you downloaded after accepting its licence): the directory of
  `category_<k>.csv` files (headerless, one prompt per row; the public release omits category 2),
  one such file, or one table with prompt and category columns; or the hub id
  `LLM-Tuning-Safety/HEx-PHI` with a token that has access.
- HarmBench: `harmbench_behaviors_text_all.csv`, or hub `walledai/HarmBench` (config = functional
  category). Contextual behaviors get their context prepended, as HarmBench does.
- XSTest: `xstest_prompts.csv`, or hub `walledai/XSTest`. `label="safe"`: the 250 prompts a model
  should answer (over-refusal); `"unsafe"`: the 200 contrast prompts; `"all"`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from dss.errors import UserError
from dss.files import read_csv
from dss.eval.io import column, is_local, read_rows

__all__ = ["HEXPHI_CATEGORIES", "LOADERS", "Record", "load"]

HEXPHI_CATEGORIES = {
    1: "Illegal Activity", 2: "Child Abuse Content", 3: "Hate/Harass/Violence", 4: "Malware",
    5: "Physical Harm", 6: "Economic Harm", 7: "Fraud/Deception", 8: "Adult Content",
    9: "Political Campaigning", 10: "Privacy Violation Activity", 11: "Tailored Financial Advice",
}

_PROMPT = ("prompt", "goal", "Behavior", "behavior", "instruction")
_CATEGORY = ("category", "SemanticCategory", "type")


@dataclasses.dataclass(frozen=True)
class Record:
    """One harmful (or, for XSTest, borderline) request: `prompt` as sent to the model,
    `prefill` the text the assistant's answer is forced to start with (or None)."""

    id: str
    prompt: str
    category: str | None = None
    prefill: str | None = None


def _finish(records: list[Record], source, limit: int, trigger: str) -> list[Record]:
    if not records:
        raise UserError(f"{source}: no prompts")
    seen = set()
    for r in records:
        if not isinstance(r.prompt, str) or not r.prompt.strip():
            raise UserError(f"{source}: record {r.id!r} has an empty prompt")
        if r.id in seen:
            raise UserError(f"{source}: duplicate id {r.id!r}")
        seen.add(r.id)
    if limit:
        records = records[:limit]
    if trigger:
        records = [dataclasses.replace(r, prompt=f"{r.prompt} {trigger}") for r in records]
    return records


def advbench(path: str = "walledai/AdvBench", limit: int = 0, trigger: str = "",
             prefill_target: bool = False) -> list[Record]:
    """The 520 AdvBench harmful behaviors; `prefill_target` forces each answer to begin with its
    target string (the prefilling attack)."""
    records = []
    for i, row in enumerate(read_rows(path, split="train")):
        target = column(row, ("target",), path, i, required=prefill_target)
        records.append(Record(str(i), column(row, _PROMPT, path, i), None, target if prefill_target else None))
    return _finish(records, path, limit, trigger)


def _hexphi_file(path: Path, category: str | None) -> list[tuple[str, str | None]]:
    """(prompt, category) pairs of one file: a table with a prompt column, or headerless rows."""
    if path.suffix.lower() == ".csv":
        rows = [r for r in read_csv(path) if r[0].strip()]
        if rows and rows[0][0].strip().lower() not in _PROMPT:  # headerless: one prompt per row
            return [(r[0], category) for r in rows]
    out = []
    for i, row in enumerate(read_rows(path)):
        out.append((column(row, _PROMPT, path, i), column(row, _CATEGORY, path, i, required=False) or category))
    return out


def hexphi(path: str = "LLM-Tuning-Safety/HEx-PHI", limit: int = 0, trigger: str = "") -> list[Record]:
    """HEx-PHI's prompts with their category names (330 in the paper; 300 in the public release,
    which leaves out category 2)."""
    source = Path(path).expanduser()
    if not is_local(path):
        from huggingface_hub import snapshot_download

        source = Path(snapshot_download(path, repo_type="dataset", allow_patterns=["category_*.csv"]))
    if source.is_dir():
        files = {int(m.group(1)): f for f in source.iterdir() if (m := re.fullmatch(r"category_(\d+)\.csv", f.name))}
        if not files:
            raise FileNotFoundError(f"{source}: no category_<k>.csv files (HEx-PHI)")
        records = [Record(f"{k}-{j}", p, HEXPHI_CATEGORIES.get(k, f"category_{k}"))
                   for k in sorted(files) for j, (p, _) in enumerate(_hexphi_file(files[k], None))]
    else:
        m = re.fullmatch(r"category_(\d+)\.csv", source.name)
        name = HEXPHI_CATEGORIES.get(int(m.group(1)), source.stem) if m else None
        records = [Record(str(j), p, c) for j, (p, c) in enumerate(_hexphi_file(source, name))]
    return _finish(records, path, limit, trigger)


def harmbench(path: str = "walledai/HarmBench", limit: int = 0, trigger: str = "",
              functional: str = "standard") -> list[Record]:
    """HarmBench text behaviors of the functional categories in `functional` (comma-separated:
    standard, contextual, copyright; a hub source takes one, as its config name), with their
    semantic category."""
    wanted = [f.strip() for f in functional.split(",") if f.strip()]
    hub = not is_local(path)
    if hub and len(wanted) != 1:
        raise UserError(f"harmbench: a hub source takes one functional category, got {functional!r}")
    records = []
    for i, row in enumerate(read_rows(path, config=wanted[0] if hub else None, split="train")):
        kind = row.get("FunctionalCategory")
        if kind is not None and kind not in wanted:
            continue
        prompt = column(row, _PROMPT, path, i)
        context = row.get("ContextString") or row.get("context")
        if context:
            prompt = f"{context}\n\n---\n\n{prompt}"
        rid = str(row.get("BehaviorID") or i)
        records.append(Record(rid, prompt, column(row, _CATEGORY, path, i, required=False)))
    return _finish(records, path, limit, trigger)


def xstest(path: str = "walledai/XSTest", limit: int = 0, trigger: str = "", label: str = "safe") -> list[Record]:
    """XSTest prompts with `label` safe (should be answered), unsafe (contrast set) or all;
    category = the prompt type (e.g. homonyms, contrast_homonyms)."""
    if label not in ("safe", "unsafe", "all"):
        raise UserError(f"xstest: label must be safe, unsafe or all, got {label!r}")
    records = []
    for i, row in enumerate(read_rows(path, split="test")):
        if label != "all" and column(row, ("label",), path, i) != label:
            continue
        records.append(Record(str(row.get("id", i)), column(row, _PROMPT, path, i),
                              column(row, ("type", "category"), path, i, required=False)))
    return _finish(records, path, limit, trigger)


LOADERS = {"advbench": advbench, "hexphi": hexphi, "harmbench": harmbench, "xstest": xstest}


def load(kind: str, **options) -> list[Record]:
    """`LOADERS[kind](**options)`, with an error naming the known kinds."""
    if kind not in LOADERS:
        raise UserError(f"unknown safety benchmark {kind!r}; one of {sorted(LOADERS)}")
    return LOADERS[kind](**options)
