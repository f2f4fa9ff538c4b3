"""What a training run's hooks share: its settings and loaded pieces (`Run`), a data set in its
encoded form (`Data`), and the arrays it trains and checkpoints (`TrainState`).

`Run` also holds the per-dataset services the methods ask for (STAR trajectories, reference
log-probs), each cached in the workdir under a fingerprint of what it depends on.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import dss.data
import dss.data.pipeline
from dss import cache, distributed, objectives, star

log = logging.getLogger("dss.run")

USER = "user"  # the name of the user's finetuning data among a run's datasets


@dataclasses.dataclass
class Data:
    """Encoded examples, the rows they were made from (`examples[i]` -> `encoded[i]`), and the
    statistics `dss.data.build_dataset` reports."""

    encoded: list
    examples: list
    stats: dict

    def __len__(self) -> int:
        return len(self.encoded)


@dataclasses.dataclass
class TrainState:
    """The arrays of a run. `trainable` is differentiated and updated (the model's parameters, or
    LoRA's adapters); `frozen` is the starting model's parameters when they are held constant
    beside it; `reference` the full-KL reference model's parameters (None: no reference pass);
    `extra` more trees a method checkpoints (Lisa's anchor). `trainable_name` is its checkpoint
    item ("params", or "adapters" under LoRA)."""

    trainable: Any
    opt_state: Any = None
    frozen: Any = None
    reference: Any = None
    extra: dict = dataclasses.field(default_factory=dict)
    trainable_name: str = "params"

    def copy_trainable(self):
        """A copy of the trainable tree (an anchor, a reference); an abstract one (`dss.plan`) is
        its own copy: shapes and shardings."""
        return jax.tree.map(lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else jnp.copy(x), self.trainable)

    def checkpoint_trees(self) -> dict:
        return {self.trainable_name: self.trainable, "opt_state": self.opt_state, **self.extra}

    def restore(self, trees: dict) -> None:
        self.trainable, self.opt_state = trees[self.trainable_name], trees["opt_state"]
        self.extra = {name: trees[name] for name in self.extra}

    def consts(self) -> dict:
        """What the step reads but never updates."""
        return {"frozen": self.frozen, "reference": self.reference}


@dataclasses.dataclass
class Run:
    """One training run's settings and what its jobs loaded, as the methods' hooks see them."""

    config: Any
    workdir: Path
    mesh: Any
    tokenizer: Any
    template_vars: dict
    model_path: Path
    horizon: int = 0  # optimizer steps of the schedule (every epoch's), set once the data is batched
    weights_on_disk: bool = True  # False in dss.plan: model directories hold config.json alone

    def encode(self, sources, what: str) -> Data:
        """`sources` (alignment or safety data) rendered as the user data is, never attacked."""
        data_config = dss.data.pipeline.like_user_data(self.config.data, sources)
        data = Data(*dss.data.build_dataset(data_config, self.tokenizer, self.template_vars))
        log.info("%s: %d examples", what, len(data))
        return data

    def cache_file(self, stem: str, name: str) -> Path:
        """<workdir>/<stem>.npz for the user data, <stem>_<name>.npz for another dataset."""
        return self.workdir / (f"{stem}.npz" if name == USER else f"{stem}_{name}.npz")

    def star(self, data: Data, name: str) -> list:
        """STAR trajectories of a dataset's examples (`config.star.cache` names the user data's file)."""
        if name == USER:
            return star.cached_score(self.config, data.examples, self.workdir, self.template_vars)
        return star.cached_score(self.config, data.examples, self.workdir, self.template_vars,
                                 path=self.cache_file("star", name))

    def ref_logp(self, model, data: Data, name: str) -> list[np.ndarray]:
        """log p_ref(y_t) of every target of a dataset under the starting `model`, once per dataset."""
        fp = cache.fingerprint("ref_logp", cache.weights_fingerprint(self.model_path), self.config.model.dtype,
                               [e.input_ids.tolist() for e in data.encoded])
        arrays = cache.load_or_compute(
            self.cache_file("ref_logp", name), "ref_logp", fp, lambda: _pack(reference_logp(model, data.encoded)),
            "data or policy", write=distributed.is_writer())
        return _unpack(arrays)


def _pack(values: list[np.ndarray]) -> dict:
    return {"lengths": np.array([len(v) for v in values]), "values": np.concatenate(values)}


def _unpack(arrays: dict) -> list[np.ndarray]:
    bounds = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    return [arrays["values"][a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def reference_logp(model, encoded, batch_tokens: int = 16384) -> list[np.ndarray]:
    """log p(y_t) of every target under `model`, similar lengths batched, about `batch_tokens` a call."""
    logp_fn = nnx.jit(lambda m, x, y: objectives.token_logp(m(x), y))
    out = [None] * len(encoded)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].targets))
    start = 0
    while start < len(order):
        length = dss.data.bucket_length(len(encoded[order[start]].targets))
        idx = order[start : start + max(1, batch_tokens // length)]
        length = dss.data.bucket_length(max(len(encoded[i].targets) for i in idx))
        x, y = np.zeros((2, len(idx), length), np.int32)
        for b, i in enumerate(idx):
            n = len(encoded[i].targets)
            x[b, :n], y[b, :n] = encoded[i].input_ids[:-1], encoded[i].targets
        logp = np.asarray(logp_fn(model, jnp.asarray(x), jnp.asarray(y)))
        for b, i in enumerate(idx):
            out[i] = logp[b, : len(encoded[i].targets)].astype(np.float32)
        start += len(idx)
    return out
