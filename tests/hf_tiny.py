"""Tiny random Hugging Face checkpoints, one per supported family, made and saved by the tests."""

from __future__ import annotations

import torch
import transformers

VOCAB = 320

COMMON = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=2048, initializer_range=0.2, rms_norm_eps=1e-5,
)

CONFIGS = {
    # Llama 3.1-style RoPE with a small original context, so the scaled band is exercised at 256+ tokens
    "llama": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=64),
    ),
    "llama_linear_tied": lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
    ),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=96, tie_word_embeddings=False),
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=1000000.0),
    "qwen3": lambda: transformers.Qwen3Config(**{**COMMON, "head_dim": 32}, tie_word_embeddings=False),
    "granite": lambda: transformers.GraniteConfig(
        **COMMON, tie_word_embeddings=True, embedding_multiplier=12.0, residual_multiplier=0.22,
        attention_multiplier=0.0078125, logits_scaling=8.0,
    ),
    "gemma2": lambda: transformers.Gemma2Config(
        **{**COMMON, "num_hidden_layers": 4, "head_dim": 32}, query_pre_attn_scalar=24, sliding_window=64,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
    ),
    "gemma3_text": lambda: transformers.Gemma3TextConfig(
        **{**COMMON, "num_hidden_layers": 6, "head_dim": 32}, query_pre_attn_scalar=32, sliding_window=64,
        sliding_window_pattern=3,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
    ),
}


def make_hf_model(name: str, out_dir, seed: int = 0):
    """Build the named tiny HF model with random weights, save it to out_dir, return it (eval, fp32)."""
    torch.manual_seed(seed)
    config = CONFIGS[name]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():  # HF zero-initialises norm gains and biases; random ones catch more bugs
        for pname, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def hf_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        out = model(torch.as_tensor(tokens), attention_mask=attention_mask)
    return out.logits.float().numpy()
