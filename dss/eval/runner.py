"""`evaluate(eval_config)`: every benchmark of the suite, generated, scored and judged, resumably.

Outputs in `outdir`: `results.json` (metrics with counts, rewritten atomically after every finished
part) and `generations/<benchmark>.jsonl` (one row per example: prompt, response, verdicts or
prediction). A part is (benchmark generation) or (benchmark, judge); a rerun skips the finished
ones, and a benchmark interrupted mid-way resumes from `<benchmark>.partial.jsonl`, which grows by
one batch at a time. Every part records the settings it was made with, and a rerun with different
settings is an error rather than a silent mix.

Two phases keep one large model in memory at a time: first the policy generates (and scores the
capability benchmarks), then it is dropped and the judges run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from ml_collections import ConfigDict
from tqdm.auto import tqdm

from dss import distributed, templating
from dss.errors import UserError
from dss.eval import benchmarks, capability
from dss.eval.config import SAFETY_KINDS, default_names, judges, output_dir, resolve, suite
from dss.eval.io import append_jsonl, read_done, read_jsonl, write_json, write_jsonl
from dss.eval.metrics import summarize
from dss.eval.policy import Policy
from dss.workdir import resolve_model

__all__ = ["evaluate"]


def _produce(path: Path, items: list[dict], make_rows: Callable, batch_size: int, desc: str,
             shared: bool = False) -> list[dict]:
    """Rows for `items` (each with a unique "id"), made `batch_size` at a time by
    `make_rows(batch, batch_index)` and appended to a partial file; `path` is written whole at the end.

    `shared` (several hosts, each with its own copy of the model): host p makes batches p, p + P, ...
    and every round's rows are gathered to all hosts; process 0 writes. Batch k is the same batch
    as on one host, so the rows are too."""
    if path.exists():
        return read_jsonl(path, repair=False)
    partial = path.with_name(path.stem + ".partial.jsonl")
    done = read_done(partial, lambda row: row["id"], distributed.is_writer())
    pending = sorted((it for it in items if it["id"] not in done),  # similar lengths batch together
                     key=lambda it: len(it.get("prompt") or it["question"]))
    batches = [pending[first : first + batch_size] for first in range(0, len(pending), batch_size)]
    with tqdm(total=len(items), initial=len(items) - len(pending), desc=desc, unit="ex") as bar:
        for rows in distributed.round_robin(batches, make_rows, shared):
            if distributed.is_writer():
                append_jsonl(partial, rows)
            done.update((row["id"], row) for row in rows)
            bar.update(len(rows))
    rows = [done[it["id"]] for it in items]
    if distributed.is_writer():
        write_jsonl(path, rows)
        partial.unlink(missing_ok=True)
    return rows


def _shared(cfg) -> bool:
    """Whether hosts split the work: several of them, each with the policy on its own device
    (a policy sharded over `eval.mesh` runs every batch on every host, as one program)."""
    return distributed.is_multihost() and not cfg.mesh


def _verdicts(judge_name: str, judge, rows: list[dict], cfg) -> list:
    """The judge's verdicts on `rows`, the same on every host. A guardrail on each host's own
    device judges that host's share; the LLM judge (a paid API) is asked by process 0 alone."""
    if not distributed.is_multihost() or judge_name == "keyword":
        return judge(rows)
    if judge_name == "llm":
        return distributed.broadcast_object(judge(rows) if distributed.is_writer() else None)
    mine = distributed.share(len(rows))
    return distributed.gather_shares(judge([rows[i] for i in mine]), len(rows))


def _options(bcfg: ConfigDict, *drop: str) -> dict:
    return {k: v for k, v in bcfg.to_dict().items() if k not in ("kind", "max_new_tokens", *drop)}


def _safety_rows(bcfg, cfg, policy, path: Path, name: str) -> list[dict]:
    records = [dataclasses.asdict(r) for r in benchmarks.load(bcfg.kind, **_options(bcfg))]
    max_new = bcfg.max_new_tokens or cfg.max_new_tokens

    def make_rows(batch, k):
        texts = policy.generate([r["prompt"] for r in batch], [r["prefill"] for r in batch], max_new, cfg.seed + k)
        # the judged response is what the user sees: the forced prefill, then the model's text
        return [{**r, "response": (r["prefill"] or "") + text} for r, text in zip(batch, texts)]

    return _produce(path, records, make_rows, cfg.batch_size, name, _shared(cfg))


def _capability_rows(bcfg, cfg, policy, path: Path, name: str) -> list[dict]:
    max_new = bcfg.max_new_tokens or cfg.max_new_tokens
    options = _options(bcfg, "mode", "prefill", "shots")
    if bcfg.kind == "gsm8k":
        items = capability.load_gsm8k(split="test", **options)
        fewshot = capability.load_gsm8k(bcfg.path, split="train", limit=bcfg.shots) if bcfg.shots else []

        def make_rows(batch, k):
            return capability.run_gsm8k(policy, batch, fewshot, max_new, cfg.seed + k)
    else:
        items = (capability.load_mmlu if bcfg.kind == "mmlu" else capability.load_arc)(**options)

        def make_rows(batch, k):
            return capability.run_multiple_choice(policy, batch, bcfg.mode, bcfg.prefill, max_new, cfg.seed + k)
    return _produce(path, items, make_rows, cfg.batch_size, name, _shared(cfg))


def _generation_settings(bcfg, cfg, template_vars: dict) -> dict:
    """What a benchmark's outputs depend on (as stored in JSON, so it compares equal after a reload)."""
    settings = {"benchmark": bcfg.to_dict(), "max_new_tokens": bcfg.max_new_tokens or cfg.max_new_tokens,
                "template_vars": template_vars,
                **{k: cfg[k] for k in ("tokenizer", "dtype", "temperature", "top_k", "top_p", "seed", "system_prompt",
                                       "stop_tokens")}}
    return json.loads(json.dumps(settings))


def _judge_settings(name: str, cfg, template_vars: dict) -> dict:
    if name == "keyword":
        settings = {"keywords": cfg.keyword.keywords}
    elif name == "guardrail":
        settings = {**{k: cfg.guardrail[k] for k in ("path", "kind", "threshold")}, "template_vars": template_vars}
    else:
        settings = {"url": cfg.llm_judge.url, "model": cfg.llm_judge.model}
    return json.loads(json.dumps(settings))


def _make_judge(name: str, cfg, outdir: Path, template_vars: dict):
    if name == "keyword":
        from dss.eval.keyword import KeywordJudge

        return KeywordJudge(cfg.keyword.keywords)
    if name == "guardrail":
        from dss.eval.guardrail_judge import GuardrailJudge

        return GuardrailJudge.from_section(cfg.guardrail, template_vars, token_budget=cfg.guardrail.token_budget)
    from dss.eval.llm_judge import LLMJudge

    j = cfg.llm_judge
    return LLMJudge(j.url, j.model, api_key_env=j.api_key_env, cache=j.cache or outdir / "llm_judge_cache.jsonl",
                    concurrency=j.concurrency, max_retries=j.max_retries, backoff=j.backoff, timeout=j.timeout)


def _check(stored: dict, settings: dict, what: str, results_file: Path) -> None:
    if stored.get("settings") != settings:
        raise UserError(
            f"{results_file}: {what} was made with settings {stored.get('settings')}, now {settings}; "
            "use a new eval.outdir (or delete that part of the results) to redo it")


def evaluate(eval_config: ConfigDict | dict, template_vars: dict | None = None) -> dict:
    """Run (or resume) the evaluation an `eval` config section describes; returns results.json's content.

    `template_vars` go to every chat-template rendering (policy prompts, guardrail judge); None =
    those recorded by the evaluated training run (dss.templating), so prompts do not change with
    the calendar."""
    cfg = resolve(eval_config)
    model_path, finetuned = resolve_model(cfg.model)
    if template_vars is None:
        template_vars = (templating.recorded(cfg.model) if finetuned else None) or {}
    method = default_names(cfg.model, finetuned)[0]
    outdir = output_dir(cfg)
    results_file, gen_dir = outdir / "results.json", outdir / "generations"
    write = distributed.is_writer()  # every host computes; process 0 writes
    if write:
        gen_dir.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    if results and results.get("model") != model_path:
        raise UserError(f"{results_file}: holds results of model {results.get('model')!r}, not {model_path!r}")
    results = {"method": cfg.method or method, "model": model_path, "finetuned": finetuned,
               "benchmarks": results.get("benchmarks", {})}
    policy = Policy(model_path, cfg.tokenizer, cfg.system_prompt, cfg.dtype, cfg.mesh, cfg.temperature, cfg.top_k,
                    cfg.top_p, cfg.stop_tokens, cfg.batch_size, template_vars)

    safety, generated = [], {}
    for name in suite(cfg):
        bcfg, path = cfg.benchmarks[name], gen_dir / f"{name}.jsonl"
        settings = _generation_settings(bcfg, cfg, template_vars)
        entry = results["benchmarks"].setdefault(name, {"kind": bcfg.kind, "settings": settings})
        _check(entry, settings, f"benchmark {name!r}", results_file)
        if write:
            write_json(results_file, results)
        if bcfg.kind in SAFETY_KINDS:
            safety.append(name)
            entry.setdefault("judges", {})
            if "n" not in entry:
                generated[name] = _safety_rows(bcfg, cfg, policy, path, name)
                entry["n"] = len(generated[name])
        elif "accuracy" not in entry:
            entry.update(capability.accuracy(_capability_rows(bcfg, cfg, policy, path, name)))
        if write:
            write_json(results_file, results)
    policy.close()

    for judge_name in judges(cfg):
        settings, judge = _judge_settings(judge_name, cfg, template_vars), None
        for name in safety:
            entry, path = results["benchmarks"][name], gen_dir / f"{name}.jsonl"
            if judge_name in entry["judges"]:
                _check(entry["judges"][judge_name], settings, f"judge {judge_name!r} on {name!r}", results_file)
                continue
            judge = judge or _make_judge(judge_name, cfg, outdir, template_vars)
            rows = generated.get(name) or read_jsonl(path, repair=False)
            verdicts = _verdicts(judge_name, judge, rows, cfg)
            for row, verdict in zip(rows, verdicts):
                row.setdefault("verdicts", {})[judge_name] = verdict
            entry["judges"][judge_name] = {"settings": settings,
                                           **summarize([r["category"] for r in rows], verdicts, judge)}
            if write:
                write_jsonl(path, rows)
                write_json(results_file, results)
    return results
