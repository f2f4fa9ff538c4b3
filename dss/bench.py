"""`python -m dss.bench star|train [--data_dir ../shared/data]`: side-by-side speed ratios.

star  — STAR scoring, shared_kv vs naive, on one random guardrail and real prompts/responses
        (5-word chunks): examples/s of each, the ratio, and the fraction of the lower bound
        (one pass over prompt + response plus K template tails) that shared_kv achieves.
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
from dss.models import ModelConfig, Transformer, save_pretrained
from dss.segments import word_cuts

flags.DEFINE_string("data_dir", str(Path(__file__).resolve().parents[2] / "shared" / "data"), "the licensed test data")
flags.DEFINE_integer("examples", 32, "examples to score")
flags.DEFINE_integer("repeats", 2, "timed repetitions (after one warm-up)")
flags.DEFINE_string("guard_size", "cpu", "cpu (hidden 256, 4 layers) | llama-guard-3-1b (its shape, random weights)")
FLAGS = flags.FLAGS

GUARD_SHAPES = {
    "cpu": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2),
    "llama-guard-3-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                             num_key_value_heads=8, head_dim=64),
}


def bench_examples(data_dir: Path, n: int) -> list[dict]:
    """Real prompts with multi-sentence responses: GSM8K solutions, Self-Instruct outputs, and
    AdvBench goals with their (refusal-free) targets."""
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        gsm = [json.loads(line) for line in f][: n // 2]
    with open(data_dir / "self_instruct" / "user_oriented_instructions.jsonl") as f:
        inst = [json.loads(line) for line in f]
    inst = [r for r in inst if len(r["instances"][0]["output"].split()) > 40][: n // 4]
    with open(data_dir / "advbench" / "harmful_behaviors.csv") as f:
        adv = list(csv.DictReader(f))[: n - len(gsm) - len(inst)]
    return ([{"prompt": r["question"], "response": r["answer"]} for r in gsm]
            + [{"prompt": r["instruction"], "response": r["instances"][0]["output"]} for r in inst]
            + [{"prompt": r["goal"], "response": r["target"] + ". " + r["target"]} for r in adv])


def make_guard(root: Path, texts: list[str], shape: str) -> star.Guardrail:
    tok = assets.make_tokenizer(root, texts + [assets.LLAMA_GUARD_3_TEMPLATE] * 50, vocab_size=4096,
                                chat_template=assets.LLAMA_GUARD_3_TEMPLATE)
    hf = transformers.LlamaConfig(vocab_size=len(tok), max_position_embeddings=8192, **GUARD_SHAPES[shape])
    save_pretrained(Transformer(ModelConfig.from_hf(hf.to_dict()), rngs=nnx.Rngs(0)), root)
    return star.Guardrail.from_pretrained(root)


def token_counts(guard: star.Guardrail, examples) -> tuple[int, int]:
    """(real tokens shared_kv feeds the model, lower bound: the full rendering plus the template
    tail of each of the other K - 1 prefixes, which no method can avoid)."""
    processed = bound = 0
    tok = guard.adapter.tokenizer
    for ex in examples:
        cuts = word_cuts(ex["response"])
        ids = [guard.adapter.encode(ex["prompt"], ex["response"][:c]) for c in cuts]
        full = guard.adapter.encode(ex["prompt"], ex["response"])
        plan = star._shared_plan(ids, full, 0)
        processed += len(plan.shared) + sum(map(len, plan.suffixes))
        rendered = guard.adapter.render(ex["prompt"], ex["response"])
        response_end = rendered.rindex(ex["response"]) + len(ex["response"]) if ex["response"] else len(rendered)
        offsets = tok(rendered, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        tail = sum(start >= response_end for start, _ in offsets)
        bound += len(full) + (len(cuts) - 1) * tail  # the last prefix is the full rendering itself
    return processed, bound


def bench_star() -> dict:
    examples = bench_examples(Path(FLAGS.data_dir), FLAGS.examples)
    with tempfile.TemporaryDirectory() as tmp:
        guard = make_guard(Path(tmp), [t for ex in examples for t in ex.values()], FLAGS.guard_size)
        results = {}
        for method in ("shared_kv", "naive"):
            star.score(guard, examples, method=method)  # compile
            times = []
            for _ in range(FLAGS.repeats):
                start = time.perf_counter()
                star.score(guard, examples, method=method)
                times.append(time.perf_counter() - start)
            results[method] = len(examples) / min(times)
        processed, bound = token_counts(guard, examples)
    prefixes = sum(len(word_cuts(ex["response"])) for ex in examples)
    return {
        "examples": len(examples), "prefixes": prefixes, "guard": FLAGS.guard_size,
        "shared_kv_examples_per_s": round(results["shared_kv"], 2),
        "naive_examples_per_s": round(results["naive"], 2),
        "speedup": round(results["shared_kv"] / results["naive"], 2),
        "tokens_processed": processed, "lower_bound_tokens": bound,
        "lower_bound_fraction": round(bound / processed, 3),
    }


BENCHES = {"star": bench_star}


def main(argv):
    names = argv[1:] or list(BENCHES)
    for name in names:
        if name not in BENCHES:
            raise app.UsageError(f"unknown benchmark {name!r}; choose from {sorted(BENCHES)}")
        print(json.dumps({name: BENCHES[name]()}, indent=2), flush=True)


if __name__ == "__main__":
    app.run(main)
