"""Every accelerator number the README's performance table needs, in one process, as one JSON file.

    python launch/bench_accelerator.py [--shape 1b|tiny] [--out bench_accelerator.json]

On one H100 it takes under 8 minutes (`--shape 1b`, the default):
  - the SFT train step at the Llama-3.2-1B shape (vocabulary 128,256; bf16 compute, fp32 master
    weights and Adam; 8 x 2048 tokens in micro-batches of `--micro_batch`): step seconds, tokens/s,
    model FLOPs (PaLM's 6N + attention, `dss.plan.model_flops_per_token`) and MFU against the
    chip's published bf16 peak; the first call's compile seconds;
  - STAR-DSS (k2, reference log-probs precomputed; full KL, the reference model in the step) and
    LoRA (rank 8 on q, v) step times as ratios to SFT, same model, batch and compiled shapes;
  - STAR scoring, shared_kv and naive, with a random guardrail of the Llama-Guard-3-1B shape in
    bf16 on `--star_examples` real prompts (5-word chunks): examples/s, the ratio, first-call
    (compile) seconds;
  - cuDNN's fused attention: whether the SFT step's program calls it (the kernel dss picks on GPU
    for causal bf16 attention), and its output and gradients against the XLA path on the device.
Every step is built as `dss.train` builds it (`dss.train.build`: methods, state, optimizer state,
the jitted step), from a random checkpoint written and loaded by the project's own loader.
`--shape tiny` runs the same measurements on a toy shape in seconds (the CPU test).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from flax import nnx

import dss.models
from dss import methods, plan, sharding, star
from dss import train as dss_train
from dss.config import base_config
from dss.run import Run

# Llama-3.2-1B's shape (random weights) and a toy one; batch, micro-batch and STAR examples per shape
SHAPES = {
    "1b": dict(model=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                          num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
               guard="llama-guard-3-1b", batch=(8, 2048), micro_batch=2, star_examples=128, repeats=5),
    "tiny": dict(model=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False),
                 guard=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2), batch=(4, 128), micro_batch=2, star_examples=4, repeats=2),
}
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense bf16 FLOP/s, first match of device_kind
STEPS = {  # label -> config overrides of the benchmarked step
    "sft": {"objective.name": "sft"},
    "star_dss_k2": {"objective.name": "star_dss", "objective.kl_estimator": "k2"},
    "star_dss_full": {"objective.name": "star_dss", "objective.kl_estimator": "full"},
    "lora_qv_r8": {"objective.name": "sft", "lora.enabled": True, "lora.dropout": 0.0},
}


def peak_flops(device) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device.device_kind), None)


def step_config(model_dir: Path, shape: dict, overrides: dict, remat: str):
    config = base_config()
    config.model.path, config.model.dtype, config.model.param_dtype = str(model_dir), "bfloat16", "float32"
    config.guardrail.paths = ["unused"]  # STAR-DSS's inputs come with the batch here
    config.train.global_batch, config.train.micro_batch, config.train.remat = shape["batch"][0], shape["micro_batch"], remat
    config.train.warmup_ratio = 0.0
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def random_batch(shape: dict, vocab: int, mesh) -> dict:
    b, t = shape["batch"]
    rng = np.random.default_rng(0)
    batch = {"input_ids": rng.integers(0, vocab, (b, t)).astype(np.int32),
             "targets": rng.integers(0, vocab, (b, t)).astype(np.int32),
             "loss_mask": np.arange(t)[None, :] >= rng.integers(t // 16, t // 4, (b, 1)),
             "star_weight": rng.uniform(size=(b, t)).astype(np.float32),
             "ref_logp": -rng.uniform(1, 9, (b, t)).astype(np.float32)}
    return {k: sharding.place(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}


def time_steps(model_dir: Path, shape: dict, mesh, remat: str) -> dict:
    """Each STEPS variant built as dss.train builds it, compiled, warmed and timed, one at a time
    (one state in memory at once: the full-KL step's alone is weights, Adam and a reference)."""
    batch = random_batch(shape, shape["model"]["vocab_size"], mesh)
    times, compile_s, temp_bytes, cudnn = {}, {}, {}, None
    for label, overrides in STEPS.items():
        config = step_config(model_dir, shape, overrides, remat)
        run = Run(config, model_dir, mesh, None, {}, model_dir)
        run.horizon = 100
        model = dss.models.load_pretrained(model_dir, dtype="bfloat16", param_dtype="float32", mesh=mesh, remat=remat)
        state, _, step, _ = dss_train.build(run, methods.build(config), model)
        del model
        start = time.perf_counter()
        with jax.set_mesh(mesh):
            compiled = step.lower(state.trainable, state.opt_state, batch, state.consts(), {}, 0).compile()
        compile_s[label] = time.perf_counter() - start
        temp_bytes[label] = compiled.memory_analysis().temp_size_in_bytes
        if label == "sft":
            cudnn = "cudnn$fmha" in compiled.as_text().lower()
        jax.block_until_ready(_advance(compiled, state, batch))  # warm-up
        samples = [_timed(lambda: jax.block_until_ready(_advance(compiled, state, batch)))
                   for _ in range(shape["repeats"])]
        times[label] = float(np.median(samples))
        del state, compiled
    cfg = dss.models.checkpoint.read_config(model_dir)
    b, t = shape["batch"]
    flops = plan.model_flops_per_token(cfg, t) * b * t
    peak = peak_flops(jax.devices()[0])
    return {
        "batch": [b, t], "micro_batch": shape["micro_batch"], "remat": remat,
        **{f"{k}_step_s": round(v, 4) for k, v in times.items()},
        **{f"{k}_compile_s": round(v, 1) for k, v in compile_s.items()},
        **{f"{k}_temp_gib": round(v / 2**30, 2) for k, v in temp_bytes.items()},
        **{f"{k}_vs_sft": round(v / times["sft"], 3) for k, v in times.items() if k != "sft"},
        "sft_tokens_per_s": round(b * t / times["sft"]),
        "sft_model_flops_per_step": flops,
        "sft_model_tflops_per_s": round(flops / times["sft"] / 1e12, 2),
        "sft_mfu": None if peak is None else round(flops / times["sft"] / peak, 4),
        "peak_bf16_flops": peak,
        "sft_calls_cudnn_attention": cudnn,
    }


def _advance(compiled, state, batch):
    state.trainable, state.opt_state, metrics = compiled(state.trainable, state.opt_state, batch, state.consts(), {}, 0)
    return metrics


def write_policy(root: Path, shape: dict) -> Path:
    """A random policy of the shape, saved as an HF checkpoint for the project's loader."""
    hf = transformers.LlamaConfig(max_position_embeddings=8192, **shape["model"])
    model = dss.models.Transformer(dss.models.ModelConfig.from_hf(hf.to_dict()), param_dtype=jnp.bfloat16,
                                   rngs=nnx.Rngs(0))
    dss.models.save_pretrained(model, root)
    return root


def star_speed(shape: dict, root: Path) -> dict:
    """shared_kv and naive STAR scoring (dss.bench's examples and random guardrail), first calls and best of 2."""
    from dss import bench

    bench.FLAGS.dtype = "bfloat16" if jax.default_backend() != "cpu" else "float32"
    examples = bench.bench_examples(bench.BUNDLED_DIR, shape["star_examples"])
    guard = bench.make_guard(root, [t for ex in examples for t in ex.values()], shape["guard"])
    first, best = {}, {}
    for method in ("shared_kv", "naive"):
        start = time.perf_counter()
        star.score(guard, examples, method=method)
        first[method] = time.perf_counter() - start
        best[method] = min(_timed(lambda: star.score(guard, examples, method=method)) for _ in range(2))
    return {"guard": str(shape["guard"]), "dtype": bench.FLAGS.dtype, "examples": len(examples),
            **{f"{m}_examples_per_s": round(len(examples) / s, 2) for m, s in best.items()},
            "shared_kv_vs_naive": round(best["naive"] / best["shared_kv"], 2),
            **{f"{m}_first_call_s": round(s, 1) for m, s in first.items()}}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cudnn_attention() -> dict:
    """cuDNN's fused causal attention against the XLA path (dss's einsum attention) on this device,
    bf16 at the 1B shape's heads: outputs and gradients, as max |difference| / max |XLA value|."""
    if jax.default_backend() != "gpu":
        return {"skipped": f"no GPU ({jax.default_backend()}): cuDNN attention is a GPU kernel"}
    from dss.models import transformer

    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=s), jnp.bfloat16) for s in ((2, 2048, 32, 64), (2, 2048, 8, 64),
                                                                         (2, 2048, 8, 64)))
    scale = 64 ** -0.5
    xla = lambda q, k, v: transformer._einsum_attend(q, k, v, transformer.causal_mask(q.shape[1], None)[None], scale,
                                                     None)
    cudnn = lambda q, k, v: transformer.fused_causal(q, k, v, scale, None, implementation="cudnn")
    out = {}
    for name, fn in (("output", lambda f: f(q, k, v)),
                     ("grads", lambda f: jax.grad(lambda *a: f(*a).astype(jnp.float32).sum(), (0, 1, 2))(q, k, v))):
        a, b = (jax.tree.leaves(jax.jit(lambda f=f: fn(f))()) for f in (cudnn, xla))
        out[f"{name}_rel_diff"] = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))
                                            / jnp.max(jnp.abs(y.astype(jnp.float32)))) for x, y in zip(a, b))
    out["matches_xla"] = out["output_rel_diff"] < 2e-2 and out["grads_rel_diff"] < 5e-2  # bf16 rounding
    return out


def _recorded(part) -> dict:
    """A part's numbers, or its error (one device session: an out-of-memory step must not lose the rest)."""
    try:
        return part()
    except Exception as err:
        return {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--remat", default="none", help="block remat of the benchmarked steps (none | full | save_dots)")
    parser.add_argument("--out", default="bench_accelerator.json")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    device = jax.devices()[0]
    mesh = sharding.make_mesh(1, 1, 1)  # one device: the numbers are per chip
    start = time.perf_counter()
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device.device_kind,
              "platform": device.platform, "jax": jax.__version__, "shape": args.shape}
    with tempfile.TemporaryDirectory() as tmp:  # a part that fails is recorded and the others still run
        result["train"] = _recorded(lambda: time_steps(write_policy(Path(tmp) / "policy", shape), shape, mesh,
                                                       args.remat))
        result["star"] = _recorded(lambda: star_speed(shape, Path(tmp) / "guard"))
    result["cudnn_attention"] = _recorded(cudnn_attention)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
