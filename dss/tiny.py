"""The tiny CPU assets behind `configs/tiny.py`, made on first use with no download.

A random Llama-family policy and a random Llama-Guard-3-style guardrail (same family), each an
HF directory with weights, config, a byte-level BPE tokenizer trained on the demo data, and its
chat template. They exercise the whole pipeline in minutes on a laptop; their numbers mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import transformers
from flax import nnx

from dss import assets, cache
from dss.atomic import atomic_dir
from dss.models import ModelConfig, Transformer, save_pretrained

VERSION = "v2"  # bump when the recipe changes, so old caches are not reused
DEMO_DATA = Path(__file__).parent / "data" / "demo.jsonl"


def cache_dir() -> Path:
    return cache.cache_root() / f"tiny-{VERSION}"


def _texts() -> list[str]:
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines() if line.strip()]
    texts = [str(v) for row in rows for v in row.values() if isinstance(v, str)]
    # the templates' own text, so they tokenize compactly as with a real vocabulary
    return texts + [assets.LLAMA_GUARD_3_TEMPLATE, assets.POLICY_CHAT_TEMPLATE] * 20


def _make(out: Path, template: str, seed: int, layers: int) -> None:
    with atomic_dir(out, keep_existing=True) as tmp:  # a process that loses the race keeps the winner's copy
        tok = assets.make_tokenizer(tmp, _texts(), vocab_size=1024, chat_template=template)
        hf = transformers.LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            initializer_range=0.05, tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                 high_freq_factor=4.0, original_max_position_embeddings=1024),
        )
        # this host's own copy: written whatever its process index (the model is not sharded)
        save_pretrained(Transformer(ModelConfig.from_hf(hf.to_dict()), rngs=nnx.Rngs(seed)), tmp, write=True)


# name -> (directory under the cache, chat template, init seed)
ASSETS = {
    "policy": ("policy", assets.POLICY_CHAT_TEMPLATE, 0),
    "guardrail": ("Llama-Guard-3-tiny", assets.LLAMA_GUARD_3_TEMPLATE, 1),
}


def asset(name: str) -> str:
    """Path of the tiny asset `name` (policy | guardrail), made atomically on first use. Configs
    name it as `tiny:<name>` (resolved by `dss.hub.resolve_path`), so reading a
    config builds nothing."""
    if name not in ASSETS:
        raise ValueError(f"tiny:{name}: unknown tiny asset; use one of {[f'tiny:{n}' for n in ASSETS]}")
    directory, template, seed = ASSETS[name]
    path = cache_dir() / directory
    if not path.exists():
        _make(path, template, seed=seed, layers=2)
    return str(path)


def ensure_assets() -> dict[str, str]:
    """Paths of every tiny asset, made if missing."""
    return {name: asset(name) for name in ASSETS}
