"""Vaccine (Huang et al., NeurIPS 2024): perturbation-aware alignment, the alignment stage.

Harmful finetuning drifts the hidden states of the alignment data; Vaccine aligns the model so
that its loss stays low when every layer's hidden state is pushed the worst way within radius
rho. Each micro-batch takes two passes: the gradient g_l of the loss at each block's output,
then the loss and parameter gradient with e_l = rho * g_l / (||g|| + 1e-7) added to block l's
output, ||g|| one norm over every layer and row of the micro-batch (the official trainer's
`_grad_norm`). The user finetuning is a second, ordinary run from this run's export.
See docs/baselines.md for the official code this follows and where it differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dss.sharding import constrain

NORM_EPS = 1e-7  # added to ||g|| by the official trainer (`after_first_step`)
OFFSET_AXES = ("layers", "act_batch", "act_seq", "act_embed")


def perturbation(grads: jax.Array, rho) -> jax.Array:
    """rho * g / (||g|| + 1e-7) for hidden-state gradients [layers, B, L, E], with one norm over
    all of them: layers with larger gradients get larger perturbations."""
    norm = jnp.sqrt(jnp.sum(jnp.square(grads.astype(jnp.float32))))
    return (grads.astype(jnp.float32) * (rho / (norm + NORM_EPS))).astype(grads.dtype)


def zero_offsets(model, tokens: jax.Array) -> jax.Array:
    """Zeros shaped like every block's output, [layers, B, L, E] in the compute dtype."""
    cfg = model.config
    zeros = jnp.zeros((cfg.num_layers, *tokens.shape, cfg.hidden_size), model.dtype)
    return constrain(zeros, OFFSET_AXES)


def value_and_grad(loss_fn, params, offsets: jax.Array, rho):
    """((loss, metrics), parameter gradient) of `loss_fn(params, offsets) -> (loss, metrics)` at
    Vaccine's perturbation, plus `loss_unperturbed` in the metrics. `offsets` are zeros shaped
    like the hidden states (`zero_offsets`); the perturbation is a constant of pass 2."""
    (clean, _), hidden_grads = jax.value_and_grad(lambda o: loss_fn(params, o), has_aux=True)(offsets)
    worst = jax.lax.stop_gradient(perturbation(hidden_grads, rho))
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, worst)
    return (loss, {**metrics, "loss_unperturbed": clean}), grads
