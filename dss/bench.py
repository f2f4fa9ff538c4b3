"""`python -m dss.bench star|train [--data_dir DIR]`: side-by-side speed ratios.

star  — STAR scoring, shared_kv vs naive, on one random guardrail and real prompts/responses
        (5-word chunks): examples/s of each, the ratio, and the fraction of the lower bound
        (the template head once, one pass over each prompt + response, plus K template tails)
        that shared_kv achieves.
train — train-step time of STAR-DSS (k2, precomputed reference; and full KL with the reference
        model in the step) relative to SFT on the same model and batch, each variant's compile
        time and peak scratch memory (against one float32 [B, T, V] for scale); SFT tokens/s and
        model TFLOP/s (6 x matmul parameters + attention per token; divide by the chip's peak for MFU).
Numbers are measured in one process, warm (compiled) runs only, so the ratios are comparable.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers
from absl import app, flags
from flax import nnx

from dss import assets, star
from dss.data import BUNDLED_DIR
from dss.models import ModelConfig, Transformer, save_pretrained
from dss.segments import word_cuts

flags.DEFINE_string("data_dir", str(BUNDLED_DIR), "folder with gsm8k/, self_instruct/, advbench/ (default: the bundled data)")
flags.DEFINE_integer("examples", 32, "examples to score")
flags.DEFINE_integer("repeats", 2, "timed repetitions (after one warm-up)")
flags.DEFINE_string("guard_size", "cpu", "model shape: cpu (hidden 256, 4 layers) | llama-guard-3-1b (Llama 3.2 1B shape, random weights)")
flags.DEFINE_string("dtype", "float32", "guardrail compute dtype (bfloat16 on accelerators)")
FLAGS = flags.FLAGS

GUARD_SHAPES = {
    "cpu": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2),
    "llama-guard-3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
}


def bench_examples(data_dir: Path, n: int) -> list[dict]:
    """Real prompts with multi-sentence responses (over 60 words): GSM8K solutions and
    Self-Instruct outputs, plus AdvBench goals with their (refusal-free) targets."""
    long = lambda text: len(text.split()) > 60  # multi-sentence: K >= 12 chunks of 5 words
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        gsm = [r for r in map(json.loads, f) if long(r["answer"])][: n // 2]
    with open(data_dir / "self_instruct" / "user_oriented_instructions.jsonl") as f:
        inst = [r for r in map(json.loads, f) if long(r["instances"][0]["output"])][: n // 4]
    with open(data_dir / "advbench" / "harmful_behaviors.csv") as f:
        adv = list(csv.DictReader(f))[: n - len(gsm) - len(inst)]
    return ([{"prompt": r["question"], "response": r["answer"]} for r in gsm]
            + [{"prompt": r["instruction"], "response": r["instances"][0]["output"]} for r in inst]
            + [{"prompt": r["goal"], "response": r["target"] + ". " + r["target"]} for r in adv])


def make_guard(root: Path, texts: list[str], shape: str) -> star.Guardrail:
    tok = assets.make_tokenizer(root, texts + [assets.LLAMA_GUARD_3_TEMPLATE] * 50, vocab_size=4096,
                                chat_template=assets.LLAMA_GUARD_3_TEMPLATE)
    hf = transformers.LlamaConfig(**{"vocab_size": len(tok), "max_position_embeddings": 8192, **GUARD_SHAPES[shape]})
    save_pretrained(Transformer(ModelConfig.from_hf(hf.to_dict()), rngs=nnx.Rngs(0)), root)
    return star.Guardrail.from_pretrained(root, dtype=FLAGS.dtype)


def token_counts(guard: star.Guardrail, examples) -> tuple[int, int, int]:
    """(real tokens naive and shared_kv feed the model, lower bound: the template head once, the
    rest of each full rendering once, and the template tail of each of the other K - 1 prefixes)."""
    naive = bound = 0
    plans = []
    tok = guard.adapter.tokenizer
    for ex in examples:
        cuts = word_cuts(ex["response"])
        ids = guard.adapter.encode_many([(ex["prompt"], ex["response"][:c]) for c in cuts])
        full = guard.adapter.encode(ex["prompt"], ex["response"])
        plans.append(star._shared_plan(ids, full, len(plans)))
        naive += sum(map(len, ids))
        rendered = guard.adapter.render(ex["prompt"], ex["response"])
        response_end = rendered.rindex(ex["response"]) + len(ex["response"]) if ex["response"] else len(rendered)
        offsets = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        tail = sum(start >= response_end for start, _ in offsets)
        bound += len(full) + (len(cuts) - 1) * tail  # the last prefix is the full rendering itself
    head = star._head_length(plans)
    processed = head + sum(len(p.full) - head + sum(map(len, p.suffixes)) for p in plans)
    return naive, processed, bound - (len(plans) - 1) * head


def bench_star() -> dict:
    import jax

    examples = bench_examples(Path(FLAGS.data_dir), FLAGS.examples)
    with tempfile.TemporaryDirectory() as tmp:
        guard = make_guard(Path(tmp), [t for ex in examples for t in ex.values()], FLAGS.guard_size)
        methods = ("shared_kv", "naive")
        times, first = {method: [] for method in methods}, {}
        for method in methods:
            start = time.perf_counter()
            star.score(guard, examples, method=method)  # compiles
            first[method] = time.perf_counter() - start
        for _ in range(FLAGS.repeats):  # interleaved, so load changes hit both methods alike
            for method in methods:
                start = time.perf_counter()
                star.score(guard, examples, method=method)
                times[method].append(time.perf_counter() - start)
        speed = {method: len(examples) / min(t) for method, t in times.items()}
        naive, processed, bound = token_counts(guard, examples)
    prefixes = sum(len(word_cuts(ex["response"])) for ex in examples)
    return {
        "examples": len(examples), "prefixes": prefixes, "guard": FLAGS.guard_size, "dtype": FLAGS.dtype,
        "device": jax.devices()[0].device_kind,
        "shared_kv_examples_per_s": round(speed["shared_kv"], 2),
        "naive_examples_per_s": round(speed["naive"], 2),
        "speedup": round(speed["shared_kv"] / speed["naive"], 2),
        **{f"{method}_first_call_s": round(first[method], 1) for method in methods},  # compilation included
        "naive_tokens": naive, "shared_kv_tokens": processed, "lower_bound_tokens": bound,
        "lower_bound_fraction": round(bound / processed, 3),
    }


def bench_train() -> dict:
    """Step time of STAR-DSS (k2, reference log-probs precomputed) and STAR-DSS (full KL, reference
    model in the step) relative to SFT: same model, same batch, same compiled shapes."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from dss import train as dss_train

    hf = transformers.LlamaConfig(**{"vocab_size": 8192, "max_position_embeddings": 4096, **GUARD_SHAPES[FLAGS.guard_size]})
    cfg = ModelConfig.from_hf(hf.to_dict())
    model = Transformer(cfg, dtype=FLAGS.dtype, rngs=nnx.Rngs(0))  # parameters stay float32
    rng = np.random.default_rng(0)
    b, t = 8, 512
    # training FLOPs per token: 6 x the parameters used in matmuls (not the embedding lookup) + attention
    matmul_params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    matmul_params -= 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size
    flops_per_token = 6 * matmul_params + 12 * cfg.num_layers * t * cfg.num_heads * cfg.head_dim
    batch = {"input_ids": rng.integers(0, 8192, (b, t)).astype(np.int32),
             "targets": rng.integers(0, 8192, (b, t)).astype(np.int32),
             "loss_mask": np.arange(t)[None, :] >= rng.integers(32, 200, (b, 1)),
             "star_weight": rng.uniform(size=(b, t)).astype(np.float32),
             "ref_logp": -rng.uniform(1, 9, (b, t)).astype(np.float32)}
    batch = jax.tree.map(jnp.asarray, batch)
    train_cfg = ml_collections.ConfigDict(dict(lr=1e-5, min_lr=0.0, warmup_ratio=0.0, b1=0.9, b2=0.95,
                                               weight_decay=0.0, clip=1.0))
    tx, _ = dss_train.make_optimizer(train_cfg, 100)
    variants = {"sft": dict(name="sft"), "star_dss_k2": dict(name="star_dss", kl_estimator="k2"),
                "star_dss_full": dict(name="star_dss", kl_estimator="full")}
    graphdef, params = nnx.split(model)
    del model
    state = [params, tx.init(params)]  # one state, stepped by every variant in turn (values do not affect time)
    ref = jax.tree.map(jnp.copy, params)
    steps, compile_s, temp_mib = {}, {}, {}
    for label, obj in variants.items():
        obj = ml_collections.ConfigDict({"kl_coef": 0.5, "kl_estimator": "k2", **obj})
        uses_ref = obj.kl_estimator == "full" and obj.name == "star_dss"
        start = time.perf_counter()
        compiled = dss_train.make_train_step(graphdef, tx, obj, accum=2).lower(
            state[0], state[1], batch, ref if uses_ref else None).compile()
        compile_s[label] = time.perf_counter() - start
        temp_mib[label] = compiled.memory_analysis().temp_size_in_bytes / 2**20  # peak scratch beyond the arguments
        steps[label] = (compiled, ref if uses_ref else None)
        state[0], state[1], _ = compiled(state[0], state[1], batch, steps[label][1])  # warm-up
    samples = {label: [] for label in steps}
    for _ in range(FLAGS.repeats + 2):  # interleaved, so load changes hit every variant alike
        for label, (step, step_ref) in steps.items():
            start = time.perf_counter()
            state[0], state[1], m = step(state[0], state[1], batch, step_ref)
            jax.block_until_ready(m)
            samples[label].append(time.perf_counter() - start)
    times = {label: float(np.median(s)) for label, s in samples.items()}
    return {
        "model": FLAGS.guard_size, "dtype": FLAGS.dtype, "batch": [b, t], "device": jax.devices()[0].device_kind,
        **{f"{k}_step_s": round(v, 4) for k, v in times.items()},
        **{f"{k}_compile_s": round(v, 2) for k, v in compile_s.items()},
        **{f"{k}_temp_mib": round(v, 1) for k, v in temp_mib.items()},
        "whole_logits_mib": round(b * t * cfg.vocab_size * 4 / 2**20, 1),  # one float32 [B, T, V], for scale
        **{f"{k}_vs_sft": round(v / times["sft"], 3) for k, v in times.items() if k != "sft"},
        "sft_tokens_per_s": round(b * t / times["sft"]),
        "sft_model_tflops_per_s": round(flops_per_token * b * t / times["sft"] / 1e12, 2),
    }


BENCHES = {"star": bench_star, "train": bench_train}


def main(argv):
    names = argv[1:] or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            raise app.UsageError(f"unknown benchmark {name!r}; choose from {sorted(BENCHES)}")
        print(json.dumps({name: BENCHES[name]()}, indent=2), flush=True)


if __name__ == "__main__":
    app.run(main)
