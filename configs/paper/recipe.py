"""The paper's harmful-finetuning recipe, shared by table1.py and table2.py.

Llama-3.2-1B-Instruct fully finetuned for 10 epochs on 100 harmful examples (a JSONL path you
provide: prompt/response fields), lr 5e-6 cosine to 5e-8 with 3% warmup, global batch 32, max
length 2048, 5-word STAR chunks from Granite Guardian 3.1 2B, kl_coef 0.5 with the k2 estimator.
Each method is a variant: what its `dss.methods` preset sets on top of the recipe, and its row
name in `dss.tables` (`config.eval.method`, the method's label). Hub names work; every path can
be a local directory.
"""

from pathlib import Path

import dss
from dss import methods
from dss.config import base_config

POLICY = "meta-llama/Llama-3.2-1B-Instruct"
BASE = "meta-llama/Llama-3.2-1B"  # the policy before alignment (SafeLoRA's alignment matrix)
# alignment / safety data (harmful request -> refusal) of Vaccine, Lisa, SEAL and SafeInstr; an
# offline stand-in (docs/baselines.md names each method's official set); `alignment=<path>` replaces it
STAND_IN_ALIGNMENT = Path(dss.__file__).parent / "data" / "files" / "safety_refusals" / "harmbench_refusals.jsonl"

VACCINE_ALIGN = "vaccine_align"  # Vaccine's alignment stage: a variant of its own, run before :vaccine
OPTIONS = ("llama_guard", "benign10", "benign1")
SETTINGS = ("harmful", "alignment")


def parse(arg: str, table: str, variants) -> tuple[str, list[str], dict]:
    """(method, options, settings) of a variant string like "star_dss,benign10,harmful=/d/h.jsonl"."""
    settings = dict(a.split("=", 1) for a in arg.split(",") if "=" in a)
    options = [a for a in arg.split(",") if a and "=" not in a]
    if set(settings) - set(SETTINGS):
        raise ValueError(f"configs/paper/{table}.py: unknown setting(s) {sorted(set(settings) - set(SETTINGS))} "
                         f"(only {', '.join(s + '=<path>' for s in SETTINGS)})")
    unknown = set(options) - set(variants) - set(OPTIONS)
    if unknown:
        raise ValueError(f"configs/paper/{table}.py: unknown variant(s) {sorted(unknown)}; methods: {', '.join(variants)}; "
                         f"options: {', '.join(OPTIONS)}")
    chosen = [o for o in options if o in variants]
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
    # remat full: without it the step's activations alone need 41.8 GiB a chip on a v5e-4 (16 GiB HBM)
    # and do not fit a v5e-8 or a v6e-4 either (a v6e-8 and a v5p-4 fit without it); with it the step
    # needs 11.1 GiB a chip on v5e-4
    # (`python -m dss.plan --topology v5e:2x2`; README, "Planning a TPU run without a TPU"). micro_batch stays 8
    # (2 rows a chip on 4 chips, 1 on 8); on 16 or more chips set train.micro_batch to the chip count.
    c.train.remat = "full"
    c.guardrail.paths = ["meta-llama/Llama-Guard-3-8B" if "llama_guard" in options else "ibm-granite/granite-guardian-3.1-2b"]
    c.guardrail.dtype = "bfloat16"
    # STAR scoring sharded (FSDP) over every chip: on one v5e chip (16 GiB) Llama Guard 3 8B does not
    # fit (STAR prefill needs 26.5 GiB) and Granite Guardian 2B needs 14.2 GiB; over a v5e-4, 8.6 GiB
    c.guardrail.mesh = (1, -1, 1)
    c.data.sources = [dict(path=harmful, prompt_field="prompt", response_field="response")]
    if "benign10" in options or "benign1" in options:  # GSM8K with a share of harmful examples
        share = 0.10 if "benign10" in options else 0.01
        c.data.sources = [dict(path="openai/gsm8k", subset="main", split="train", prompt_field="question",
                               response_field="answer", weight=1 - share),
                          dict(path=harmful, prompt_field="prompt", response_field="response", weight=share)]
        c.data.size = 1000  # examples after mixing
        c.train.epochs = 1
    preset = methods.Preset(alignment=tuple(alignment), base_model=BASE,
                            vaccine_aligned=f"workdir/{table}_vaccine_align/export")
    if method == VACCINE_ALIGN:  # perturbation-aware alignment on the alignment data alone
        c.workdir = f"workdir/{table}_vaccine_align"
        methods.by_name("vaccine").alignment_stage(c, preset)
    else:
        methods.configure(c, method, preset)
    c.eval.model = c.workdir
    c.eval.method = "Vaccine (alignment stage)" if method == VACCINE_ALIGN else methods.label(method)
    return c
