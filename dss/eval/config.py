"""The `eval` section of a dss config: every field, its default, and what it means.

A config file's `get_config()` sets `config.eval = eval_defaults()` and overrides what it needs;
`resolve()` fills in anything a hand-written section leaves out and rejects unknown fields, so a
typo fails before any model is loaded. Extra benchmark entries may be added under `benchmarks`
with a `kind` (e.g. `benchmarks.advbench_prefill = dict(kind="advbench", prefill_target=True)`);
they inherit that kind's defaults.
"""

from __future__ import annotations

from ml_collections import ConfigDict

__all__ = ["CAPABILITY_KINDS", "SAFETY_KINDS", "eval_defaults", "judges", "resolve", "suite"]

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
                raise ValueError(f"config {where}.{key}: needs kind = one of {SAFETY_KINDS + CAPABILITY_KINDS}, "
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
        raise ValueError("config eval.model: set the model to evaluate (HF dir, hub id or training workdir)")
    for name in suite(cfg):
        if name not in cfg.benchmarks:
            raise KeyError(f"config eval.suite: {name!r} is not in eval.benchmarks ({sorted(cfg.benchmarks)})")
        if cfg.benchmarks[name].kind not in SAFETY_KINDS + CAPABILITY_KINDS:
            raise ValueError(f"config eval.benchmarks.{name}.kind: {cfg.benchmarks[name].kind!r} is not one of "
                             f"{SAFETY_KINDS + CAPABILITY_KINDS}")
    unknown = set(judges(cfg)) - {"keyword", "guardrail", "llm"}
    if unknown:
        raise ValueError(f"config eval.judges: unknown judge(s) {sorted(unknown)}; use keyword, guardrail, llm")
    return cfg


def suite(cfg: ConfigDict) -> list[str]:
    """Benchmark names to run, in order."""
    return [s.strip() for s in cfg.suite.split(",") if s.strip()]


def judges(cfg: ConfigDict) -> list[str]:
    """Safety judge names to apply."""
    return [s.strip() for s in cfg.judges.split(",") if s.strip()]
