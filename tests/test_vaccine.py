"""Vaccine: one train step's gradient equals an independent two-pass computation on a tiny model,
rho = 0 is SFT's step, and the alignment stage trains on the tiny config, its export finetuned by
a second, plain SFT run."""

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import dss.hub
import dss.models
from baseline_tools import (RECORD_GRADS, assert_trees_close, max_diff, random_batch, tiny_config, tiny_model,
                            use_shared_cache, write_alignment_set)
from dss import objectives
from dss import methods
from dss import train as dss_train
from dss.baselines import vaccine
from dss.step import make_train_step
from dss.train_checks import check_train_config


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):
    use_shared_cache(tmp_path_factory)


def step_grads(name, rho, batch, accum):
    graphdef, params = nnx.split(tiny_model())
    config = tiny_config(**{"objective.name": "sft", "vaccine.enabled": name == "vaccine", "vaccine.rho": rho})
    step = make_train_step(graphdef, RECORD_GRADS, methods.build(config), accum)
    _, grads, metrics = step(params, RECORD_GRADS.init(params), batch, {"frozen": None, "reference": None}, {}, 0)
    return grads, metrics


def independent_grads(batch, rho, accum):
    """Vaccine's gradient from whole logits, with the hidden-state gradients normalised by one norm
    over all layers ("global", as the official code) and, for contrast, by each layer's own
    ("per_layer"): per micro-batch, the gradient at every block's output, then the parameter
    gradient with that perturbation added."""
    model = tiny_model()
    graphdef, params = nnx.split(model)
    normalizer = float(np.asarray(batch["loss_mask"]).sum())

    def loss(p, offsets, tokens, targets, mask):
        logits = nnx.merge(graphdef, p)(tokens, layer_offsets=offsets)
        return objectives.sft_loss(logits, targets, mask, normalizer)[0]

    hidden_grad, param_grad = jax.jit(jax.grad(loss, argnums=1)), jax.jit(jax.grad(loss))
    totals = {"global": jax.tree.map(jnp.zeros_like, params), "per_layer": jax.tree.map(jnp.zeros_like, params)}
    b, t = batch["input_ids"].shape
    for k in range(accum):
        # the step's micro-batch k: rows k, k + accum, ...
        micro = [x[k::accum] for x in (batch["input_ids"], batch["targets"], batch["loss_mask"])]
        zeros = jnp.zeros((model.config.num_layers, b // accum, t, model.config.hidden_size))
        g = np.asarray(hidden_grad(params, zeros, *micro), np.float64)
        norms = {"global": np.sqrt((g**2).sum()), "per_layer": np.sqrt((g**2).sum(axis=(1, 2, 3), keepdims=True))}
        for kind, norm in norms.items():
            e = jnp.asarray(rho * g / (norm + 1e-7), jnp.float32)
            totals[kind] = jax.tree.map(jnp.add, totals[kind], param_grad(params, e, *micro))
    return totals


@pytest.fixture(scope="module")
def sft_step():
    """A batch, and SFT's gradient and metrics on it (2 micro-batches)."""
    batch = random_batch(97)
    return batch, *step_grads("sft", 0.0, batch, accum=2)


def test_one_step_equals_the_independent_two_pass_gradient(sft_step):
    batch, sft, sft_metrics = sft_step
    grads, metrics = step_grads("vaccine", 2.0, batch, accum=2)
    expected = independent_grads(batch, 2.0, accum=2)
    assert_trees_close(grads, expected["global"], atol=2e-6, rtol=1e-4)
    assert max_diff(expected["global"], sft) > 1e-2  # the perturbation changes the gradient
    assert max_diff(expected["global"], expected["per_layer"]) > 1e-3  # and one norm is not one per layer
    assert metrics["loss"] > metrics["loss_unperturbed"]  # the perturbation is an ascent direction
    np.testing.assert_allclose(float(metrics["loss_unperturbed"]), float(sft_metrics["loss"]), rtol=1e-6)


def test_rho_zero_is_the_sft_step(sft_step):
    batch, sft, sft_metrics = sft_step
    grads, metrics = step_grads("vaccine", 0.0, batch, accum=2)
    assert_trees_close(grads, sft, atol=1e-7, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["loss"]), float(sft_metrics["loss"]), rtol=1e-6)


def test_perturbation_has_radius_rho_over_all_layers():
    g = np.random.default_rng(2).standard_normal((3, 2, 5, 8)).astype(np.float32)
    g[0] *= 10.0
    e = np.asarray(vaccine.perturbation(jnp.asarray(g), 0.5))
    np.testing.assert_allclose(np.linalg.norm(e), 0.5, rtol=1e-5)
    np.testing.assert_allclose(e / np.linalg.norm(e), g / np.linalg.norm(g), atol=1e-6)  # the layers keep their ratio
    assert np.all(np.asarray(vaccine.perturbation(jnp.zeros((3, 2, 5, 8)), 0.5)) == 0)  # no gradient, no NaN


def test_alignment_stage_then_user_finetuning_on_the_tiny_config(tmp_path):
    """`dss.train` with Vaccine on aligns on the alignment data; a second run finetunes its export."""
    source = write_alignment_set(tmp_path / "alignment.jsonl")
    final = dss_train.train(tiny_config(**{"objective.name": "sft", "vaccine.enabled": True, "data.sources": [source],
                                           "train.max_steps": 2}), tmp_path / "align")
    assert np.isfinite(final["loss"]) and final["loss"] > final["loss_unperturbed"]
    export = tmp_path / "align" / "export"
    ids = jnp.arange(1, 40)[None]
    aligned, start = dss.models.load_pretrained(export), dss.models.load_pretrained(dss.hub.resolve_path("tiny:policy"))
    assert np.abs(np.asarray(aligned(ids)) - np.asarray(start(ids))).max() > 1e-3  # the stage trained it

    finetune = dss_train.train(tiny_config(**{"objective.name": "sft", "model.path": str(export), "train.max_steps": 1,
                                              "train.export": False}), tmp_path / "finetune")
    assert np.isfinite(finetune["loss"]) and "loss_unperturbed" not in finetune
    assert json.loads((tmp_path / "finetune" / "dss_config.json").read_text())["model"]["path"] == str(export)


def test_a_vaccine_run_without_alignment_data_is_refused_before_loading(tmp_path):
    bad = tiny_config(**{"vaccine.enabled": True, "data.sources": [], "model.path": str(tmp_path / "no_model")})
    with pytest.raises(ValueError) as err:
        dss_train.train(bad, tmp_path / "run")
    assert str(err.value) == "config.data.sources = []: no finetuning data; give at least one source dict with a 'path'"
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"^config.vaccine.rho = -1.0: must be a number >= 0$"):
        check_train_config(tiny_config(**{"vaccine.enabled": True, "vaccine.rho": -1.0}))
    with pytest.raises(ValueError, match=r"^config.objective.name = 'vaccine': vaccine is a plugin now, composable with "
                                         r"any objective; set config.vaccine.enabled=True"):
        check_train_config(tiny_config(**{"objective.name": "vaccine"}))
