"""STAR: the guardrail's P(safe) of every cumulative prefix of a response.

`score(guard, examples)` cuts each response (`dss.segments`), renders every prefix with the
guardrail's own template (`dss.guardrails`) and reads the two verdict logits after it.

Two packings of the same forward kernel:
- `naive`: one row per prefix, a plain causal pass over its own tokens (the reference).
- `shared_kv`: the template head (the text before the prompt, the same for every example) is
  run once; each example's full rendering is run once on top of it, and its verdict is the
  last prefix's (the whole response). Every other prefix then runs only its "suffix": its own
  tokens after the longest token prefix it shares with the full rendering (the template tail
  plus, where byte-level BPE merges across the cut (".\n\n"), the tokens that differ). A suffix
  attends to the cached slots it has in common and to its own earlier tokens, at its own
  positions, so every prefix is scored on exactly the tokens its own rendering tokenises to.

Suffix rows are sorted by how much of the cache they see and batched so that each call attends
to no more of it than it needs; lengths are bucketed, so the programs compiled are bounded by
the buckets, not the data (`score(..., report=True)` counts them); only the verdict positions are
unembedded; each call is dispatched before the previous one's logits are fetched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import dss.hub
import dss.models
from dss import cache, compiles, distributed, sharding, templating
from dss.buckets import bucket_length, next_pow2
from dss.generate import process_logits
from dss.guardrails import GuardrailAdapter
from dss.segments import Trajectory, token_cuts, token_weights, word_cuts

log = logging.getLogger("dss.star")

__all__ = ["Guardrail", "Trajectory", "score", "token_weights", "HF_SAMPLING"]

# The sampling settings the reference implementation generated verdicts with.
HF_SAMPLING = dict(temperature=0.2, top_k=50, top_p=0.9, repetition_penalty=1.2)


@dataclasses.dataclass
class Guardrail:
    """A guardrail checkpoint: its template/verdict recipe (`adapter`) and its weights (`model`)."""

    adapter: GuardrailAdapter
    model: dss.models.Transformer
    path: str
    mesh: jax.sharding.Mesh | None = None  # weights sharded over it (8B guardrails), batches split over data x fsdp

    @classmethod
    def from_pretrained(cls, path, kind: str = "auto", risk: str | None = None, dtype="float32", mesh=None,
                        template_vars=None):
        """`template_vars`: the run's fixed template variables (dss.templating), given to every rendering."""
        local = dss.hub.resolve_path(path)
        adapter = GuardrailAdapter.from_pretrained(local, kind=kind, risk=risk, template_vars=template_vars)
        adapter.name = os.fspath(path)
        model = dss.models.load_pretrained(local, dtype=dtype, mesh=mesh)
        if max(adapter.verdict_token_ids) >= model.config.vocab_size:
            raise ValueError(f"guardrail {path!r}: verdict token ids {adapter.verdict_token_ids} exceed the model vocabulary")
        return cls(adapter, model, os.fspath(path), mesh)


@dataclasses.dataclass
class _Plan:
    """One example's work: the full rendering to cache once, and each prefix's own remaining tokens."""

    example: int
    full: list[int]  # the full rendering, cached once
    suffixes: list[list[int]]  # prefix k's tokens after the first commons[k]; [] = read off the cache's last token
    commons: list[int]  # how many shared tokens prefix k really has in common with the full rendering
    seen: list[list[int]]  # each prefix's whole token list (for hf_sampling's repetition penalty)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _shared_plan(ids_per_prefix, full_ids, example: int) -> _Plan:
    """A prefix that tokenizes to the full rendering (the whole response) is read off the cache's
    last position; every other prefix keeps at least its last token as suffix (its verdict is
    read there), and all its tokens after the first one that differs from the full rendering."""
    full_ids = list(full_ids)
    commons = [min(_common_length(ids, full_ids), len(ids) - 1) for ids in ids_per_prefix]
    suffixes = [[] if list(ids) == full_ids else list(ids[c:]) for ids, c in zip(ids_per_prefix, commons)]
    return _Plan(example, full_ids, suffixes, commons, list(ids_per_prefix))


# Length buckets (one compiled shape per bucket): naive rows, shared_kv's example batches (by the
# length after the template head), prefill rows, the cache part a suffix call attends to, and
# suffix rows (their length is the template tail plus a token or two).
NAIVE_STEP, BATCH_STEP, PREFILL_STEP, CACHE_STEP, SUFFIX_STEP = 64, 16, 32, 64, 8


def _bucket(n: int, step: int = 64) -> int:
    """Round up to a multiple of `step` up to 512, then to 1/4 of the next power of two."""
    return bucket_length(n, step, per_octave=2, linear_up_to=512)


def _groups(plan: _Plan, width: int) -> list[list[int]]:
    """Split an example's suffixes into consecutive groups of at most `width` tokens (one row each)."""
    groups, used = [[]], 0
    for k, suffix in enumerate(plan.suffixes):
        if not suffix:
            continue
        if groups[-1] and used + len(suffix) > width:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += len(suffix)
    return [g for g in groups if g]


def _length_batches(lengths: Sequence[int], token_budget: int, multiple: int, step: int):
    """Greedy batches of length-sorted items: (indices, bucketed length, rows). Rows are a power of
    two (and a multiple of the device count) and lengths bucketed, so few shapes get compiled."""
    batch, length = [], 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        grown = _bucket(lengths[i], step)
        if batch and max(multiple, next_pow2(len(batch) + 1)) * grown > token_budget:
            yield batch, length, max(multiple, next_pow2(len(batch)))
            batch = []
        batch.append(i)
        length = grown
    if batch:
        yield batch, length, max(multiple, next_pow2(len(batch)))


def _suffix_rows(batch: list[_Plan], width: int) -> list[tuple[int, list[int]]]:
    """(cache row, suffix indices) of every suffix row of a batch, ordered by their length (bucketed)
    and then by how many cached slots they see, so that each call is no wider and attends to no
    more of the cache than its rows need."""
    rows = [(b, g) for b, plan in enumerate(batch) for g in _groups(plan, width)]
    return sorted(rows, key=lambda r: (_bucket(_row_length(batch, r), SUFFIX_STEP), _visible(batch, [r])))


def _row_length(batch: list[_Plan], row) -> int:
    b, ks = row
    return sum(len(batch[b].suffixes[k]) for k in ks)


def _visible(batch: list[_Plan], rows) -> int:
    """Cached slots the given rows see at most (each suffix sees its common tokens)."""
    return max(batch[b].commons[k] for b, ks in rows for k in ks)


def _row_arrays(batch, rows, visible: int, width: int, size: int):
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


# Device functions take the guardrail split into (graphdef, state): a plain jax.jit call costs
# microseconds of host time, where nnx.jit re-walks the module graph on every call.
_jit = functools.partial(jax.jit, static_argnames=("graphdef", "full_vocab"))


def _verdict(model, hidden, verdict_ids, full_vocab):
    logits = model.logits(hidden)
    return logits if full_vocab else logits[..., verdict_ids]


@_jit
def _last_logits(graphdef, state, tokens, lengths, verdict_ids, full_vocab=False):
    """Naive path: a plain causal pass per right-padded prefix, logits at its last token."""
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden_states(tokens)
    return _verdict(model, jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1), verdict_ids, full_vocab)[:, 0]


@functools.partial(jax.jit, static_argnames="graphdef")
def _head_cache(graphdef, state, head):
    """Cache [1, H] of the template head: the tokens every rendering starts with."""
    model = nnx.merge(graphdef, state)
    _, cache = model.hidden_states(head, cache=model.init_cache(1, head.shape[1]), cache_index=0)
    return cache


def _pad_slots(cache, slots: int):
    """The cache with empty slots (position -1) appended up to `slots`."""
    def pad(x, batch_axis):
        widths = [(0, 0)] * x.ndim
        widths[batch_axis + 1] = (0, slots - x.shape[batch_axis + 1])
        return jnp.pad(x, widths, constant_values=-1 if x is cache.positions else 0)

    return cache.map_rows(pad)


@_jit
def _prefill(graphdef, state, head, rest, last, verdict_ids, full_vocab=False):
    """Cache [B, H + rest] of each row's full rendering: every row continues the head's cache
    row; and the verdict logits at each row's `last` token."""
    model = nnx.merge(graphdef, state)
    head_slots = head.positions.shape[1]
    every_row_continues_head = jnp.zeros(rest.shape[0], jnp.int32)
    hidden, cache = model.hidden_states(rest, cache=_pad_slots(head, head_slots + rest.shape[1]), cache_index=head_slots,
                                        cache_rows=every_row_continues_head)
    return cache, _verdict(model, jnp.take_along_axis(hidden, last[:, None, None], axis=1), verdict_ids, full_vocab)[:, 0]


@jax.jit
def _place(cache, part, first_row):
    """The batch cache with a prefill chunk's rows written from `first_row` on."""
    return dss.models.KVCache(*(jax.lax.dynamic_update_slice_in_dim(whole, p, first_row, axis)
                                for whole, p, axis in zip(cache, part, (1, 1, 0))))


@functools.partial(jax.jit, static_argnames=("visible", "width"))
def _take(cache, cache_rows, visible, width):
    """The cache rows one suffix call continues, cut to their first `visible` slots, with `width`
    free slots after them. A separate (cheap to compile) step, so that the model call's shape
    depends only on the call, not on the batch cache it reads from."""
    cut = lambda x, axis: jax.lax.slice_in_dim(jnp.take(x, cache_rows, axis=axis), 0, visible, axis=axis + 1)
    return _pad_slots(cache.map_rows(cut), visible + width)


@_jit
def _suffix_logits(graphdef, state, cache, tokens, positions, limit, start, reads, verdict_ids, full_vocab=False):
    """Verdict logits of suffixes appended after their example's cached tokens (`_take`), each
    seeing only its own part of the cache and its own earlier tokens."""
    model = nnx.merge(graphdef, state)
    width = tokens.shape[1]
    visible = cache.positions.shape[1] - width
    slots = jnp.arange(visible + width)[None, None, :]
    query = visible + jnp.arange(width)[None, :, None]
    mask = (slots < limit[:, :, None]) | ((slots >= start[:, :, None]) & (slots <= query))
    hidden, _ = model.hidden_states(tokens, positions, mask, cache=cache, cache_index=visible)
    return _verdict(model, jnp.take_along_axis(hidden, reads[:, :, None], axis=1), verdict_ids, full_vocab)


def _safe_prob(guard: Guardrail, logits: np.ndarray, seen: list[int], score_mode: str) -> float:
    safe, unsafe = guard.adapter.verdict_token_ids
    if score_mode == "hf_sampling":
        seen_mask = np.zeros(logits.shape[-1], bool)
        seen_mask[seen] = True
        logits = np.asarray(process_logits(logits, seen_mask, **HF_SAMPLING))
        pair = logits[[safe, unsafe]]
        if np.isneginf(pair).all():  # neither verdict word survives top-k/top-p: no verdict
            return float("nan")
        return float(np.exp(pair[0] - np.logaddexp(pair[0], pair[1])))
    return float(1.0 / (1.0 + np.exp(logits[1] - logits[0])))


def _naive_calls(graphdef, state, items, logits_args, token_budget, multiple):
    """One plain forward per prefix (items: (example, prefix, token ids)), similar lengths batched.
    Yields (device logits, owners) like `_shared_calls`."""
    for idx, length, size in _length_batches([len(ids) for _, _, ids in items], token_budget, multiple, NAIVE_STEP):
        tokens, lengths = np.zeros((size, length), np.int32), np.ones(size, np.int32)
        for b, i in enumerate(idx):
            ids = items[i][2]
            tokens[b, : len(ids)], lengths[b] = ids, len(ids)
        logits = _last_logits(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths), **logits_args)
        yield logits, [(items[i][0], items[i][1], (b,), items[i][2]) for b, i in enumerate(idx)]


def _one_behind(calls):
    """(host logits, owners) of each device call, fetched only after the next call is dispatched,
    so that the host prepares call i + 1 while the device runs call i."""
    pending = None
    for call in calls:
        if pending is not None:
            yield np.asarray(jax.device_get(pending[0])), pending[1]
        pending = call
    if pending is not None:
        yield np.asarray(jax.device_get(pending[0])), pending[1]


def _head_length(plans: Sequence[_Plan]) -> int:
    """Tokens that every prefix of every example starts with (the template head): cached once."""
    first = plans[0].full
    return min(min(_common_length(first, p.full), min(p.commons)) for p in plans)


def _rows_per_call(width: int, cached: int, token_budget: int, multiple: int, rows: int) -> int:
    """Suffix rows per call: `token_budget` new tokens, attention scores within 256 x the budget."""
    per_call = min(token_budget // width, 256 * token_budget // (width * (cached + width)))
    per_call = max(multiple, 2 ** int(math.log2(max(1, per_call))))
    return min(per_call, max(multiple, next_pow2(rows)))


def _prefill_chunks(lengths: Sequence[int], first: int, rows: int, floor: int) -> list[tuple[int, int]]:
    """(first row, rows) of the prefill calls for length-sorted rows [first, first + rows): a chunk
    is split in halves (recursively) where that saves a tenth of its padded tokens, so short rows
    are not padded to the longest, yet a batch of similar lengths stays one call (one shape)."""
    padded = lambda chunks: sum(n * _bucket(max(lengths[a : a + n], default=1), PREFILL_STEP) for a, n in chunks)
    whole, half = [(first, rows)], rows // 2
    if half < floor or half % floor:
        return whole
    split = _prefill_chunks(lengths, first, half, floor) + _prefill_chunks(lengths, first + half, half, floor)
    return split if padded(split) <= 0.9 * padded(whole) else whole


def _batch_cache(graphdef, state, plans: list[_Plan], head, size: int, multiple: int, logits_args):
    """Cache [size, head + longest rest] of a batch's full renderings (plans sorted by length),
    prefilled in chunks of similar length, and the verdict logits of each full rendering [size, ...]."""
    head_slots = head.positions.shape[1]
    rests = [len(p.full) - head_slots for p in plans]
    chunks = [(a, n) for a, n in _prefill_chunks(rests, 0, size, max(multiple, 4)) if a < len(plans)]
    lengths = [_bucket(max(rests[a : a + n]), PREFILL_STEP) for a, n in chunks]
    cache = nnx.merge(graphdef, state).init_cache(size, head_slots + max(lengths))
    logits = []
    for (first, rows), length in zip(chunks, lengths):
        tokens, last = np.zeros((rows, length), np.int32), np.zeros(rows, np.int32)
        for b, plan in enumerate(plans[first : first + rows]):
            tokens[b, : len(plan.full) - head_slots] = plan.full[head_slots:]
            last[b] = len(plan.full) - head_slots - 1
        part, part_logits = _prefill(graphdef, state, head, jnp.asarray(tokens), jnp.asarray(last), **logits_args)
        cache = _place(cache, part, first)
        logits.append(part_logits)
    return cache, jnp.concatenate(logits)


def _shared_calls(graphdef, state, plans, logits_args, token_budget, multiple):
    """Per batch of examples: cache the full renderings once (the template head once for all),
    then score rows of suffixes against it, each call seeing only the cached slots its rows need.
    Yields (device logits, owners): owners are (example, prefix, index into logits, its tokens)."""
    if not plans:
        return
    head = _head_length(plans)
    head_cache = (_head_cache(graphdef, state, jnp.asarray([plans[0].full[:head]], jnp.int32)) if head
                  else nnx.merge(graphdef, state).init_cache(1, 0))
    for idx, rest, size in _length_batches([len(p.full) - head for p in plans], token_budget, multiple, BATCH_STEP):
        batch = [plans[i] for i in idx]
        cache, full_logits = _batch_cache(graphdef, state, batch, head_cache, size, multiple, logits_args)
        yield full_logits, [(plan.example, k, (b,), plan.seen[k])
                            for b, plan in enumerate(batch) for k, suffix in enumerate(plan.suffixes) if not suffix]
        longest = max((len(s) for p in batch for s in p.suffixes), default=0)
        rows = _suffix_rows(batch, _bucket(longest, SUFFIX_STEP))
        per_call = _rows_per_call(_bucket(longest, SUFFIX_STEP), head + rest, token_budget, multiple, len(rows))
        for i in range(0, len(rows), per_call):
            call_rows = rows[i : i + per_call]
            visible = min(_bucket(_visible(batch, call_rows), CACHE_STEP), cache.positions.shape[1])
            width = _bucket(max(_row_length(batch, r) for r in call_rows), SUFFIX_STEP)
            n_rows = max(multiple, per_call // 4, next_pow2(len(call_rows)))  # few distinct shapes for the last call
            arrays, owners = _row_arrays(batch, call_rows, visible, width, n_rows)
            own_cache = _take(cache, arrays.pop("cache_rows"), visible=visible, width=width)
            yield _suffix_logits(graphdef, state, own_cache, **logits_args, **arrays), owners


# Every function that compiles a program per shape; a run's count of them is its report.
_PROGRAMS = (_last_logits, _head_cache, _prefill, _place, _take, _suffix_logits)

# The bound on the programs a run compiles, per guardrail. Every shape is made of bucketed lengths
# (`_bucket`, steps NAIVE_STEP ... SUFFIX_STEP) and of row counts that fit the token budget, so it
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
    """The buckets (`_bucket`) of every length from the shortest of `lengths` to the longest."""
    sizes, n, longest = [], max(min(lengths, default=1), 1), max(lengths, default=0)
    while n <= longest:
        sizes.append(_bucket(n, step))
        n = sizes[-1] + 1
    return sizes


def _naive_bound(lengths: Sequence[int], token_budget: int, multiple: int) -> int:
    """sum over l in B_64(prefix renderings) of rows(l)."""
    return sum(_row_counts(n, token_budget, multiple) for n in _bucket_sizes(lengths, NAIVE_STEP))


def _shared_bound(plans: Sequence[_Plan], token_budget: int, multiple: int) -> int:
    """With H the template head, P = B_32(full renderings after H), r(l) = rows(l - 16) (a prefill
    chunk's rows fit its batch's B_16 length), W = B_8(suffixes) and C = B_64(H .. longest
    rendering) u (H + P) the cache cuts a suffix call reads:
        1 (head) + sum_{l in P} r(l) (prefill) + sum_{l in P} r(l) sum_{l' in P, l' <= l} r(l') (place)
        + sum_{l in P} r(l) |C <= H + l| sum_{w in W} rows(w) (take)
        + |C| sum_{w in W} rows(w) (1 + log2 next_pow2(w / shortest suffix)) (suffix)."""
    if not plans:
        return 0
    rows = lambda n: _row_counts(n, token_budget, multiple)
    head = _head_length(plans)
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


def _score_one_guard(guard, examples, cuts, method, score_mode, token_budget, progress):
    adapter = guard.adapter
    flat = adapter.encode_many([(ex["prompt"], ex["response"][:c]) for ex, ex_cuts in zip(examples, cuts) for c in ex_cuts])
    bounds = np.cumsum([0] + [len(c) for c in cuts])
    ids = [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    probs = [np.full(len(c), np.nan, np.float32) for c in cuts]
    multiple = 1 if guard.mesh is None else guard.mesh.shape["data"] * guard.mesh.shape["fsdp"]
    logits_args = dict(verdict_ids=jnp.asarray(adapter.verdict_token_ids), full_vocab=score_mode == "hf_sampling")
    graphdef, state = nnx.split(guard.model)
    if method == "naive":
        items = [(e, k, p) for e, per_example in enumerate(ids) for k, p in enumerate(per_example)]
        calls = _naive_calls(graphdef, state, items, logits_args, token_budget, multiple)
        bound = _naive_bound([len(p) for _, _, p in items], token_budget, multiple)
    else:
        full = adapter.encode_many([(ex["prompt"], ex["response"]) for ex in examples])
        plans = [_shared_plan(p, f, e) for e, (p, f) in enumerate(zip(ids, full))]
        calls = _shared_calls(graphdef, state, plans, logits_args, token_budget, multiple)
        bound = _shared_bound(plans, token_budget, multiple)
    # progress in examples (each prefix counts 1/K of its example), so the rate reads examples/s
    bar = tqdm(total=len(examples), unit="example", disable=not progress, desc=f"STAR {method}",
               bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
    with bar, jax.set_mesh(guard.mesh) if guard.mesh is not None else contextlib.nullcontext():
        for logits, owners in _one_behind(calls):
            for e, k, at, seen in owners:
                probs[e][k] = _safe_prob(guard, logits[at], seen, score_mode)
            bar.update(sum(1 / len(cuts[e]) for e, *_ in owners))
    return probs, bound


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """What one `score` call compiled: a program per shape it met first, at most `bound` (from the
    length buckets: `_naive_bound`, `_shared_bound`), and the seconds tracing and compiling them."""

    examples: int
    programs: int
    bound: int
    seconds: float


def score(guard, examples, chunk_unit: str = "word", chunk_size: int = 5, method: str = "shared_kv",
          score_mode: str = "raw", token_budget: int = 16384, progress: bool = False, report: bool = False):
    """STAR trajectories of `examples` (sequence of {"prompt": str, "response": str}).

    `guard` is a Guardrail or a sequence of them (an ensemble: P(safe) averaged; token chunking
    then follows the first guardrail's tokenizer). `score_mode="raw"`: softmax over the two verdict
    logits; `"hf_sampling"`: the same two logits after HF's repetition penalty 1.2, temperature
    0.2, top-k 50 and top-p 0.9 (`HF_SAMPLING`), i.e. what the reference implementation's sampled
    verdicts were drawn from; NaN where neither verdict token survives the filters.
    Returns the trajectories, and with `report=True` also the run's `CompileReport` (always logged).
    """
    guards = [guard] if isinstance(guard, Guardrail) else list(guard)
    if not guards:
        raise ValueError("score: no guardrail given")
    if method not in ("shared_kv", "naive"):
        raise ValueError(f"score: method must be 'shared_kv' or 'naive', got {method!r}")
    if score_mode not in ("raw", "hf_sampling"):
        raise ValueError(f"score: score_mode must be 'raw' or 'hf_sampling', got {score_mode!r}")
    for i, ex in enumerate(examples):
        for key in ("prompt", "response"):
            if not isinstance(ex.get(key) if hasattr(ex, "get") else None, str):
                raise ValueError(f"score: example {i} needs a string {key!r}, got {type(ex.get(key)).__name__ if hasattr(ex, 'get') else type(ex).__name__}")
    if chunk_unit == "word":
        cuts = [word_cuts(ex["response"], chunk_size) for ex in examples]
    elif chunk_unit == "token":
        cuts = [token_cuts(ex["response"], guards[0].adapter.tokenizer, chunk_size) for ex in examples]
    else:
        raise ValueError(f"score: chunk_unit must be 'word' or 'token', got {chunk_unit!r}")
    with compiles.counting(_PROGRAMS) as compiled:
        per_guard = [_score_one_guard(g, examples, cuts, method, score_mode, token_budget, progress) for g in guards]
    run = CompileReport(len(examples), compiled.count, sum(bound for _, bound in per_guard), compiled.seconds)
    log.info("STAR %s: %d examples, %d shapes compiled in %.1f s (bound %d)", method, run.examples, run.programs,
             run.seconds, run.bound)
    trajs = [Trajectory(c, np.mean([probs[i] for probs, _ in per_guard], axis=0)) for i, c in enumerate(cuts)]
    return (trajs, run) if report else trajs


def star_fingerprint(guards: Sequence[Guardrail], examples, chunk_unit: str, chunk_size: int, score_mode: str) -> str:
    """Everything a STAR file depends on: data rows, each guardrail's weights, template and verdict
    recipe, chunking and score mode (not the method: shared_kv and naive give the same numbers)."""
    guard_ids = [
        dict(weights=cache.weights_fingerprint(dss.hub.resolve_path(g.path)), kind=g.adapter.kind,
             template=g.adapter.tokenizer.chat_template, template_vars=g.adapter.template_vars, risk=g.adapter.risk,
             verdict=g.adapter.verdict_token_ids)
        for g in guards
    ]
    rows = [(ex["prompt"], ex["response"]) for ex in examples]
    return cache.fingerprint("star", rows, guard_ids, chunk_unit, chunk_size, score_mode)


def save_trajectories(path, trajs: Sequence[Trajectory], fp: str) -> None:
    lengths = np.array([len(t.char_ends) for t in trajs], np.int64)
    cache.save(path, "star", fp, dict(
        lengths=lengths,
        char_ends=np.concatenate([np.asarray(t.char_ends, np.int64) for t in trajs]) if trajs else np.zeros(0, np.int64),
        safe_prob=np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0, np.float32),
    ))


def load_trajectories(path, fp: str) -> list[Trajectory] | None:
    arrays = cache.load(path, "star", fp)
    if arrays is None:
        return None
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [Trajectory(arrays["char_ends"][a:b].tolist(), arrays["safe_prob"][a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def plot_trajectory(example, traj: Trajectory, out_path, title: str | None = None):
    """The response coloured chunk by chunk by P(safe) (red = unsafe), above the score curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnchoredOffsetbox, HPacker, TextArea, VPacker

    cmap = plt.get_cmap("RdYlGn")
    lines, line, width, start = [], [], 0, 0
    for end, p in zip(traj.char_ends, traj.safe_prob):
        for piece_i, piece in enumerate(example["response"][start:end].split("\n")):
            if piece_i > 0 or width + len(piece) > 95:
                lines.append(line)
                line, width = [], 0
            if piece:
                color = cmap(float(np.nan_to_num(p, nan=0.5)))
                line.append(TextArea(piece, textprops=dict(fontsize=8, family="monospace",
                                                           bbox=dict(facecolor=color, edgecolor="none", pad=1))))
                width += len(piece)
        start = end
    lines.append(line)
    rows = [HPacker(children=l, pad=0, sep=0) for l in lines if l]
    text_height = 0.6 + 0.2 * len(rows)
    fig, (ax_text, ax_curve) = plt.subplots(2, 1, figsize=(10, text_height + 2.2), height_ratios=[text_height, 2.2])
    ax_text.axis("off")
    if rows:
        box = VPacker(children=rows, pad=0, sep=3)
        ax_text.add_artist(AnchoredOffsetbox(loc="upper left", child=box, frameon=False, bbox_to_anchor=(0, 1),
                                             bbox_transform=ax_text.transAxes, borderpad=0))
    ax_text.set_title(title or textwrap.shorten(example["prompt"], 110), fontsize=9, loc="left")
    ax_curve.plot(range(1, len(traj.safe_prob) + 1), traj.safe_prob, marker="o", ms=3)
    ax_curve.set(xlabel="chunk", ylabel="P(safe)", ylim=(-0.05, 1.05))
    ax_curve.axhline(0.5, color="gray", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)


def cached_score(config, examples, workdir, template_vars=None) -> list[Trajectory]:
    """STAR of a config's training examples: reused from the STAR file when it matches, else
    computed and written. A stale default file is replaced; a stale file the user named is refused.
    `template_vars`: the run's fixed template variables (dss.templating)."""
    g, s = config.guardrail, config.star
    mesh = sharding.make_mesh(*g.mesh) if g.mesh else None
    guards = [Guardrail.from_pretrained(p, kind=g.kind, risk=g.risk or None, dtype=g.dtype, mesh=mesh,
                                        template_vars=template_vars) for p in g.paths]
    fp = star_fingerprint(guards, examples, s.chunk_unit, s.chunk_size, s.score_mode)
    path = Path(s.cache) if s.cache else Path(workdir) / "star.npz"
    try:
        trajs = load_trajectories(path, fp)
    except cache.StaleCacheError:
        if s.cache:
            raise
        log.warning("%s is stale (data or guardrail changed): rescoring", path)
        trajs = None
    if trajs is None:
        start = time.time()
        # a guardrail on each host's own device scores that host's share (gathered for all); one
        # sharded over a mesh is a collective, so then every host scores every example with it
        mine = distributed.share(len(examples)) if mesh is None else range(len(examples))
        trajs = score(guards, [examples[i] for i in mine], chunk_unit=s.chunk_unit, chunk_size=s.chunk_size,
                      method=s.method, score_mode=s.score_mode, token_budget=s.token_budget, progress=True)
        if mesh is None:
            trajs = distributed.gather_shares(trajs, len(examples))
        if distributed.is_writer():
            save_trajectories(path, trajs, fp)
        log.info("STAR: scored %d examples in %.1fs -> %s", len(trajs), time.time() - start, path)
    return trajs


def main(config, workdir, plot: int = 0) -> None:
    """Score the training set of a config (the same rows training will use) into its STAR file."""
    import dss.data
    from transformers import AutoTokenizer

    from dss.checks import check_star_config

    distributed.initialize(config)
    check_star_config(config)
    tokenizer = AutoTokenizer.from_pretrained(dss.hub.resolve_path(config.model.path))
    template_vars = templating.run_template_vars(config.template, workdir)
    _, examples, stats = dss.data.build_dataset(config.data, tokenizer, template_vars)
    log.info("data: %s", stats)
    trajs = cached_score(config, examples, workdir, template_vars)
    if not distributed.is_writer():
        return
    out = Path(workdir) / "star_plots"
    for i in range(min(plot, len(trajs))):
        out.mkdir(parents=True, exist_ok=True)
        plot_trajectory(examples[i], trajs[i], out / f"example_{i:04d}.png")
    flat = np.concatenate([t.safe_prob for t in trajs]) if trajs else np.zeros(0)
    print(f"STAR: {len(trajs)} examples, {flat.size} prefixes, mean P(safe) {np.nanmean(flat):.3f}, "
          f"unsafe at the end: {sum(t.safe_prob[-1] < 0.5 for t in trajs)}")


if __name__ == "__main__":
    from absl import flags

    from dss import cli

    flags.DEFINE_integer("plot", 0, "draw the STAR trajectory of the first N examples as PNGs")
    cli.run(lambda config, workdir: main(config, workdir, flags.FLAGS.plot))
