"""Hugging Face checkpoints <-> `Transformer`: safetensors import (optionally straight onto a mesh)
and export that `transformers.AutoModelForCausalLM.from_pretrained` loads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from dss import sharding as shd
from dss.atomic import atomic_file
from dss.errors import MissingPath
from dss.files import names_local_path
from dss.models.config import ModelConfig
from dss.models.transformer import Transformer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints carry


class Layout(NamedTuple):
    """How one tensor is stored in HF ([out, in] linears, fused head dims) vs. in our model."""

    to_ours: Callable[[np.ndarray, tuple], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple], tuple]


COPY = Layout(lambda w, s: w, lambda w: w, lambda s: s)
TRANSPOSE = Layout(lambda w, s: w.T, lambda w: w.T, lambda s: s[::-1])
HEADS_IN = Layout(  # q/k/v: HF [H*D, E] <-> ours [E, H, D]
    lambda w, s: w.T.reshape(s), lambda w: w.reshape(w.shape[0], -1).T, lambda s: (s[1] * s[2], s[0])
)
HEADS_OUT = Layout(  # o: HF [E, H*D] <-> ours [H, D, E]
    lambda w, s: w.T.reshape(s), lambda w: w.reshape(-1, w.shape[-1]).T, lambda s: (s[2], s[0] * s[1])
)
HEADS_BIAS = Layout(lambda w, s: w.reshape(s), lambda w: w.reshape(-1), lambda s: (s[0] * s[1],))


def hf_names(cfg: ModelConfig) -> dict[tuple, tuple[str, Layout]]:
    """Our parameter path -> (HF tensor name, layout), for every parameter the config creates.

    Paths under "layers" are the stacked blocks: their name holds `{i}`, one HF tensor per layer
    (slice i of the stack)."""
    names = {("embed",): ("model.embed_tokens.weight", COPY), ("final_norm", "weight"): ("model.norm.weight", COPY)}
    if not cfg.tie_embeddings:
        names[("lm_head",)] = ("lm_head.weight", TRANSPOSE)
    hf, ours = "model.layers.{i}.", ("layers",)
    norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    if cfg.family.sandwich_norms:
        norms = {"attn_norm": "input_layernorm", "attn_post_norm": "post_attention_layernorm",
                 "mlp_norm": "pre_feedforward_layernorm", "mlp_post_norm": "post_feedforward_layernorm"}
    for our, theirs in norms.items():
        names[ours + (our, "weight")] = (hf + theirs + ".weight", COPY)
    for p in "qkv":
        names[ours + ("attn", p)] = (f"{hf}self_attn.{p}_proj.weight", HEADS_IN)
        if cfg.attention_bias or cfg.family.qkv_bias:
            names[ours + ("attn", f"{p}_bias")] = (f"{hf}self_attn.{p}_proj.bias", HEADS_BIAS)
    names[ours + ("attn", "o")] = (f"{hf}self_attn.o_proj.weight", HEADS_OUT)
    if cfg.attention_bias:
        names[ours + ("attn", "o_bias")] = (f"{hf}self_attn.o_proj.bias", COPY)
    if cfg.family.qk_norm:
        for p in "qk":
            names[ours + ("attn", f"{p}_norm", "weight")] = (f"{hf}self_attn.{p}_norm.weight", COPY)
    for p in ("gate", "up", "down"):
        names[ours + ("mlp", p)] = (f"{hf}mlp.{p}_proj.weight", TRANSPOSE)
        if cfg.mlp_bias:
            names[ours + ("mlp", f"{p}_bias")] = (f"{hf}mlp.{p}_proj.bias", COPY)
    return names


def hf_tensor_names(cfg: ModelConfig, our_path: tuple) -> list[str]:
    """The HF tensor(s) behind one of our parameters: one per layer for the stacked blocks."""
    name = hf_names(cfg)[our_path][0]
    return [name.format(i=i) for i in range(cfg.num_layers)] if our_path[0] == "layers" else [name]


class SafetensorsDir:
    """Lazy view of a (possibly sharded) safetensors checkpoint; errors name the file and key."""

    def __init__(self, path: Path):
        self.path = path
        index = path / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e})") from e
            self.files = {key: path / name for key, name in weight_map.items()}
            for f in set(self.files.values()):
                if not f.exists():
                    raise FileNotFoundError(f"{index} lists {f.name}, which does not exist")
        else:
            files = sorted(path.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
            self.files = {key: f for f in files for key in self._keys(f)}

    @staticmethod
    def _keys(file: Path) -> list[str]:
        try:
            with safe_open(file, framework="numpy") as f:
                return list(f.keys())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: cannot read safetensors file ({e})") from e

    def get(self, key: str) -> np.ndarray:
        return self._read(key, lambda f: f.get_tensor(key))

    def shape(self, key: str) -> tuple:
        """A tensor's shape, from the file's header alone."""
        return self._read(key, lambda f: tuple(f.get_slice(key).get_shape()))

    def _read(self, key: str, fn):
        file = self.files[key]
        try:
            with safe_open(file, framework="numpy") as f:
                return fn(f)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{file}: cannot read tensor {key!r} ({e})") from e


def model_dir(path: str | os.PathLike) -> Path:
    """A local directory as is; anything else is taken as a Hugging Face Hub repo id and fetched
    (weights, configs, tokenizer files). Other names (`tiny:<name>`) are `dss.hub.resolve_path`'s."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if names_local_path(path):
        raise MissingPath(f"{path}: not a model directory")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # offline, gated, misspelt: say which path failed, keep the hub's reason
        raise MissingPath(f"{path}: not a local directory, and fetching it from the Hugging Face Hub failed: "
                          f"{' '.join(str(e).split())}") from e


def read_config(path: Path) -> ModelConfig:
    """The `ModelConfig` of an HF directory's config.json."""
    config_file = Path(path) / "config.json"
    if not config_file.exists():
        raise MissingPath(f"{path}: no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as e:
        raise ValueError(f"{config_file}: invalid JSON ({e})") from e
    return ModelConfig.from_hf(raw, source=str(config_file))


def _shapes(cfg: ModelConfig, dtype, param_dtype, remat, unroll) -> Transformer:
    return nnx.eval_shape(lambda: Transformer(cfg, dtype=dtype, param_dtype=param_dtype, remat=remat, unroll=unroll,
                                              rngs=nnx.Rngs(0)))


def abstract_pretrained(path, dtype="float32", param_dtype=None, mesh=None, rules=None, remat="none",
                        unroll: int | bool = 1) -> Transformer:
    """The `Transformer` that `load_pretrained` would return, from config.json alone: every
    parameter a ShapeDtypeStruct with the dtype and (with a mesh) the NamedSharding the loaded one
    would have; no weights are read. What `dss.plan` compiles a run's programs with."""
    model = _shapes(read_config(path), dtype, jnp.dtype(param_dtype or dtype), remat, unroll)
    for _, variable in nnx.to_flat_state(nnx.state(model)):
        value = variable.get_value()
        where = None if mesh is None else shd.named_sharding(variable.get_metadata().get("logical_axes"), value.shape,
                                                              mesh, rules)
        variable.set_value(jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=where))
    return model


def load_pretrained(path, dtype="float32", param_dtype=None, mesh=None, rules=None, remat="none",
                    unroll: int | bool = 1) -> Transformer:
    """Load an HF directory (or hub id) as a `Transformer` computing in `dtype`.

    Parameters are stored in `param_dtype` (default: `dtype`). With a mesh, every tensor is
    placed shard by shard by `dss.sharding.RULES` (or `rules`), never whole on one device.
    `remat` is the block rematerialisation policy (`dss.models.transformer.REMAT_POLICIES`);
    `unroll` the layers per step of the layer scan.
    """
    path = model_dir(path)
    cfg = read_config(path)
    param_dtype = jnp.dtype(param_dtype or dtype)
    graphdef, state = nnx.split(_shapes(cfg, dtype, param_dtype, remat, unroll))

    tensors, names = SafetensorsDir(path), hf_names(cfg)
    expected = {hf for our_path in names for hf in hf_tensor_names(cfg, our_path)}
    unexpected = sorted(
        k for k in tensors.files
        if k not in expected and not k.endswith(IGNORED_SUFFIXES) and not (cfg.tie_embeddings and k == "lm_head.weight")
    )
    if unexpected:
        raise ValueError(f"{tensors.files[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} for {cfg.model_type}")

    flat = nnx.to_flat_state(state)
    for our_path, variable in flat:
        layout = names[our_path][1]
        stacked = our_path[0] == "layers"
        shape = tuple(variable.shape)[1:] if stacked else tuple(variable.shape)
        slices = []
        for hf_key in hf_tensor_names(cfg, our_path):
            if hf_key not in tensors.files:
                raise KeyError(f"{path}: missing tensor {hf_key!r} (model_type {cfg.model_type})")
            value = tensors.get(hf_key)
            if tuple(value.shape) != tuple(layout.hf_shape(shape)):
                raise ValueError(
                    f"{tensors.files[hf_key]}: tensor {hf_key!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(layout.hf_shape(shape))} from config.json"
                )
            slices.append(layout.to_ours(value, shape).astype(param_dtype))
        value = np.ascontiguousarray(np.stack(slices) if stacked else slices[0])
        where = None if mesh is None else shd.named_sharding(variable.get_metadata().get("logical_axes"), value.shape, mesh, rules)
        variable.set_value(shd.place(value, where))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def llama_config(**fields) -> ModelConfig:
    """A Llama-family config from `transformers.LlamaConfig`'s fields, its defaults for the rest."""
    import transformers

    return ModelConfig.from_hf(transformers.LlamaConfig(**fields).to_dict())


def save_random_llama(out_dir, tokenizer, *, seed: int, write: bool | None = None, **fields) -> Path:
    """A randomly initialised Llama-family checkpoint with `tokenizer`'s vocabulary and special
    tokens (dss.tiny's assets, the miniature's models, the bench's guardrails); `fields` are
    `transformers.LlamaConfig`'s (a `vocab_size` among them replaces the tokenizer's), `write` as
    in `save_pretrained`. The tokenizer is not written."""
    cfg = llama_config(**{"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
                          "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **fields})
    return save_pretrained(Transformer(cfg, rngs=nnx.Rngs(seed)), out_dir, write=write)


def save_pretrained(model: Transformer, out_dir, dtype=None, max_shard_bytes: int = 5 * 2**30,
                    write: bool | None = None) -> Path:
    """Write config.json + safetensors (sharded above `max_shard_bytes`) that transformers loads.

    Every file is written under a temporary name and renamed into place, so a crash never leaves
    a half-written checkpoint; files of an earlier export that are no longer part of it are removed.
    On several hosts every host must call it (the gather is a collective) and, by default
    (`write=None`), only process 0 writes; `write=True` writes a host's own unsharded copy.
    """
    cfg, out_dir = model.config, Path(out_dir)
    names = hf_names(cfg)
    tensors = {}
    for our_path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        layout, value = names[our_path][1], shd.to_host(variable[...])
        slices = value if our_path[0] == "layers" else [value]
        for hf_key, piece in zip(hf_tensor_names(cfg, our_path), slices, strict=True):
            tensors[hf_key] = np.ascontiguousarray(layout.to_hf(piece).astype(dtype or value.dtype))
    if not (jax.process_index() == 0 if write is None else write):  # every host gathers; process 0 writes
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    shards, current, size = [], {}, 0
    for key in sorted(tensors):
        if current and size + tensors[key].nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = tensors[key]
        size += tensors[key].nbytes
    shards.append(current)
    files = [SINGLE_FILE] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]

    hf_config = cfg.hf_config
    hf_config["dtype"] = str(next(iter(tensors.values())).dtype)
    hf_config.pop("torch_dtype", None)
    for name, shard in zip(files, shards):
        with atomic_file(out_dir / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
    if len(files) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {k: files[i] for i, shard in enumerate(shards) for k in shard}}
        with atomic_file(out_dir / INDEX_FILE) as tmp:
            tmp.write_text(json.dumps(index, indent=2))
    with atomic_file(out_dir / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2))
    for stale in out_dir.glob("model*.safetensors*"):
        if stale.name not in files and not (len(files) > 1 and stale.name == INDEX_FILE):
            stale.unlink()
    return out_dir

