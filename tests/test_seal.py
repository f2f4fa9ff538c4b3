"""SEAL: one selector step re-derived with plain jax.grad (model) and numpy (selector), the top-k
selection, the ranking it learns on a tiny run through dss.train, its workdir cache, bad input."""

import json
import os
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from transformers import AutoTokenizer

import dss.data
import dss.hub
import dss.models
from dss import templating
from dss import train as dss_train
from dss.baselines import seal
from dss.train_checks import check_train_config
from overrides import override

REPO = Path(__file__).resolve().parents[1]
REFUSALS = str(dss.data.bundled("safety_refusals/harmbench_refusals.jsonl"))


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):  # one per session: test_seal and test_safeinstr share the tiny assets
    os.environ["DSS_CACHE"] = str(tmp_path_factory.getbasetemp() / "dss_cache_baselines")
    yield


def tiny_config(**overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    return override(tiny.get_config(), **overrides)


def numpy_ce(logits, targets, mask):
    """Per-example mean token cross-entropy, from whole logits, in float64 numpy."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    label = np.take_along_axis(logp, targets[..., None], -1)[..., 0]
    return -(label * mask).sum(-1) / mask.sum(-1)


def test_one_step_matches_plain_jax_grad_and_numpy():
    """With SGD for both optimizers the step's updates are -lr * gradient: the model's must be the
    gradient of lam * mean CE_safe + (1 - lam) * mean w_i CE_i (w constant) computed from whole
    logits, the selector's the closed form of d/dlogits mean_i N softmax(logits)_i CE_i."""
    model = dss.models.load_pretrained(dss.hub.resolve_path("tiny:policy"))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    batch, length, vocab, n_user, lam, lr = 4, 16, model.config.vocab_size, 6, 0.7, 0.1

    def random_batch():
        ids = rng.integers(3, vocab, (batch, length + 1)).astype(np.int32)
        mask = rng.random((batch, length)) < 0.6
        mask[:, -1] = True  # every row has a trained token
        return {"input_ids": ids[:, :-1], "targets": ids[:, 1:], "loss_mask": mask}

    safe, user = random_batch(), random_batch()
    user_index = np.array([3, 0, 5, 1], np.int32)  # rows 2 and 4 of the selector are not in the batch
    logits = rng.normal(0, 0.5, n_user).astype(np.float32)

    step = seal.make_selector_step(graphdef, optax.sgd(lr), optax.sgd(lr), "softmax", accum=2)
    fresh = jax.tree.map(jnp.copy, params)  # the step donates its parameters
    new_params, _, new_logits, _, metrics = step(
        fresh, optax.sgd(lr).init(fresh), jnp.asarray(logits), optax.sgd(lr).init(jnp.asarray(logits)),
        jax.tree.map(jnp.asarray, safe), jax.tree.map(jnp.asarray, user), jnp.asarray(user_index), jnp.float32(lam))

    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    weights = n_user * softmax[user_index]

    def reference_loss(p):
        m = nnx.merge(graphdef, p)
        def ce(b):
            logp = jnp.take_along_axis(jax.nn.log_softmax(m(b["input_ids"]), -1), b["targets"][..., None], -1)[..., 0]
            return -(logp * b["loss_mask"]).sum(-1) / b["loss_mask"].sum(-1)

        return jnp.mean(lam * ce(safe) + (1 - lam) * weights * ce(user))

    grads = jax.jit(jax.grad(reference_loss))(params)
    for got, old, g in zip(jax.tree.leaves(new_params), jax.tree.leaves(params), jax.tree.leaves(grads)):
        np.testing.assert_allclose((np.asarray(old) - np.asarray(got)) / lr, np.asarray(g), rtol=2e-3, atol=2e-5)

    user_logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(user["input_ids"]))
    user_ce = numpy_ce(user_logits, user["targets"], user["loss_mask"])
    selector_grad = np.zeros(n_user)
    for b, i in enumerate(user_index):  # d/dl_j (N s_i) = N s_i (delta_ij - s_j)
        selector_grad += user_ce[b] * n_user * softmax[i] * ((np.arange(n_user) == i) - softmax) / batch
    np.testing.assert_allclose((logits - np.asarray(new_logits)) / lr, selector_grad, rtol=1e-4, atol=1e-6)
    assert selector_grad[[2, 4]].max() < 0  # rows outside the batch rise with the batch's loss
    np.testing.assert_allclose(float(metrics["user_loss"]), user_ce.mean(), rtol=1e-5)


def test_selector_weights_start_at_one():
    n = 5
    for activation, expected in (("softmax", np.ones(n)), ("sigmoid", 2 / (1 + np.exp(1e-4)) * np.ones(n))):
        got = seal.selector_weights(jnp.asarray(seal.initial_logits(n, activation)), activation)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)
    logits = np.array([0.3, -1.0, 2.0], np.float32)
    np.testing.assert_allclose(np.asarray(seal.selector_weights(jnp.asarray(logits), "sigmoid")),
                               2 / (1 + np.exp(-logits)), rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.29, 1.0])
def test_top_fraction_keeps_exactly_the_highest_scores(fraction):
    scores = np.array([0.2, 0.9, 0.2, -1.0, 0.5, 0.9, 0.0, 0.2, 0.3, 0.1] * 10, np.float32)
    k = int(round(fraction * 100, 6))  # floor(fraction * N), without the float error of 0.29 * 100
    ranked = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # ties: the earlier row first
    assert seal.top_fraction(scores, fraction).tolist() == sorted(ranked[:k])


def seal_run_config(**overrides):
    """The tiny config with SEAL: the user data is 8 copies of the safe refusals and 8 demo rows,
    so a selector trained against the refusals must keep the copies."""
    return tiny_config(**{
        "objective.name": "sft", "train.epochs": 2, "train.export": False,
        "data.sources": [dict(path=REFUSALS, limit=8), dict(path=str(dss.data.DEMO_PATH), limit=8)],
        "seal.enabled": True, "seal.safe_sources": (dict(path=REFUSALS, limit=16),), "seal.keep_fraction": 0.5,
        "seal.global_batch": 16, "seal.micro_batch": 8, "seal.epochs": 4, "seal.upper_weight_decay": 0.0,
        "seal.lr": 1e-3, **overrides})


def test_tiny_run_selects_then_finetunes_and_a_rerun_reuses_the_ranking(tmp_path, monkeypatch):
    dss_train.train(seal_run_config(), tmp_path)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # 8 kept examples / global batch 8, 2 epochs
    logits = np.load(tmp_path / seal.SCORES_FILE)["logits"]
    assert logits.shape == (16,)
    assert set(seal.top_fraction(logits, 0.5)) == set(range(8))  # the copies of the safe data
    assert logits[:8].min() > logits[8:].max()

    def no_training(*args):
        raise AssertionError("the selector was trained again")

    monkeypatch.setattr(seal, "train_selector", no_training)
    config = seal_run_config(**{"seal.keep_fraction": 0.25})  # another share of the same ranking
    tokenizer = AutoTokenizer.from_pretrained(dss.hub.resolve_path(config.model.path))
    template_vars = templating.run_template_vars(config.template, tmp_path)  # the run's, as dss.train renders
    encoded, examples, stats = dss.data.build_dataset(config.data, tokenizer, template_vars)
    _, kept, report = seal.select(config, tmp_path, tokenizer, template_vars, encoded, examples, stats)
    assert kept == [examples[i] for i in sorted(np.argsort(-logits, kind="stable")[:4])]
    assert report["seal"] == {**report["seal"], "scored": 16, "kept": 4, "safe_examples": 16}

    with pytest.raises(AssertionError, match="trained again"):  # other settings: a stale cache
        seal.select(seal_run_config(**{"seal.selector_lr": 1e-2}), tmp_path, tokenizer, template_vars,
                    encoded, examples, stats)


BAD = [  # (overrides of a good SEAL config, the start of the error)
    ({"seal.safe_sources": ()}, "config.seal.safe_sources = (): SEAL trains its data selector against safe"),
    ({"seal.safe_sources": ("safe.jsonl",)}, "config.seal.safe_sources[0] = 'safe.jsonl': must be a source dict"),
    ({"seal.keep_fraction": 0.0}, "config.seal.keep_fraction = 0.0: the share of user examples kept, in (0, 1]"),
    ({"seal.activation": "relu"}, "config.seal.activation = 'relu': unknown selector activation; use one of "
                                  "softmax, sigmoid"),
    ({"seal.global_batch": 12}, "config.seal.global_batch = 12: not a multiple of config.seal.micro_batch = 8"),
    ({"seal.global_batch": 12, "seal.micro_batch": 4}, "config.seal.global_batch = 12: the batch is split over 8"),
    ({"seal.upper_weight": 1.5}, "config.seal.upper_weight = 1.5: the weight of the safe loss, in (0, 1]"),
    ({"seal.upper_weight_decay": 0.6}, "config.seal.upper_weight_decay = 0.6: must be >= 0 and keep"),
    ({"seal.selector_lr": 0.0}, "config.seal.selector_lr = 0.0: must be a positive learning rate"),
    ({"seal.max_steps": 0}, "config.seal.max_steps = 0: a positive integer, or -1"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_seal_settings_are_refused_by_key(overrides, message):
    config = tiny_config(**{"seal.enabled": True, "seal.safe_sources": (dict(path=REFUSALS),), **overrides})
    with pytest.raises(ValueError) as err:
        check_train_config(config)
    assert str(err.value).startswith(message)


def test_a_good_seal_config_passes():
    check_train_config(tiny_config(**{"seal.enabled": True, "seal.safe_sources": (dict(path=REFUSALS),)}))


def test_seal_without_safe_data_or_with_a_missing_file_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"config.seal.safe_sources = \(\): SEAL trains its data selector"):
        dss_train.train(tiny_config(**{"seal.enabled": True}), tmp_path)
    missing = str(tmp_path / "safe.jsonl")
    with pytest.raises(ValueError, match=rf"config.seal.safe_sources\[0\].path = '{missing}': no such file"):
        dss_train.train(tiny_config(**{"seal.enabled": True, "seal.safe_sources": (dict(path=missing),)}), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / seal.SCORES_FILE).exists()


def test_a_selector_batch_larger_than_the_data_is_refused_by_key(tmp_path):
    config = tiny_config(**{"objective.name": "sft", "seal.enabled": True,
                            "seal.safe_sources": (dict(path=REFUSALS, limit=8),), "seal.global_batch": 16})
    with pytest.raises(ValueError, match="config.seal.global_batch = 16: more than the 8 safe examples"):
        dss_train.train(config, tmp_path)
