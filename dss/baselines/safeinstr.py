"""SafeInstr (Bianchi et al., "Safety-Tuned LLaMAs", ICLR 2024): safety demonstrations (harmful
request -> refusal) added to the user's finetuning data.

The paper adds a fixed number of safety examples (100 to 2,000 in its Saferpaca sets) to the
instruction data; SEAL's "SEAL + SafeInstr" recipe adds the whole safety file. Here
`config.safeinstr.count` rows (all with 0) are drawn without replacement from the safety set and
appended after the user data is mixed and attacked: they are the provider's data, so the attack
transforms never touch them and they are not part of the user mixture's `size`. The draw goes
through `dss.data.build_dataset` (seed `config.data.seed`), so the rows are rendered exactly like
the user's (chat template, system prompt, length limit).
"""

from __future__ import annotations

import dss.data
from dss.data.pipeline import like_user_data

SOURCE_NAME = "safeinstr"
BUNDLED = "safety_refusals/harmbench_refusals.jsonl"
TOTALS = ("rows", "bad_rows", "selected", "attacked", "dropped_too_long", "truncated", "encoded")


def safety_source(s) -> dict:
    """The safety set as a data source: `config.safeinstr.path`, else the bundled refusals."""
    return {"path": s.path or str(dss.data.bundled(BUNDLED)), "name": SOURCE_NAME, "prompt_field": s.prompt_field,
            "response_field": s.response_field, "size": s.count or None}


def add_safety_data(config, tokenizer, template_vars, encoded: list, examples: list, stats: dict):
    """SafeInstr's stage of `dss.train`: the data (`encoded`, `examples`, `stats` as
    `dss.data.build_dataset` returns them) with the safety rows appended and counted as the source
    "safeinstr"; unchanged unless config.safeinstr.enabled."""
    s = config.safeinstr
    if not s.enabled:
        return encoded, examples, stats
    if SOURCE_NAME in stats["sources"]:
        raise ValueError(f"a data source is named {SOURCE_NAME!r}, the name SafeInstr reports its rows under; "
                         "rename it")
    safe_encoded, safe_examples, safe_stats = dss.data.build_dataset(
        like_user_data(config.data, [safety_source(s)]), tokenizer, template_vars)
    usable = safe_stats["rows"] - safe_stats["bad_rows"]
    if s.count > usable:
        raise ValueError(f"config.safeinstr.count = {s.count}: the safety set {safety_source(s)['path']} has only "
                         f"{usable} usable rows (use at most that, or 0 for all)")
    merged = {"sources": {**stats["sources"], **safe_stats["sources"]},
              **{k: stats[k] + safe_stats[k] for k in TOTALS}, "dropped": stats["dropped"] + safe_stats["dropped"]}
    extra = {k: v for k, v in stats.items() if k not in merged}  # e.g. another stage's report
    return encoded + safe_encoded, examples + safe_examples, {**merged, **extra}
