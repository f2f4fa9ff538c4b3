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
The plugin (`dss.methods.lisa`) runs it in the training loop; see docs/baselines.md for the
official code this follows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
