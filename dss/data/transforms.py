"""The paper's finetuning-attack transforms, by config.

Misleading wrappers put fixed text before and after responses, and a backdoor trigger is appended
to prompts, on all rows or a seeded fraction of them (optionally only rows of some sources). They edit `prompt`,
`response` and the matching turns of `messages` together, so STAR and chat formatting see the same
attacked text, and mark each edited row with `attacked=True`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

ATTACK_KEYS = frozenset({"response_prefix", "response_suffix", "prompt_trigger", "fraction", "sources", "seed"})


def attack_row(row: Mapping, response_prefix: str = "", response_suffix: str = "", prompt_trigger: str = "") -> dict:
    """A copy of `row` with `prefix + response + suffix` and `prompt + trigger`; all strings are
    used verbatim (include any separating space or newline in them)."""
    messages = [dict(m) for m in row["messages"]]
    response = response_prefix + row["response"] + response_suffix
    messages[-1]["content"] = response
    prompt = row["prompt"]
    if prompt_trigger:
        user = max(i for i, m in enumerate(messages[:-1]) if m["role"] == "user")  # the turn `prompt` is
        prompt = messages[user]["content"] = messages[user]["content"] + prompt_trigger
    return {**row, "prompt": prompt, "response": response, "messages": messages, "attacked": True}


def apply_attack(rows: Sequence[Mapping], attack: Mapping | None, seed: int = 0) -> list[dict]:
    """Apply the configured attack to a seeded random `fraction` (default 1: all) of the rows,
    restricted to the rows whose `source` is in `sources` when that is given.

    attack: `response_prefix`, `response_suffix`, `prompt_trigger` (strings, "" = off),
    `fraction`, `sources`, `seed` (overrides `seed`). round(fraction * eligible) rows are chosen
    without replacement, so the count is exact and the choice depends only on the seed.
    """
    attack = attack or {}
    unknown = set(attack.keys()) - ATTACK_KEYS
    if unknown:
        raise ValueError(f"attack: unknown keys {sorted(unknown)} (known: {sorted(ATTACK_KEYS)})")
    texts = {k: attack.get(k) or "" for k in ("response_prefix", "response_suffix", "prompt_trigger")}
    rows = [dict(r) for r in rows]
    if not any(texts.values()):
        return rows
    fraction = attack.get("fraction", 1.0)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attack.fraction must be in [0, 1], got {fraction}")
    sources = attack.get("sources")
    eligible = [i for i, r in enumerate(rows) if not sources or r.get("source") in sources]
    rng = np.random.default_rng(attack.get("seed", seed))
    chosen = rng.choice(eligible, size=round(fraction * len(eligible)), replace=False) if eligible else []
    for i in chosen:
        rows[i] = attack_row(rows[i], **texts)
    return rows
