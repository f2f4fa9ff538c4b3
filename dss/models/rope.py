"""Rotary position embeddings (HF "rotate half" layout) with default, linear and llama3 scaling."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dss.models.config import Rope


def inverse_frequencies(rope: Rope, head_dim: int) -> np.ndarray:
    """Per-pair inverse frequencies [head_dim // 2], float32 as HF computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (1.0 / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.kind == "linear":
        return (inv / np.float32(rope.factor)).astype(np.float32)
    if rope.kind == "llama3":
        return _llama3_scaling(inv, rope)
    return inv


def _llama3_scaling(inv: np.ndarray, rope: Rope) -> np.ndarray:
    """Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate in between."""
    old_len = rope.original_max_position
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


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
