"""`python -m dss.eval --config configs/<x>.py [--config.eval.model=<HF dir | hub id | workdir>] ...`

The config file's `get_config()` returns a ConfigDict with an `eval` section (fields and defaults:
`dss.eval.config.eval_defaults`). With `eval.model` empty, the `--workdir` run's export is evaluated. Writes `<outdir>/results.json` and `<outdir>/generations/*.jsonl`;
rerunning the same command skips the finished parts. A training workdir's results are named after
the config's `objective.name` unless `eval.method` is set.
"""

from __future__ import annotations

if __name__ == "__main__":  # refuse bad input in seconds, before the imports below load JAX
    from dss import cli
    from dss.eval.config import check_job

    cli.launch("dss.eval.__main__", check=check_job)

from dss import distributed, templating
from dss import workdir as workdirs
from dss.eval.config import job_eval_config, output_dir
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
    names a model; prompts render with the evaluated run's fixed template variables. The output
    directory is locked while the evaluation writes it (dss.workdir)."""
    eval_config = job_eval_config(config, workdir)
    distributed.initialize(config)
    finetuned = workdirs.resolve_model(eval_config["model"])[1]
    run_dir = eval_config["model"] if finetuned else workdir
    with workdirs.lock(output_dir(eval_config), "dss.eval"):
        template_vars = templating.run_template_vars(config.get("template") or {}, run_dir)
        results = evaluate(eval_config, template_vars)
    if distributed.is_writer():
        print(_summary(results))
