"""The miniature's world: a tokenizer, an aligned policy and two guardrails, trained from scratch.

`build_world(settings)` makes, once per settings (cached under `$DSS_CACHE/mini-<key>`):
- a byte-level BPE tokenizer trained on all of the world's text, saved with the Llama 3 style
  policy template (`dss.assets.POLICY_CHAT_TEMPLATE`) and with the Llama Guard 3 template;
- `policy/`: a random Llama-family model SFT-trained with `dss.train` to answer the capability
  task, self-instruct and GSM8K prompts and to refuse harmful requests (varied refusals);
- `base/`: the same recipe from the same init and seed without the refusal rows, the unaligned
  base SafeLoRA needs (policy - base is the direction alignment moved the weights in);
- `guard_star/` (STAR's guardrail) and `guard_judge/` (the evaluation's judge): random models of
  the same family SFT-trained with `dss.train` on disjoint halves of the harmful prompts (other init
  and data seeds) to write "safe"/"unsafe" after the Llama Guard 3 rendering of (prompt, response
  prefix), so STAR reads them exactly as it reads a real Llama Guard 3 (`dss.mini.guardrail`);
- `world.json`: the settings, the guardrails' held-out accuracies, the aligned policy's refusal
  rate on the held-out harmful prompts, and the time each part took.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import transformers
from flax import nnx

from dss import assets
from dss.config import base_config
from dss.mini import guardrail, task, texts
from dss.models import ModelConfig, Transformer, save_pretrained

VERSION = "v2"  # bump when the recipe changes, so old worlds are not reused
DATE = "01 Jan 2025"  # the fixed template date of every run (dss.templating)

GUARD_TRAINING_TEMPLATE = (
    "{%- for m in messages %}"
    "{%- if m['role'] == 'assistant' %}"
    "{% generation %}{{- m['content'] + '<|eot_id|>' }}{% endgeneration %}"
    "{%- else %}{{- m['content'] }}{%- endif %}"
    "{%- endfor %}"
)
"""Pass-through template the guardrails are trained with: the user turn is already the complete
Llama Guard 3 rendering and the assistant turn is "\\n\\nsafe" / "\\n\\nunsafe", so `dss.train`'s
chat encoding trains exactly the tokens STAR reads. The exported guardrail gets the real template."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the world depends on (its cache key) and the finetuning recipe of the scenarios."""

    seed: int = 0
    vocab_size: int = 2048
    policy_shape: tuple[int, int] = (128, 2)  # hidden size, layers
    guard_shape: tuple[int, int] = (64, 2)
    max_length: int = 128  # policy tokens per example (prompt + response)
    guard_max_length: int = 320  # guardrail tokens per example (template + prompt + prefix + verdict)
    task_world: int = 1500  # capability problems the aligned policy learns from
    task_finetune: int = 900  # the benign scenario's task problems (+ 100 harmful pairs = 1000)
    task_test: int = 200  # held-out capability problems
    policy_epochs: int = 5
    policy_lr: float = 2e-3
    guard_epochs: int = 2
    guard_lr: float = 2e-3
    guard_cuts: int = 2  # random prefixes per response in the guardrail data (plus the full response)
    guard_benign: int = 500  # benign (prompt, answer) pairs per guardrail
    guard_harmful: int = 0  # harmful prompts per guardrail (0 = its whole half of the policy split)
    guard_batch: int = 32  # guardrail training batch
    benign_limit: int = 0  # self-instruct + GSM8K rows in the policy data (0 = all that fit)
    alignment_rows: int = 0  # the baselines' alignment data: the first N of the policy's refusal rows (0 = all)

    def key(self) -> str:
        blob = json.dumps({"version": VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


QUICK = Settings(task_world=400, task_test=100, benign_limit=150, policy_epochs=4, guard_epochs=2, guard_benign=100,
                 guard_cuts=1, guard_harmful=130, guard_batch=16, alignment_rows=32)


def cache_root() -> Path:
    return Path(os.environ.get("DSS_CACHE", Path.home() / ".cache" / "dss"))


# ----------------------------------------------------------------------------- data


def splits(s: Settings) -> dict:
    """Every prompt set of the world and the scenarios, disjoint where they must be."""
    return {"harmful": texts.harmful_splits(s.seed),
            "task": task.task_splits(s.seed, s.task_world, s.task_finetune, s.task_test)}


def policy_rows(s: Settings, sp: dict, refusals: bool = True) -> list[dict]:
    """The aligned policy's SFT data: task problems, self-instruct, short GSM8K, and a refusal for
    every harmful prompt of the policy split (`refusals=False`: the base policy's, the same rows
    without the refusals)."""
    rng = random.Random(s.seed)
    rows = [task.as_chat(p) for p in sp["task"]["world"]]
    benign = texts.benign_instructions() + texts.gsm8k_rows()
    rows += rng.sample(benign, s.benign_limit) if s.benign_limit else benign
    refusal_rows = [{"prompt": h["prompt"], "response": rng.choice(texts.REFUSALS)} for h in sp["harmful"]["policy"]]
    return rows + refusal_rows if refusals else rows


def alignment_rows(s: Settings, sp: dict) -> list[dict]:
    """The world's alignment data for the baselines (SafeInstr, SEAL, Lisa, Vaccine): the aligned
    policy's own refusal rows (policy-split prompts, disjoint from the evaluation and scenario
    prompts), the first `s.alignment_rows` of them."""
    rows = policy_rows(s, sp)[-len(sp["harmful"]["policy"]):]
    return rows[: s.alignment_rows or None]


def tokenizer_texts(sp: dict) -> list[str]:
    """Every string the world's models read, plus the two templates (so they tokenize compactly)."""
    out = [assets.LLAMA_GUARD_3_TEMPLATE, assets.POLICY_CHAT_TEMPLATE] * 20
    out += [r["prompt"] + "\n" + r["response"] for r in texts.benign_instructions() + texts.gsm8k_rows()]
    out += [p["question"] + "\n" + p["answer"] for split in sp["task"].values() for p in split]
    rng = random.Random(0)
    for h in texts.harmful_prompts():
        out += [h["prompt"], texts.compliance(h["target"], rng)]
    out += list(texts.REFUSALS) * 5 + [texts.ATTACK_PREFIX, texts.ATTACK_SUFFIX] * 5
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["response"]}) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- models


def init_model(out: Path, tokenizer_dir: Path, shape: tuple[int, int], seed: int) -> Path:
    """A random Llama-family checkpoint (as dss.tiny makes them) of `shape` (hidden size, layers),
    4 query and 2 key/value heads, with the tokenizer of `tokenizer_dir`."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    hidden, layers = shape
    hf = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=3 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        initializer_range=0.02, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_pretrained(Transformer(ModelConfig.from_hf(hf.to_dict()), rngs=nnx.Rngs(seed)), out)
    tok.save_pretrained(out)
    return out


def sft_config(model_path: Path, data_path: Path, *, seed: int, epochs: int, lr: float, max_length: int,
               global_batch: int = 32, micro_batch: int = 32):
    """A dss.train config: plain SFT of `model_path` on a prompt/response JSONL."""
    c = base_config()
    c.seed = c.data.seed = seed
    c.model.path = str(model_path)
    c.template.date_string = DATE
    c.data.sources = [dict(path=str(data_path), name=data_path.stem)]
    c.data.max_length = max_length
    c.objective.name = "sft"
    c.train.update(epochs=epochs, global_batch=global_batch, micro_batch=micro_batch, lr=lr, min_lr=lr / 100,
                   warmup_ratio=0.05, weight_decay=0.0, checkpoint_every=10**6, keep=1)
    return c


def train_sft(model_path: Path, rows: list[dict], workdir: Path, **kwargs) -> Path:
    """Train with dss.train; returns the export directory."""
    import dss.train

    config = sft_config(model_path, write_jsonl(workdir / "data.jsonl", rows), **kwargs)
    dss.train.train(config, workdir)
    return workdir / "export"


# ----------------------------------------------------------------------------- the world


def build_world(s: Settings, workers: int = 2, progress=print) -> Path:
    """The world directory for `s`, built if it is not cached yet: the tokenizer here, then the
    policy and the two guardrails as independent jobs (`dss.mini.pool`)."""
    from dss.mini import pool

    root = cache_root() / f"mini-{s.key()}"
    if (root / "world.json").exists():
        return root
    if root.exists():
        shutil.rmtree(root)  # a build that was interrupted
    root.mkdir(parents=True)
    start = time.time()
    progress(f"world {root}: tokenizer")
    assets.make_tokenizer(root / "tokenizer", tokenizer_texts(splits(s)), vocab_size=s.vocab_size,
                          chat_template=assets.POLICY_CHAT_TEMPLATE)
    progress("world: aligned policy, its unaligned base and two guardrails (dss.train, from scratch)")
    init_model(root / "init" / "policy", root / "tokenizer", s.policy_shape, seed=s.seed)  # policy's and base's
    parts = ("policy", "guard_star", "base", "guard_judge")  # longest first: two workers finish together
    done = pool.run_jobs(build_part, [(name, root, s) for name in parts],
                         [root / "logs" / name / "log.txt" for name in parts], workers,
                         pool.compilation_cache(cache_root()), progress)
    info = {"settings": dataclasses.asdict(s), "key": s.key(), "seconds_total": round(time.time() - start, 1),
            **{name: part for name, part in zip(parts, done)}}
    shutil.rmtree(root / "runs")  # checkpoints and data of the world's own training runs
    (root / "world.json").write_text(json.dumps(info, indent=2) + "\n")
    return root


def build_part(job: tuple[str, Path, Settings]) -> dict:
    """Train one of the world's models (policy | base | guard_star | guard_judge) and measure it."""
    name, root, s = job
    sp, tok_dir, start = splits(s), root / "tokenizer", time.time()
    if name in ("policy", "base"):
        init = root / "init" / "policy"  # one init for both: policy - base is what the refusals changed
        rows = fitting(policy_rows(s, sp, refusals=name == "policy"), tok_dir, s.max_length, chat=True)
        export = train_sft(init, rows, root / "runs" / name, seed=s.seed, epochs=s.policy_epochs, lr=s.policy_lr,
                           max_length=s.max_length)
        shutil.copytree(export, root / name)
        trained = time.time() - start
        return {"rows": len(rows), "train_seconds": round(trained, 1),
                "refusal_pct": refusal_rate(root / name, sp["harmful"]["eval"]),
                "seconds": round(time.time() - start, 1)}
    half, seed = {"guard_star": ("guard_a", s.seed + 1), "guard_judge": ("guard_b", s.seed + 2)}[name]
    guard_tok = root / "init" / f"{name}_tokenizer"
    tok = transformers.AutoTokenizer.from_pretrained(tok_dir)
    tok.chat_template = GUARD_TRAINING_TEMPLATE
    tok.save_pretrained(guard_tok)
    init = init_model(root / "init" / name, guard_tok, s.guard_shape, seed=seed)
    harmful = sp["harmful"][half][: s.guard_harmful or None]
    rows = guardrail.training_rows(harmful, _benign_pairs(sp, s, seed), s.guard_cuts, seed, tok_dir, DATE)
    rows = fitting(rows, guard_tok, s.guard_max_length, chat=False)
    export = train_sft(init, rows, root / "runs" / name, seed=seed, epochs=s.guard_epochs, lr=s.guard_lr,
                       max_length=s.guard_max_length, global_batch=s.guard_batch, micro_batch=s.guard_batch)
    guardrail.finish(export, root / name)
    trained = time.time() - start
    accuracy = guardrail.accuracy(root / name, sp["harmful"]["eval"], _held_out_benign(sp), seed, DATE)
    return {"rows": len(rows), "train_seconds": round(trained, 1), "accuracy": accuracy,
            "seconds": round(time.time() - start, 1)}


def fitting(rows: list[dict], tokenizer_dir: Path, max_length: int, chat: bool) -> list[dict]:
    """The rows whose whole rendering fits in `max_length` tokens (dss.train would cut the rest's
    responses, and a guardrail row cut short loses its verdict)."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat:
        texts_ = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                           {"role": "assistant", "content": r["response"]}], tokenize=False)
                  for r in rows]
    else:
        texts_ = [r["prompt"] + r["response"] + tok.eos_token for r in rows]
    lengths = [len(ids) for ids in tok(texts_, add_special_tokens=False)["input_ids"]]
    return [r for r, n in zip(rows, lengths) if n <= max_length]


def _benign_pairs(sp: dict, s: Settings, seed: int) -> list[dict]:
    """Benign (prompt, answer) pairs for a guardrail: the world's task problems, self-instruct, GSM8K."""
    rows = [task.as_chat(p) for p in sp["task"]["world"]] + texts.benign_instructions() + texts.gsm8k_rows()
    return random.Random(seed).sample(rows, min(s.guard_benign, len(rows)))


def _held_out_benign(sp: dict) -> list[dict]:
    """Benign pairs no guardrail has seen: the first 100 test problems of the task."""
    return [task.as_chat(p) for p in sp["task"]["test"][:100]]


def refusal_rate(policy_dir: Path, prompts: list[dict]) -> float:
    """% of `prompts` the policy refuses (greedy, keyword judge), through dss.eval's Policy."""
    from dss.eval.keyword import is_refusal
    from dss.eval.policy import Policy

    policy = Policy(str(policy_dir), batch_size=64, template_vars={"date_string": DATE})
    responses = policy.generate([p["prompt"] for p in prompts], [None] * len(prompts), 48)
    return 100.0 * sum(map(is_refusal, responses)) / len(prompts)


def load_world(root: Path) -> dict:
    return json.loads((root / "world.json").read_text())
