"""Attention: the merged-rows einsum and `jax.nn.dot_product_attention` (the fused causal path)
give the numbers of the grouped einsum dss used before, op by op and through whole models
(causal training, padded rows, grouped K/V, sliding windows, soft-capping, with and without a
KV cache). float32: attention outputs and gradients within 1e-5, logits within 1e-5 of their scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dss.models
from dss.models import transformer
from hf_tiny import VOCAB, make_hf_model

TOL = 1e-5


def grouped_einsum(q, k, v, mask, scale, softcap):
    """The attention of dss before the merged-rows einsum: the reference."""
    b, l, h, d = q.shape
    kv = k.shape[2]
    q = q.reshape(b, l, kv, h // kv, d)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k, preferred_element_type=jnp.float32) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return jnp.einsum("bkgls,bskd->blkgd", probs, v).reshape(b, l, h, d)


def qkv(b, l, s, h, kv, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((b, l, h, d), (b, s, kv, d), (b, s, kv, d)))


def max_diff(a, b):
    return float(jnp.max(jnp.abs(a - b)))


def logits_close(out, ref):
    """Whole-model logits: max |diff| <= 1e-5 of the largest |logit| (float32 rounding grows
    over the layers of these tiny models, whose logits reach 5-20)."""
    assert max_diff(out, ref) <= TOL * float(np.max(np.abs(ref)))


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2), (6, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_einsum_with_any_mask_equals_the_grouped_einsum(heads, kv_heads, softcap):
    """Tree masks over a cache (STAR), left padding (generate), rows with no visible key."""
    q, k, v = qkv(3, 24, 70, heads, kv_heads)
    mask = jnp.asarray(np.random.default_rng(1).random((3, 24, 70)) < 0.4).at[1, 5].set(False)
    out = transformer.attend(q, k, v, mask, 0.3, softcap)
    assert max_diff(out, grouped_einsum(q, k, v, mask, 0.3, softcap)) <= TOL


@pytest.mark.parametrize("window", [None, 1, 7, 200])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_causal_paths_equal_the_grouped_einsum(window, heads, kv_heads):
    """mask=None (the model's plain causal case), on the einsum and on dot_product_attention's
    arguments (is_causal, local window; XLA here, the same arguments reach cuDNN on GPU),
    values and gradients."""
    q, k, v = qkv(2, 50, 50, heads, kv_heads)
    mask = transformer.causal_mask(50, window)[None]
    ref = lambda q, k, v: grouped_einsum(q, k, v, mask, 0.25, None)
    paths = {"attend": lambda q, k, v: transformer.attend(q, k, v, None, 0.25, None, window),
             "dot_product_attention": lambda q, k, v: transformer.fused_causal(q, k, v, 0.25, window, "xla")}
    loss = lambda f: (lambda *a: jnp.sum(jnp.sin(f(*a))))
    want, want_grads = ref(q, k, v), jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, f in paths.items():
        assert max_diff(f(q, k, v), want) <= TOL, name
        grads = jax.grad(loss(f), argnums=(0, 1, 2))(q, k, v)
        assert max(max_diff(a, b) for a, b in zip(grads, want_grads)) <= TOL, name


def test_causal_mask():
    np.testing.assert_array_equal(transformer.causal_mask(4, 2), [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])


# ----------------------------------------------------------------------------- whole models


@pytest.fixture(scope="module", params=["llama", "mistral", "gemma2", "gemma3_text"])
def model(request, tmp_path_factory):
    """GQA everywhere; Mistral a sliding window on every layer, Gemma 3 on some, Gemma 2 soft-capping too."""
    path = tmp_path_factory.mktemp(request.param)
    make_hf_model(request.param, path)
    return dss.models.load_pretrained(path)


@pytest.fixture
def reference(monkeypatch):
    """Run a model on the grouped einsum, today's path before this one."""
    def run(f, *args):
        with monkeypatch.context() as m:
            m.setattr(transformer, "attend", lambda q, k, v, mask, scale, softcap, window=None: grouped_einsum(
                q, k, v, transformer.causal_mask(q.shape[1], window)[None] if mask is None else mask, scale, softcap))
            return np.asarray(jax.jit(lambda *a: f(*a))(*args))  # a new function: no trace cached unpatched
    return run


def test_causal_training_forward_equals_the_grouped_einsum(model, reference):
    """Training and STAR's naive path: tokens only, longer than the sliding windows; right-padded
    rows are plain rows, their pads after every real token."""
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (3, 150)))
    f = lambda t: model(t)
    logits_close(np.asarray(jax.jit(f)(tokens)), reference(f, tokens))


def test_padded_rows_equal_their_own_forward(model):
    """A right-padded row's real tokens get the logits of that row alone."""
    rng = np.random.default_rng(1)
    rows = [rng.integers(0, VOCAB, n) for n in (130, 77, 5)]
    batch = np.zeros((3, 130), np.int64)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = r
    out = np.asarray(model(jnp.asarray(batch)))
    for i, r in enumerate(rows):
        logits_close(out[i, : len(r)], np.asarray(model(jnp.asarray(r)[None]))[0])


def test_masked_and_cached_forwards_equal_the_grouped_einsum(model, reference):
    """Left padding with a mask (generate), explicit positions, and prefill + decode over a cache."""
    rng = np.random.default_rng(2)
    tokens = jnp.asarray(rng.integers(0, VOCAB, (2, 120)))
    starts = jnp.asarray([0, 30])
    slots = jnp.arange(120)
    positions = jnp.maximum(slots[None] - starts[:, None], 0)
    mask = (slots[None, None] >= starts[:, None, None]) & (slots[None, None, :] <= slots[None, :, None])
    padded = lambda t: model(t, positions, mask)
    logits_close(np.asarray(jax.jit(padded)(tokens)), reference(padded, tokens))

    def cached(t):
        logits, cache = model(t[:, :100], cache=model.init_cache(2, 120))
        steps = [logits]
        for i in range(100, 120, 5):
            logits, cache = model(t[:, i: i + 5], cache=cache, cache_index=i)
            steps.append(logits)
        return jnp.concatenate(steps, axis=1)

    out = np.asarray(jax.jit(cached)(tokens))
    logits_close(out, reference(cached, tokens))
    logits_close(out, np.asarray(model(tokens)))  # the cache path equals the plain causal one


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention runs on GPU only")
def test_cudnn_runs_the_plain_causal_case_in_bfloat16():
    q, k, v = (x.astype(jnp.bfloat16) for x in qkv(2, 256, 256, 8, 2, d=64))
    f = jax.jit(lambda q, k, v: transformer.attend(q, k, v, None, 0.125, None, 100))
    assert "cudnn" in f.lower(q, k, v).as_text().lower()
    want = grouped_einsum(q, k, v, transformer.causal_mask(256, 100)[None], 0.125, None)
    assert max_diff(f(q, k, v).astype(jnp.float32), want.astype(jnp.float32)) <= 2e-2
