"""`python -m dss.eval --config configs/<x>.py [--config.eval.model=<HF dir | hub id | workdir>] ...`

The config file's `get_config()` returns a ConfigDict with an `eval` section (fields and defaults:
`dss.eval.config.eval_defaults`). With `eval.model` empty, the `--workdir` run's export is evaluated. Writes `<outdir>/results.json` and `<outdir>/generations/*.jsonl`;
rerunning the same command skips the finished parts. A training workdir's results are named after
the config's `objective.name` unless `eval.method` is set.
"""

from __future__ import annotations

from dss import cli, distributed, templating
from dss.eval.policy import resolve_model
from dss.eval.runner import evaluate


def _summary(results: dict) -> str:
    lines = [f"{results['method']} ({results['model']})"]
    for name, entry in results["benchmarks"].items():
        if "accuracy" in entry:
            lines.append(f"  {name}: accuracy {entry['accuracy']:.1f}% ({entry['correct']}/{entry['n']})")
        for judge, m in entry.get("judges", {}).items():
            asr = f", ASR {m['asr']:.1f}%" if "asr" in m else ""
            lines.append(f"  {name} [{judge}]: safe {m['safe_pct']:.1f}% ({m['n_safe']}/{m['n']}){asr}")
    return "\n".join(lines)


def main(config, workdir) -> None:
    """`--workdir` (default: config.workdir) is the training run to evaluate unless `eval.model`
    names a model; prompts render with the evaluated run's fixed template variables."""
    if "eval" not in config:
        raise ValueError("--config must name a config file whose get_config() has an `eval` section")
    distributed.initialize(config)
    eval_config = config.eval.to_dict()
    if not eval_config.get("model"):
        if not resolve_model(workdir)[1]:
            raise ValueError(f"{workdir}: no export/ of a training run to evaluate; run dss.train with this "
                             "--workdir first, or name a model with --config.eval.model")
        eval_config["model"] = workdir
    finetuned = resolve_model(eval_config["model"])[1]
    if not eval_config.get("method") and "objective" in config and finetuned:
        eval_config["method"] = config.objective.name  # a training run's row is named after its objective
    run_dir = eval_config["model"] if finetuned else workdir
    template_vars = templating.run_template_vars(config.get("template") or {}, run_dir)
    results = evaluate(eval_config, template_vars)
    if distributed.is_writer():
        print(_summary(results))


if __name__ == "__main__":
    cli.run(main)
