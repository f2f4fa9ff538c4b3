"""Checkpoints written before the methods became plugins (commit fc33856) resume after it.

`tests/fixtures/checkpoints_fc33856/<case>/` holds the step-2 checkpoint of a tiny-config run
(parameters stored in bfloat16 to keep the files small) written by that commit's `dss.train`,
and `expected.json` the losses that commit logged for steps 3 and 4 of the same run left
uninterrupted. Today's code resumes each checkpoint and must log those losses.
"""

import json
import shutil

import pytest

from baseline_tools import REPO, tiny_config, use_shared_cache
from dss import data
from dss import train as dss_train

FIXTURES = REPO / "tests" / "fixtures" / "checkpoints_fc33856"
COMMON = {"train.max_steps": 4, "train.export": False, "model.param_dtype": "bfloat16", "train.keep": 1,
          "train.checkpoint_every": 2}
CASES = {
    "plain": {"objective.name": "sft"},
    "lora": {"objective.name": "sft", "lora.enabled": True},  # then: objective "sft" with the adapters item
    "lisa": {"objective.name": "sft", "lisa.enabled": True,  # then: objective "lisa"
             "lisa.sources": ({"path": str(data.bundled("safety_refusals/harmbench_refusals.jsonl")), "limit": 16},),
             "lisa.alignment_steps": 1, "lisa.finetune_steps": 1},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


@pytest.mark.parametrize("case", CASES)
def test_a_checkpoint_of_the_old_code_resumes_with_its_losses(case, tmp_path):
    shutil.copytree(FIXTURES / case, tmp_path / "checkpoints")
    assert {p.name for p in (tmp_path / "checkpoints" / "2").iterdir() if p.is_dir()} >= {"meta", "opt_state"}
    dss_train.train(tiny_config(**COMMON, **CASES[case]), tmp_path)
    logged = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert sorted(logged) == [3, 4]  # resumed after step 2, not started over
    expected = json.loads((FIXTURES / "expected.json").read_text())[case]
    for step in ("3", "4"):
        assert abs(logged[int(step)]["loss"] - expected[step]) <= 1e-4 * abs(expected[step]), (case, step)
