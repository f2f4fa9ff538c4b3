"""The KV-cache path and arbitrary masks give the numbers of plain full forwards."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dss.models
from hf_tiny import VOCAB, make_hf_model


@pytest.fixture(scope="module", params=["llama", "gemma2", "gemma3_text"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    make_hf_model(request.param, path)
    return dss.models.load_pretrained(path)


@nnx.jit
def forward(m, tokens, positions, mask):
    return m(tokens, positions, mask)


@nnx.jit
def cached(m, tokens, positions, mask, cache, index):
    return m(tokens, positions, mask, cache=cache, cache_index=index)


def full(m, tokens):
    tokens = jnp.asarray(tokens)[None]
    return np.asarray(m(tokens))[0]


def test_prefill_then_decode_equals_full_forward(model):
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 220))
    ref = np.asarray(model(jnp.asarray(tokens)))
    cache = model.init_cache(2, 220)
    logits, cache = cached(model, jnp.asarray(tokens[:, :200]), None, None, cache, 0)
    outs = [np.asarray(logits)]
    for i in range(200, 210):  # one token at a time
        logits, cache = cached(model, jnp.asarray(tokens[:, i : i + 1]), None, None, cache, i)
        outs.append(np.asarray(logits))
    logits, cache = cached(model, jnp.asarray(tokens[:, 210:]), None, None, cache, 210)  # then a chunk
    outs.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache.positions), np.broadcast_to(np.arange(220), (2, 220)))


def test_tree_mask_over_shared_prefix_cache(model):
    """K suffixes appended to one cached prefix, each seeing only prefix[:cut_k] and itself."""
    rng = np.random.default_rng(1)
    prefix = rng.integers(0, VOCAB, 150)
    cuts, lengths = [20, 90, 131, 150], [5, 9, 3, 6]  # windows (64) matter for the later cuts
    suffixes = [rng.integers(0, VOCAB, n) for n in lengths]
    total = len(prefix) + sum(lengths)

    cache = model.init_cache(1, total)
    _, cache = cached(model, jnp.asarray(prefix)[None], None, None, cache, 0)
    slots = np.arange(total)
    tokens, positions, mask, start = [], [], [], len(prefix)
    for cut, suffix in zip(cuts, suffixes):
        for j, tok in enumerate(suffix):
            tokens.append(tok)
            positions.append(cut + j)
            mask.append((slots < cut) | ((slots >= start) & (slots <= start + j)))
        start += len(suffix)
    logits, _ = cached(model, jnp.asarray(tokens)[None], jnp.asarray(positions)[None],
                       jnp.asarray(np.stack(mask))[None], cache, len(prefix))
    logits = np.asarray(logits)[0]

    start = 0
    for cut, suffix in zip(cuts, suffixes):
        ref = full(model, np.concatenate([prefix[:cut], suffix]))[cut:]
        np.testing.assert_allclose(logits[start : start + len(suffix)], ref, atol=2e-5, rtol=0)
        start += len(suffix)


def test_block_diagonal_mask_packs_sequences(model):
    """Two sequences packed in one row (positions restarting) equal two separate forwards."""
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, VOCAB, 100), rng.integers(0, VOCAB, 80)
    tokens = np.concatenate([a, b])[None]
    positions = np.concatenate([np.arange(100), np.arange(80)])[None]
    seg = np.concatenate([np.zeros(100), np.ones(80)])
    mask = (seg[:, None] == seg[None, :]) & np.tril(np.ones((180, 180), bool))
    out = np.asarray(forward(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask)[None]))[0]
    np.testing.assert_allclose(out[:100], full(model, a), atol=2e-5, rtol=0)
    np.testing.assert_allclose(out[100:], full(model, b), atol=2e-5, rtol=0)


def test_default_mask_is_causal(model):
    tokens = np.random.default_rng(3).integers(0, VOCAB, (1, 50))
    changed = tokens.copy()
    changed[0, 30:] = (changed[0, 30:] + 1) % VOCAB
    a, b = np.asarray(model(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(changed)))
    np.testing.assert_array_equal(a[:, :30], b[:, :30])
    assert np.abs(a[:, 30:] - b[:, 30:]).max() > 1e-3


def test_cache_rows_share_one_cached_prefix(model):
    """Several rows continue row 0 of a one-row cache, each seeing its own slice of it."""
    rng = np.random.default_rng(4)
    prefix = rng.integers(0, VOCAB, 120)
    cuts, width = [15, 70, 120], 8
    suffixes = [rng.integers(0, VOCAB, n) for n in (8, 5, 7)]
    cache = model.init_cache(1, len(prefix) + width)
    _, cache = cached(model, jnp.asarray(prefix)[None], None, None, cache, 0)
    tokens = np.zeros((3, width), np.int32)
    positions = np.zeros((3, width), np.int32)
    slots = np.arange(len(prefix) + width)
    mask = np.zeros((3, width, len(slots)), bool)
    for r, (cut, suffix) in enumerate(zip(cuts, suffixes)):
        tokens[r, : len(suffix)] = suffix
        positions[r, : len(suffix)] = cut + np.arange(len(suffix))
        for j in range(len(suffix)):
            mask[r, j] = (slots < cut) | ((slots >= len(prefix)) & (slots <= len(prefix) + j))
    step = nnx.jit(lambda m, t, p, k, c, rows: m(t, p, k, cache=c, cache_index=len(prefix), cache_rows=rows))
    logits, _ = step(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask), cache, jnp.zeros(3, jnp.int32))
    for r, (cut, suffix) in enumerate(zip(cuts, suffixes)):
        ref = full(model, np.concatenate([prefix[:cut], suffix]))[cut:]
        np.testing.assert_allclose(np.asarray(logits)[r, : len(suffix)], ref, atol=2e-5, rtol=0)
