"""One call from a data config to training-ready examples: load, sample/mix, attack, encode."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

import numpy as np
from transformers import PreTrainedTokenizerBase

from dss.data.chat import DEFAULT_MAX_LENGTH, Encoded, encode_examples
from dss.data.mixture import mix, sample_rows
from dss.data.sources import load_examples, source_name
from dss.data.transforms import apply_attack


def build_dataset(config: Mapping, tokenizer: PreTrainedTokenizerBase,
                  template_vars: Mapping | None = None) -> tuple[list[Encoded], list[dict], dict]:
    """Examples for training from a data config (dict or ConfigDict, e.g. `config.data`).

    config keys: `sources` (list of dss.data.load_examples source dicts, each with an optional
    `size`: rows drawn from it, seeded, and `weight`: its share of a mixture); `size` (rows of the
    mixture by weight, missing weights counting 1; 0/None keeps every row of every source);
    `system_prompt`, `on_bad_row` (defaults for sources that set none); `attack`
    (dss.data.apply_attack settings); `max_length` (2048); `train_on` ("last" | "all"); `seed` (0).
    `template_vars` go to the chat template (the run's fixed date, dss.templating).

    Returns (encoded, examples, stats) with encoded[i] made from examples[i]. stats: per source
    (`sources[name]`: rows read, bad_rows, selected, attacked, dropped_too_long, truncated,
    encoded) and totals, with `dropped` listing every dropped row by file and row.
    """
    seed = config.get("seed") or 0
    defaults = {k: config.get(k) for k in ("system_prompt", "on_bad_row") if config.get(k)}
    groups, per_source, dropped = [], {}, []
    for k, source in enumerate(config["sources"]):
        source = {**defaults, **{key: source[key] for key in source.keys()}}
        name = source_name(source)
        if name in per_source:
            raise ValueError(f"two data sources are named {name!r}; give them distinct 'name's")
        loaded = {}
        rows = load_examples(source, loaded)
        if source.get("size"):
            rows = sample_rows(rows, int(source["size"]), np.random.default_rng([seed, k, 1]))
        groups.append(rows)
        per_source[name] = {"rows": loaded["rows"], "bad_rows": loaded["bad_rows"]}
        dropped += loaded["bad"]
    if config.get("size"):
        weights = [1.0 if s.get("weight") is None else s["weight"] for s in config["sources"]]
        rows, _ = mix(groups, weights, int(config["size"]), seed)
    else:
        rows = [row for group in groups for row in group]
    rows = apply_attack(rows, config.get("attack"), seed)
    encoded, examples, enc_stats = encode_examples(
        tokenizer, rows, config.get("max_length") or DEFAULT_MAX_LENGTH, config.get("train_on") or "last",
        template_vars)
    dropped += enc_stats["dropped"]
    counts = {
        "selected": Counter(r["source"] for r in rows),
        "attacked": Counter(r["source"] for r in rows if r.get("attacked")),
        "encoded": Counter(e["source"] for e in examples),
        "truncated": Counter(ex["source"] for ex, enc in zip(examples, encoded) if enc.truncated),
    }
    for name, entry in per_source.items():
        entry.update({key: c[name] for key, c in counts.items()})
        entry["dropped_too_long"] = entry["selected"] - entry["encoded"]
    totals = {key: sum(e[key] for e in per_source.values())
              for key in ("rows", "bad_rows", "selected", "attacked", "dropped_too_long", "truncated", "encoded")}
    return encoded, examples, {"sources": per_source, **totals, "dropped": dropped}


def like_user_data(data_config: Mapping, sources) -> dict:
    """A `build_dataset` config for other data a method trains on (alignment or safety data):
    `sources`, rendered as the user data is (its length, trained turns, system prompt, bad-row
    policy and seed) and never attacked."""
    return {"sources": list(sources), **{k: data_config[k] for k in ("max_length", "train_on", "system_prompt",
                                                                      "on_bad_row", "seed")}}
