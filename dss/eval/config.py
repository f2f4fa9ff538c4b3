"""The `eval` section of a dss config: every field, its default, and what it means.

A config file's `get_config()` sets `config.eval = eval_defaults()` and overrides what it needs;
`resolve()` fills in anything a hand-written section leaves out and rejects unknown fields, so a
typo fails before any model is loaded. Extra benchmark entries may be added under `benchmarks`
with a `kind` (e.g. `benchmarks.advbench_prefill = dict(kind="advbench", prefill_target=True)`);
they inherit that kind's defaults.
"""

from __future__ import annotations

from pathlib import Path

from ml_collections import ConfigDict

from dss.errors import UserError

__all__ = ["CAPABILITY_KINDS", "SAFETY_KINDS", "check_job", "default_names", "eval_defaults", "job_eval_config", "judges",
           "output_dir", "resolve", "suite"]

SAFETY_KINDS = ("advbench", "hexphi", "harmbench", "xstest")
CAPABILITY_KINDS = ("mmlu", "arc_c", "gsm8k")


def eval_defaults() -> ConfigDict:
    c = ConfigDict()
    # What to evaluate: an HF directory, a hub id, or a dss.train workdir (its export/ is used).
    c.model = ""
    c.tokenizer = ""  # "" = the model's own tokenizer and chat template
    c.method = ""  # row name in dss.tables; "" = the workdir's or model directory's name
    c.outdir = ""  # "" = <workdir>/eval for a workdir, else eval/<model directory name>
    c.dtype = "float32"  # compute dtype of the policy ("bfloat16" on accelerators)
    c.mesh = ()  # (data, fsdp, tensor) sizes for dss.sharding.make_mesh (-1 = the rest); () = one device

    # Which benchmarks (keys of `benchmarks`, comma-separated), in order.
    c.suite = "advbench,hexphi,mmlu,arc_c,gsm8k"

    # Generation (the paper: greedy decoding).
    c.batch_size = 32  # prompts per generate call / rows per log-likelihood batch
    c.max_new_tokens = 512  # default response budget; a benchmark's own max_new_tokens wins if > 0
    c.temperature = 0.0  # 0 = greedy
    c.top_k = 0
    c.top_p = 1.0
    c.seed = 0  # sampling seed (batch k uses seed + k)
    c.system_prompt = ""  # "" = no system message (the chat template's default)
    c.stop_tokens = ()  # extra stop tokens (strings) besides EOS and generation_config's eos ids

    # Safety judges applied to every safety benchmark (comma-separated): keyword, guardrail, llm.
    c.judges = "keyword"
    c.keyword = ConfigDict(dict(
        keywords=(),  # refusal substrings; () = the 29-entry AdvBench list (dss.eval.keyword)
    ))
    c.guardrail = ConfigDict(dict(
        path="",  # guardrail checkpoint(s): HF dir or hub id; comma-separated = averaged ensemble
        kind="auto",  # llama_guard_3 | granite_guardian | shieldgemma | auto
        threshold=0.5,  # P(safe) above this counts as safe
        dtype="float32",
        token_budget=16384,  # tokens per guardrail forward batch
    ))
    c.llm_judge = ConfigDict(dict(
        url="https://api.openai.com/v1",  # any OpenAI-compatible API base (or .../chat/completions)
        model="gpt-4o",
        api_key_env="OPENAI_API_KEY",  # environment variable with the key; "" = send none
        concurrency=8,  # requests in flight
        max_retries=6,  # per example, on HTTP 429/5xx, network errors and malformed replies
        backoff=1.0,  # seconds; doubles per retry (capped at 60 s, or the server's Retry-After)
        timeout=120.0,  # seconds per request
        cache="",  # verdict cache (JSONL); "" = <outdir>/llm_judge_cache.jsonl
    ))

    # Benchmark definitions. path: a local file/directory or a hub dataset id; limit: first N items
    # (0 = all); max_new_tokens: 0 = the global value.
    safety = dict(limit=0, trigger="", max_new_tokens=0)  # trigger: backdoor string appended to prompts
    c.benchmarks = ConfigDict(dict(
        advbench=dict(kind="advbench", path="walledai/AdvBench", prefill_target=False, **safety),
        hexphi=dict(kind="hexphi", path="LLM-Tuning-Safety/HEx-PHI", **safety),  # gated: a local copy
        harmbench=dict(kind="harmbench", path="walledai/HarmBench", functional="standard", **safety),
        xstest=dict(kind="xstest", path="walledai/XSTest", label="safe", **safety),
        # mode: generate (parse the letter) | loglik (most likely option letter); prefill: answer start
        mmlu=dict(kind="mmlu", path="cais/mmlu", limit=0, mode="generate", prefill="Answer:", max_new_tokens=32),
        arc_c=dict(kind="arc_c", path="allenai/ai2_arc", limit=0, mode="generate", prefill="Answer:",
                   max_new_tokens=32),
        # path: a directory with train.jsonl/test.jsonl or a hub id; shots: worked train examples
        gsm8k=dict(kind="gsm8k", path="openai/gsm8k", limit=0, shots=8, max_new_tokens=512),
    ))
    return c


def _merge(base: ConfigDict, user, where: str) -> None:
    for key, value in user.items():
        if key not in base:
            if where != "eval.benchmarks":
                raise KeyError(f"config {where}: unknown field {key!r}; known: {sorted(base)}")
            kind = value.get("kind") if hasattr(value, "get") else None
            if kind not in SAFETY_KINDS + CAPABILITY_KINDS:
                raise UserError(f"config {where}.{key}: needs kind = one of {SAFETY_KINDS + CAPABILITY_KINDS}, "
                                 f"got {kind!r}")
            base[key] = eval_defaults().benchmarks[kind]
        if isinstance(base[key], ConfigDict):
            if not hasattr(value, "items"):
                raise TypeError(f"config {where}.{key}: expected a section, got {value!r}")
            _merge(base[key], value, f"{where}.{key}")
        else:
            try:
                base[key] = value
            except TypeError as e:
                raise TypeError(f"config {where}.{key}: {e}") from e


def resolve(user: ConfigDict | dict) -> ConfigDict:
    """`eval_defaults()` updated with `user` (an eval section); unknown fields are errors, and
    every name in `suite` must be a benchmark entry."""
    cfg = eval_defaults()
    _merge(cfg, user, "eval")
    if not cfg.model:
        raise UserError("config eval.model: set the model to evaluate (HF dir, hub id or training workdir)")
    for name in suite(cfg):
        if name not in cfg.benchmarks:
            raise KeyError(f"config eval.suite: {name!r} is not in eval.benchmarks ({sorted(cfg.benchmarks)})")
        if cfg.benchmarks[name].kind not in SAFETY_KINDS + CAPABILITY_KINDS:
            raise UserError(f"config eval.benchmarks.{name}.kind: {cfg.benchmarks[name].kind!r} is not one of "
                             f"{SAFETY_KINDS + CAPABILITY_KINDS}")
    unknown = set(judges(cfg)) - {"keyword", "guardrail", "llm"}
    if unknown:
        raise UserError(f"config eval.judges: unknown judge(s) {sorted(unknown)}; use keyword, guardrail, llm")
    return cfg


def default_names(model: str, finetuned: bool) -> tuple[str, Path]:
    """(default method name, default output directory) for a model path / hub id / workdir."""
    name = Path(str(model).rstrip("/")).name
    return name, Path(model) / "eval" if finetuned else Path("eval") / name


def output_dir(eval_config) -> Path:
    """Where the evaluation an `eval` section describes writes: `outdir`, else `<workdir>/eval` for
    a training workdir, else `eval/<model directory name>`."""
    from dss.workdir import resolve_model

    model = eval_config["model"]
    return Path(eval_config.get("outdir") or default_names(model, resolve_model(model)[1])[1])


def job_eval_config(config, workdir) -> dict:
    """The `eval` section `python -m dss.eval` evaluates: `eval.model` empty means the `workdir`
    run's export (refused if it has none), and a training run's row is named after its objective."""
    from dss.workdir import resolve_model

    if "eval" not in config:
        raise UserError("--config must name a config file whose get_config() has an `eval` section")
    eval_config = config.eval.to_dict()
    if not eval_config.get("model"):
        if not resolve_model(str(workdir))[1]:
            raise UserError(f"{workdir}: no export/ of a training run to evaluate; run dss.train with this "
                            "--workdir first, or name a model with --config.eval.model")
        eval_config["model"] = str(workdir)
    if not eval_config.get("method") and "objective" in config and resolve_model(eval_config["model"])[1]:
        eval_config["method"] = config.objective.name
    return eval_config


def check_job(config, workdir) -> None:
    """The light check of `python -m dss.eval` (no JAX): the section resolves, the model to
    evaluate exists, the suite's local benchmark files are there, and no other job holds the
    output directory."""
    from dss.data.sources import local_file
    from dss.workdir import check_free

    try:
        cfg = resolve(job_eval_config(config, workdir))
    except (KeyError, TypeError) as err:
        raise UserError(err.args[0]) from err
    check_free(output_dir(cfg), config)
    if local_file(cfg.model) and not Path(cfg.model).expanduser().exists():
        raise UserError(f"config.eval.model = {cfg.model!r}: no such model directory")
    for name in suite(cfg):
        path = cfg.benchmarks[name].path
        if local_file(path) and not Path(path).expanduser().exists():
            raise UserError(f"config.eval.benchmarks.{name}.path = {path!r}: no such file or directory")


def suite(cfg: ConfigDict) -> list[str]:
    """Benchmark names to run, in order."""
    return [s.strip() for s in cfg.suite.split(",") if s.strip()]


def judges(cfg: ConfigDict) -> list[str]:
    """Safety judge names to apply."""
    return [s.strip() for s in cfg.judges.split(",") if s.strip()]
