"""Directions in weight space, and the models perturbed along them.

Directions. `random_direction`: a Gaussian tensor per weight of each layer, each rescaled to that
weight's Frobenius norm ("layer" normalisation, Peng et al.'s choice); RMSNorm gains get zero;
embeddings, head and biases are perturbed (tied weights exist once, so they are perturbed once).
The blocks' weights are stacked ("layers/attn/q" is [layers, ...]): each layer's slice is one
weight here, drawn from a generator seeded by (seed, "layers/<i>/attn/q") and normalised on its
own, so its values depend neither on the other tensors, nor on the mesh, nor on the stacking.
Directions are saved as safetensors keyed by parameter name (`<workdir>/directions/
random-seed<k>.safetensors`) and reused when present, so a landscape can be recomputed, refined
or extended to 2D with the same first direction, or evaluated on another model by pointing
`direction_dir` at the first model's directions. `interpolation_direction`: target - theta over
every tensor (norm gains included), so a = 1 is the target checkpoint (base -> aligned, aligned ->
finetuned); these are recomputed from the checkpoints rather than saved.

Perturbed models (`Perturbation`). Each point's weights are computed on device from the centre
weights as theta + a*d1 + b*d2 in float32 (never by accumulating steps in place, which drifts)
with the model's own shardings; the centre point is bitwise the original model. Which points are
evaluated, batched and resumed is `dss.landscape.job`'s business.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from dss.atomic import atomic_file
from dss.sharding import place, to_host
from dss.models.transformer import RMSNorm


STACKED = "layers/"  # names of the stacked blocks' weights: axis 0 is the layer


def _name(path) -> str:
    return "/".join(map(str, path))


def _per_slice(name: str) -> bool:
    return name.startswith(STACKED)


def _slice_axes(name: str, x) -> tuple[int, ...] | None:
    """The axes one weight spans: all but the layer axis of a stacked tensor, else all (None)."""
    return tuple(range(1, x.ndim)) if _per_slice(name) else None


def weights(model) -> dict[str, jax.Array]:
    """The model's parameters by name ("layers/attn/q" is every layer's q), as stored (no copy)."""
    return {_name(p): v[...] for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def norm_gain_names(model) -> set[str]:
    """Names of the RMSNorm gains, which random directions leave unperturbed."""
    return {_name(path + ("weight",)) for path, module in nnx.iter_modules(model) if isinstance(module, RMSNorm)}


@dataclasses.dataclass
class Direction:
    """A direction in weight space: one tensor per parameter name, laid out like the model's.

    `kind` is "random" or "interpolation"; `meta` says how it was made (seed, source model, target).
    """

    name: str
    kind: str
    tensors: dict[str, jax.Array]
    meta: dict = dataclasses.field(default_factory=dict)

    def norm(self) -> float:
        return float(np.sqrt(_dot(self.tensors, self.tensors)))


@jax.jit
def _dot(a: dict, b: dict) -> jax.Array:
    """Inner product of two directions seen as single vectors (float32)."""
    return sum(jnp.vdot(a[k].astype(jnp.float32), b[k].astype(jnp.float32)) for k in sorted(a))


def _shardings(tensors: dict[str, jax.Array]) -> dict:
    return {k: v.sharding for k, v in tensors.items()}


@jax.jit
def _norms(tensors):
    """Frobenius norm of each weight: [layers] for stacked tensors (one per layer), else a scalar."""
    return {k: jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=_slice_axes(k, v))) for k, v in tensors.items()}


def _gaussian_like(seed: int, name: str, shape, norm: float) -> np.ndarray:
    """A float32 Gaussian of `shape` from (seed, name), rescaled to Frobenius norm `norm`."""
    d = np.random.default_rng([int(seed), zlib.crc32(name.encode())]).standard_normal(shape, np.float32)
    return d * np.float32(norm / np.linalg.norm(d.astype(np.float64)))


def random_direction(model, seed: int, dtype="float32") -> Direction:
    """Gaussian direction, each tensor rescaled to the Frobenius norm of its weight; gains zero.

    Tensor `name` is drawn on the host from numpy's PCG64 seeded with (seed, crc32(name)) and
    scaled there in float32, so the values depend on neither the parameter order, nor the mesh,
    nor the JAX version, and nothing is compiled (threefry kernels take seconds per shape to
    compile on CPU). About 10 s per billion parameters; the result is saved and reused.
    """
    theta, gains, dtype = weights(model), norm_gain_names(model), np.dtype(jnp.dtype(dtype))
    norms = {k: np.asarray(v, np.float64) for k, v in _norms(theta).items()}
    tensors = {}
    for name, w in theta.items():
        if name in gains:
            d = np.zeros(w.shape, dtype)
        elif _per_slice(name):
            rest = name.removeprefix(STACKED)
            d = np.stack([_gaussian_like(seed, f"{STACKED}{i}/{rest}", w.shape[1:], norms[name][i])
                          for i in range(w.shape[0])]).astype(dtype)
        else:
            d = _gaussian_like(seed, name, w.shape, float(norms[name])).astype(dtype)
        tensors[name] = place(d, w.sharding)
    return Direction(f"random-seed{int(seed)}", "random", tensors, {"seed": int(seed)})


def interpolation_direction(model, target, name: str = "interp") -> Direction:
    """target - model over every parameter (norm gains too), in float32, so model + 1 * d is the
    target (exactly, for bfloat16 checkpoints)."""
    theta, other = weights(model), weights(target)
    if set(theta) != set(other):
        raise ValueError(f"interpolation {name!r}: parameter names differ: "
                         f"{sorted(set(theta) ^ set(other))[:5]}")
    for k in theta:
        if theta[k].shape != other[k].shape:
            raise ValueError(f"interpolation {name!r}: tensor {k!r} has shape {other[k].shape} in the target, "
                             f"{theta[k].shape} in the model")
    diff = jax.jit(lambda a, b: {k: b[k].astype(jnp.float32) - a[k].astype(jnp.float32) for k in a},
                   out_shardings=_shardings(theta))
    return Direction(name, "interpolation", diff(theta, other))


def cosine(d1: Direction, d2: Direction) -> float:
    """Cosine between two directions seen as single vectors over all tensors."""
    return float(_dot(d1.tensors, d2.tensors)) / (d1.norm() * d2.norm())


def orthogonalize(d2: Direction, d1: Direction) -> Direction:
    """Gram-Schmidt weight by weight (each layer's slice of a stacked tensor on its own): each
    slice of d2 loses its component along d1's slice and is rescaled to its former norm.
    Per-weight orthogonality makes the whole vectors orthogonal and keeps the layer
    normalisation of a random direction."""

    def ratio(num, den):  # num / den, and 0 for the all-zero slices (norm gains, zero biases)
        return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

    @functools.partial(jax.jit, out_shardings=_shardings(d2.tensors))
    def project(a, b):
        out = {}
        for k, y in b.items():
            x, yf = a[k].astype(jnp.float32), y.astype(jnp.float32)
            axes = _slice_axes(k, y)
            dot = lambda u, v: jnp.sum(u * v, axis=axes, keepdims=True)  # noqa: E731
            z = yf - ratio(dot(x, yf), dot(x, x)) * x
            out[k] = (z * ratio(jnp.sqrt(dot(yf, yf)), jnp.sqrt(dot(z, z)))).astype(y.dtype)
        return out

    return Direction(d2.name, d2.kind, project(d1.tensors, d2.tensors), {**d2.meta, "orthogonal_to": d1.name})


def save_direction(direction: Direction, path) -> Path:
    """Write the direction as safetensors keyed by parameter name (atomically; process 0 only)."""
    path = Path(path)
    tensors = {k: np.ascontiguousarray(to_host(v)) for k, v in direction.tensors.items()}
    if jax.process_index() != 0:
        return path
    metadata = {"name": direction.name, "kind": direction.kind, "meta": json.dumps(direction.meta)}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_direction(path, model, dtype=None) -> Direction:
    """A saved direction, placed with the model's parameter shardings; its tensor names and shapes
    must be exactly the model's."""
    path, theta = Path(path), weights(model)
    with safe_open(path, framework="numpy") as f:
        meta, names = f.metadata() or {}, set(f.keys())
        if names != set(theta):
            raise ValueError(f"{path}: tensors do not match the model: missing {sorted(set(theta) - names)[:5]}, "
                             f"extra {sorted(names - set(theta))[:5]}")
        tensors = {}
        for k, w in theta.items():
            value = f.get_tensor(k)
            if value.shape != w.shape:
                raise ValueError(f"{path}: tensor {k!r} has shape {value.shape}, the model's is {w.shape}")
            if dtype is not None:
                value = value.astype(jnp.dtype(dtype))
            tensors[k] = place(value, w.sharding)
    return Direction(meta.get("name", path.stem), meta.get("kind", "random"), tensors,
                     json.loads(meta.get("meta", "{}")))


class Perturbation:
    """The centre model and its directions; `model_at(coeffs)` is theta + sum_k coeffs[k] * d_k.

    Each call computes the weights afresh from theta on device (float32 arithmetic, cast back to
    the parameter dtype) with the model's shardings, so no error builds up over a grid and
    `model_at((0, ...))` is bitwise the original model.
    """

    def __init__(self, model, directions: Sequence[Direction]):
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        self.flat = nnx.to_flat_state(params)
        self.theta = {_name(p): v[...] for p, v in self.flat}
        self.directions = tuple(d.tensors for d in directions)
        for d in directions:
            if set(d.tensors) != set(self.theta):
                raise ValueError(f"direction {d.name!r} does not match the model's parameters")

        def combine(theta, dirs, coeffs):
            out = {}
            for k, w in theta.items():
                acc = w.astype(jnp.float32)
                for i, d in enumerate(dirs):
                    acc = acc + coeffs[i] * d[k].astype(jnp.float32)
                out[k] = acc.astype(w.dtype)
            return out

        self._combine = jax.jit(combine, out_shardings=_shardings(self.theta))

    def weights_at(self, coeffs: Sequence[float]) -> dict[str, jax.Array]:
        if len(coeffs) != len(self.directions):
            raise ValueError(f"{len(coeffs)} coefficients for {len(self.directions)} directions")
        return self._combine(self.theta, self.directions, jnp.asarray(coeffs, jnp.float32))

    def model_at(self, coeffs: Sequence[float]):
        values = self.weights_at(coeffs)
        params = nnx.from_flat_state([(p, v.replace(values[_name(p)])) for p, v in self.flat])
        return nnx.merge(self.graphdef, params, self.rest)
