"""`python -m dss.selfcheck`: a one-minute end-to-end check of the model layer on this machine.

Builds a tiny random Llama-3-style checkpoint, exports it in HF format, loads it back, and checks
that the reload, the KV-cache path and (with several devices) the sharded path reproduce the
logits. Exits non-zero on any mismatch, so it doubles as an install smoke test. On one device
the sharded check is skipped, and says so.
"""

from __future__ import annotations

if __name__ == "__main__":  # quiet logs and one-line errors, as every job
    from dss import cli

    cli.launch("dss.selfcheck", config=False)

import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

import dss.models
from dss import sharding

TINY_LLAMA = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, initializer_range=0.2, tie_word_embeddings=False,
    rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                         high_freq_factor=4.0, original_max_position_embeddings=64),
)


def _check(name: str, got, want, tol: float) -> bool:
    err = float(np.abs(np.asarray(got) - np.asarray(want)).max())
    print(f"  {name:<34} max |diff| = {err:.2e}  (tol {tol:.0e})  {'ok' if err <= tol else 'FAIL'}")
    return err <= tol


def main() -> int:
    start = time.time()
    print(f"dss self-check: jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].platform} device(s)")
    cfg = dss.models.llama_config(**TINY_LLAMA)
    model = dss.models.Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 96)))
    forward = nnx.jit(lambda m, t: m(t))
    ref = forward(model, tokens)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        dss.models.save_pretrained(model, tmp)
        ok &= _check("HF export -> load_pretrained", forward(dss.models.load_pretrained(tmp), tokens), ref, 0.0)
        cache = model.init_cache(2, 96)
        step = nnx.jit(lambda m, t, c, i: m(t, cache=c, cache_index=i))
        outs, cache = step(model, tokens[:, :64], cache, 0)
        outs = [outs]
        for i in range(64, 96):
            logits, cache = step(model, tokens[:, i : i + 1], cache, i)
            outs.append(logits)
        ok &= _check("KV cache prefill + decode", jnp.concatenate(outs, axis=1), ref, 1e-4)
        if jax.device_count() > 1:
            mesh = sharding.make_mesh(data=1, fsdp=-1, tensor=1)
            sharded = dss.models.load_pretrained(tmp, mesh=mesh)
            with jax.set_mesh(mesh):
                ok &= _check(f"sharded over {jax.device_count()} devices", forward(sharded, tokens), ref, 1e-4)
        else:
            print(f"  {'sharded load + forward':<34} skipped: 1 device (on CPU, "
                  "XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8)")
    print(f"self-check {'passed' if ok else 'FAILED'} in {time.time() - start:.1f}s")
    return 0 if ok else 1

