"""LoRA (Hu et al. 2021): low-rank adapters trained beside a frozen base model.

Each adapted kernel W (`config.lora.targets`) gets factors a [layers, *in, r] and b [layers, r,
*out], stacked on the `layers` axis like W and sharded like it (the rank axis replicated); the
model runs W + alpha/r * a @ b (`Transformer(..., lora=)`). b starts at zero, so step 0 is the
base model. The adapters are a tree of their own, outside the model: the base model, its state,
its export, the landscape and STAR stay the plain `Transformer`, and the KL reference is the same
model called without `lora`, not a copy. `merged` folds the adapters into the weights for the
export; `to_peft` / `save_peft` write the adapter alone in PEFT's layout and `from_peft` reads it.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from etils import epath
from flax import nnx

from dss import sharding
from dss.sharding import place, to_host
from dss.models.checkpoint import hf_names
from dss.models.transformer import LORA_TARGETS, Lora, Transformer

RANK_AXIS = "lora_rank"
PEFT_PREFIX = "base_model.model."  # PEFT's name of the wrapped model in its state dict
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def scale(cfg) -> float:
    """alpha / rank, PEFT's `scaling` (no rsLoRA)."""
    return cfg.alpha / cfg.rank


def _path(target: str) -> tuple:
    return ("layers", "attn" if target in ("q", "k", "v", "o") else "mlp", target)


def _in_dims(target: str) -> int:
    """How many leading (after `layers`) axes of the kernel are its input: o is [heads, head_dim, embed]."""
    return 2 if target == "o" else 1


def kernel(model: Transformer, target: str) -> nnx.Param:
    """The stacked weight a target adapts, e.g. `model.layers.attn.q` for "q"."""
    _, module, name = _path(target)
    return getattr(getattr(model.layers, module), name)


def adapter_axes(kernel_axes: tuple, target: str) -> tuple[tuple, tuple]:
    """Logical axes of (a, b): a keeps the kernel's input axes, b its output axes."""
    n = 1 + _in_dims(target)
    return (*kernel_axes[:n], RANK_AXIS), (kernel_axes[0], RANK_AXIS, *kernel_axes[n:])


def init(cfg, model: Transformer, seed: int, mesh=None) -> dict:
    """Fresh adapters {target: {"a", "b"}} in the kernels' dtype, placed by `dss.sharding.RULES`
    on `mesh`: a uniform in +-1/sqrt(fan_in) (PEFT's kaiming-uniform with a = sqrt(5)), b zero.
    Drawn on the host from `seed` and the target, so every host draws the same. For an abstract
    model (`dss.plan`), ShapeDtypeStructs with those shapes, dtypes and shardings."""
    on_mesh = lambda shape, axes: None if mesh is None else sharding.named_sharding(axes, shape, mesh)
    weights = {}
    for target in cfg.targets:
        w = kernel(model, target)
        n = 1 + _in_dims(target)
        a_axes, b_axes = adapter_axes(w.get_metadata()["logical_axes"], target)
        a_shape, b_shape = (*w.shape[:n], cfg.rank), (w.shape[0], cfg.rank, *w.shape[n:])
        if isinstance(w.get_value(), jax.ShapeDtypeStruct):
            weights[target] = {"a": jax.ShapeDtypeStruct(a_shape, w.dtype, sharding=on_mesh(a_shape, a_axes)),
                               "b": jax.ShapeDtypeStruct(b_shape, w.dtype, sharding=on_mesh(b_shape, b_axes))}
            continue
        bound = 1.0 / math.sqrt(math.prod(w.shape[1:n]))  # fan_in: the kernel's input size
        rng = np.random.default_rng([seed, LORA_TARGETS.index(target)])
        a = rng.uniform(-bound, bound, a_shape).astype(w.dtype)
        weights[target] = {"a": place(a, on_mesh(a_shape, a_axes)),
                           "b": place(np.zeros(b_shape, w.dtype), on_mesh(b_shape, b_axes))}
    return weights


def apply(cfg, weights: dict, key=None) -> Lora:
    """The adapters as the model takes them; `key` (training) turns dropout on when its rate is > 0."""
    return Lora(weights, scale(cfg), cfg.dropout, key if cfg.dropout > 0 else None)


def dropout_keys(cfg, seed: int, step, count: int):
    """Dropout keys of optimizer step `step`, one per micro-batch (None without dropout): a function
    of the seed and step alone, so a resumed run draws the masks of an uninterrupted one."""
    if cfg is None or not cfg.dropout > 0:
        return None
    root = jax.random.split(jax.random.key(seed))[1]
    return jax.random.split(jax.random.fold_in(root, step), count)


def _delta(a, b):
    """sum_r a[l, ..., r] b[l, r, ...] in float32: the update of every layer, in the kernel's layout."""
    return jax.vmap(lambda a, b: jnp.tensordot(a, b, 1))(a.astype(jnp.float32), b.astype(jnp.float32))


@jax.jit
def _merge_kernels(kernels: dict, weights: dict, s):
    return {t: (w.astype(jnp.float32) + s * _delta(weights[t]["a"], weights[t]["b"])).astype(w.dtype)
            for t, w in kernels.items()}


def merged(model: Transformer, cfg, weights: dict) -> Transformer:
    """A copy of `model` with W + alpha/r * a @ b in every adapted kernel (what the export holds);
    `model` itself is left as it is."""
    out = nnx.clone(model)
    new = _merge_kernels({t: kernel(out, t)[...] for t in weights}, weights, scale(cfg))
    for target, value in new.items():
        kernel(out, target).set_value(value)
    return out


# ----------------------------------------------------------------------------- PEFT layout


def peft_module(model_config, target: str) -> str:
    """The HF module name pattern of a target, `model.layers.{i}.self_attn.q_proj`."""
    return hf_names(model_config)[_path(target)][0].removesuffix(".weight")


def peft_key(model_config, target: str, layer: int, factor: str) -> str:
    """PEFT's tensor name, e.g. `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`."""
    return f"{PEFT_PREFIX}{peft_module(model_config, target).format(i=layer)}.lora_{factor}.weight"


def to_peft(model_config, weights: dict) -> dict[str, np.ndarray]:
    """The adapters as PEFT stores them, per layer: lora_A [r, in] and lora_B [out, r], HF's flat
    head layout (row h * head_dim + d), so HF's W [out, in] becomes W + scale * lora_B @ lora_A.
    Every host takes part (the arrays are gathered)."""
    tensors = {}
    for target, ab in weights.items():
        a, b = to_host(ab["a"]), to_host(ab["b"])
        rank = a.shape[-1]
        for i in range(a.shape[0]):
            tensors[peft_key(model_config, target, i, "A")] = np.ascontiguousarray(a[i].reshape(-1, rank).T)
            tensors[peft_key(model_config, target, i, "B")] = np.ascontiguousarray(b[i].reshape(rank, -1).T)
    return tensors


def from_peft(model_config, tensors: dict[str, np.ndarray], like: dict) -> dict:
    """PEFT-layout tensors back in our layout, with the shapes, dtypes and shardings of `like`."""
    out = {}
    for target, ab in like.items():
        layers = range(ab["a"].shape[0])
        a = np.stack([tensors[peft_key(model_config, target, i, "A")].T.reshape(ab["a"].shape[1:]) for i in layers])
        b = np.stack([tensors[peft_key(model_config, target, i, "B")].T.reshape(ab["b"].shape[1:]) for i in layers])
        out[target] = {"a": place(a.astype(ab["a"].dtype), ab["a"].sharding),
                       "b": place(b.astype(ab["b"].dtype), ab["b"].sharding)}
    return out


def peft_config(cfg, model_config, base_model: str) -> dict:
    """adapter_config.json: what PEFT needs to rebuild the LoRA layers on `base_model`."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.rank, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "bias": "none", "use_rslora": False,
        "fan_in_fan_out": False, "inference_mode": True,
        "target_modules": sorted(peft_module(model_config, t).rsplit(".", 1)[1] for t in cfg.targets),
    }


def save_peft(tensors: dict[str, np.ndarray], cfg, model_config, base_model: str, out_dir) -> epath.Path:
    """adapter_config.json + adapter_model.safetensors in `out_dir`, a directory or gs://...
    (`peft.PeftModel.from_pretrained(base, out_dir)` loads it). The config goes last and an old
    one first, so an interrupted write never leaves a loadable adapter."""
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / PEFT_CONFIG).unlink(missing_ok=True)
    (out / PEFT_WEIGHTS).write_bytes(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    (out / PEFT_CONFIG).write_text(json.dumps(peft_config(cfg, model_config, base_model), indent=2))
    return out
