"""One architecture description for every supported Hugging Face family.

`ModelConfig.from_hf` reads an HF config (parsed by `transformers.AutoConfig`, which also
normalises legacy fields such as `rope_scaling`) and fills the handful of switches in which the
families differ. The table `FAMILIES` is the only place that names a family.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import transformers


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model_type changes relative to a plain Llama block."""

    norm_offset: float = 0.0  # Gemma RMSNorm scales by (1 + w)
    sandwich_norms: bool = False  # Gemma: extra RMSNorm after attention and after the MLP
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over head_dim on q and k
    qkv_bias: bool = False  # Qwen2: bias on q, k, v (not o)
    embed_scale_sqrt_hidden: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    sliding_all_layers: bool = False  # Mistral: `sliding_window` applies to every layer


FAMILIES: dict[str, Family] = {
    "llama": Family(),
    "mistral": Family(sliding_all_layers=True),
    "qwen2": Family(qkv_bias=True),
    "qwen3": Family(qk_norm=True),
    "granite": Family(),
    "gemma2": Family(norm_offset=1.0, sandwich_norms=True, embed_scale_sqrt_hidden=True),
    "gemma3_text": Family(norm_offset=1.0, sandwich_norms=True, qk_norm=True, embed_scale_sqrt_hidden=True),
}

ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}

ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Rope:
    """Rotary embedding of one layer: base, scaling type and its parameters."""

    theta: float
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    activation: str
    family: Family
    layer_windows: tuple[int | None, ...]  # sliding window per layer (None = full attention)
    layer_ropes: tuple[Rope, ...]
    query_scale: float  # multiplies q.k before softmax
    attention_bias: bool = False  # Llama/Granite `attention_bias`: bias on q, k, v and o
    mlp_bias: bool = False
    tie_embeddings: bool = False
    embed_scale: float = 1.0
    residual_scale: float = 1.0  # Granite residual_multiplier
    logits_scale: float = 1.0  # Granite: 1 / logits_scaling
    attn_softcap: float | None = None
    final_softcap: float | None = None
    initializer_range: float = 0.02
    hf_config_json: str = "{}"  # the source config, written back on export

    @property
    def hf_config(self) -> dict[str, Any]:
        return json.loads(self.hf_config_json)

    @classmethod
    def from_hf(cls, hf: transformers.PretrainedConfig | dict, source: str = "config") -> "ModelConfig":
        """Map an HF config (object or config.json dict) to a ModelConfig; `source` names it in errors."""
        if isinstance(hf, dict):
            model_type = hf.get("model_type")
            if model_type not in FAMILIES:
                raise _unsupported(model_type, source)
            hf = transformers.AutoConfig.for_model(**hf)
        model_type = hf.model_type
        if model_type not in FAMILIES:
            raise _unsupported(model_type, source)
        fam = FAMILIES[model_type]
        g = lambda key, default=None: getattr(hf, key, default) if getattr(hf, key, None) is not None else default

        num_heads = hf.num_attention_heads
        head_dim = g("head_dim") or hf.hidden_size // num_heads
        n = hf.num_hidden_layers
        act_name = g("hidden_activation") or g("hidden_act", "silu")
        if act_name not in ACTIVATIONS:
            raise ValueError(f"{source}: unsupported activation {act_name!r} (supported: {sorted(ACTIVATIONS)})")

        layer_types = list(g("layer_types") or [])
        window = g("sliding_window")
        if fam.sliding_all_layers:
            windows = tuple([window] * n)
        elif layer_types:
            windows = tuple(window if t == "sliding_attention" else None for t in layer_types)
        else:
            windows = (None,) * n
        layer_types = layer_types or ["full_attention"] * n
        ropes = tuple(_rope_for(hf, t, source) for t in layer_types)

        if model_type == "granite":
            query_scale = float(g("attention_multiplier", head_dim**-0.5))
        elif g("query_pre_attn_scalar") is not None:
            query_scale = float(hf.query_pre_attn_scalar) ** -0.5
        else:
            query_scale = head_dim**-0.5

        tie = bool(getattr(hf, "tie_word_embeddings", False))
        return cls(
            model_type=model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=n,
            num_heads=num_heads,
            num_kv_heads=g("num_key_value_heads", num_heads),
            head_dim=head_dim,
            rms_norm_eps=float(hf.rms_norm_eps),
            activation=ACTIVATIONS[act_name],
            family=fam,
            layer_windows=windows,
            layer_ropes=ropes,
            query_scale=query_scale,
            attention_bias=bool(g("attention_bias", False)) and model_type != "qwen2",
            mlp_bias=bool(g("mlp_bias", False)),
            tie_embeddings=tie,
            embed_scale=math.sqrt(hf.hidden_size) if fam.embed_scale_sqrt_hidden else float(g("embedding_multiplier", 1.0)),
            residual_scale=float(g("residual_multiplier", 1.0)),
            logits_scale=1.0 / float(g("logits_scaling", 1.0)),
            attn_softcap=g("attn_logit_softcapping"),
            final_softcap=g("final_logit_softcapping"),
            initializer_range=float(g("initializer_range", 0.02)),
            hf_config_json=json.dumps(hf.to_dict(), sort_keys=True, default=str),
        )


def _unsupported(model_type, source) -> ValueError:
    return ValueError(f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(FAMILIES)}")


def _rope_for(hf, layer_type: str, source: str) -> Rope:
    params = getattr(hf, "rope_parameters", None) or {}
    if layer_type in params and isinstance(params[layer_type], dict):  # per-layer-type (Gemma 3)
        params = params[layer_type]
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ValueError(f"{source}: unsupported rope type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
    theta = params.get("rope_theta", getattr(hf, "rope_theta", None) or 10000.0)
    return Rope(
        theta=float(theta),
        kind=kind,
        factor=float(params.get("factor") or 1.0),
        low_freq_factor=float(params.get("low_freq_factor") or 1.0),
        high_freq_factor=float(params.get("high_freq_factor") or 4.0),
        original_max_position=int(params.get("original_max_position_embeddings") or 8192),
    )
