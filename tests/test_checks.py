"""Config checks: every bad setting is refused by its key, before any model is loaded or STAR scored."""

import pytest

import dss.star
import dss.train
from dss.star_config import check_star_config
from dss.train_checks import check_train_config
from dss.config import base_config
from overrides import override


def config(**overrides):
    """A config that passes (8 test devices, see conftest), with `overrides` by dotted key."""
    c = base_config()
    c.model.path = "tiny:policy"
    c.guardrail.paths = ["tiny:guardrail"]
    c.data.sources = [dict(path="data.jsonl")]
    return override(c, **overrides)


def test_a_good_config_passes():
    check_train_config(config())
    check_train_config(config(**{"objective.name": "sft", "guardrail.paths": []}))  # sft needs no guardrail
    check_train_config(config(**{"train.global_batch": 12, "train.micro_batch": 4, "mesh.tensor": 2}))  # 12 over fsdp 4
    check_star_config(config(**{"guardrail.kind": "llama_guard_3", "guardrail.mesh": (1, -1, 1)}))


BAD = {
    "objective.name": ("foo", "config.objective.name = 'foo': unknown objective; "
                       "use one of sft, rs, deep_token, star_dss, kl_only"),
    "objective.kl_estimator": ("k4", "config.objective.kl_estimator = 'k4': unknown KL estimator; "
                               "use one of k1, k2, k3, full"),
    "objective.rs_mode": ("medium", "config.objective.rs_mode = 'medium': unknown rs mode; use one of hard, soft"),
    "data.train_on": ("first", "config.data.train_on = 'first': unknown train_on; use one of last, all"),
    "data.on_bad_row": ("skip", "config.data.on_bad_row = 'skip': unknown bad-row policy; use one of error, drop"),
    "data.sources": ([], "config.data.sources = []: no finetuning data; give at least one source dict with a 'path'"),
    "model.path": ("", "config.model.path = '': give the policy to finetune (HF directory or hub id)"),
    "guardrail.kind": ("llamaguard", "config.guardrail.kind = 'llamaguard': unknown guardrail kind; "
                       "use one of auto, llama_guard_3, granite_guardian, shieldgemma"),
    "guardrail.paths": ([], "config.guardrail.paths = []: objective 'star_dss' scores the data with STAR, which "
                        "needs a list of one or more guardrails (HF directories or hub ids)"),
    "guardrail.mesh": ((3, -1, 1), "config.guardrail.mesh = (3, -1, 1) (data, fsdp, tensor): "
                       "8 devices do not split into mesh [3, -1, 1]"),
    "star.chunk_unit": ("sentence", "config.star.chunk_unit = 'sentence': unknown chunk unit; use one of word, token"),
    "star.chunk_size": (0, "config.star.chunk_size = 0: must be a positive integer"),
    "star.method": ("fast", "config.star.method = 'fast': unknown STAR method; use one of shared_kv, naive"),
    "star.score_mode": ("soft", "config.star.score_mode = 'soft': unknown STAR score mode; use one of raw, hf_sampling"),
    "train.micro_batch": (0, "config.train.micro_batch = 0: must be a positive integer"),
    "train.global_batch": (30, "config.train.global_batch = 30: not a multiple of config.train.micro_batch = 8 "
                           "(each step accumulates global_batch / micro_batch micro-batches)"),
    "mesh.data": (3, "config.mesh = (3, -1, 1) (data, fsdp, tensor): 8 devices do not split into mesh [3, -1, 1]"),
}


@pytest.mark.parametrize("key", BAD)
def test_each_bad_setting_is_refused_by_name(key):
    value, message = BAD[key]
    with pytest.raises(ValueError) as err:
        check_train_config(config(**{key: value}))
    assert str(err.value) == message


def test_a_batch_the_mesh_does_not_divide():
    bad = config(**{"train.global_batch": 6, "train.micro_batch": 2, "mesh.fsdp": 4})
    with pytest.raises(ValueError) as err:
        check_train_config(bad)
    assert str(err.value) == ("config.train.global_batch = 6: the batch is split over the mesh's data x fsdp = 1 x 4 "
                              "devices (config.mesh, 4 devices in all); use a multiple of 4")


def test_rs_needs_a_guardrail_and_star_settings_matter_only_with_star():
    with pytest.raises(ValueError, match=r"^config.guardrail.paths = \[\]: objective 'rs' scores"):
        check_train_config(config(**{"objective.name": "rs", "guardrail.paths": []}))
    check_train_config(config(**{"objective.name": "sft", "star.method": "fast", "guardrail.paths": []}))


def test_train_refuses_a_bad_config_before_loading_anything(tmp_path):
    workdir = tmp_path / "run"
    bad = config(**{"objective.name": "foo", "model.path": str(tmp_path / "no_such_model")})
    with pytest.raises(ValueError, match=r"^config.objective.name = 'foo': unknown objective"):
        dss.train.train(bad, workdir)
    no_guard = config(**{"objective.name": "rs", "guardrail.paths": [], "model.path": str(tmp_path / "no_such_model")})
    with pytest.raises(ValueError, match=r"^config.guardrail.paths = \[\]"):
        dss.train.train(no_guard, workdir)
    assert not workdir.exists()  # no dss_config.json, no star.npz, nothing
    # the same config with its setting fixed is refused for the missing model, still before anything is written
    with pytest.raises(ValueError, match=r"^config.model.path = '.*no_such_model': no such model directory$"):
        dss.train.train(config(**{"model.path": str(tmp_path / "no_such_model")}), workdir)
    assert not workdir.exists()


def test_star_job_refuses_a_config_without_guardrail(tmp_path):
    bad = config(**{"guardrail.paths": [], "model.path": str(tmp_path / "no_such_model")})
    with pytest.raises(ValueError) as err:
        dss.star.main(bad, tmp_path / "run")
    assert str(err.value) == ("config.guardrail.paths = []: python -m dss.star scores the data with STAR, which "
                              "needs a list of one or more guardrails (HF directories or hub ids)")
    assert not (tmp_path / "run").exists()
