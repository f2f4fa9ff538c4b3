"""Adding a method is one file: a token-dropping objective registered here, from the test alone,
trains on the tiny config through `dss.train` with no edit under dss/."""

import json

import numpy as np
import pytest

from baseline_tools import tiny_config, use_shared_cache
from dss import methods, objectives
from dss import train as dss_train
from dss.errors import UserError
from dss.methods.base import REGISTRY


class DropTokens(methods.Objective):
    """SFT on every `keep_every`-th response token only (a toy: the others carry no loss)."""

    name, label = "drop_tokens", "Token dropping"

    @classmethod
    def settings(cls):
        return {"keep_every": 2}  # train on response tokens 0, k, 2k, ... of each row

    @classmethod
    def check_settings(cls, config):
        if not (isinstance(config.objective.keep_every, int) and config.objective.keep_every > 0):
            raise UserError(f"config.objective.keep_every = {config.objective.keep_every!r}: a positive integer")

    def loss(self, logp, full_kl, batch, normalizer):
        import jax.numpy as jnp

        mask = batch["loss_mask"]
        position = jnp.cumsum(mask, axis=-1) - 1  # 0-based index among each row's response tokens
        kept = mask & (position % self.config.objective.keep_every == 0)
        return objectives.sft_from_terms(logp, kept, normalizer)


@pytest.fixture(scope="module", autouse=True)
def registered(tmp_path_factory):
    use_shared_cache(tmp_path_factory)
    methods.register(DropTokens)
    yield
    REGISTRY.pop(DropTokens.name)


def first_step(workdir):
    return json.loads((workdir / "metrics.jsonl").read_text().splitlines()[0])


def test_a_method_registered_outside_dss_trains_on_the_tiny_config(tmp_path):
    common = {"train.max_steps": 2, "train.export": False}
    toy = tiny_config(**{"objective.name": "drop_tokens", **common})
    assert toy.objective.keep_every == 2  # its setting is part of the config schema
    final = dss_train.train(toy, tmp_path / "toy")
    assert np.isfinite(final["loss"]) and set(json.loads(l)["step"] for l in
                                             (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()) == {1, 2}
    dss_train.train(tiny_config(**{"objective.name": "sft", **common}), tmp_path / "sft")
    kept, every = first_step(tmp_path / "toy")["n_tokens"], first_step(tmp_path / "sft")["n_tokens"]
    # the same first batch (same seed): the toy trains on every second response token of each row
    assert every / 2 <= kept <= every / 2 + 8  # 8 rows, each rounding its odd count up
    assert methods.label("drop_tokens") == "Token dropping"


def test_its_own_settings_are_checked_by_key():
    from dss.train_checks import check_settings

    with pytest.raises(UserError, match=r"^config.objective.keep_every = 0: a positive integer$"):
        check_settings(tiny_config(**{"objective.name": "drop_tokens", "objective.keep_every": 0}))
