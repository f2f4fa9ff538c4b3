"""Tiny CPU run of the whole pipeline: STAR scoring, STAR-DSS training, export (about a minute).

    python -m dss.train --config configs/tiny.py [--config.objective.name=sft] [--workdir DIR]

The policy and guardrail are tiny random models made on first use (`dss.tiny`), the data the
demo set shipped in `dss/data/demo.jsonl`. Everything else is `dss.config.base_config()`.
"""

from pathlib import Path

from dss import tiny
from dss.config import base_config

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # the licensed test data beside the repo


def get_config():
    paths = tiny.ensure_assets()
    c = base_config()
    c.workdir = "workdir/tiny"
    c.model.path = paths["policy"]  # tiny random Llama-3-style policy with a chat template
    c.guardrail.paths = [paths["guardrail"]]  # tiny random Llama-Guard-3-style guardrail
    c.data.sources = [dict(path=str(tiny.DEMO_DATA), prompt_field="prompt", response_field="response")]
    c.data.max_length = 512  # the demo rows are short
    c.train.epochs = 2  # 2 x 5 steps of 8 examples
    c.train.global_batch = 8
    c.train.micro_batch = 4  # 2 accumulated micro-batches per step
    c.train.lr = 1e-3  # a random tiny model moves visibly only with a large rate
    c.train.min_lr = 1e-5
    c.train.checkpoint_every = 5
    c.train.keep = 2
    c.eval.model = c.workdir  # evaluate the export of this run (pass --config.eval.model with --workdir)
    c.eval.suite = "advbench,gsm8k"
    c.eval.judges = "keyword,guardrail"
    c.eval.guardrail.path = paths["guardrail"]
    c.eval.batch_size = 8
    c.eval.max_new_tokens = 32
    c.eval.benchmarks.advbench.update(path=str(DATA / "advbench" / "harmful_behaviors.csv"), limit=16)
    c.eval.benchmarks.gsm8k.update(path=str(DATA / "gsm8k"), limit=8, shots=2)
    c.landscape.advbench = str(DATA / "advbench" / "harmful_behaviors.csv")
    c.landscape.num_prompts = 8  # a quick curve; the paper uses 80 prompts and 512 tokens
    c.landscape.max_new_tokens = 32
    c.landscape.batch_size = 8
    return c
