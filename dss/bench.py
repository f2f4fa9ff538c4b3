"""`python -m dss.bench star|train|compile [--data_dir DIR]`: side-by-side speed ratios.

star  — STAR scoring, shared_kv vs naive, on one random guardrail and real prompts/responses
        (5-word chunks): examples/s of each, the ratio, and the fraction of the lower bound
        (the template head once, one pass over each prompt + response, plus K template tails)
        that shared_kv achieves; each method's first call: the programs it compiled (against the
        bound its length buckets allow) and the seconds spent compiling them; with torch
        installed, also the HF PyTorch model scoring the same prefixes naively (one left-padded
        pass per prefix, last-token logits only). The three run interleaved in each repeat; the
        ratios' spread over repeats is reported. `--record FILE` appends the commit's ratios
        (to dss naive and to HF naive; commit, date, machine) to a speed history, the repo's
        being docs/bench_history.jsonl.
train — train-step time of STAR-DSS (k2, precomputed reference; and full KL with the reference
        model in the step) relative to SFT on the same model and batch, each variant's compile
        time and peak scratch memory (against one float32 [B, T, V] for scale); SFT tokens/s and
        model TFLOP/s (6 x matmul parameters + attention per token; divide by the chip's peak for MFU).
compile — compile time of the scanned layers against the same model unrolled (`unroll` = every
        layer, which compiles like a Python loop over the layers), for a `--compile_layers` model:
        one SFT train step, and the first STAR shared_kv call (every program it compiles); and
        what Llama 3's vocabulary (128,256 against 8,192) adds to the peak scratch of the SFT /
        STAR-DSS steps at 8 x 2048 tokens, against one float32 [B, T, V] (which no step builds).
Numbers are measured in one process, warm (compiled) runs only, so the ratios are comparable.
"""

from __future__ import annotations

import types

GUARD_SHAPES = {
    "cpu": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2),
    "llama-guard-3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
}
BENCHES = ("star", "train", "compile")
OPTIONS = {
    "data_dir": ("", "folder with gsm8k/, self_instruct/, advbench/ ('': the bundled data)"),
    "examples": (32, "examples to score"),
    "repeats": (2, "timed repetitions (after one warm-up)"),
    "guard_size": ("cpu", "model shape: cpu (hidden 256, 4 layers) | llama-guard-3-1b (Llama 3.2 1B shape, random weights)"),
    "dtype": ("float32", "guardrail compute dtype (bfloat16 on accelerators)"),
    "record": ("", "star: append the commit's ratios to this speed history (the repo's: docs/bench_history.jsonl)"),
    "compile_layers": (16, "layers of the model the compile benchmark builds"),
}
FLAGS = types.SimpleNamespace(**{name: default for name, (default, _) in OPTIONS.items()})
"""This run's options: the defaults, until `main` sets the command line's."""


def check(names, **options) -> None:
    """The command line, refused in seconds (before JAX loads) when a benchmark or option is unknown."""
    from dss.errors import UserError

    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise UserError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    if options.get("record") and "star" not in names:
        raise UserError("--record keeps the star benchmark's ratios: run `python -m dss.bench star --record FILE`")
    if options.get("guard_size", "cpu") not in GUARD_SHAPES:
        raise UserError(f"--guard_size {options['guard_size']!r}: use one of {', '.join(GUARD_SHAPES)}")
    if options.get("examples", 1) < 1 or options.get("repeats", 1) < 1 or options.get("compile_layers", 1) < 1:
        raise UserError("--examples, --repeats and --compile_layers must be at least 1")


if __name__ == "__main__":  # refuse a bad command line before the imports below load JAX
    from dss import cli

    cli.launch("dss.bench", check=check, config=False, positional="BENCH", options=OPTIONS)

import csv
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers
from flax import nnx
from tqdm.auto import tqdm

from dss import assets, star, star_plan
from dss.data import BUNDLED_DIR
from dss.models import ModelConfig, Transformer, llama_config, save_random_llama
from dss.segments import word_cuts

# config.train's optimizer fields for every benchmarked step (AdamW with clipping, as dss.train)
BENCH_OPTIMIZER = dict(lr=1e-5, min_lr=0.0, warmup_ratio=0.0, b1=0.9, b2=0.95, weight_decay=0.0, clip=1.0)



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


def make_guard(root: Path, texts: list[str], shape: str | dict) -> star.Guardrail:
    """A random Llama-Guard-3-style guardrail of `shape` (a `GUARD_SHAPES` name or its fields)."""
    tok = assets.make_tokenizer(root, texts + [assets.LLAMA_GUARD_3_TEMPLATE] * 50, vocab_size=4096,
                                chat_template=assets.LLAMA_GUARD_3_TEMPLATE)
    save_random_llama(root, tok, seed=0, max_position_embeddings=8192,
                      **(GUARD_SHAPES[shape] if isinstance(shape, str) else shape))
    return star.Guardrail.from_pretrained(root, dtype=FLAGS.dtype)


def token_counts(guard: star.Guardrail, examples) -> tuple[int, int, int]:
    """(real tokens naive and shared_kv feed the model, lower bound: the template head once, the
    rest of each full rendering once, and the template tail of each of the other K - 1 prefixes)."""
    cuts = star.example_cuts(guard, examples)
    plans = star.prefix_plans(guard, examples, cuts)
    tok = guard.adapter.tokenizer
    bound = 0
    for ex, ex_cuts, plan in zip(examples, cuts, plans):
        rendered = guard.adapter.render(ex["prompt"], ex["response"])
        response_end = rendered.rindex(ex["response"]) + len(ex["response"]) if ex["response"] else len(rendered)
        offsets = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        tail = sum(start >= response_end for start, _ in offsets)
        bound += len(plan.full) + (len(ex_cuts) - 1) * tail  # the last prefix is the full rendering itself
    naive = sum(len(ids) for plan in plans for ids in plan.seen)
    head = star_plan.head_length(plans)
    processed = head + sum(len(p.full) - head + sum(map(len, p.suffixes)) for p in plans)
    return naive, processed, bound - (len(plans) - 1) * head


def hf_torch_naive_run(root: Path, guard: star.Guardrail, examples):
    """A callable that scores every prefix with the HF PyTorch model (float32, CPU), each in its
    own pass: the same renderings as STAR, in length-sorted batches of `--examples` rows
    (left-padded, so the last position is each row's verdict position). None without torch."""
    try:
        import torch
    except ImportError:
        return None
    model = transformers.AutoModelForCausalLM.from_pretrained(root, dtype=torch.float32).eval()
    rows = sorted((ids for plan in star.prefix_plans(guard, examples, star.example_cuts(guard, examples))
                   for ids in plan.seen), key=len)

    def run():
        with torch.no_grad():
            for start in range(0, len(rows), FLAGS.examples):
                part = rows[start : start + FLAGS.examples]
                width = max(map(len, part))
                ids = torch.zeros((len(part), width), dtype=torch.long)
                mask = torch.zeros((len(part), width), dtype=torch.long)
                for i, r in enumerate(part):
                    ids[i, width - len(r):], mask[i, width - len(r):] = torch.tensor(r), 1
                model(input_ids=ids, attention_mask=mask, logits_to_keep=1)

    return run


def bench_star() -> dict:
    """STAR shared_kv against dss naive and HF PyTorch naive, interleaved in each repeat so that
    load changes hit all alike: speeds from each one's best repeat, ratios per repeat (their spread)."""
    import jax

    examples = bench_examples(Path(FLAGS.data_dir or BUNDLED_DIR), FLAGS.examples)
    with tempfile.TemporaryDirectory() as tmp:
        guard = make_guard(Path(tmp), [t for ex in examples for t in ex.values()], FLAGS.guard_size)
        runs = {method: (lambda method=method: star.score(guard, examples, method=method)) for method in ("shared_kv", "naive")}
        hf_run = hf_torch_naive_run(Path(tmp), guard, examples)
        if hf_run is not None:
            runs["hf_torch_naive"] = hf_run
        first, compiled, times = {}, {}, {name: [] for name in runs}
        with tqdm(total=len(runs) * (FLAGS.repeats + 1), desc="bench star", unit="run") as bar:
            for method in ("shared_kv", "naive"):
                start = time.perf_counter()
                _, compiled[method] = star.score(guard, examples, method=method, report=True)  # compiles
                first[method] = time.perf_counter() - start
                bar.update()
            if hf_run is not None:
                hf_run()  # warm-up
                bar.update()
            for _ in range(FLAGS.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
                    bar.update()
        naive, processed, bound = token_counts(guard, examples)
    prefixes = sum(len(word_cuts(ex["response"])) for ex in examples)
    speed = {name: len(examples) / min(t) for name, t in times.items()}
    per_repeat = {other: [o / s for o, s in zip(times[other], times["shared_kv"])] for other in runs if other != "shared_kv"}
    return {
        "examples": len(examples), "prefixes": prefixes, "guard": FLAGS.guard_size, "dtype": FLAGS.dtype,
        "device": jax.devices()[0].device_kind, "repeats": FLAGS.repeats,
        "shared_kv_examples_per_s": round(speed["shared_kv"], 2),
        "naive_examples_per_s": round(speed["naive"], 2),
        "speedup": round(speed["shared_kv"] / speed["naive"], 2),
        "speedup_per_repeat": [round(r, 2) for r in per_repeat["naive"]],
        **({} if hf_run is None else {"hf_torch_naive_examples_per_s": round(speed["hf_torch_naive"], 2),
                                      "speedup_vs_hf_torch_naive": round(speed["shared_kv"] / speed["hf_torch_naive"], 2),
                                      "speedup_vs_hf_torch_naive_per_repeat": [round(r, 2) for r in per_repeat["hf_torch_naive"]]}),
        **{f"{name}_s": [round(t, 3) for t in ts] for name, ts in times.items()},
        **{f"{method}_first_call_s": round(first[method], 1) for method in compiled},  # compilation included
        **{f"{method}_compile_s": round(compiled[method].seconds, 1) for method in compiled},
        **{f"{method}_compiled_shapes": compiled[method].programs for method in compiled},
        **{f"{method}_shape_bound": compiled[method].bound for method in compiled},
        "naive_tokens": naive, "shared_kv_tokens": processed, "lower_bound_tokens": bound,
        "lower_bound_fraction": round(bound / processed, 3),
        # the token bound on shared_kv's speedup over naive, and how much of it was reached
        "token_bound_speedup": round(naive / bound, 2),
        "token_bound_reached": round(speed["shared_kv"] / speed["naive"] / (naive / bound), 3),
    }


def bench_train() -> dict:
    """Step time relative to SFT of STAR-DSS (k2, reference log-probs precomputed; full KL, the
    reference model in the step) and of the baselines' steps: Vaccine (two passes), Lisa (SFT plus
    the proximal term) and SEAL's selector step (a safe and a user batch, model and selector
    updates), and a LoRA step (rank 8 on q, v) against full finetuning. Same model, same batch,
    same compiled shapes. SafeInstr trains SFT's step on more rows, so its step costs what SFT's
    does; SafeLoRA's projection runs once, after training."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from dss import train as dss_train

    cfg = llama_config(**{"vocab_size": 8192, "max_position_embeddings": 4096, **GUARD_SHAPES[FLAGS.guard_size]})
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
    tx, _ = dss_train.make_optimizer(ml_collections.ConfigDict(BENCH_OPTIMIZER), 100)
    graphdef, params = nnx.split(model)
    del model
    state = [params, tx.init(params)]  # one state, stepped by every variant in turn (values do not affect time)
    ref = jax.tree.map(jnp.copy, params)  # the full-KL reference, and Lisa's anchor
    lisa_proximal = (ref, jnp.float32(1.0))
    # label -> (objective, Vaccine's rho, the step's reference params, Lisa's proximal term)
    variants = {"sft": (dict(name="sft"), 0.0, None, None),
                "star_dss_k2": (dict(name="star_dss", kl_estimator="k2"), 0.0, None, None),
                "star_dss_full": (dict(name="star_dss", kl_estimator="full"), 0.0, ref, None),
                "vaccine": (dict(name="vaccine"), 2.0, None, None),
                "lisa": (dict(name="lisa"), 0.0, None, lisa_proximal)}
    steps, compile_s, temp_mib = {}, {}, {}
    for label, (obj, rho, step_ref, proximal) in tqdm(variants.items(), desc="bench train: compile", unit="step"):
        obj = ml_collections.ConfigDict({"kl_coef": 0.5, "kl_estimator": "k2", **obj})
        start = time.perf_counter()
        compiled = dss_train.make_train_step(graphdef, tx, obj, accum=2, vaccine_rho=rho).lower(
            state[0], state[1], batch, step_ref, proximal).compile()
        compile_s[label] = time.perf_counter() - start
        temp_mib[label] = compiled.memory_analysis().temp_size_in_bytes / 2**20  # peak scratch beyond the arguments
        steps[label] = lambda compiled=compiled, step_ref=step_ref, proximal=proximal: _advance(
            state, compiled(state[0], state[1], batch, step_ref, proximal))
        steps[label]()  # warm-up
    steps["seal_selector"] = _seal_selector_step(graphdef, ref, batch)
    steps["lora_qv_r8"] = _lora_step(graphdef, tx, ref, batch)
    samples = {label: [] for label in steps}
    # interleaved, so load changes hit every variant alike
    for _ in tqdm(range(FLAGS.repeats + 2), desc="bench train: timing", unit="round"):
        for label, step in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step())
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


def _advance(state: list, out):
    """Keep a step's new (params, opt_state) in `state` (the step donated the old ones); its metrics."""
    state[0], state[1], metrics = out
    return metrics


def _lora_step(graphdef, tx, base, batch):
    """A LoRA SFT step (rank 8 on q and v, no dropout) over the frozen `base`, compiled and
    warmed; a callable that runs one more step. Only the adapters and their Adam state change."""
    import ml_collections

    from dss import lora
    from dss import train as dss_train

    cfg = ml_collections.ConfigDict(dict(rank=8, alpha=16.0, dropout=0.0, targets=("q", "v")))
    adapters = lora.init(cfg, nnx.merge(graphdef, base), seed=0)
    state = [adapters, tx.init(adapters)]
    step = dss_train.make_train_step(graphdef, tx, ml_collections.ConfigDict(dict(name="sft")), 2, 0.0, cfg)
    run = lambda: _advance(state, step(state[0], state[1], batch, None, None, base, 0))  # noqa: E731
    run()
    return run


def _seal_selector_step(graphdef, params, batch):
    """SEAL's selector step on (safe, user) = (batch, batch), compiled and warmed; a callable that
    runs one more step. It keeps its own model copy and Adam state (SEAL's optimizers)."""
    import jax
    import jax.numpy as jnp
    import ml_collections

    from dss.baselines import seal

    s = ml_collections.ConfigDict(dict(lr=1e-5, selector_lr=5e-3))
    model_tx, selector_tx = seal.optimizers(s)
    b = batch["input_ids"].shape[0]
    safe = {k: batch[k] for k in ("input_ids", "targets", "loss_mask")}
    logits = jnp.asarray(seal.initial_logits(b, "softmax"))
    params = jax.tree.map(jnp.copy, params)  # the step donates it
    state = [params, model_tx.init(params), logits, selector_tx.init(logits)]
    step = seal.make_selector_step(graphdef, model_tx, selector_tx, "softmax", accum=2)

    def run():
        state[0], state[1], state[2], state[3], metrics = step(*state, safe, safe, jnp.arange(b), jnp.float32(0.5))
        return metrics

    run()
    return run


def _compile_step(cfg: ModelConfig, unroll, objective: str = "sft", kl_estimator: str = "k2", length: int = 256):
    """(seconds to trace, lower and compile one train step of 2 micro-batches of 4 x `length`,
    its peak scratch MiB); abstract inputs, so nothing of the model's size is allocated."""
    import jax
    import ml_collections

    from dss import train as dss_train

    graphdef, params = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, unroll=unroll, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((8, length), np.int32)
    batch = {"input_ids": tokens, "targets": tokens, "loss_mask": jax.ShapeDtypeStruct((8, length), bool),
             "star_weight": jax.ShapeDtypeStruct((8, length), np.float32),
             "ref_logp": jax.ShapeDtypeStruct((8, length), np.float32)}
    tx, _ = dss_train.make_optimizer(ml_collections.ConfigDict(BENCH_OPTIMIZER), 100)
    obj = ml_collections.ConfigDict(dict(name=objective, kl_coef=0.5, kl_estimator=kl_estimator))
    ref = params if kl_estimator == "full" else None
    start = time.perf_counter()
    compiled = dss_train.make_train_step(graphdef, tx, obj, accum=2).lower(
        params, jax.eval_shape(tx.init, params), batch, ref).compile()
    return time.perf_counter() - start, compiled.memory_analysis().temp_size_in_bytes / 2**20


def bench_compile() -> dict:
    """Compile seconds, scanned layers vs unrolled, side by side in this process (the persistent
    compilation cache is off here, so every program really compiles)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    shape = {**GUARD_SHAPES["cpu"], "num_hidden_layers": FLAGS.compile_layers}
    variants = {"scan": 1, "unrolled": FLAGS.compile_layers}  # unroll = all layers: a Python loop's program
    cfg = llama_config(vocab_size=8192, **shape)
    train_s = {name: _compile_step(cfg, unroll)[0]
               for name, unroll in tqdm(variants.items(), desc="bench compile: train step", unit="variant")}
    # Llama 3's vocabulary at the paper's 2048 tokens: what the vocabulary adds to each step's
    # scratch (against the same step with V = 8192; attention's [L, L] scores are most of the
    # rest) vs one float32 [B, T, V], which no step builds (logits are made 256 positions at a time)
    scratch = {}
    for label, objective, estimator in (("sft", "sft", "k2"), ("star_dss_k2", "star_dss", "k2"),
                                        ("star_dss_full", "star_dss", "full")):
        mib = [_compile_step(llama_config(vocab_size=v, **GUARD_SHAPES["cpu"]), 1, objective, estimator, 2048)[1]
               for v in (8192, 128256)]
        scratch[label] = mib[1] - mib[0]
    examples = bench_examples(Path(FLAGS.data_dir or BUNDLED_DIR), FLAGS.examples)
    star_s, programs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        guard = make_guard(Path(tmp), [t for ex in examples for t in ex.values()], shape)
        for name, unroll in tqdm(variants.items(), desc="bench compile: first STAR call", unit="variant"):
            guard.model.unroll = unroll  # a static attribute: every program compiles afresh
            _, report = star.score(guard, examples, method="shared_kv", report=True)
            star_s[name], programs[name] = report.seconds, report.programs
    return {
        "layers": FLAGS.compile_layers, "device": jax.devices()[0].device_kind,
        **{f"train_step_{k}_compile_s": round(v, 2) for k, v in train_s.items()},
        "train_step_compile_ratio": round(train_s["unrolled"] / train_s["scan"], 2),
        **{f"vocab128256_{k}_extra_temp_mib": round(v, 1) for k, v in scratch.items()},
        "vocab128256_whole_logits_mib": round(8 * 2048 * 128256 * 4 / 2**20, 1),  # global batch 8 x 2048
        **{f"star_first_call_{k}_compile_s": round(v, 2) for k, v in star_s.items()},
        "star_compiled_shapes": programs["scan"],
        "star_first_call_compile_ratio": round(star_s["unrolled"] / star_s["scan"], 2),
    }


# The speed history (`--record FILE`): one JSON line per recorded commit, ratios only (measured
# side by side in one process, so they survive a busy or different machine better than seconds).
RECORD_RATIOS = ("shared_kv_vs_naive", "shared_kv_vs_hf_torch_naive")
RECORD_KEYS = ("commit", "date", "machine", "workload", "ratios", "spread", "token_bound_reached")
HISTORY = Path(__file__).resolve().parents[1] / "docs" / "bench_history.jsonl"


def _git(*args) -> str:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _cpu_name() -> str:
    """The CPU model (Linux), "" where /proc/cpuinfo does not say."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def star_record(result: dict) -> dict:
    """The history line of a `bench_star` result: the commit (with "+dirty" where the working tree
    differs from it), UTC date, machine, workload and the ratios with their spread over repeats."""
    import os
    import platform

    try:
        commit = _git("rev-parse", "--short=7", "HEAD") + ("+dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"  # not a git checkout (an installed package)
    per_repeat = {"shared_kv_vs_naive": result["speedup_per_repeat"],
                  "shared_kv_vs_hf_torch_naive": result.get("speedup_vs_hf_torch_naive_per_repeat")}
    best = {"shared_kv_vs_naive": result["speedup"], "shared_kv_vs_hf_torch_naive": result.get("speedup_vs_hf_torch_naive")}
    record = {
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": _cpu_name() or platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "device": result["device"], "load_1min": round(os.getloadavg()[0], 1)},
        "workload": {k: result[k] for k in ("examples", "prefixes", "guard", "dtype", "repeats")},
        "ratios": {k: v for k, v in best.items() if v is not None},
        "spread": {k: [min(v), max(v)] for k, v in per_repeat.items() if v},
        "token_bound_reached": result["token_bound_reached"],
    }
    check_record(record)
    return record


def check_record(record, where: str = "record") -> None:
    """Refuse a history line that is not one `star_record` writes, naming the key."""
    if not isinstance(record, dict) or set(record) != set(RECORD_KEYS):
        raise ValueError(f"{where}: keys must be {sorted(RECORD_KEYS)}, got "
                         f"{sorted(record) if isinstance(record, dict) else type(record).__name__}")
    if not isinstance(record["commit"], str) or not record["commit"]:
        raise ValueError(f"{where}: 'commit' must be a commit hash, got {record['commit']!r}")
    try:
        time.strptime(record["date"], "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'date' must be UTC like 2026-01-31T12:00:00Z, got {record['date']!r}") from None
    for key, fields in (("machine", ("cpu", "cores", "device")), ("workload", ("examples", "prefixes", "guard", "dtype"))):
        if not isinstance(record[key], dict) or not all(f in record[key] for f in fields):
            raise ValueError(f"{where}: {key!r} must give {', '.join(fields)}, got {record[key]!r}")
    positive = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0
    ratios, spread = record["ratios"], record["spread"]
    if not isinstance(ratios, dict) or "shared_kv_vs_naive" not in ratios or not set(ratios) <= set(RECORD_RATIOS) \
            or not all(positive(v) for v in ratios.values()):
        raise ValueError(f"{where}: 'ratios' must map shared_kv_vs_naive (and shared_kv_vs_hf_torch_naive) to "
                         f"positive numbers, got {ratios!r}")
    if not isinstance(spread, dict) or set(spread) != set(ratios) or not all(
            isinstance(v, list) and len(v) == 2 and all(map(positive, v)) and v[0] <= v[1] for v in spread.values()):
        raise ValueError(f"{where}: 'spread' must give [lowest, highest] of each ratio over the repeats, got {spread!r}")
    if not positive(record["token_bound_reached"]):
        raise ValueError(f"{where}: 'token_bound_reached' must be a positive number, got {record['token_bound_reached']!r}")


def read_history(path) -> list[dict]:
    """Every record of a history file, each checked (errors name the file and 1-based line)."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {n}: not JSON ({err.msg})") from None
        check_record(record, f"{path} line {n}")
        records.append(record)
    return records


def append_record(path, record: dict) -> None:
    """Add one checked line to the history file."""
    check_record(record)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main(names, **options) -> None:
    vars(FLAGS).update(options)
    benches = {"star": bench_star, "train": bench_train, "compile": bench_compile}
    for name in names:
        result = benches[name]()
        print(json.dumps({name: result}, indent=2), flush=True)
        if name == "star" and FLAGS.record:
            append_record(FLAGS.record, star_record(result))
            print(f"recorded in {FLAGS.record}", flush=True)
