"""Remat policies: chosen at construction, the same gradients under each, and each keeps what it
says for the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dss.models
from dss.train_checks import check_train_config
from dss.models.transformer import REMAT_POLICIES
from hf_tiny import VOCAB, make_hf_model
from test_checks import config as good_config


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    path = tmp_path_factory.mktemp("gemma3_text")  # sliding and global layers, q/k norms, sandwich norms
    make_hf_model("gemma3_text", path)
    return path


def test_each_policy_gives_the_same_gradients_and_keeps_less(path):
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (2, 40)))
    grads, kept = {}, {}
    for name in REMAT_POLICIES:
        graphdef, params = nnx.split(dss.models.load_pretrained(path, remat=name))
        loss = lambda p: nnx.merge(graphdef, p)(tokens).std()
        assert ("remat" in str(jax.make_jaxpr(jax.grad(loss))(params))) == (name != "none")
        grads[name] = jax.jit(jax.grad(loss))(params)
        _, backward = jax.vjp(loss, params)
        kept[name] = sum(x.size for x in jax.tree.leaves(backward))  # residuals held for the backward pass
    for name in REMAT_POLICIES:  # recomputation reorders float32 sums: within 1e-5 of each tensor's largest entry
        for a, b in zip(jax.tree.leaves(grads["none"]), jax.tree.leaves(grads[name])):
            a, b = np.asarray(a), np.asarray(b)
            np.testing.assert_allclose(b, a, atol=1e-5 * np.abs(a).max(), rtol=0, err_msg=name)
    assert kept["full"] < kept["save_dots"] < kept["none"]


def test_an_unknown_policy_is_refused_with_the_list(path):
    with pytest.raises(ValueError, match=r"^remat='offload': unknown policy; use one of none, full, save_dots"):
        dss.models.load_pretrained(path, remat="offload")
    with pytest.raises(ValueError) as err:
        check_train_config(good_config(**{"train.remat": "all"}))
    assert str(err.value) == "config.train.remat = 'all': unknown remat policy; use one of none, full, save_dots"
