"""Evaluation: does a finetuned model stay safe, and keep its capability?

- `dss.eval.benchmarks`: safety prompt sets (AdvBench, HEx-PHI, HarmBench, XSTest) as records.
- `dss.eval.keyword`, `dss.eval.guardrail_judge`, `dss.eval.llm_judge`: safety judges.
- `dss.eval.capability`: MMLU, ARC-Challenge, GSM8K.
- `dss.eval.runner.evaluate` / `python -m dss.eval`: the whole evaluation, resumable.

Submodules are imported on use, so the judges and loaders work without loading JAX models.
"""
