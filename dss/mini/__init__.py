"""A CPU miniature of the paper's experiments: `python -m dss.mini --outdir DIR [--quick] [--seeds N]`.

A world trained from scratch (`dss.mini.world`: tokenizer, aligned policy, two guardrails), the
paper's finetuning scenarios run with every method (`dss.mini.scenarios`), and the report
(`dss.mini.report`). See docs/mini.md.
"""
