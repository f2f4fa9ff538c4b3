"""Rotary position embeddings (HF "rotate half" layout) with default, linear and llama3 scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dss.models.config import Rope


def inverse_frequencies(rope: Rope, head_dim: int) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2] in float32, as HF's PyTorch computes them: a
    one-ulp change in a frequency moves the angle at position 300 by ~1e-5 rad, more than float32
    rounding anywhere else in a layer.

    PyTorch's float32 pow is nearly always correctly rounded and numpy's often is not, so the
    power is taken in float64 and rounded once (1 ulp from PyTorch's in ~0.3% of frequencies)."""
    exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    inv = np.float32(1) / (np.float64(rope.theta) ** exponents.astype(np.float64)).astype(np.float32)
    if rope.kind == "linear":
        return (inv / np.float32(rope.factor)).astype(np.float32)
    if rope.kind == "llama3":
        return _llama3_scaling(inv, rope)
    return inv


def _llama3_scaling(inv: np.ndarray, rope: Rope) -> np.ndarray:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between.

    In float32 step by step as HF's PyTorch does it (`scalar / tensor` is `reciprocal(tensor) *
    scalar` there)."""
    f32 = np.float32
    over = lambda scalar, tensor: (f32(1) / tensor) * f32(scalar)
    old_len = rope.original_max_position
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = over(2 * math.pi, inv)
    scaled = np.where(wavelen > low_wavelen, inv / f32(rope.factor), inv)
    smooth = (over(old_len, wavelen) - f32(rope.low_freq_factor)) / f32(rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (f32(1) - smooth) * scaled / f32(rope.factor) + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, inv_freq: np.ndarray) -> jnp.ndarray:
    """Rotate x [B, L, heads..., D] by the angles of `positions` [B, L]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, L, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)
    extra = x.ndim - angles.ndim  # broadcast over the head axes
    angles = angles.reshape(angles.shape[:2] + (1,) * extra + angles.shape[2:])
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
