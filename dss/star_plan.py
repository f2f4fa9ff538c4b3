"""STAR's packing plans: which tokens each device call runs, in which rows, at which bucketed shape.

Host-side integer work only (numpy, no JAX), so that it can be tested and measured (`dss.bench`)
without a model. `shared_plan` decides what of each prefix the shared-KV path must still run;
the batching helpers group rows by bucketed length so that the programs compiled are bounded by
the buckets, not the data; `naive_bound` / `shared_bound` state that bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dss.buckets import bucket_length, next_pow2

__all__ = ["Plan", "common_length", "shared_plan", "head_length", "bucket", "naive_bound", "shared_bound",
           "NAIVE_STEP", "BATCH_STEP", "PREFILL_STEP", "CACHE_STEP", "SUFFIX_STEP"]


@dataclasses.dataclass
class Plan:
    """One example's work: the full rendering to cache once, and each prefix's own remaining tokens."""

    example: int
    full: list[int]  # the full rendering, cached once
    suffixes: list[list[int]]  # prefix k's tokens after the first commons[k]; [] = read off the cache's last token
    commons: list[int]  # how many shared tokens prefix k really has in common with the full rendering
    seen: list[list[int]]  # each prefix's whole token list (for hf_sampling's repetition penalty)


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def shared_plan(ids_per_prefix, full_ids, example: int) -> Plan:
    """A prefix that tokenizes to the full rendering (the whole response) is read off the cache's
    last position; every other prefix keeps at least its last token as suffix (its verdict is
    read there), and all its tokens after the first one that differs from the full rendering."""
    full_ids = list(full_ids)
    commons = [min(common_length(ids, full_ids), len(ids) - 1) for ids in ids_per_prefix]
    suffixes = [[] if list(ids) == full_ids else list(ids[c:]) for ids, c in zip(ids_per_prefix, commons)]
    return Plan(example, full_ids, suffixes, commons, list(ids_per_prefix))


def head_length(plans: Sequence[Plan]) -> int:
    """Tokens that every prefix of every example starts with (the template head): cached once."""
    first = plans[0].full
    return min(min(common_length(first, p.full), min(p.commons)) for p in plans)


# Length buckets (one compiled shape per bucket): naive rows, shared_kv's example batches (by the
# length after the template head), prefill rows, the cache part a suffix call attends to, and
# suffix rows (their length is the template tail plus a token or two).
NAIVE_STEP, BATCH_STEP, PREFILL_STEP, CACHE_STEP, SUFFIX_STEP = 64, 16, 32, 64, 8


def bucket(n: int, step: int = 64) -> int:
    """Round up to a multiple of `step` up to 512, then to 1/4 of the next power of two."""
    return bucket_length(n, step, per_octave=2, linear_up_to=512)


def groups(plan: Plan, width: int) -> list[list[int]]:
    """Split an example's suffixes into consecutive groups of at most `width` tokens (one row each)."""
    out, used = [[]], 0
    for k, suffix in enumerate(plan.suffixes):
        if not suffix:
            continue
        if out[-1] and used + len(suffix) > width:
            out.append([])
            used = 0
        out[-1].append(k)
        used += len(suffix)
    return [g for g in out if g]


def length_batches(lengths: Sequence[int], token_budget: int, multiple: int, step: int):
    """Greedy batches of length-sorted items: (indices, bucketed length, rows). Rows are a power of
    two (and a multiple of the device count) and lengths bucketed, so few shapes get compiled."""
    batch, length = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        grown = bucket(lengths[i], step)
        if batch and max(multiple, next_pow2(len(batch) + 1)) * grown > token_budget:
            yield batch, length, max(multiple, next_pow2(len(batch)))
            batch = []
        batch.append(i)
        length = grown
    if batch:
        yield batch, length, max(multiple, next_pow2(len(batch)))


def suffix_rows(batch: list[Plan], width: int) -> list[tuple[int, list[int]]]:
    """(cache row, suffix indices) of every suffix row of a batch, ordered by their length (bucketed)
    and then by how many cached slots they see, so that each call is no wider and attends to no
    more of the cache than its rows need."""
    rows = [(b, g) for b, plan in enumerate(batch) for g in groups(plan, width)]
    return sorted(rows, key=lambda r: (bucket(row_length(batch, r), SUFFIX_STEP), visible_slots(batch, [r])))


def row_length(batch: list[Plan], row) -> int:
    b, ks = row
    return sum(len(batch[b].suffixes[k]) for k in ks)


def visible_slots(batch: list[Plan], rows) -> int:
    """Cached slots the given rows see at most (each suffix sees its common tokens)."""
    return max(batch[b].commons[k] for b, ks in rows for k in ks)


def row_arrays(batch, rows, visible: int, width: int, size: int):
    """Inputs of one suffix call: each row holds suffixes of one example side by side, after the
    first `visible` slots of its example's cache row."""
    reads = next_pow2(max(len(ks) for _, ks in rows))
    a = dict(
        tokens=np.zeros((size, width), np.int32),
        positions=np.zeros((size, width), np.int32),
        limit=np.zeros((size, width), np.int32),  # query sees cached slots < limit
        start=np.full((size, width), visible + width, np.int32),  # ... and new slots from start on
        reads=np.zeros((size, reads), np.int32),
        cache_rows=np.zeros(size, np.int32),
    )
    owners = []
    for r, (b, ks) in enumerate(rows):
        plan, offset = batch[b], 0
        a["cache_rows"][r] = b
        for j, k in enumerate(ks):
            suffix, common = plan.suffixes[k], plan.commons[k]
            sl = slice(offset, offset + len(suffix))
            a["tokens"][r, sl] = suffix
            a["positions"][r, sl] = np.arange(common, common + len(suffix))
            a["limit"][r, sl] = common
            a["start"][r, sl] = visible + offset
            a["reads"][r, j] = offset + len(suffix) - 1
            owners.append((plan.example, k, (r, j), plan.seen[k]))
            offset += len(suffix)
    return a, owners


def rows_per_call(width: int, cached: int, token_budget: int, multiple: int, rows: int) -> int:
    """Suffix rows per call: `token_budget` new tokens, attention scores within 256 x the budget."""
    per_call = min(token_budget // width, 256 * token_budget // (width * (cached + width)))
    per_call = max(multiple, 2 ** int(math.log2(max(1, per_call))))
    return min(per_call, max(multiple, next_pow2(rows)))


def prefill_chunks(lengths: Sequence[int], first: int, rows: int, floor: int) -> list[tuple[int, int]]:
    """(first row, rows) of the prefill calls for length-sorted rows [first, first + rows): a chunk
    is split in halves (recursively) where that saves a tenth of its padded tokens, so short rows
    are not padded to the longest, yet a batch of similar lengths stays one call (one shape)."""
    padded = lambda chunks: sum(n * bucket(max(lengths[a : a + n], default=1), PREFILL_STEP) for a, n in chunks)
    whole, half = [(first, rows)], rows // 2
    if half < floor or half % floor:
        return whole
    split = prefill_chunks(lengths, first, half, floor) + prefill_chunks(lengths, first + half, half, floor)
    return split if padded(split) <= 0.9 * padded(whole) else whole


# The bound on the programs a run compiles, per guardrail. Every shape is made of bucketed lengths
# (`bucket`, steps NAIVE_STEP ... SUFFIX_STEP) and of row counts that fit the token budget, so it
# follows from the shortest and longest lengths alone, never from how many examples there are or
# how their lengths spread. T: the token budget, m: the devices a batch is split over,
# rows(t) = |{m} u {2^k > m : 2^k <= T / t}|, B_s: the buckets (step s) from the shortest to the
# longest length of a kind. It is a worst case: a run compiles only the shapes it meets.


def _row_counts(row_tokens: int, token_budget: int, multiple: int) -> int:
    """How many row counts a call of `row_tokens`-token rows can have: `multiple`, and the powers
    of two above it that fit the budget (or the next one, if `multiple` is not a power of two)."""
    most = max(token_budget // max(row_tokens, 1), next_pow2(multiple))
    return 1 + sum(multiple < 1 << k <= most for k in range(most.bit_length()))


def _bucket_sizes(lengths: Sequence[int], step: int) -> list[int]:
    """The buckets (`bucket`) of every length from the shortest of `lengths` to the longest."""
    sizes, n, longest = [], max(min(lengths, default=1), 1), max(lengths, default=0)
    while n <= longest:
        sizes.append(bucket(n, step))
        n = sizes[-1] + 1
    return sizes


def naive_bound(lengths: Sequence[int], token_budget: int, multiple: int) -> int:
    """sum over l in B_64(prefix renderings) of rows(l)."""
    return sum(_row_counts(n, token_budget, multiple) for n in _bucket_sizes(lengths, NAIVE_STEP))


def shared_bound(plans: Sequence[Plan], token_budget: int, multiple: int) -> int:
    """With H the template head, P = B_32(full renderings after H), r(l) = rows(l - 16) (a prefill
    chunk's rows fit its batch's B_16 length), W = B_8(suffixes) and C = B_64(H .. longest
    rendering) u (H + P) the cache cuts a suffix call reads:
        1 (head) + sum_{l in P} r(l) (prefill) + sum_{l in P} r(l) sum_{l' in P, l' <= l} r(l') (place)
        + sum_{l in P} r(l) |C <= H + l| sum_{w in W} rows(w) (take)
        + |C| sum_{w in W} rows(w) (1 + log2 next_pow2(w / shortest suffix)) (suffix)."""
    if not plans:
        return 0
    rows = lambda n: _row_counts(n, token_budget, multiple)
    head = head_length(plans)
    prefill = _bucket_sizes([len(p.full) - head for p in plans], PREFILL_STEP)
    r = {n: rows(n - (PREFILL_STEP - BATCH_STEP)) for n in prefill}
    suffixes = [len(s) for p in plans for s in p.suffixes if s]
    widths = _bucket_sizes(suffixes, SUFFIX_STEP)
    cuts = set(_bucket_sizes([head, max(len(p.full) for p in plans) - 1], CACHE_STEP)) | {head + n for n in prefill}
    place = sum(r[n] * sum(r[m] for m in prefill if m <= n) for n in prefill)
    take = sum(r[n] * sum(c <= head + n for c in cuts) for n in prefill) * sum(rows(w) for w in widths)
    reads = lambda w: next_pow2(w // min(suffixes)).bit_length()  # suffixes side by side in a row: 1, 2, 4, ...
    suffix = len(cuts) * sum(rows(w) * reads(w) for w in widths)
    return 1 + sum(r.values()) + place + take + suffix
