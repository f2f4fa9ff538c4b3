"""Tiny CPU run of the whole pipeline: STAR scoring, STAR-DSS training, export (about a minute).

    python -m dss.train --config configs/tiny.py [--config.objective.name=sft] [--workdir DIR]
    python -m dss.eval --config configs/tiny.py [--workdir DIR]        # evaluates DIR's export
    python -m dss.landscape --config configs/tiny.py [--workdir DIR]   # DIR's export, or the policy

The policy and guardrail are tiny random models (`tiny:policy`, `tiny:guardrail`: made by
`dss.tiny` when a job first loads them, so reading this config builds nothing); the training
data is the demo set shipped in `dss/data/demo.jsonl`, the evaluation data the bundled AdvBench and
GSM8K files. Everything else is `dss.config.base_config()`.
"""

from dss import data
from dss.config import base_config


def get_config():
    c = base_config()
    c.workdir = "workdir/tiny"
    c.model.path = "tiny:policy"  # tiny random Llama-3-style policy with a chat template
    c.guardrail.paths = ["tiny:guardrail"]  # tiny random Llama-Guard-3-style guardrail
    c.data.sources = [dict(path=str(data.DEMO_PATH), prompt_field="prompt", response_field="response")]
    c.data.max_length = 512  # the demo rows are short
    c.train.epochs = 2  # 2 x 5 steps of 8 examples
    c.train.global_batch = 8
    c.train.micro_batch = 4  # 2 accumulated micro-batches per step
    c.train.lr = 1e-3  # a random tiny model moves visibly only with a large rate
    c.train.min_lr = 1e-5
    c.train.checkpoint_every = 5
    c.train.keep = 2
    c.eval.suite = "advbench,gsm8k"  # eval.model stays "": the workdir's export
    c.eval.judges = "keyword,guardrail"
    c.eval.guardrail.path = "tiny:guardrail"
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 32
    c.eval.benchmarks.advbench.update(path=str(data.bundled("advbench/harmful_behaviors.csv")), limit=16)
    c.eval.benchmarks.gsm8k.update(path=str(data.bundled("gsm8k")), limit=8, shots=2)
    c.landscape.advbench = str(data.bundled("advbench/harmful_behaviors.csv"))
    c.landscape.num_prompts = 8  # a quick curve; the paper uses 80 prompts and 512 tokens
    c.landscape.max_new_tokens = 32
    c.landscape.batch_size = 8
    return c
