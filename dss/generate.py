"""Batched generation with a KV cache, and Hugging Face-style logits processing.

`generate` left-pads the prompts of a batch so that every row's next token goes to the same cache
slot: row i's prompt of length n_i fills slots [P - n_i, P), its positions count from 0 at its
first real token, and the attention mask hides the pad slots. One prefill call fills the cache;
then a jit-compiled `lax.while_loop` appends one token per step and stops early once every row has
produced an EOS token. The batch size, the prompt length P and the number of new tokens are rounded
up to buckets (about four per power of two), so calls with many different lengths reuse a small
number of compiled programs; `max_new_tokens` itself is a runtime value.

Sampling follows Hugging Face `generate` (`RepetitionPenaltyLogitsProcessor`, then
`TemperatureLogitsWarper`, `TopKLogitsWarper`, `TopPLogitsWarper`, then a categorical draw); greedy
decoding (temperature 0) applies only the repetition penalty, as HF does with `do_sample=False`.
Random draws use a key per (seed, row, step), so a row's sample does not depend on how the batch
was padded or sharded.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dss import sharding as shd
from dss import templating
from dss.buckets import bucket_length

__all__ = ["Sampling", "chat_prompt_tokens", "generate", "process_logits"]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Decoding settings (static under jit: each distinct setting compiles once)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature must be a float >= 0 (0 = greedy), got {self.temperature!r}")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be in [0, 1] (1 = off), got {self.top_p!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and self.repetition_penalty > 0):
            raise ValueError(f"repetition_penalty must be a float > 0 (1 = off), got {self.repetition_penalty!r}")
        for name, cast in (("temperature", float), ("top_k", int), ("top_p", float), ("repetition_penalty", float)):
            object.__setattr__(self, name, cast(getattr(self, name)))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def process_logits(logits, seen_mask=None, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0):
    """Next-token logits [..., V] -> processed float32 logits, removed tokens set to -inf.

    Hugging Face semantics and order: repetition penalty over the tokens in `seen_mask` (bool
    [..., V]: already in prompt or output; positive logits divided by the penalty, negative ones
    multiplied), then temperature, top-k (ties with the k-th value kept), top-p (on probabilities
    sorted ascending: drop tokens whose cumulative probability is <= 1 - top_p, always keep the most
    likely one). Temperature 0 means greedy: only the repetition penalty is applied. The settings
    are Python numbers; a setting at its neutral value (1, 0, 1, 1) is skipped, as in HF.
    """
    s = Sampling(temperature, top_k, top_p, repetition_penalty)
    logits = jnp.asarray(logits, jnp.float32)
    if s.repetition_penalty != 1.0:
        if seen_mask is None:
            raise ValueError("process_logits: repetition_penalty != 1 needs seen_mask")
        penalized = jnp.where(logits < 0, logits * s.repetition_penalty, logits / s.repetition_penalty)
        logits = jnp.where(jnp.asarray(seen_mask, bool), penalized, logits)
    if s.greedy:
        return logits
    if s.temperature != 1.0:
        logits = logits / s.temperature
    shape, vocab = logits.shape, logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    if s.top_k > 0:
        kth = jax.lax.top_k(flat, min(s.top_k, vocab))[0][:, -1:]
        flat = jnp.where(flat < kth, -jnp.inf, flat)
    if s.top_p < 1.0:
        order = jnp.argsort(flat, axis=-1)  # ascending, as HF sorts
        probs = jax.nn.softmax(jnp.take_along_axis(flat, order, axis=-1), axis=-1)
        remove_sorted = jnp.cumsum(probs, axis=-1) <= 1.0 - s.top_p
        remove_sorted = remove_sorted.at[:, -1].set(False)  # min_tokens_to_keep = 1
        rows = jnp.arange(flat.shape[0])[:, None]
        remove = jnp.zeros_like(remove_sorted).at[rows, order].set(remove_sorted)
        flat = jnp.where(remove, -jnp.inf, flat)
    return flat.reshape(shape)


def _constrain_cache(cache):
    axes = ("layers", "act_batch", None, "act_heads", None)
    return type(cache)(shd.constrain(cache.keys, axes), shd.constrain(cache.values, axes),
                       shd.constrain(cache.positions, ("act_batch", None)))


def _forward(graphdef, state, tokens, positions, mask, cache, index):
    """One cached forward; logits of the last token only, [B, V]."""
    model = nnx.merge(graphdef, state)
    hidden, cache = model.hidden_states(tokens, positions, mask, cache=cache, cache_index=index)
    return model.logits(hidden[:, -1:])[:, 0], _constrain_cache(cache)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "new_bucket"))
def _generate_padded(graphdef, state, tokens, starts, active, is_eos, max_new, key, pad_id, *, sampling, new_bucket):
    """tokens [B, P] left-padded (row i real from slot starts[i]) -> new tokens [B, new_bucket]."""
    batch, prompt_len = tokens.shape
    slots = jnp.arange(prompt_len + new_bucket)
    cache = nnx.merge(graphdef, state).init_cache(batch, slots.shape[0])
    key_valid = slots[None, :] >= starts[:, None]  # [B, S]: not a left-pad slot
    rows = jnp.arange(batch)

    seen = None
    if sampling.repetition_penalty != 1.0:
        real = jnp.arange(prompt_len)[None, :] >= starts[:, None]
        seen = jnp.zeros((batch, is_eos.shape[0]), bool).at[rows[:, None], tokens].max(real)
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, rows)

    def pick(logits, seen, step):
        logits = process_logits(logits, seen, sampling.temperature, sampling.top_k, sampling.top_p,
                                sampling.repetition_penalty)
        if sampling.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
        return jax.vmap(jax.random.categorical)(step_keys, logits).astype(jnp.int32)

    def record(out, seen, done, new, step):
        new = jnp.where(done, pad_id, new)
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, step))
        if seen is not None:
            seen = seen.at[rows, new].max(~done)
        done = done | is_eos[new] | (step + 1 >= max_new)
        return new, out, seen, done

    positions = jnp.maximum(jnp.arange(prompt_len)[None, :] - starts[:, None], 0)
    mask = key_valid[:, None, :] & (slots[None, None, :] <= jnp.arange(prompt_len)[None, :, None])
    logits, cache = _forward(graphdef, state, tokens, positions, mask, _constrain_cache(cache), 0)
    out = jnp.full((batch, new_bucket), pad_id, jnp.int32)
    tok, out, seen, done = record(out, seen, ~active, pick(logits, seen, 0), 0)

    def cond(carry):
        step, *_, done = carry
        return (step < max_new) & ~jnp.all(done)

    def body(carry):
        step, tok, cache, out, seen, done = carry
        index = prompt_len + step - 1  # slot of `tok`, the token sampled at step - 1
        mask = (key_valid & (slots[None, :] <= index))[:, None, :]
        logits, cache = _forward(graphdef, state, tok[:, None], (index - starts)[:, None], mask, cache, index)
        tok, out, seen, done = record(out, seen, done, pick(logits, seen, step), step)
        return step + 1, tok, cache, out, seen, done

    carry = (jnp.int32(1), tok, cache, out, seen, done)
    return jax.lax.while_loop(cond, body, carry)[3]


def generate(model, prompt_tokens: Sequence[Sequence[int]], max_new_tokens: int = 64, eos_ids: Sequence[int] = (),
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
             seed: int = 0, pad_id: int = 0, mesh=None) -> list[list[int]]:
    """New tokens for each prompt: up to and including the first token in `eos_ids`, at most
    `max_new_tokens`. Temperature 0 is greedy; otherwise sampled with HF semantics (see
    `process_logits`) from keys derived from `seed`. With a `mesh` ((data, fsdp, tensor), the
    model loaded onto it), the batch is split over the mesh axes of `act_batch`."""
    return generate_many([model], prompt_tokens, max_new_tokens, eos_ids, temperature, top_k, top_p,
                         repetition_penalty, seed, pad_id, mesh)[0]


def generate_many(models: Sequence, prompt_tokens: Sequence[Sequence[int]], max_new_tokens: int = 64,
                  eos_ids: Sequence[int] = (), temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  repetition_penalty: float = 1.0, seed: int = 0, pad_id: int = 0, mesh=None) -> list[list[list[int]]]:
    """`generate` for several models of one architecture (e.g. perturbed copies of one model) in
    one vectorised call: result[m][i] is model m's answer to prompt i. Memory grows with the number
    of models; with one model this is exactly `generate`."""
    model = models[0]
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    vocab = model.config.vocab_size
    prompts = []
    for i, p in enumerate(prompt_tokens):
        p = [int(t) for t in p]
        if not p:
            raise ValueError(f"generate: prompt {i} is empty")
        bad = [t for t in p if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"generate: prompt {i} has token id(s) {bad[:5]} outside the vocabulary [0, {vocab})")
        prompts.append(p)
    eos_ids = [int(t) for t in eos_ids]
    for name, ids in (("eos_ids", eos_ids), ("pad_id", [int(pad_id)])):
        if any(not 0 <= t < vocab for t in ids):
            raise ValueError(f"generate: {name} {ids} outside the vocabulary [0, {vocab})")
    if int(max_new_tokens) < 0:
        raise ValueError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    max_new_tokens = int(max_new_tokens)
    if not prompts or max_new_tokens == 0:
        return [[[] for _ in prompts] for _ in models]

    data_parallel = 1
    if mesh is not None:
        batch_axes = shd.RULES["act_batch"]
        batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
        data_parallel = int(np.prod([mesh.shape.get(a, 1) for a in batch_axes]))
    batch = bucket_length(len(prompts), data_parallel, per_octave=4)
    prompt_len = bucket_length(max(map(len, prompts)), 8, minimum=16, per_octave=4)
    new_bucket = bucket_length(max_new_tokens, 8, minimum=16, per_octave=4)

    tokens = np.full((batch, prompt_len), pad_id, np.int32)
    starts = np.full((batch,), prompt_len - 1, np.int32)  # filler rows: one pad token, done at once
    for i, p in enumerate(prompts):
        tokens[i, prompt_len - len(p):] = p
        starts[i] = prompt_len - len(p)
    active = np.arange(batch) < len(prompts)
    is_eos = np.zeros((vocab,), bool)
    is_eos[eos_ids] = True

    graphdef, state = nnx.split(model)
    args = (tokens, starts, active, is_eos, np.int32(max_new_tokens), jax.random.key(seed), np.int32(pad_id))
    call = functools.partial(_generate_padded, graphdef, sampling=sampling, new_bucket=new_bucket)
    if len(models) > 1:  # one program for all models: their weights stacked on a leading axis
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.split(m)[1] for m in models))
        call = jax.vmap(call, in_axes=(0,) + (None,) * len(args))
    if mesh is None:
        out = call(state, *args)
    else:
        def place(x):
            axes = ("act_batch",) + (None,) * (x.ndim - 1) if x.ndim and x.shape[0] == batch else (None,) * x.ndim
            return jax.device_put(x, shd.named_sharding(axes, x.shape, mesh))
        with jax.set_mesh(mesh):
            out = call(state, *(place(a) if isinstance(a, np.ndarray) and a.ndim else a for a in args))
    out = np.asarray(out).reshape(len(models), batch, -1)

    results = []
    for per_model in out:
        results.append([])
        for row in per_model[: len(prompts), :max_new_tokens].tolist():
            stop = next((j for j, t in enumerate(row) if is_eos[t]), len(row) - 1)
            results[-1].append(row[: stop + 1])
    return results


def chat_prompt_tokens(tokenizer, prompt: str, system: str | None = None, prefill: str | None = None,
                       **template_kwargs) -> list[int]:
    """Token ids of a one-turn chat in the tokenizer's own chat template, ready for the answer.

    Renders [system?, user] with `add_generation_prompt=True`, appends `prefill` (text the answer
    must start with) and tokenizes the whole text with `add_special_tokens=False`, so the special
    tokens the template writes (e.g. BOS) appear once, exactly as `apply_chat_template(...,
    tokenize=True)` gives them. Extra keyword arguments go to the template (e.g. enable_thinking, the
    run's fixed date_string: dss.templating).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat_prompt_tokens: tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]
    text = templating.render(tokenizer, messages, template_kwargs, add_generation_prompt=True)
    return list(tokenizer(text + (prefill or ""), add_special_tokens=False)["input_ids"])
