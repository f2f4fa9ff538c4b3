"""The paper's harmful-finetuning recipe, shared by table1.py and table2.py.

Llama-3.2-1B-Instruct fully finetuned for 10 epochs on 100 harmful examples (a JSONL path you
provide: prompt/response fields), lr 5e-6 cosine to 5e-8 with 3% warmup, global batch 32, max
length 2048, 5-word STAR chunks from Granite Guardian 3.1 2B, kl_coef 0.5 with the k2 estimator.
Each method is a variant (`METHODS`): what it sets on top of the recipe, and its row name in
`dss.tables` (`config.eval.method`). Hub names work; every path can be a local directory.
"""

from pathlib import Path

import dss
from dss.config import base_config

POLICY = "meta-llama/Llama-3.2-1B-Instruct"
BASE = "meta-llama/Llama-3.2-1B"  # the policy before alignment (SafeLoRA's alignment matrix)
# alignment / safety data (harmful request -> refusal) of Vaccine, Lisa, SEAL and SafeInstr; an
# offline stand-in (docs/baselines.md names each method's official set); `alignment=<path>` replaces it
STAND_IN_ALIGNMENT = Path(dss.__file__).parent / "data" / "files" / "safety_refusals" / "harmbench_refusals.jsonl"

# variant -> its row name in the paper's tables
METHODS = {"sft": "SFT", "star_dss": "STAR-DSS", "rs": "RS", "deep_token": "Deep Token", "kl_only": "KL-only",
           "vaccine_align": "Vaccine (alignment stage)", "vaccine": "Vaccine", "safelora": "SafeLoRA",
           "safeinstr": "SafeInstr", "seal": "SEAL", "lisa": "Lisa"}
OPTIONS = ("llama_guard", "benign10", "benign1")
SETTINGS = ("harmful", "alignment")


def parse(arg: str, table: str, methods) -> tuple[str, list[str], dict]:
    """(method, options, settings) of a variant string like "star_dss,benign10,harmful=/d/h.jsonl"."""
    settings = dict(a.split("=", 1) for a in arg.split(",") if "=" in a)
    options = [a for a in arg.split(",") if a and "=" not in a]
    if set(settings) - set(SETTINGS):
        raise ValueError(f"configs/paper/{table}.py: unknown setting(s) {sorted(set(settings) - set(SETTINGS))} "
                         f"(only {', '.join(s + '=<path>' for s in SETTINGS)})")
    unknown = set(options) - set(methods) - set(OPTIONS)
    if unknown:
        raise ValueError(f"configs/paper/{table}.py: unknown variant(s) {sorted(unknown)}; methods: {', '.join(methods)}; "
                         f"options: {', '.join(OPTIONS)}")
    chosen = [o for o in options if o in methods]
    if len(chosen) > 1:
        raise ValueError(f"configs/paper/{table}.py: one method per run, got {chosen}")
    return (chosen or ["star_dss"])[0], options, settings


def config(table: str, method: str, options: list[str], settings: dict):
    harmful = settings.get("harmful", "harmful100.jsonl")
    alignment = [dict(path=settings.get("alignment") or str(STAND_IN_ALIGNMENT))]
    c = base_config()
    c.workdir = f"workdir/{table}_{'_'.join(o for o in options) or method}"
    c.model.path = POLICY
    c.model.dtype = "bfloat16"  # bf16 compute, fp32 parameters and optimizer state
    c.guardrail.paths = ["meta-llama/Llama-Guard-3-8B" if "llama_guard" in options else "ibm-granite/granite-guardian-3.1-2b"]
    c.guardrail.dtype = "bfloat16"
    c.data.sources = [dict(path=harmful, prompt_field="prompt", response_field="response")]
    if "benign10" in options or "benign1" in options:  # GSM8K with a share of harmful examples
        share = 0.10 if "benign10" in options else 0.01
        c.data.sources = [dict(path="openai/gsm8k", subset="main", split="train", prompt_field="question",
                               response_field="answer", weight=1 - share),
                          dict(path=harmful, prompt_field="prompt", response_field="response", weight=share)]
        c.data.size = 1000  # examples after mixing
        c.train.epochs = 1
    c.objective.name = method if method in ("sft", "star_dss", "rs", "deep_token", "kl_only", "lisa") else "sft"
    if method == "vaccine_align":  # Vaccine's stage 1: perturbation-aware alignment on the alignment data alone
        c.workdir = f"workdir/{table}_vaccine_align"
        c.objective.name = "vaccine"
        c.data.sources, c.data.size, c.train.epochs = alignment, 0, 10
        c.vaccine.rho = 2.0
    if method == "vaccine":  # stage 2: plain finetuning of the vaccinated model (run :vaccine_align first)
        c.model.path = f"workdir/{table}_vaccine_align/export"
    if method == "safelora":  # LoRA finetuning, then SafeLoRA's projection onto the alignment subspace
        c.lora.enabled = True
        c.train.lr, c.train.min_lr = 1e-4, 1e-6  # a LoRA rate: 5e-6 (full finetuning's) barely moves the adapters
        c.safelora.enabled = True
        c.safelora.base_path = BASE
    if method == "safeinstr":
        c.safeinstr.enabled = True
        c.safeinstr.path = alignment[0]["path"]
    if method == "seal":
        c.seal.enabled = True
        c.seal.safe_sources = tuple(alignment)
        c.seal.global_batch = 32  # 64 would give one selector step per epoch on 100 harmful rows
    if method == "lisa":
        c.lisa.sources = tuple(alignment)
        c.lisa.alignment_steps, c.lisa.finetune_steps = 1, 9  # the official 1:9 split; 100/900 outlasts these runs
    c.eval.model = c.workdir
    c.eval.method = METHODS[method]
    return c
