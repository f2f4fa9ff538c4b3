"""Lisa: the schedule of the official trainer, the proximal gradient against an independent
computation, and a bi-state run on the tiny config that resumes exactly from a checkpoint."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from baseline_tools import (RECORD_GRADS, assert_trees_close, max_diff, random_batch, tiny_config, tiny_model,
                            use_shared_cache, write_alignment_set)
from dss import objectives
from dss import methods
from dss import train as dss_train
from dss.baselines import lisa
from dss.step import make_train_step
from dss.train_checks import check_train_config
from multihost import REPO, Cluster


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


def official_schedule(alignment_step, finetune_step, rho, steps, horizon):
    """The official LisaTrainer's `check_mode` and proximal condition, step by step: per step its
    state, whether `switch_model` took new anchor weights before it, and its proximal coefficient."""
    status, clock, done, out = "alignment", 0, 0, []
    for _ in range(steps):
        switched = False
        if status == "alignment" and clock % alignment_step == 0 and done != 0 and finetune_step != 0:
            status, switched, clock = "finetune", True, 0
        elif status == "finetune" and clock % finetune_step == 0 and done != 0 and alignment_step != 0:
            status, switched, clock = "alignment", True, 0
        out.append((status, switched, rho if done > 0.1 * horizon else 0.0))
        done, clock = done + 1, clock + 1
    return out


@pytest.mark.parametrize("alignment_steps,finetune_steps", [(2, 3), (1, 1), (3, 1), (100, 900)])
def test_schedule_is_the_official_trainers(alignment_steps, finetune_steps):
    steps = 3 * (alignment_steps + finetune_steps) + 1
    ours = [(lisa.state_at(s, alignment_steps, finetune_steps), lisa.switches_at(s, alignment_steps, finetune_steps),
             lisa.proximal_coef(s, 1.0, 0.1, horizon=steps)) for s in range(steps)]
    assert ours == official_schedule(alignment_steps, finetune_steps, 1.0, steps, horizon=steps)


def test_proximal_gradient_equals_an_independent_computation():
    model = tiny_model()
    graphdef, params = nnx.split(model)
    anchor = jax.tree.map(lambda w: w + 0.05 * jnp.sin(jnp.arange(w.size).reshape(w.shape)), params)
    batch, coef = random_batch(97, seed=3), 0.7

    def expected_loss(p):
        logits = nnx.merge(graphdef, p)(batch["input_ids"])
        sft = objectives.sft_loss(logits, batch["targets"], batch["loss_mask"])[0]
        distance = sum(jnp.sum((w - a) ** 2) for w, a in zip(jax.tree.leaves(p), jax.tree.leaves(anchor)))
        return sft + coef / 2 * distance

    expected_value, expected = jax.jit(jax.value_and_grad(expected_loss))(params)
    penalty = coef / 2 * sum(float(np.sum((np.asarray(w, np.float64) - np.asarray(a, np.float64)) ** 2))
                             for w, a in zip(jax.tree.leaves(params), jax.tree.leaves(anchor)))
    assert max_diff(params, anchor) * coef > 1e-2  # the proximal gradient is far above the tolerance below
    config = tiny_config(**{"objective.name": "sft", "lisa.enabled": True})
    step = make_train_step(graphdef, RECORD_GRADS, methods.build(config), 2)
    _, grads, metrics = step(params, RECORD_GRADS.init(params), batch, {"frozen": None, "reference": None},
                             {"lisa": (anchor, jnp.float32(coef))}, 0)
    assert_trees_close(grads, expected, atol=2e-6, rtol=1e-4)
    np.testing.assert_allclose(float(metrics["proximal"]), penalty, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss"]), float(expected_value), rtol=1e-5)


def steps(workdir):
    return {r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def test_bi_state_run_resumes_exactly(tmp_path):
    """5 steps: 2 alignment, 2 finetuning, 1 alignment. A copy of the run, resumed from its step-3
    checkpoint (in a finetuning state: the anchor and the alignment data position must come from
    the checkpoint), logs the same losses for steps 4 and 5."""
    config = tiny_config(**{"objective.name": "sft", "lisa.enabled": True, "lisa.sources": [write_alignment_set(tmp_path / "align.jsonl")],
                            "lisa.alignment_steps": 2, "lisa.finetune_steps": 2, "train.epochs": 1,
                            "train.export": False, "train.checkpoint_every": 3})
    dss_train.train(config, tmp_path / "straight")
    straight = steps(tmp_path / "straight")
    assert sorted(straight) == [1, 2, 3, 4, 5]
    assert [straight[s]["alignment_state"] for s in range(1, 6)] == [
        float(lisa.state_at(s, 2, 2) == lisa.ALIGNMENT) for s in range(5)]
    assert straight[4]["proximal"] > 1e-4  # step 4 pulls towards the anchor taken before step 3
    assert straight[1]["n_tokens"] != straight[3]["n_tokens"]  # alignment and user batches differ

    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "5")
    dss_train.train(config, tmp_path / "resumed")
    resumed = steps(tmp_path / "resumed")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for s in (4, 5):
        assert abs(straight[s]["loss"] - resumed[s]["loss"]) <= 1e-6, s
        assert abs(straight[s]["proximal"] - resumed[s]["proximal"]) <= 1e-7, s


@pytest.mark.slow
def test_two_hosts_alternate_and_resume_like_one(tmp_path):
    """2 processes (2 devices each), stopped after step 3 and resumed, log one 4-device process's losses."""
    source = write_alignment_set(tmp_path / "align.jsonl")
    flags = ["--config.objective.name=sft", "--config.lisa.enabled=True", f"--config.lisa.sources=({source!r},)", "--config.lisa.alignment_steps=2",
             "--config.lisa.finetune_steps=2", "--config.train.epochs=1", "--config.train.export=False"]
    job = lambda workdir, *more: ["-m", "dss.train", "--config", str(REPO / "configs" / "tiny.py"),
                                  "--workdir", str(workdir), *flags, *more]
    env = {"DSS_CACHE": os.environ["DSS_CACHE"]}
    Cluster(job(tmp_path / "one"), n=1, how="single", devices=4, env=env).expect([0], timeout=300)
    Cluster(job(tmp_path / "two", "--config.train.max_steps=3"), env=env).expect([0, 0], timeout=300)
    Cluster(job(tmp_path / "two"), env=env).expect([0, 0], timeout=300)
    one, two = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4, 5]
    schedule = [float(lisa.state_at(s, 2, 2) == lisa.ALIGNMENT) for s in range(5)]
    assert [one[s]["alignment_state"] for s in sorted(one)] == schedule
    assert [two[s]["alignment_state"] for s in sorted(two)] == schedule
    for s in one:
        assert abs(one[s]["loss"] - two[s]["loss"]) <= 1e-5, s


def test_a_lisa_run_without_alignment_data_is_refused_before_loading(tmp_path):
    bad = tiny_config(**{"objective.name": "sft", "lisa.enabled": True, "model.path": str(tmp_path / "no_model")})
    with pytest.raises(ValueError) as err:
        dss_train.train(bad, tmp_path / "run")
    assert str(err.value) == ("config.lisa.sources = (): Lisa alternates user finetuning with steps on "
                              "alignment data (harmful prompt -> refusal); give at least one source dict with a 'path'")
    assert not (tmp_path / "run").exists()
    good = {"objective.name": "sft", "lisa.enabled": True, "lisa.sources": [write_alignment_set(tmp_path / "align.jsonl")]}
    check_train_config(tiny_config(**good))
    missing = str(tmp_path / "no_such.jsonl")
    bad_settings = [
        ("lisa.sources", [{"path": missing}], f"config.lisa.sources[0].path = '{missing}': no such file"),
        ("lisa.sources", ["a.jsonl"], "config.lisa.sources[0] = 'a.jsonl': must be a source dict with a 'path'"),
        ("lisa.alignment_steps", 0, "config.lisa.alignment_steps = 0: must be a positive integer"),
        ("lisa.rho", -0.5, "config.lisa.rho = -0.5: must be a number >= 0"),
        ("lisa.proximal_after", 1.5, "config.lisa.proximal_after = 1.5: a share of the steps, in [0, 1]")]
    for key, value, message in bad_settings:
        with pytest.raises(ValueError) as err:
            check_train_config(tiny_config(**{**good, key: value}))
        assert str(err.value) == message
