"""Seeded sampling and probability mixtures of several sources (e.g. GSM8K 0.9 + harmful 0.1).

A mixture of N rows gets its per-source counts by rounding N * weight (largest remainder, so they
sum to N exactly and the realised proportions are as close to the weights as N allows). Each source
is sampled without replacement; only a source asked for more rows than it has is repeated (every
row the same number of times, the rest drawn without replacement). Sampled rows keep their source
order; the training iterator shuffles.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sample_rows(rows: Sequence[dict], n: int, rng: np.random.Generator) -> list[dict]:
    """`n` rows drawn without replacement where possible, in their original order."""
    if n < 0:
        raise ValueError(f"cannot sample {n} rows")
    if n and not rows:
        raise ValueError(f"cannot sample {n} rows from an empty source")
    full, rest = divmod(n, len(rows)) if rows else (0, 0)
    index = np.concatenate([np.tile(np.arange(len(rows)), full), rng.choice(len(rows), rest, replace=False)])
    return [rows[i] for i in np.sort(index, kind="stable")]


def apportion(weights: Sequence[float], total: int) -> list[int]:
    """Integer counts proportional to `weights` summing to `total` (largest remainder)."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or not len(w) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights must be >= 0 with a positive sum, got {list(weights)}")
    exact = w / w.sum() * total
    counts = np.floor(exact).astype(int)
    short = total - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:short]] += 1
    return counts.tolist()


def mix(groups: Sequence[Sequence[dict]], weights: Sequence[float], total: int,
        seed: int = 0) -> tuple[list[dict], list[int]]:
    """A `total`-row mixture of `groups` (one list of rows per source) by `weights`; returns the rows
    (grouped by source) and the realised count per source. Source k's draw depends only on
    (seed, k, its count)."""
    if len(groups) != len(weights):
        raise ValueError(f"{len(groups)} sources but {len(weights)} weights")
    counts = apportion(weights, total)
    rows = []
    for k, (group, n) in enumerate(zip(groups, counts)):
        rows += sample_rows(group, n, np.random.default_rng([seed, k]))
    return rows, counts
