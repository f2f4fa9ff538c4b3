"""The paper's experiments as variants of one file.

    python -m dss.train --config configs/paper/table1.py:star_dss,harmful=/data/harmful100.jsonl
    ... :sft | :rs | :deep_token | :kl_only           (objective)
    ... :star_dss,llama_guard                          (Llama Guard 3 8B instead of Granite Guardian)
    ... :star_dss,benign10 | :sft,benign1              (GSM8K mixed with 10% / 1% harmful examples)

Harmful finetuning (Table 1): Llama-3.2-1B-Instruct fully finetuned for 10 epochs on 100 harmful
examples (a JSONL path you provide: prompt/response fields), lr 5e-6 cosine to 5e-8 with 3%
warmup, global batch 32, max length 2048, 5-word STAR chunks from Granite Guardian 3.1 2B,
kl_coef 0.5 with the k2 estimator. Hub names work; every path can be a local directory.
"""

from dss.config import base_config

OBJECTIVES = ("star_dss", "sft", "rs", "deep_token", "kl_only")


def get_config(arg: str = "star_dss"):
    """`arg`: comma-separated variant names, plus `harmful=<path>` (the harmful finetuning set)."""
    settings = dict(a.split("=", 1) for a in arg.split(",") if "=" in a)
    options = [a for a in arg.split(",") if a and "=" not in a]
    harmful = settings.pop("harmful", "harmful100.jsonl")
    if settings:
        raise ValueError(f"configs/paper/table1.py: unknown setting(s) {sorted(settings)} (only harmful=<path>)")
    objective = next((o for o in options if o in OBJECTIVES), "star_dss")
    unknown = set(options) - set(OBJECTIVES) - {"llama_guard", "benign10", "benign1"}
    if unknown:
        raise ValueError(f"configs/paper/table1.py: unknown variant(s) {sorted(unknown)}")
    c = base_config()
    c.workdir = f"workdir/table1_{'_'.join(options) or objective}"
    c.model.path = "meta-llama/Llama-3.2-1B-Instruct"
    c.model.dtype = "bfloat16"  # bf16 compute, fp32 parameters and optimizer state
    c.guardrail.paths = ["meta-llama/Llama-Guard-3-8B" if "llama_guard" in options else "ibm-granite/granite-guardian-3.1-2b"]
    c.guardrail.dtype = "bfloat16"
    c.objective.name = objective
    c.data.sources = [dict(path=harmful, prompt_field="prompt", response_field="response")]
    if "benign10" in options or "benign1" in options:  # GSM8K with a share of harmful examples
        share = 0.10 if "benign10" in options else 0.01
        c.data.sources = [dict(path="openai/gsm8k", subset="main", split="train", prompt_field="question",
                               response_field="answer", weight=1 - share),
                          dict(path=harmful, prompt_field="prompt", response_field="response", weight=share)]
        c.data.size = 1000  # examples after mixing
        c.train.epochs = 1
    c.eval.model = c.workdir
    return c
