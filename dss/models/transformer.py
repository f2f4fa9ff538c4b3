"""One decoder-only Transformer (Flax NNX) for every family in `dss.models.config.FAMILIES`.

Weights are stored in einsum-friendly layouts ([in, ..., out]) and carry `logical_axes`
metadata that `dss.sharding.RULES` maps to the device mesh. The blocks are one module whose
parameters are stacked on a leading `layers` axis and applied with `jax.lax.scan`, so a model
compiles one block however deep it is; what differs between layers (RoPE frequencies, sliding
windows) is scanned data. Attention takes an arbitrary boolean "query may attend key" mask;
sliding windows apply on top of it, measured in positions. Plain causal self-attention (no mask,
cache or positions given) is left to `attend` to run fused.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dss.models.config import ModelConfig
from dss.models.rope import apply_rope, inverse_frequencies
from dss.sharding import constrain, platform

ACT_AXES = ("act_batch", "act_seq", "act_embed")

# What each block keeps for the backward pass (`Transformer(remat=...)`); the rest is recomputed.
REMAT_POLICIES = {
    "none": None,  # no rematerialisation: every activation is kept (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # only the block's input; ~1/3 more compute
    # the outputs of the projection and MLP matmuls; attention and elementwise ops are recomputed
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


LAYER_AXIS = "layers"  # the logical name of the stacked blocks' leading axis
NO_WINDOW = np.iinfo(np.int32).max  # a full-attention layer among sliding ones
# The kernels LoRA may adapt (`Lora`), by their attribute names: attention's, then the MLP's.
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class KVCache(NamedTuple):
    """Every layer's keys/values [layers, B, S, kv_heads, head_dim] and the position held in
    each slot [B, S]."""

    keys: jax.Array
    values: jax.Array
    positions: jax.Array

    def map_rows(self, fn) -> "KVCache":
        """The cache with `fn(array, batch_axis)` applied to each field (keys and values have the
        layers axis first; every field has its slots right after its batch axis)."""
        return KVCache(fn(self.keys, 1), fn(self.values, 1), fn(self.positions, 0))


class Lora(NamedTuple):
    """Low-rank adapters on the frozen kernels (made by `dss.lora`): each adapted kernel W of
    LORA_TARGETS acts as W + scale * a @ b, `weights[target] = {"a": [layers, *in, r], "b":
    [layers, r, *out]}`. With a `key`, the adapters' inputs are dropped at rate `dropout`
    (training); inside a block, `weights` and `key` are that layer's."""

    weights: dict
    scale: float
    dropout: float = 0.0
    key: jax.Array | None = None


def lora_delta(x, lora: Lora | None, target: str, in_dims: int, dtype):
    """scale * dropout(x) @ a @ b of `target`, contracting the last `in_dims` axes of x; 0 where
    the kernel is not adapted. Each target draws its own dropout mask, as PEFT's do."""
    if lora is None or target not in lora.weights:
        return 0
    if lora.key is not None:
        keep = 1.0 - lora.dropout
        mask = jax.random.bernoulli(jax.random.fold_in(lora.key, LORA_TARGETS.index(target)), keep, x.shape)
        x = jnp.where(mask, x / keep, 0).astype(x.dtype)
    a, b = (lora.weights[target][n].astype(dtype) for n in "ab")
    return jnp.tensordot(jnp.tensordot(x, a, in_dims), b, 1) * jnp.asarray(lora.scale, dtype)


# XLA:CPU adds a float32 dot's products in one running sum, so its rounding error grows with the
# contracted length K, to 2-3x that of the blocked GEMMs of HF's PyTorch at K = 1,024-8,192.
# `contract` sums slices of at most this many products as separate dots and adds the results: as
# close to float64 as PyTorch, at about the cost of one dot at these sizes.
CPU_DOT_BLOCK = 128


def contract(x, w, in_dims: int, dtype, w_in_last: bool = False, out_dtype=None):
    """`x`'s last `in_dims` axes contracted with `w`'s first `in_dims` (its last one if
    `w_in_last`, in_dims 1), as one dot in `dtype` with `out_dtype` accumulation. In float32 it runs
    at full precision (no TF32 or bf16 passes on GPU and TPU, as in PyTorch) and on CPU in
    CPU_DOT_BLOCK slices (see there)."""
    x_in = tuple(range(x.ndim - in_dims, x.ndim))
    w_in = (w.ndim - 1,) if w_in_last else tuple(range(in_dims))
    float32 = jnp.dtype(dtype) == jnp.float32
    dot = lambda a, b, a_in, b_in: jax.lax.dot_general(
        a, b, ((a_in, b_in), ((), ())), precision=jax.lax.Precision.HIGHEST if float32 else None,
        preferred_element_type=out_dtype)
    size = int(np.prod([x.shape[a] for a in x_in]))
    if not float32 or size <= CPU_DOT_BLOCK or platform() != "cpu":
        return dot(x, w, x_in, w_in)
    out_shape = x.shape[: x.ndim - in_dims] + tuple(n for a, n in enumerate(w.shape) if a not in w_in)
    flat_x = x.reshape(*x.shape[: x.ndim - in_dims], size)
    flat_w = w if w_in_last else w.reshape(size, -1)
    w_axis = flat_w.ndim - 1 if w_in_last else 0
    step = -(-size // -(-size // CPU_DOT_BLOCK))  # equal slices of at most CPU_DOT_BLOCK
    total = None
    for start in range(0, size, step):
        part = dot(jax.lax.slice_in_dim(flat_x, start, min(start + step, size), axis=flat_x.ndim - 1),
                   jax.lax.slice_in_dim(flat_w, start, min(start + step, size), axis=w_axis),
                   (flat_x.ndim - 1,), (w_axis,))
        total = part if total is None else total + part
    return total.reshape(out_shape)


def _param(rngs, shape, axes, dtype, std):
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * std, logical_axes=axes)


def _zeros(shape, axes, dtype):
    return nnx.Param(jnp.zeros(shape, dtype), logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm in float32; Gemma's variant scales by (offset + w) with offset 1."""

    def __init__(self, dim: int, eps: float, offset: float, dtype, param_dtype):
        self.weight = nnx.Param(jnp.full((dim,), 1.0 - offset, param_dtype), logical_axes=("norm",))
        self.eps, self.offset, self.dtype = eps, offset, dtype

    def __call__(self, x):
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.offset:
            return (y * (self.offset + self.weight[...].astype(jnp.float32))).astype(self.dtype)
        return self.weight[...].astype(self.dtype) * y.astype(self.dtype)


def attend(q, k, v, mask, scale: float, softcap: float | None, window: int | None = None):
    """Grouped-query attention. q [B,L,H,D], k/v [B,S,K,D] -> [B,L,H,D].

    `mask` is bool [B,L,S] (any "query may attend key" pattern, windows already folded in), or
    None for causal self-attention (S = L, slot = position) within an optional sliding `window`.
    That case goes to cuDNN's fused kernel on GPU in half precision without soft-capping: no
    [L, S] scores in memory. Everything else, and CPU/TPU, runs `_einsum_attend`: the numbers of
    `jax.nn.dot_product_attention`'s XLA path (which JAX also picks for implementation=None),
    1.5-2x faster on CPU.
    """
    if mask is None and softcap is None and platform() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return fused_causal(q, k, v, scale, window, implementation="cudnn")
        except NotImplementedError:  # a head size or GPU generation the kernel does not cover
            pass
    if mask is None:
        mask = causal_mask(q.shape[1], window)[None]
    return _einsum_attend(q, k, v, mask, scale, softcap)


def fused_causal(q, k, v, scale: float, window: int | None, implementation: str):
    """Causal self-attention as `jax.nn.dot_product_attention` (grouped K/V, the window as its
    left local window: query i sees keys i - window < j <= i)."""
    local = None if window is None else (window - 1, 0)
    return jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, local_window_size=local,
                                        implementation=implementation)


def causal_mask(length: int, window: int | None = None):
    """bool [L, L]: query i sees keys j <= i (and i - j < window)."""
    i, j = jnp.arange(length)[:, None], jnp.arange(length)[None, :]
    return (j <= i) if window is None else (j <= i) & (i - j < window)


def _einsum_attend(q, k, v, mask, scale, softcap):
    """Attention with an arbitrary mask [B|1, L, S] and optional soft-capping (Gemma 2).

    The G query heads of each KV head are merged into its rows, so each (batch, KV head) is one
    [G*L, D] x [D, S] matmul: XLA:CPU runs that about 2x faster than a grouped 5-D einsum.
    """
    b, l, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    q = q.reshape(b, l, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * l, d)
    precision = jax.lax.Precision.HIGHEST if q.dtype == jnp.float32 else None  # as `contract`
    scores = jnp.einsum("bkqd,bskd->bkqs", q, k, preferred_element_type=jnp.float32, precision=precision) * scale
    if softcap is not None:
        scores = jnp.tanh(scores / softcap) * softcap
    scores = jnp.where(mask[:, None, None], scores.reshape(b, kv, g, l, -1), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * l, -1)
    out = jnp.einsum("bkqs,bskd->bkqd", probs, v, precision=precision)
    return out.reshape(b, kv, g, l, d).transpose(0, 3, 1, 2, 4).reshape(b, l, h, d)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
        e, h, k, d, std = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.initializer_range
        self.q = _param(rngs, (e, h, d), ("embed", "q_heads", "head_dim"), param_dtype, std)
        self.k = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.v = _param(rngs, (e, k, d), ("embed", "kv_heads", "head_dim"), param_dtype, std)
        self.o = _param(rngs, (h, d, e), ("q_heads", "head_dim", "embed"), param_dtype, std)
        qkv_bias = cfg.attention_bias or cfg.family.qkv_bias
        if qkv_bias:
            self.q_bias = _zeros((h, d), ("q_heads", "head_dim"), param_dtype)
            self.k_bias = _zeros((k, d), ("kv_heads", "head_dim"), param_dtype)
            self.v_bias = _zeros((k, d), ("kv_heads", "head_dim"), param_dtype)
        if cfg.attention_bias:
            self.o_bias = _zeros((e,), ("embed",), param_dtype)
        if cfg.family.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.family.norm_offset, dtype, param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, cfg.family.norm_offset, dtype, param_dtype)
        self.qkv_bias, self.o_bias_on, self.qk_norm = qkv_bias, cfg.attention_bias, cfg.family.qk_norm
        self.scale, self.softcap, self.dtype = cfg.query_scale, cfg.attn_softcap, dtype

    def __call__(self, x, positions, mask, key_positions, layer: "LayerData", cache_kv=None, cache_index=None,
                 lora: Lora | None = None):
        """`layer` is this layer's RoPE frequencies and window; with `cache_kv` (its keys, values),
        the new keys/values are written at `cache_index` and the updated pair is returned."""
        proj = lambda name: (contract(x, getattr(self, name)[...].astype(self.dtype), 1, self.dtype)
                             + lora_delta(x, lora, name, 1, self.dtype))
        q, k, v = proj("q"), proj("k"), proj("v")
        if self.qkv_bias:
            q, k, v = (t + b[...].astype(self.dtype) for t, b in ((q, self.q_bias), (k, self.k_bias), (v, self.v_bias)))
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, positions, layer.inv_freq), apply_rope(k, positions, layer.inv_freq)
        new_kv = None
        if cache_kv is not None:
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
            new_kv = (k, v)
        window = layer.window
        if mask is not None and window is not None:  # without a mask, slots are positions: attend applies it
            mask = mask & (positions[:, :, None] - key_positions[:, None, :] < window)
        out = attend(q, k.astype(self.dtype), v.astype(self.dtype), mask, self.scale, self.softcap, window)
        out = (contract(out, self.o[...].astype(self.dtype), 2, self.dtype)
               + lora_delta(out, lora, "o", 2, self.dtype))
        if self.o_bias_on:
            out = out + self.o_bias[...].astype(self.dtype)
        return out, new_kv


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
        e, f, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
        self.gate = _param(rngs, (e, f), ("embed", "mlp"), param_dtype, std)
        self.up = _param(rngs, (e, f), ("embed", "mlp"), param_dtype, std)
        self.down = _param(rngs, (f, e), ("mlp", "embed"), param_dtype, std)
        if cfg.mlp_bias:
            self.gate_bias = _zeros((f,), ("mlp",), param_dtype)
            self.up_bias = _zeros((f,), ("mlp",), param_dtype)
            self.down_bias = _zeros((e,), ("embed",), param_dtype)
        self.bias, self.activation, self.dtype = cfg.mlp_bias, cfg.activation, dtype

    def _linear(self, x, name, lora):
        y = contract(x, getattr(self, name)[...].astype(self.dtype), 1, self.dtype) + lora_delta(x, lora, name, 1, self.dtype)
        return y + getattr(self, f"{name}_bias")[...].astype(self.dtype) if self.bias else y

    def __call__(self, x, lora: Lora | None = None):
        gate = self._linear(x, "gate", lora)
        gate = jax.nn.silu(gate) if self.activation == "silu" else jax.nn.gelu(gate, approximate=True)
        return self._linear(gate * self._linear(x, "up", lora), "down", lora)


class Block(nnx.Module):
    """Pre-norm residual block; Gemma adds norms after attention and MLP, Granite scales residuals."""

    def __init__(self, cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs):
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.family.norm_offset, dtype, param_dtype)
        self.attn_norm, self.attn = norm(), Attention(cfg, dtype, param_dtype, rngs)
        self.mlp_norm, self.mlp = norm(), MLP(cfg, dtype, param_dtype, rngs)
        if cfg.family.sandwich_norms:
            self.attn_post_norm, self.mlp_post_norm = norm(), norm()
        self.sandwich, self.residual_scale = cfg.family.sandwich_norms, cfg.residual_scale

    def __call__(self, x, positions, mask, key_positions, layer, cache_kv=None, cache_index=None, lora=None):
        h, new_kv = self.attn(self.attn_norm(x), positions, mask, key_positions, layer, cache_kv, cache_index, lora)
        if self.sandwich:
            h = self.attn_post_norm(h)
        x = x + h * self.residual_scale if self.residual_scale != 1.0 else x + h
        h = self.mlp(self.mlp_norm(x), lora)
        if self.sandwich:
            h = self.mlp_post_norm(h)
        x = x + h * self.residual_scale if self.residual_scale != 1.0 else x + h
        return constrain(x, ACT_AXES), new_kv


def _stacked_blocks(cfg: ModelConfig, dtype, param_dtype, rngs: nnx.Rngs) -> Block:
    """One `Block` whose parameters have a leading `layers` axis (independently initialised)."""

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(rngs):
        return Block(cfg, dtype, param_dtype, rngs)

    blocks = make(rngs)
    for _, variable in nnx.to_flat_state(nnx.state(blocks, nnx.Param)):
        variable.set_metadata("logical_axes", (LAYER_AXIS, *variable.get_metadata()["logical_axes"]))
    return blocks


class LayerData(NamedTuple):
    """What differs between layers, scanned beside their parameters: RoPE inverse frequencies
    [D/2] and the sliding window (an int, a traced int where windows differ between layers, or
    None for full attention everywhere)."""

    inv_freq: jax.Array
    window: jax.Array | int | None


def layer_data(cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray | None, int | None]:
    """(inverse frequencies [layers, D/2], windows [layers] or None, the window shared by every
    layer). A window shared by all layers stays static, so causal attention can run fused."""
    inv_freq = np.stack([inverse_frequencies(rope, cfg.head_dim) for rope in cfg.layer_ropes])
    if len(set(cfg.layer_windows)) == 1:
        return inv_freq, None, cfg.layer_windows[0]
    windows = np.array([NO_WINDOW if w is None else w for w in cfg.layer_windows], np.int32)
    return inv_freq, windows, None


class Transformer(nnx.Module):
    """Decoder-only LM. `model(tokens)` -> logits [B, L, V] (float32).

    `remat` names what each block keeps for the backward pass, one of `REMAT_POLICIES`; `unroll`
    is how many layers each step of the layer scan runs (`jax.lax.scan`'s unroll; True = all,
    which compiles like a Python loop over the layers).
    """

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                 unroll: int | bool = 1, rngs: nnx.Rngs):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r}: unknown policy; use one of {', '.join(REMAT_POLICIES)}")
        if unroll is not True and (isinstance(unroll, bool) or int(unroll) < 1):
            raise ValueError(f"unroll={unroll!r}: a number of layers >= 1, or True for all of them")
        # an int (True would equal 1 in the static graph, and share its compiled programs)
        self.unroll = cfg.num_layers if unroll is True else min(int(unroll), cfg.num_layers)
        self.config, self.dtype, self.remat = cfg, jnp.dtype(dtype), remat
        std = cfg.initializer_range
        self.embed = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), param_dtype, std)
        self.layers = _stacked_blocks(cfg, self.dtype, param_dtype, rngs)
        self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.family.norm_offset, self.dtype, param_dtype)
        if not cfg.tie_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), param_dtype, std)

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache; slots hold position -1 until written."""
        cfg, dtype = self.config, dtype or self.dtype
        zeros = jnp.zeros((cfg.num_layers, batch_size, max_len, cfg.num_kv_heads, cfg.head_dim), dtype)
        return KVCache(zeros, zeros, jnp.full((batch_size, max_len), -1, jnp.int32))

    def __call__(self, tokens, positions=None, attention_mask=None, *, cache: KVCache | None = None, cache_index=0,
                 cache_rows=None, layer_offsets=None, lora: Lora | None = None):
        """Logits [B, L, V]; with a cache, also the updated cache.

        Without a cache, `attention_mask` is bool [B, L, L] (None = causal). With a cache, the L
        new tokens are written at slots [cache_index, cache_index + L) and `attention_mask` is
        bool [B, L, S] over all S cache slots (None = causal in slot order). `cache_rows` (int [B])
        lets row b continue cache row cache_rows[b] of a smaller cache: many continuations of one
        cached prefix (STAR's prefixes, several samples per prompt) without copying it B times.
        `lora`: adapters applied on top of the weights (`Lora`).
        """
        hidden, cache = self.hidden_states(tokens, positions, attention_mask, cache=cache, cache_index=cache_index,
                                           cache_rows=cache_rows, layer_offsets=layer_offsets, lora=lora)
        logits = self.logits(hidden)
        return logits if cache is None else (logits, cache)

    def hidden_states(self, tokens, positions=None, attention_mask=None, *, cache=None, cache_index=0, cache_rows=None,
                      layer_offsets=None, lora: Lora | None = None):
        """Final-layer hidden states before the last norm, [B, L, E]; lets callers unembed a subset.

        `layer_offsets` [num_layers, B, L, E] is added to each block's output (Vaccine's
        perturbation of the hidden states; its gradient is the gradient at each block's output).
        `lora`: adapters on the kernels, scanned with the layers (None = the weights alone).
        """
        b, l = tokens.shape
        inv_freq, windows, shared_window = layer_data(self.config)
        default_positions = positions is None
        if positions is None:
            positions = jnp.broadcast_to(cache_index + jnp.arange(l, dtype=jnp.int32), (b, l))
        positions = positions.astype(jnp.int32)
        if cache is not None:
            rows = (lambda x, axis: x) if cache_rows is None else (lambda x, axis: jnp.take(x, cache_rows, axis=axis))
            key_positions = jax.lax.dynamic_update_slice(rows(cache.positions, 0), positions, (0, cache_index))
            slots = jnp.arange(cache.positions.shape[1])
            causal = slots[None, :] <= cache_index + jnp.arange(l)[:, None]
            mask = causal[None] if attention_mask is None else attention_mask
            kv = (rows(cache.keys, 1), rows(cache.values, 1))
        else:
            key_positions, kv = positions, None
            if attention_mask is not None:
                mask = attention_mask
            elif default_positions and windows is None:
                mask = None  # plain causal self-attention (slot = position): `attend` may run it fused
            else:
                mask = causal_mask(l)[None]
        if mask is not None:
            mask = jnp.broadcast_to(mask, (b, l, key_positions.shape[1]))

        x = jnp.take(self.embed[...], tokens, axis=0).astype(self.dtype)
        if self.config.embed_scale != 1.0:
            x = x * jnp.asarray(self.config.embed_scale, self.dtype)
        x = constrain(x, ACT_AXES)
        graphdef, stacked = nnx.split(self.layers)

        def layer_step(carry, scanned):
            x, kv = carry
            params, index, inv_freq, window, offset, adapters = scanned
            block = nnx.merge(graphdef, params)
            data = LayerData(inv_freq, shared_window if window is None else window)
            layer_kv = None if kv is None else (kv[0][index], kv[1][index])
            layer_lora = None if lora is None else lora._replace(weights=adapters[0], key=adapters[1])
            x, new_kv = block(x, positions, mask, key_positions, data, layer_kv, cache_index, layer_lora)
            if kv is not None:  # written back in place: the cache is carried, not copied per layer
                kv = tuple(jax.lax.dynamic_update_index_in_dim(c, n, index, 0) for c, n in zip(kv, new_kv))
            if offset is not None:
                x = x + offset.astype(x.dtype)
            return (x, kv), None

        if self.remat != "none":
            layer_step = jax.checkpoint(layer_step, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        adapters = None if lora is None else (
            lora.weights, None if lora.key is None else jax.random.split(lora.key, self.config.num_layers))
        scanned = (stacked, jnp.arange(self.config.num_layers), jnp.asarray(inv_freq),
                   None if windows is None else jnp.asarray(windows), layer_offsets, adapters)
        (x, kv), _ = jax.lax.scan(layer_step, (x, kv), scanned, unroll=self.unroll)
        new_cache = None if cache is None else KVCache(kv[0], kv[1], key_positions)
        return x, new_cache

    def logits(self, hidden):
        """Final norm, unembedding (tied or not), Granite scaling and Gemma soft-capping, in float32."""
        cfg = self.config
        h = self.final_norm(hidden)
        if cfg.tie_embeddings:
            out = contract(h, self.embed[...].astype(self.dtype), 1, self.dtype, w_in_last=True, out_dtype=jnp.float32)
        else:
            out = contract(h, self.lm_head[...].astype(self.dtype), 1, self.dtype, out_dtype=jnp.float32)
        if cfg.logits_scale != 1.0:
            out = out * cfg.logits_scale
        if cfg.final_softcap is not None:
            out = jnp.tanh(out / cfg.final_softcap) * cfg.final_softcap
        return constrain(out, ("act_batch", "act_seq", "act_vocab"))
