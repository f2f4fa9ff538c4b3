"""STAR's device work: the jitted functions a scoring run calls, and the loops that feed them the
rows `dss.star_plan` packs.

Device functions take the guardrail split into (graphdef, state): a plain jax.jit call costs
microseconds of host time, where nnx.jit re-walks the module graph on every call. Every loop
yields (device logits, owners), owners being (example, prefix, index into the logits, the
prefix's tokens); `one_behind` fetches each call's logits only after the next call is dispatched.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import dss.models
from dss import sharding, star_plan
from dss.buckets import next_pow2
from dss.star_plan import BATCH_STEP, CACHE_STEP, NAIVE_STEP, PREFILL_STEP, SUFFIX_STEP, bucket

_jit = functools.partial(jax.jit, static_argnames=("graphdef", "full_vocab"))


def _verdict(model, hidden, verdict_ids, full_vocab):
    logits = model.logits(hidden)
    return logits if full_vocab else logits[..., verdict_ids]


@_jit
def last_logits(graphdef, state, tokens, lengths, verdict_ids, full_vocab=False):
    """Naive path: a plain causal pass per right-padded prefix, logits at its last token."""
    model = nnx.merge(graphdef, state)
    hidden, _ = model.hidden_states(tokens)
    return _verdict(model, jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1), verdict_ids, full_vocab)[:, 0]


@functools.partial(jax.jit, static_argnames="graphdef")
def head_cache(graphdef, state, head):
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
def prefill(graphdef, state, head, rest, last, verdict_ids, full_vocab=False):
    """Cache [B, H + rest] of each row's full rendering: every row continues the head's cache
    row; and the verdict logits at each row's `last` token."""
    model = nnx.merge(graphdef, state)
    head_slots = head.positions.shape[1]
    every_row_continues_head = jnp.zeros(rest.shape[0], jnp.int32)
    hidden, cache = model.hidden_states(rest, cache=_pad_slots(head, head_slots + rest.shape[1]), cache_index=head_slots,
                                        cache_rows=every_row_continues_head)
    return cache, _verdict(model, jnp.take_along_axis(hidden, last[:, None, None], axis=1), verdict_ids, full_vocab)[:, 0]


@jax.jit
def place(cache, part, first_row):
    """The batch cache with a prefill chunk's rows written from `first_row` on."""
    return dss.models.KVCache(*(jax.lax.dynamic_update_slice_in_dim(whole, p, first_row, axis)
                                for whole, p, axis in zip(cache, part, (1, 1, 0))))


@functools.partial(jax.jit, static_argnames=("visible", "width"))
def take(cache, cache_rows, visible, width):
    """The cache rows one suffix call continues, cut to their first `visible` slots, with `width`
    free slots after them. A separate (cheap to compile) step, so that the model call's shape
    depends only on the call, not on the batch cache it reads from."""
    cut = lambda x, axis: jax.lax.slice_in_dim(jnp.take(x, cache_rows, axis=axis), 0, visible, axis=axis + 1)
    return _pad_slots(cache.map_rows(cut), visible + width)


@_jit
def suffix_logits(graphdef, state, cache, tokens, positions, limit, start, reads, verdict_ids, full_vocab=False):
    """Verdict logits of suffixes appended after their example's cached tokens (`take`), each
    seeing only its own part of the cache and its own earlier tokens."""
    model = nnx.merge(graphdef, state)
    width = tokens.shape[1]
    visible = cache.positions.shape[1] - width
    slots = jnp.arange(visible + width)[None, None, :]
    query = visible + jnp.arange(width)[None, :, None]
    mask = (slots < limit[:, :, None]) | ((slots >= start[:, :, None]) & (slots <= query))
    hidden, _ = model.hidden_states(tokens, positions, mask, cache=cache, cache_index=visible)
    return _verdict(model, jnp.take_along_axis(hidden, reads[:, :, None], axis=1), verdict_ids, full_vocab)


# Every function that compiles a program per shape; a run's count of them is its report.
PROGRAMS = (last_logits, head_cache, prefill, place, take, suffix_logits)


def naive_calls(graphdef, state, items, logits_args, token_budget, multiple):
    """One plain forward per prefix (items: (example, prefix, token ids)), similar lengths batched."""
    for idx, length, size in star_plan.length_batches([len(ids) for _, _, ids in items], token_budget, multiple, NAIVE_STEP):
        tokens, lengths = np.zeros((size, length), np.int32), np.ones(size, np.int32)
        for b, i in enumerate(idx):
            ids = items[i][2]
            tokens[b, : len(ids)], lengths[b] = ids, len(ids)
        logits = last_logits(graphdef, state, sharding.place(tokens, None), sharding.place(lengths, None), **logits_args)
        yield logits, [(items[i][0], items[i][1], (b,), items[i][2]) for b, i in enumerate(idx)]


def _batch_cache(graphdef, state, plans, head, size: int, multiple: int, logits_args):
    """Cache [size, head + longest rest] of a batch's full renderings (plans sorted by length),
    prefilled in chunks of similar length, and the verdict logits of each full rendering [size, ...]."""
    head_slots = head.positions.shape[1]
    rests = [len(p.full) - head_slots for p in plans]
    chunks = [(a, n) for a, n in star_plan.prefill_chunks(rests, 0, size, max(multiple, 4)) if a < len(plans)]
    lengths = [bucket(max(rests[a : a + n]), PREFILL_STEP) for a, n in chunks]
    cache = nnx.merge(graphdef, state).init_cache(size, head_slots + max(lengths))
    logits = []
    for (first, rows), length in zip(chunks, lengths):
        tokens, last = np.zeros((rows, length), np.int32), np.zeros(rows, np.int32)
        for b, p in enumerate(plans[first : first + rows]):
            tokens[b, : len(p.full) - head_slots] = p.full[head_slots:]
            last[b] = len(p.full) - head_slots - 1
        part, part_logits = prefill(graphdef, state, head, sharding.place(tokens, None), sharding.place(last, None), **logits_args)
        cache = place(cache, part, first)
        logits.append(part_logits)
    return cache, jnp.concatenate(logits)


def shared_calls(graphdef, state, plans, logits_args, token_budget, multiple):
    """Per batch of examples: cache the full renderings once (the template head once for all),
    then score rows of suffixes against it, each call seeing only the cached slots its rows need."""
    if not plans:
        return
    head = star_plan.head_length(plans)
    head_kv = (head_cache(graphdef, state, sharding.place(np.asarray([plans[0].full[:head]], np.int32), None)) if head
               else nnx.merge(graphdef, state).init_cache(1, 0))
    for idx, rest, size in star_plan.length_batches([len(p.full) - head for p in plans], token_budget, multiple, BATCH_STEP):
        batch = [plans[i] for i in idx]
        cache, full_logits = _batch_cache(graphdef, state, batch, head_kv, size, multiple, logits_args)
        yield full_logits, [(p.example, k, (b,), p.seen[k])
                            for b, p in enumerate(batch) for k, suffix in enumerate(p.suffixes) if not suffix]
        longest = max((len(s) for p in batch for s in p.suffixes), default=0)
        rows = star_plan.suffix_rows(batch, bucket(longest, SUFFIX_STEP))
        per_call = star_plan.rows_per_call(bucket(longest, SUFFIX_STEP), head + rest, token_budget, multiple, len(rows))
        for i in range(0, len(rows), per_call):
            call_rows = rows[i : i + per_call]
            visible = min(bucket(star_plan.visible_slots(batch, call_rows), CACHE_STEP), cache.positions.shape[1])
            width = bucket(max(star_plan.row_length(batch, r) for r in call_rows), SUFFIX_STEP)
            n_rows = max(multiple, per_call // 4, next_pow2(len(call_rows)))  # few distinct shapes for the last call
            arrays, owners = star_plan.row_arrays(batch, call_rows, visible, width, n_rows)
            own_cache = take(cache, arrays.pop("cache_rows"), visible=visible, width=width)
            yield suffix_logits(graphdef, state, own_cache, **logits_args, **arrays), owners


def one_behind(calls):
    """(host logits, owners) of each device call, fetched only after the next call is dispatched,
    so that the host prepares call i + 1 while the device runs call i."""
    pending = None
    for call in calls:
        if pending is not None:
            yield sharding.to_host(pending[0]), pending[1]
        pending = call
    if pending is not None:
        yield sharding.to_host(pending[0]), pending[1]
