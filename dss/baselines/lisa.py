"""Lisa (Huang et al., NeurIPS 2024): lazy safety alignment by bi-state optimisation.

One run alternates `alignment_steps` steps on alignment data (harmful prompt -> refusal) with
`finetune_steps` steps on the user's data, starting with alignment. Both states minimise SFT plus
the proximal term rho/2 ||w - w_anchor||^2, w_anchor the weights at the last switch of state (the
last iterate of the other state; the initial weights before the first switch), so neither state
drifts far from what the other reached. As in the official trainer, the proximal term is off for
the first `proximal_after` share of the run's steps, and alignment steps take the place of user
steps (a run has the steps plain SFT would have).

Every decision is a function of the step number alone, so all hosts take the same ones and a
resumed run repeats them; the anchor and the alignment data's position go in the checkpoint.
See docs/baselines.md for the official code this follows.
"""

from __future__ import annotations

import json
import logging

import jax
import jax.numpy as jnp
import optax

import dss.data

log = logging.getLogger("dss.lisa")

ALIGNMENT, FINETUNE = "alignment", "finetune"


def state_at(step: int, alignment_steps: int, finetune_steps: int) -> str:
    """The state of 0-based step `step`: the first `alignment_steps` of every period of
    `alignment_steps + finetune_steps` are alignment."""
    return ALIGNMENT if step % (alignment_steps + finetune_steps) < alignment_steps else FINETUNE


def switches_at(step: int, alignment_steps: int, finetune_steps: int) -> bool:
    """Whether step `step` runs in another state than the step before it."""
    return step > 0 and state_at(step, alignment_steps, finetune_steps) != state_at(step - 1, alignment_steps,
                                                                                    finetune_steps)


def proximal_coef(step: int, rho: float, proximal_after: float, horizon: int) -> float:
    """rho once more than `proximal_after * horizon` steps are done, else 0 (the official trainer's
    `self.steps > 0.1 * len(train_dataloader) * num_train_epochs`)."""
    return float(rho) if step > proximal_after * horizon else 0.0


def add_proximal(grads, params, anchor, coef):
    """(grads + coef (w - anchor), coef/2 ||w - anchor||^2): the proximal term's gradient and value,
    added once per optimizer step (not per micro-batch)."""
    diff = jax.tree.map(lambda w, a: w - a, params, anchor)
    grads = jax.tree.map(lambda g, d: g + (coef * d).astype(g.dtype), grads, diff)
    return grads, 0.5 * coef * jnp.square(optax.global_norm(diff))


def encode_alignment_data(config, tokenizer, template_vars) -> list:
    """The encoded examples of `config.lisa.sources`, rendered as the user data is (`config.data`'s
    length, turns, system prompt, bad-row policy, seed) but never attacked."""
    d = config.data
    data = {"sources": list(config.lisa.sources), "max_length": d.max_length, "train_on": d.train_on,
            "system_prompt": d.system_prompt, "on_bad_row": d.on_bad_row, "seed": d.seed}
    encoded, _, stats = dss.data.build_dataset(data, tokenizer, template_vars)
    log.info("alignment data: %s", json.dumps(stats))
    if len(encoded) < config.train.global_batch:
        raise ValueError(f"{len(encoded)} usable alignment examples in config.lisa.sources, fewer than "
                         f"config.train.global_batch={config.train.global_batch}")
    return encoded


class BiState:
    """Which batcher feeds each step, and the anchor and coefficient of its proximal term.

    `before_step(step, params)` is called by every host before each step; at a switch of state it
    copies the current weights as the new anchor. `trees()` / `meta()` go in the checkpoint and
    `restore` takes them back."""

    def __init__(self, cfg, user_batches, aligned, horizon: int, params):
        """`aligned`: the encoded alignment data, batched like the user data at its own length;
        `horizon`: the steps of the whole run (for `proximal_after`); `params`: the first anchor."""
        self.cfg, self.horizon = cfg, horizon
        alignment_batches = dss.data.StepBatcher(
            aligned, {}, user_batches.batch_size, seed=user_batches.seed, pad_id=user_batches.pad_id,
            length=dss.data.bucket_length(max(len(e.targets) for e in aligned)))
        self.batchers = {FINETUNE: user_batches, ALIGNMENT: alignment_batches}
        self.anchor = jax.tree.map(jnp.copy, params)

    def state(self, step: int) -> str:
        return state_at(step, self.cfg.alignment_steps, self.cfg.finetune_steps)

    def before_step(self, step: int, params):
        """(batcher, (anchor, coef)) for step `step` (0-based)."""
        c = self.cfg
        if switches_at(step, c.alignment_steps, c.finetune_steps):
            self.anchor = jax.tree.map(jnp.copy, params)
        coef = jnp.float32(proximal_coef(step, c.rho, c.proximal_after, self.horizon))
        return self.batchers[self.state(step)], (self.anchor, coef)

    def trees(self) -> dict:
        return {"anchor": self.anchor}

    def meta(self) -> dict:
        return {"alignment_data": self.batchers[ALIGNMENT].state()}

    def restore(self, trees: dict, meta: dict) -> None:
        self.anchor = trees["anchor"]
        self.batchers[ALIGNMENT].restore(meta["alignment_data"])  # refuses if the alignment data changed
