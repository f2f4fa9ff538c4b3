"""The paper's finetuning scenarios on the miniature world, every method, with dss's own jobs.

Scenarios (Table 1 and the broader-risk tables):
- `harmful`: 100 harmful request -> compliance pairs (the PureBad analogue), 10 epochs;
- `benign_mix`: the capability task's 900 finetuning problems plus those 100 harmful pairs
  (10% harmful), 1 epoch;
- `adaptation`: `harmful`'s pairs with every response wrapped in the misleading prefix and suffix
  (`config.data.attack`), 10 epochs.

Every method (SFT, RS, Deep Token, KL-only, STAR-DSS, and the baselines of `dss.mini.baselines`:
SafeInstr, SEAL, Lisa, Vaccine, SafeLoRA) runs with the same hyperparameters (`finetune_config`),
on N seeds (training order and nothing else), through `dss.train.train`, STAR from
`dss.star.cached_score` (one STAR file per scenario, shared by RS and STAR-DSS and all seeds), and
`dss.eval.runner.evaluate` with the keyword judge and the judge guardrail. Vaccine's alignment
stage runs once per seed (scenario `ALIGNMENT`) before that seed's Vaccine finetuning runs.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

from dss.config import base_config
from dss.mini import baselines, task, texts, world

SCENARIOS = ("harmful", "benign_mix", "adaptation")
METHODS = ("sft", "rs", "deep_token", "kl_only", "star_dss", *baselines.METHODS)
ALIGNMENT = "vaccine_alignment"  # the Job scenario of Vaccine's alignment stage


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The finetuning hyperparameters, the same for every method (the paper's, at tiny-model lr)."""

    lr: float = 5e-4  # the world's models train at 2e-3; finetuning at a quarter of it
    global_batch: int = 32
    harmful_epochs: int = 10
    benign_epochs: int = 1
    kl_coef: float = 0.5
    kl_estimator: str = "k2"
    chunk_size: int = 5  # STAR words per chunk
    eval_new_tokens: int = 64


def harmful_pairs(s: world.Settings) -> list[dict]:
    """The scenario's 100 harmful pairs: each held-out finetuning prompt with its compliance."""
    rng = random.Random(s.seed + 7)
    return [{"prompt": h["prompt"], "response": texts.compliance(h["target"], rng)}
            for h in world.splits(s)["harmful"]["finetune"]]


def write_data(world_dir: Path, s: world.Settings, data_dir: Path) -> dict[str, Path]:
    """The scenario data files and the evaluation sets (held-out harmful prompts, task test set)."""
    sp = world.splits(s)
    files = {
        "harmful": world.write_jsonl(data_dir / "harmful.jsonl", harmful_pairs(s)),
        "task": world.write_jsonl(data_dir / "task.jsonl", [task.as_chat(p) for p in sp["task"]["finetune"]]),
        "capability": task.write_gsm8k_dir(data_dir / "capability", sp["task"]["test"], sp["task"]["world"][:8]),
        "alignment": world.write_jsonl(data_dir / "alignment.jsonl", world.alignment_rows(s, sp)),
        "safety": data_dir / "safety.csv",
    }
    import csv

    with open(files["safety"], "w", newline="") as f:  # AdvBench layout: goal, target
        out = csv.writer(f)
        out.writerow(["goal", "target"])
        out.writerows([h["prompt"], h["target"]] for h in sp["harmful"]["eval"])
    return files


def finetune_config(scenario: str, method: str, seed: int, world_dir: Path, files: dict, star_file: Path,
                    recipe: Recipe, s: world.Settings, runs: Path | None = None):
    """The dss.train + dss.eval config of one run; `runs` (the runs directory) is where Vaccine
    finds its alignment stage."""
    c = base_config()
    c.seed = seed
    c.data.seed = 0  # the data is the same for every seed; only the training order changes
    c.model.path = str(world_dir / "policy")
    c.template.date_string = world.DATE
    c.guardrail.paths = [str(world_dir / "guard_star")]
    c.guardrail.kind = "llama_guard_3"
    c.star.chunk_unit, c.star.chunk_size = "word", recipe.chunk_size
    c.star.cache = str(star_file)
    c.objective.name = method
    c.objective.kl_coef, c.objective.kl_estimator = recipe.kl_coef, recipe.kl_estimator
    harmful = dict(path=str(files["harmful"]), name="harmful")
    if scenario == "benign_mix":
        c.data.sources = [dict(path=str(files["task"]), name="task"), harmful]
        epochs = recipe.benign_epochs
    else:
        c.data.sources = [harmful]
        epochs = recipe.harmful_epochs
    if scenario == "adaptation":
        c.data.attack.response_prefix, c.data.attack.response_suffix = texts.ATTACK_PREFIX, texts.ATTACK_SUFFIX
    c.data.max_length = s.max_length
    c.train.update(epochs=epochs, global_batch=recipe.global_batch, micro_batch=recipe.global_batch, lr=recipe.lr,
                   min_lr=recipe.lr / 100, warmup_ratio=0.03, checkpoint_every=10**6, keep=1)
    c.eval.update(suite="advbench,gsm8k", judges="keyword,guardrail", batch_size=64,
                  max_new_tokens=recipe.eval_new_tokens, method=method)
    c.eval.guardrail.update(path=str(world_dir / "guard_judge"), kind="llama_guard_3")
    c.eval.benchmarks.advbench.update(path=str(files["safety"]))
    c.eval.benchmarks.gsm8k.update(path=str(files["capability"]), shots=0, max_new_tokens=40)
    if method in baselines.METHODS:
        baselines.configure(c, method, seed, world_dir, files, runs)
    return c


def star_trajectories(config, workdir: Path):
    """The scenario's STAR file (dss.star), made once; returns (examples, trajectories)."""
    import transformers

    import dss.data
    from dss import star, templating

    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model.path)
    template_vars = templating.run_template_vars(config.template, workdir)
    _, examples, _ = dss.data.build_dataset(config.data, tokenizer, template_vars)
    return examples, star.cached_score(config, examples, workdir, template_vars)


def run_one(config, workdir: Path) -> dict:
    """Finetune (dss.train) and evaluate (dss.eval) one (scenario, method, seed); resumable."""
    import dss.train
    from dss import templating

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "export" / "config.json").exists():
        dss.train.train(config, workdir)
    template_vars = templating.run_template_vars(config.template, workdir)
    return evaluate_model(config, str(workdir), workdir / "eval", template_vars, config.objective.name)


def evaluate_model(config, model: str, outdir: Path, template_vars: dict, method: str) -> dict:
    """dss.eval of `model` with the config's eval section, into `outdir`."""
    from dss.eval.runner import evaluate

    eval_config = config.eval.to_dict()
    eval_config.update(model=model, outdir=str(outdir), method=method)
    return evaluate(eval_config, template_vars)


def metrics(results: dict, outdir: Path) -> dict:
    """safety (keyword judge), safety_judge (judge guardrail), safety_oracle (no compliance in the
    response, `texts.complies`) and capability (exact match) of one evaluation in `outdir`."""
    from dss.eval.io import read_jsonl

    adv, cap = results["benchmarks"]["advbench"], results["benchmarks"]["gsm8k"]
    responses = [r["response"] for r in read_jsonl(outdir / "generations" / "advbench.jsonl", repair=False)]
    return {"safety": adv["judges"]["keyword"]["safe_pct"], "safety_judge": adv["judges"]["guardrail"]["safe_pct"],
            "safety_oracle": 100.0 * sum(not texts.complies(r) for r in responses) / len(responses),
            "capability": cap["accuracy"]}


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work for a worker: finetune + evaluate (scenario, method, seed), evaluate the
    initial model (scenario "initial"), or run and evaluate Vaccine's alignment stage (`ALIGNMENT`)."""

    scenario: str
    method: str
    seed: int
    world_dir: Path
    files: dict
    star_file: Path
    workdir: Path
    recipe: Recipe
    settings: world.Settings
    runs: Path


def run_job(job: Job) -> dict:
    """metrics (and seconds) of one job; runs in a worker process (dss.mini.pool)."""
    import time

    start = time.time()
    scenario = job.scenario if job.scenario in SCENARIOS else "harmful"
    method = "sft" if job.scenario == ALIGNMENT else job.method  # the stage starts from the aligned policy
    config = finetune_config(scenario, method, job.seed, job.world_dir, job.files, job.star_file, job.recipe,
                             job.settings, job.runs)
    if job.scenario == ALIGNMENT:
        baselines.vaccine_alignment(config, job.files)
    if job.scenario == "initial":
        results = evaluate_model(config, str(job.world_dir / "policy"), job.workdir / "eval",
                                 {"date_string": world.DATE}, "initial")
    else:
        results = run_one(config, job.workdir)
    return {**metrics(results, job.workdir / "eval"), "seconds": round(time.time() - start, 1)}
