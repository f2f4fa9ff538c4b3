"""The tiny config's jobs chained on one --workdir, as the README runs them: train, then eval and
the landscape of that run's export, all rendering with the run's recorded template variables."""

import json
import os
import sys
from pathlib import Path

import pytest

import dss.eval.__main__ as eval_main
from dss import templating, train
from dss.landscape import job as landscape_job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    os.environ["DSS_CACHE"] = str(tmp_path_factory.mktemp("dss_cache"))
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    return tiny.get_config


def test_reading_the_tiny_config_builds_nothing(tiny_config):
    config = tiny_config()
    assert config.model.path == "tiny:policy" and config.guardrail.paths == ["tiny:guardrail"]
    assert not any(Path(os.environ["DSS_CACHE"]).iterdir())  # assets are made when a job loads them
    assert config.eval.model == ""  # = the --workdir run's export


@pytest.mark.slow
def test_eval_and_landscape_take_the_workdir_run(tiny_config, tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(ValueError, match=f"{workdir}: no export/ of a training run to evaluate"):
        eval_main.main(tiny_config(), str(workdir))
    config = tiny_config()
    config.train.max_steps = 1
    train.train(config, workdir)
    fixed = json.loads((workdir / templating.FILE).read_text())

    eval_main.main(tiny_config(), str(workdir))
    assert f"star_dss ({workdir / 'export'})" in capsys.readouterr().out
    results = json.loads((workdir / "eval" / "results.json").read_text())
    assert results["model"] == str(workdir / "export") and results["finetuned"]
    assert results["benchmarks"]["advbench"]["settings"]["template_vars"] == fixed

    config = tiny_config()
    config.landscape.steps = 2
    out = landscape_job.main(config, workdir)
    assert out["model"] == str(workdir / "export") and len(out["asr"]) == 3
    settings = json.loads((workdir / "landscape" / "settings.json").read_text())
    assert settings["template_vars"] == fixed


def test_a_host_other_than_process_0_builds_whole_tiny_assets(tmp_path, monkeypatch):
    """Hosts of a multi-host job may race to build the tiny assets; the winner may be process 1."""
    import jax

    from dss import tiny

    monkeypatch.setenv("DSS_CACHE", str(tmp_path))
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert (Path(tiny.asset("policy")) / "config.json").exists()
