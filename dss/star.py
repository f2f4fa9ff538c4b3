"""STAR: the guardrail's P(safe) of every cumulative prefix of a response.

`score(guard, examples)` cuts each response (`dss.segments`), renders every prefix with the
guardrail's own template (`dss.guardrails`) and reads the two verdict logits after it.

Two packings of the same forward kernel:
- `naive`: one row per prefix, a plain causal pass over its own tokens (the reference).
- `shared_kv`: one row per example. The row holds the longest token prefix that all prefixes'
  renderings share with the full rendering (computed once), followed by each prefix's remaining
  tokens (its "suffix": the tail of its own tokenisation plus the template tail). A tree mask lets
  suffix k see the shared tokens it actually has in common with the full rendering and its own
  earlier tokens, at its own positions. So every prefix is scored on exactly the tokens its own
  rendered string tokenises to, even where byte-level BPE merges across a cut (".\\n\\n").

Rows are bucketed by length (bounded recompiles) and batched; only the verdict positions are
unembedded.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

import dss.models
from dss.generate import process_logits
from dss.guardrails import GuardrailAdapter
from dss.segments import Trajectory, token_cuts, token_weights, word_cuts

__all__ = ["Guardrail", "Trajectory", "score", "token_weights", "HF_SAMPLING"]

# The sampling settings the reference implementation generated verdicts with.
HF_SAMPLING = dict(temperature=0.2, top_k=50, top_p=0.9, repetition_penalty=1.2)


@dataclasses.dataclass
class Guardrail:
    """A guardrail checkpoint: its template/verdict recipe (`adapter`) and its weights (`model`)."""

    adapter: GuardrailAdapter
    model: dss.models.Transformer
    path: str

    @classmethod
    def from_pretrained(cls, path, kind: str = "auto", risk: str | None = None, dtype="float32", mesh=None):
        local = dss.models.checkpoint.resolve_path(path)
        adapter = GuardrailAdapter.from_pretrained(local, kind=kind, risk=risk)
        adapter.name = os.fspath(path)
        model = dss.models.load_pretrained(local, dtype=dtype, mesh=mesh)
        if max(adapter.verdict_token_ids) >= model.config.vocab_size:
            raise ValueError(f"guardrail {path!r}: verdict token ids {adapter.verdict_token_ids} exceed the model vocabulary")
        return cls(adapter, model, os.fspath(path))


@dataclasses.dataclass
class _Plan:
    """One example's work: a token prefix to cache once, and each prefix's own remaining tokens."""

    example: int
    shared: list[int]  # leading tokens of the full rendering, cached once (naive: empty)
    suffixes: list[list[int]]  # prefix k's tokens after the first commons[k]
    commons: list[int]  # how many shared tokens prefix k really has in common with the full rendering
    seen: list[list[int]]  # each prefix's whole token list (for hf_sampling's repetition penalty)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def _shared_plan(ids_per_prefix, full_ids, example: int) -> _Plan:
    # each prefix keeps at least its last token as suffix: that is where its verdict is read
    commons = [min(_common_length(ids, full_ids), len(ids) - 1) for ids in ids_per_prefix]
    shared = list(full_ids[: max(commons)])
    return _Plan(example, shared, [ids[c:] for ids, c in zip(ids_per_prefix, commons)], commons, list(ids_per_prefix))


def _bucket(n: int, step: int = 64) -> int:
    """Round up to a multiple of `step` up to 512, then to 1/4 of the next power of two."""
    if n <= 512:
        return max(step, math.ceil(n / step) * step)
    grain = 2 ** (math.ceil(math.log2(n)) - 2)
    return math.ceil(n / grain) * grain


def _pow2(n: int) -> int:
    return 2 ** math.ceil(math.log2(max(1, n)))


def _groups(plan: _Plan, width: int) -> list[list[int]]:
    """Split an example's suffixes into consecutive groups of at most `width` tokens."""
    groups, used = [[]], 0
    for k, suffix in enumerate(plan.suffixes):
        if groups[-1] and used + len(suffix) > width:
            groups.append([])
            used = 0
        groups[-1].append(k)
        used += len(suffix)
    return groups


def _width(plans: list[_Plan], shared: int) -> int:
    """New tokens per round: room for the longest suffix, and for several when the cache is long
    (each query attends shared + width slots, so width ~ shared / 2 balances calls and waste)."""
    return _bucket(max(shared // 2, *(len(s) for p in plans for s in p.suffixes)))


def _batches(plans: list[_Plan], token_budget: int, multiple: int):
    """Batches of examples with similar sizes: (plans, shared length P, group width G, batch size).

    A call processes B rows of P cached + G new tokens; B is a power of two (and a multiple of
    the device count), P and G are bucketed, so few shapes get compiled."""
    order = sorted(plans, key=lambda p: sum(map(len, p.suffixes)))  # similar numbers of rounds
    batch = []
    for plan in order + [None]:
        if plan is not None:
            trial = batch + [plan]
            shared = _bucket(max(len(p.shared) for p in trial), 32)
            width = _width(trial, shared)
            if not batch or max(multiple, _pow2(len(trial))) * (shared + width) <= token_budget:
                batch = trial
                continue
        shared = _bucket(max(len(p.shared) for p in batch), 32)
        width = _width(batch, shared)
        yield batch, shared, width, max(multiple, _pow2(len(batch)))
        batch = [plan]


def _round_arrays(batch, groups, r: int, shared: int, width: int, size: int):
    """Inputs of suffix round r: each row's r-th group of suffixes, side by side."""
    reads = _pow2(max(len(g[r]) if r < len(g) else 1 for g in groups))
    a = dict(
        tokens=np.zeros((size, width), np.int32),
        positions=np.zeros((size, width), np.int32),
        limit=np.zeros((size, width), np.int32),  # query sees cached slots < limit
        start=np.full((size, width), shared + width, np.int32),  # ... and new slots from start on
        reads=np.zeros((size, reads), np.int32),
    )
    owners = []
    for b, (plan, g) in enumerate(zip(batch, groups)):
        offset = 0
        for j, k in enumerate(g[r] if r < len(g) else []):
            suffix, common = plan.suffixes[k], plan.commons[k]
            sl = slice(offset, offset + len(suffix))
            a["tokens"][b, sl] = suffix
            a["positions"][b, sl] = np.arange(common, common + len(suffix))
            a["limit"][b, sl] = common
            a["start"][b, sl] = shared + offset
            a["reads"][b, j] = offset + len(suffix) - 1
            owners.append((b, j, plan, k))
            offset += len(suffix)
    return a, owners


@nnx.jit(static_argnames=("full_vocab",))
def _last_logits(model, tokens, lengths, verdict_ids, full_vocab=False):
    """Naive path: a plain causal pass per right-padded prefix, logits at its last token."""
    hidden, _ = model.hidden_states(tokens)
    logits = model.logits(jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1))[:, 0]
    return logits if full_vocab else logits[..., verdict_ids]


@nnx.jit(static_argnames=("width",))
def _prefill(model, tokens, width):
    cache = model.init_cache(tokens.shape[0], tokens.shape[1] + width)
    _, cache = model.hidden_states(tokens, cache=cache, cache_index=0)
    return cache


@nnx.jit(static_argnames=("full_vocab",))
def _suffix_logits(model, cache, tokens, positions, limit, start, reads, verdict_ids, full_vocab=False):
    """Verdict logits of suffixes appended after the cached shared tokens, each seeing only its
    own slice of the cache and its own earlier tokens."""
    shared = cache.positions.shape[1] - tokens.shape[1]
    slots = jnp.arange(cache.positions.shape[1])[None, None, :]
    query = shared + jnp.arange(tokens.shape[1])[None, :, None]
    mask = (slots < limit[:, :, None]) | ((slots >= start[:, :, None]) & (slots <= query))
    hidden, _ = model.hidden_states(tokens, positions, mask, cache=cache, cache_index=shared)
    logits = model.logits(jnp.take_along_axis(hidden, reads[:, :, None], axis=1))
    return logits if full_vocab else logits[..., verdict_ids]


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


def _naive_probs(guard, prompts_ids, probs, score_mode, token_budget, multiple, bar):
    """One plain forward per prefix, prefixes of similar length batched together."""
    verdict_ids = jnp.asarray(guard.adapter.verdict_token_ids)
    order = sorted(prompts_ids, key=lambda item: len(item[2]))
    i = 0
    while i < len(order):
        length = _bucket(len(order[i][2]))
        size = max(multiple, 2 ** int(math.log2(max(1, token_budget // length))))
        chunk = [item for item in order[i : i + size] if _bucket(len(item[2])) == length] or order[i : i + 1]
        length = _bucket(max(len(item[2]) for item in chunk))
        tokens, lengths = np.zeros((size, length), np.int32), np.ones(size, np.int32)
        for b, (_, _, ids) in enumerate(chunk):
            tokens[b, : len(ids)], lengths[b] = ids, len(ids)
        logits = _last_logits(guard.model, jnp.asarray(tokens), jnp.asarray(lengths), verdict_ids,
                              full_vocab=score_mode == "hf_sampling")
        logits = np.asarray(jax.device_get(logits))
        for b, (e, k, ids) in enumerate(chunk):
            probs[e][k] = _safe_prob(guard, logits[b], ids, score_mode)
        bar.update(len(chunk))
        i += len(chunk)


def _shared_probs(guard, plans, probs, score_mode, token_budget, multiple, bar):
    """Per batch of examples: cache the shared tokens once, then score suffix groups against it."""
    verdict_ids = jnp.asarray(guard.adapter.verdict_token_ids)
    for batch, shared, width, size in _batches(plans, token_budget, multiple):
        prefix = np.zeros((size, shared), np.int32)
        for b, plan in enumerate(batch):
            prefix[b, : len(plan.shared)] = plan.shared
        cache = _prefill(guard.model, jnp.asarray(prefix), width=width)
        groups = [_groups(plan, width) for plan in batch]
        for r in range(max(map(len, groups))):
            arrays, owners = _round_arrays(batch, groups, r, shared, width, size)
            logits = _suffix_logits(guard.model, cache, verdict_ids=verdict_ids,
                                    full_vocab=score_mode == "hf_sampling", **arrays)
            logits = np.asarray(jax.device_get(logits))
            for b, j, plan, k in owners:
                probs[plan.example][k] = _safe_prob(guard, logits[b, j], plan.seen[k], score_mode)
        bar.update(sum(len(p.suffixes) for p in batch))


def _score_one_guard(guard, examples, cuts, method, score_mode, token_budget, progress):
    adapter = guard.adapter
    ids = [[adapter.encode(ex["prompt"], ex["response"][:c]) for c in example_cuts]
           for ex, example_cuts in zip(examples, cuts)]
    probs = [np.full(len(c), np.nan, np.float32) for c in cuts]
    multiple = 1 if jax.sharding.get_abstract_mesh().empty else jax.device_count()
    with tqdm(total=sum(map(len, cuts)), unit="prefix", disable=not progress, desc=f"STAR {method}") as bar:
        if method == "naive":
            flat = [(e, k, p) for e, per_example in enumerate(ids) for k, p in enumerate(per_example)]
            _naive_probs(guard, flat, probs, score_mode, token_budget, multiple, bar)
        else:
            plans = [_shared_plan(p, adapter.encode(ex["prompt"], ex["response"]), e)
                     for e, (ex, p) in enumerate(zip(examples, ids))]
            _shared_probs(guard, plans, probs, score_mode, token_budget, multiple, bar)
    return probs


def score(guard, examples, chunk_unit: str = "word", chunk_size: int = 5, method: str = "shared_kv",
          score_mode: str = "raw", token_budget: int = 16384, progress: bool = False) -> list[Trajectory]:
    """STAR trajectories of `examples` (sequence of {"prompt": str, "response": str}).

    `guard` is a Guardrail or a sequence of them (an ensemble: P(safe) averaged; token chunking
    then follows the first guardrail's tokenizer). `score_mode="raw"`: softmax over the two verdict
    logits; `"hf_sampling"`: the same two logits after HF's repetition penalty 1.2, temperature
    0.2, top-k 50 and top-p 0.9 (`HF_SAMPLING`), i.e. what the reference implementation's sampled
    verdicts were drawn from; NaN where neither verdict token survives the filters.
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
    per_guard = [_score_one_guard(g, examples, cuts, method, score_mode, token_budget, progress) for g in guards]
    return [Trajectory(c, np.mean([p[i] for p in per_guard], axis=0)) for i, c in enumerate(cuts)]
