"""What the Lisa and Vaccine tests share: the tiny config and its asset cache, a tiny random model,
random batches, an "optimizer" that hands back the step's gradient, and a small alignment set."""

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import dss.models
from dss import data, files
from overrides import override

REPO = Path(__file__).resolve().parents[1]
REFUSAL = "I can't help with that. It could hurt people, and I won't assist with it."

# Its state after a step is that step's gradient (clipping and learning rate play no part).
RECORD_GRADS = optax.GradientTransformation(
    init=lambda params: jax.tree.map(jnp.zeros_like, params),
    update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def use_shared_cache(tmp_path_factory) -> None:
    """Point $DSS_CACHE at one directory for all baseline tests of the session: the tiny assets
    are built once."""
    path = tmp_path_factory.getbasetemp() / "baselines_dss_cache"
    path.mkdir(exist_ok=True)
    os.environ["DSS_CACHE"] = str(path)


def tiny_config(**overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    return override(tiny.get_config(), **overrides)


def tiny_model():
    """The same random 3-layer Llama every call."""
    cfg = dss.models.ModelConfig.from_hf(dict(
        model_type="llama", vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2))
    return dss.models.Transformer(cfg, rngs=nnx.Rngs(0))


def random_batch(vocab: int, b: int = 4, t: int = 32, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t), bool)
    for row in range(b):  # responses of different lengths
        mask[row, rng.integers(4, 12) : rng.integers(16, t)] = True
    return {"input_ids": jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32),
            "targets": jnp.asarray(rng.integers(0, vocab, (b, t)), jnp.int32), "loss_mask": jnp.asarray(mask)}


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in pairs)


def assert_trees_close(a, b, **tol) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


def write_alignment_set(path: Path, rows: int = 16) -> dict:
    """`rows` lines of (bundled AdvBench prompt -> refusal) JSON at `path`, the shape of the papers'
    BeaverTails-safe alignment data; returns its source dict."""
    header, *body = files.read_csv(data.bundled("advbench/harmful_behaviors.csv"))
    goal = header.index("goal")
    path.write_text("".join(json.dumps({"prompt": r[goal], "response": REFUSAL}) + "\n" for r in body[:rows]))
    return {"path": str(path)}
