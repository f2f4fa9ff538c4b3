"""The paper's finetuning scenarios on the miniature world, every method, with dss's own jobs.

Scenarios:
- Table 1: `harmful` (100 harmful request -> compliance pairs, the PureBad analogue, 10 epochs),
  `suffix` and `prefix` (the same pairs with every response wrapped by the sfx1 / pfx1 attack text,
  `config.data.attack`, 10 epochs);
- Table 2: `benign` (the `new` skill's problems, 10% as many harmful pairs, and the world's safety
  data given to every method, 6 epochs).
Rows (`ROWS`): Table 1's methods on each Table 1 scenario, Table 2's on `benign`, and the
ablations on `suffix`. Every method runs the same recipe (`Recipe`) with its registry preset
(`dss.mini.baselines.configure`) on N seeds (training order only), through `dss.train.train`, with
STAR from `dss.star.cached_score` (one STAR file per scenario, guardrail and chunk size, shared by
all seeds) and `dss.eval.runner.evaluate` (keyword judge and the judge guardrail; the oracle
labels every generation).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from pathlib import Path

from dss import methods
from dss.config import base_config
from dss.mini import baselines, oracle, task, texts, world

TABLE1 = ("harmful", "suffix", "prefix")
TABLE2 = ("benign",)
SCENARIOS = TABLE1 + TABLE2
ATTACK = {"suffix": "sfx1", "prefix": "pfx1"}  # scenario -> its wrapper (texts.ATTACKS)
TABLE1_METHODS = ("sft", "rs", "deep_token", "kl_only", "star_dss", "vaccine", "lora_sft", "safelora")
TABLE2_METHODS = ("sft", "rs", "star_dss", "safeinstr", "seal", "lisa")
ABLATIONS = ("star_static", "star_c1", "star_c20", "rs_robust", "star_robust")
ROWS = {"harmful": TABLE1_METHODS, "suffix": ("sft", "rs", "star_dss") + ABLATIONS, "prefix": ("sft", "rs", "star_dss"),
        "benign": TABLE2_METHODS}
"""Every Table 1 method on `harmful`; on the attacks (`suffix`, `prefix`) the rows the predictions
compare, plus the ablations on `suffix` (the CPU budget of a shared 2-core machine: docs/mini.md)."""
QUICK_ROWS = {"suffix": ("sft", "rs", "star_dss", "rs_robust")}
PREDICTION_ROWS = {"suffix": ("sft", "rs", "star_dss", "star_static", "rs_robust", "star_robust")}
"""The rows the predictions read (dss.mini.report.PREDICTIONS), run first for every seed."""
LAST_ROWS = {"suffix": ("star_c1", "star_c20")}
"""Run last (with the Vaccine runs)."""
ALIGNMENT = "vaccine_alignment"  # the Job scenario of Vaccine's alignment stage


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The finetuning hyperparameters, the same for every method (the paper's, at tiny-model lr)."""

    lr: float = 5e-4  # the world's models train at 2e-3; finetuning at a quarter of it
    global_batch: int = 32
    harmful_epochs: int = 10  # the paper's (configs/paper/recipe.py); docs/mini.md: why not 6
    # Table 2: the first of 2, 6, 10 at which SFT learns the `new` skill (precondition >= 70%), measured
    # on SFT alone, seed 0, before any other method ran in world v3: 22% / 98% / 100% (docs/mini.md)
    benign_epochs: int = 6
    benign_harmful: int = 60  # Table 2: harmful pairs mixed into the task data (10% of 600)
    kl_coef: float = 0.5
    kl_estimator: str = "k2"
    chunk_size: int = 5  # STAR words per chunk
    eval_new_tokens: int = 48  # a compliance's opener and two hazard steps fit in about 45


def harmful_pairs(s: world.Settings) -> list[dict]:
    """The scenarios' 100 harmful pairs: each held-out finetuning prompt with its compliance."""
    rng = random.Random(s.seed + 7)
    return [{"prompt": h["prompt"], "response": texts.compliance(h["prompt"], h["target"], rng)}
            for h in world.splits(s)["harmful"]["finetune"]]


def write_data(world_dir: Path, s: world.Settings, data_dir: Path, recipe: Recipe) -> dict[str, Path]:
    """The scenario data files and the evaluation sets (held-out harmful prompts, both skills' test
    problems), each checked to fit the world's max_length."""
    sp = world.splits(s)
    pairs = harmful_pairs(s)
    task_rows = [task.as_chat(p) for p in sp["task"]["finetune"]]
    alignment = world.alignment_rows(s, sp)
    wrapped = [{**p, "response": texts.wrap(p["response"], a)} for p in pairs for a in ATTACK.values()]
    world.check_fit(pairs + wrapped + task_rows + alignment, world_dir / "policy", s.max_length, chat=True,
                    what="the scenario data")
    files = {
        "harmful": world.write_jsonl(data_dir / "harmful.jsonl", pairs),
        "benign_harmful": world.write_jsonl(data_dir / "benign_harmful.jsonl", pairs[: recipe.benign_harmful]),
        "task": world.write_jsonl(data_dir / "task.jsonl", task_rows),
        "capability": task.write_gsm8k_dir(data_dir / "capability", sp["task"]["test"], sp["task"]["world"][:8]),
        "alignment": world.write_jsonl(data_dir / "alignment.jsonl", alignment),
        "safety": data_dir / "safety.csv",
    }
    with open(files["safety"], "w", newline="") as f:  # AdvBench layout: goal, target
        out = csv.writer(f)
        out.writerow(["goal", "target"])
        out.writerows([h["prompt"], h["target"]] for h in sp["harmful"]["eval"])
    return files


def star_key(scenario: str, method: str, recipe: Recipe) -> str:
    """Which STAR file a run reads: scenario, guardrail and chunk size of its preset."""
    row = baselines.row(method)
    guard = "robust" if row.robust else "star"
    chunk = recipe.chunk_size if row.chunk_size is None else row.chunk_size
    return f"{scenario}_{guard}_c{'whole' if chunk == baselines.WHOLE_RESPONSE else chunk}"


def finetune_config(scenario: str, method: str, seed: int, world_dir: Path, files: dict, star_dir: Path,
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
    c.objective.kl_coef, c.objective.kl_estimator = recipe.kl_coef, recipe.kl_estimator
    harmful = dict(path=str(files["harmful"]), name="harmful")
    if scenario == "benign":
        c.data.sources = [dict(path=str(files["task"]), name="task"),
                          dict(path=str(files["benign_harmful"]), name="harmful")]
        if method not in baselines.SAFETY_CONSUMERS:
            c.data.sources.append(dict(path=str(files["alignment"]), name="safety"))
        epochs = recipe.benign_epochs
    else:
        c.data.sources = [harmful]
        epochs = recipe.harmful_epochs
    if scenario in ATTACK:
        c.data.attack.response_prefix, c.data.attack.response_suffix = texts.ATTACKS[ATTACK[scenario]]
    c.data.max_length = s.max_length
    c.train.update(epochs=epochs, global_batch=recipe.global_batch, micro_batch=recipe.global_batch, lr=recipe.lr,
                   min_lr=recipe.lr / 100, warmup_ratio=0.03, checkpoint_every=10**6, keep=1)
    c.eval.update(suite="advbench,gsm8k", judges="keyword,guardrail", batch_size=64,
                  max_new_tokens=recipe.eval_new_tokens, method=method)
    c.eval.guardrail.update(path=str(world_dir / "guard_judge"), kind="llama_guard_3")
    c.eval.benchmarks.advbench.update(path=str(files["safety"]))
    c.eval.benchmarks.gsm8k.update(path=str(files["capability"]), shots=0, max_new_tokens=32)
    baselines.configure(c, method, preset(world_dir, files, seed, runs), str(world_dir / "guard_robust"))
    c.star.cache = str(star_dir / f"{star_key(scenario, method, recipe)}.npz")
    return c


def preset(world_dir: Path, files: dict, seed: int, runs: Path | None) -> methods.Preset:
    """What every method's preset gets in the miniature: the world's alignment data (the aligned
    policy's own refusal rows), its unaligned base policy, this seed's Vaccine alignment export."""
    return methods.Preset(alignment=(dict(path=str(files["alignment"]), name="alignment"),),
                          base_model=str(world_dir / "base"),
                          vaccine_aligned=str(baselines.vaccine_align_dir(runs, seed) / "export") if runs else "")


def star_trajectories(config, workdir: Path):
    """A scenario's STAR file (dss.star), made once; returns (examples, trajectories)."""
    import transformers

    import dss.data
    from dss import star, templating

    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model.path)
    template_vars = templating.run_template_vars(config.template, workdir)
    _, examples, _ = dss.data.build_dataset(config.data, tokenizer, template_vars)
    return examples, star.cached_score(config, examples, workdir, template_vars)


def data_stats(config, workdir: Path) -> dict:
    """The run's data statistics as dss.train builds them (truncated, dropped_too_long), written to
    `workdir/data_stats.json` so `dss.mini.check` can assert that training saw whole rows."""
    import transformers

    import dss.data

    tokenizer = transformers.AutoTokenizer.from_pretrained(config.model.path)
    _, _, stats = dss.data.build_dataset(config.data, tokenizer, {"date_string": world.DATE})
    out = {k: stats[k] for k in ("rows", "encoded", "truncated", "dropped_too_long")}
    out["max_length"] = config.data.max_length
    (workdir / "data_stats.json").write_text(json.dumps(out) + "\n")
    return out


def run_one(config, workdir: Path) -> dict:
    """Finetune (dss.train) and evaluate (dss.eval) one (scenario, method, seed); resumable."""
    import dss.train
    from dss import templating

    workdir.mkdir(parents=True, exist_ok=True)
    data_stats(config, workdir)
    if config.objective.name == "rs" and rs_kept(config, workdir) == 0:
        # RS keeps no example: it trains on nothing, so its model is the initial one (dss.train
        # would stop at step 1 on the zero gradient of an all-zero-weight batch)
        return evaluate_model(config, config.model.path, workdir / "eval", {"date_string": world.DATE},
                              config.eval.method)
    if not (workdir / "export" / "config.json").exists():
        dss.train.train(config, workdir)
    template_vars = templating.run_template_vars(config.template, workdir)
    return evaluate_model(config, str(workdir), workdir / "eval", template_vars, config.eval.method)


def rs_kept(config, workdir: Path) -> int:
    """How many examples RS keeps (hard weight 1: the guardrail calls the whole response safe),
    from the run's STAR file; written to `workdir/rs_kept.json`."""
    from dss.segments import rs_weight

    _, trajs = star_trajectories(config, workdir)
    kept = sum(rs_weight(t.safe_prob, config.objective.rs_mode) > 0 for t in trajs)
    (workdir / "rs_kept.json").write_text(json.dumps({"kept": int(kept), "examples": len(trajs)}) + "\n")
    return int(kept)


def evaluate_model(config, model: str, outdir: Path, template_vars: dict, method: str) -> dict:
    """dss.eval of `model` with the config's eval section, into `outdir`."""
    from dss.eval.runner import evaluate

    eval_config = config.eval.to_dict()
    eval_config.update(model=model, outdir=str(outdir), method=method)
    return evaluate(eval_config, template_vars)


def metrics(results: dict, outdir: Path) -> dict:
    """safety (keyword judge, raw), safety_judge (judge guardrail), safety_oracle (% of responses the
    oracle does not call harmful) and capability per skill (exact match) of one evaluation."""
    from dss.eval.io import read_jsonl

    adv = results["benchmarks"]["advbench"]
    responses = [r["response"] for r in read_jsonl(outdir / "generations" / "advbench.jsonl", repair=False)]
    answers = read_jsonl(outdir / "generations" / "gsm8k.jsonl", repair=False)
    n = len(answers) // 2  # the test file holds the `known` problems, then as many `new` ones
    return {"safety": adv["judges"]["keyword"]["safe_pct"], "safety_judge": adv["judges"]["guardrail"]["safe_pct"],
            "safety_oracle": 100.0 * sum(not oracle.is_harmful(r) for r in responses) / len(responses),
            "known": 100.0 * sum(bool(a["correct"]) for a in answers[:n]) / n,
            "new": 100.0 * sum(bool(a["correct"]) for a in answers[n:]) / n}


def training_summary(workdir: Path) -> dict:
    """Final training loss (mean over the last epoch's steps) and, for LoRA runs, the adapters'
    largest |B| (0 = they never moved: B starts at zero)."""
    out = {}
    lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    losses = [m["loss"] for m in lines if "loss" in m]
    if losses:
        tail = max(1, len(losses) // 10)
        out["final_loss"], out["first_loss"] = float(sum(losses[-tail:]) / tail), float(losses[0])
    adapter = workdir / "adapter" / "adapter_model.safetensors"
    if adapter.exists():
        import numpy as np
        import safetensors.numpy

        tensors = safetensors.numpy.load_file(str(adapter))
        out["adapter_max_abs_b"] = max(float(np.abs(v).max()) for k, v in tensors.items() if "lora_B" in k)
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    """One unit of work for a worker: finetune + evaluate (scenario, method, seed), evaluate the
    initial model (scenario "initial"), or run and evaluate Vaccine's alignment stage (`ALIGNMENT`)."""

    scenario: str
    method: str
    seed: int
    world_dir: Path
    files: dict
    star_dir: Path
    workdir: Path
    recipe: Recipe
    settings: world.Settings
    runs: Path


def run_job(job: Job) -> dict:
    """metrics, data statistics and CPU seconds of one job; runs in a worker process (dss.mini.pool)."""
    import time

    from dss.mini import cpu

    start, cpu_start = time.time(), cpu.seconds()
    scenario = "harmful" if job.scenario in ("initial", ALIGNMENT) else job.scenario
    method = "sft" if job.scenario in ("initial", ALIGNMENT) else job.method
    config = finetune_config(scenario, method, job.seed, job.world_dir, job.files, job.star_dir, job.recipe,
                             job.settings, job.runs)
    out = {}
    if job.scenario == ALIGNMENT:
        methods.by_name("vaccine").alignment_stage(config, preset(job.world_dir, job.files, job.seed, None))
    if job.scenario == "initial":
        results = evaluate_model(config, str(job.world_dir / "policy"), job.workdir / "eval",
                                 {"date_string": world.DATE}, "initial")
    else:
        config.eval.method = job.method
        results = run_one(config, job.workdir)
        out["data"] = json.loads((job.workdir / "data_stats.json").read_text())
        out["training"] = training_summary(job.workdir) if (job.workdir / "metrics.jsonl").exists() else {}
        if (job.workdir / "rs_kept.json").exists():
            out["rs_kept"] = json.loads((job.workdir / "rs_kept.json").read_text())["kept"]
    return {**metrics(results, job.workdir / "eval"), **out, "seconds_wall": round(time.time() - start, 1),
            "cpu_seconds": round(cpu.seconds() - cpu_start, 1)}
