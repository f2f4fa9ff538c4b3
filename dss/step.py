"""The jitted train step, built from the active methods' traced hooks (`dss.methods.base`).

One optimizer update per call: gradients accumulated over `accum` micro-batches by `lax.scan`
(losses normalised by the response-token count of the whole global batch, so the sum of
micro-batch gradients is the whole batch's), then each plugin's `adjust`, the global norm and
the optimizer. Logits are made a chunk of positions at a time (`objectives.hidden_token_terms`),
never whole. No Python runs per micro-batch: the hooks are traced once into one program.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dss import objectives


def micro_batches(x: jax.Array, accum: int) -> jax.Array:
    """[B, ...] -> [accum, B / accum, ...] with micro-batch k = rows k, k + accum, ...: a slice of
    every device's block of rows, so each micro-batch spans every data shard (consecutive blocks
    of rows would leave devices idle)."""
    return x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)


def micro_keys(seed: int, step, accum: int) -> jax.Array:
    """A random key per micro-batch of optimizer step `step` (LoRA's dropout): a function of the
    seed and step alone, so a resumed run draws what an uninterrupted one did."""
    root = jax.random.split(jax.random.key(seed))[1]
    return jax.random.split(jax.random.fold_in(root, step), accum)


def _plain_value_and_grad(loss_fn, trainable, batch, model):
    return jax.value_and_grad(loss_fn, has_aux=True)(trainable)


def make_train_step(graphdef, tx, methods, accum: int, seed: int = 0):
    """`step(trainable, opt_state, batch, consts, inputs, step_number) -> (trainable, opt_state,
    metrics)`; `methods` are the run's active method instances, the objective first; `consts` is
    `TrainState.consts()`; `inputs` maps a plugin's name to its `StepPlan.inputs`. The trainable
    tree and the optimizer state are donated."""
    objective, plugins = methods[0], methods[1:]
    replacing = [m for m in methods if m.value_and_grad is not None]
    if len(replacing) > 1:
        raise ValueError(f"{', '.join(m.name for m in replacing)} each replace the gradient; only one can be on")
    value_and_grad = replacing[0].value_and_grad if replacing else _plain_value_and_grad

    def forward_params(trainable, consts, key):
        params, kwargs = trainable, {}
        for method in methods:
            params, kwargs = method.model_params(params, consts, key, kwargs)
        return params, kwargs

    def loss_fn(trainable, mb, consts, normalizer, key, **forward):
        params, kwargs = forward_params(trainable, consts, key)
        model = nnx.merge(graphdef, params)
        tokens = mb["input_ids"]  # right-padded rows: the causal mask keeps pads unseen
        ref = None
        if consts["reference"] is not None:  # full KL: the reference model runs in the step
            ref_model = nnx.merge(graphdef, consts["reference"])
            ref = (ref_model.logits, ref_model.hidden_states(tokens)[0])
        hidden = model.hidden_states(tokens, **kwargs, **forward)[0]
        logp, full_kl = objectives.hidden_token_terms(model.logits, hidden, mb["targets"], ref)
        return objective.loss(logp, full_kl, mb, normalizer)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(trainable, opt_state, batch, consts, inputs, step_number):
        normalizer = jnp.maximum(batch["loss_mask"].sum(), 1).astype(jnp.float32)
        micro = jax.tree.map(lambda x: micro_batches(x, accum), batch)
        base = nnx.merge(graphdef, consts["frozen"] if consts["frozen"] is not None else trainable)

        def body(grads, scanned):
            mb, key = scanned
            loss = functools.partial(loss_fn, mb=mb, consts=consts, normalizer=normalizer, key=key)
            (_, metrics), g = value_and_grad(loss, trainable, mb, base)
            return jax.tree.map(jnp.add, grads, g), metrics

        grads, metrics = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, trainable),
                                      (micro, micro_keys(seed, step_number, accum)))
        metrics = {k: v.sum() for k, v in metrics.items()}  # each is normalised globally already
        for plugin in plugins:
            grads, penalty, more = plugin.adjust(grads, trainable, inputs.get(plugin.name))
            metrics = {**metrics, **more, "loss": metrics["loss"] + penalty}
        metrics["grad_norm"] = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, metrics

    return step


def total_steps(steps_per_epoch: int, epochs: int, max_steps: int) -> int:
    """Optimizer steps of a run: every epoch's, or `max_steps` if that is fewer (-1: no cap)."""
    return steps_per_epoch * epochs if max_steps < 0 else min(max_steps, steps_per_epoch * epochs)
