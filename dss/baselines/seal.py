"""SEAL (Shen et al., ICLR 2025): rank the user's finetuning data with a selector learned by bilevel
optimisation against safe data, then finetune on the top-ranked share.

The selector is one logit per user example; its weights are `N softmax(logits)` (or
`2 sigmoid(logits)`), 1 on average at the start. SEAL's penalty scheme, as the official code runs
it, trains a copy of the policy and the selector together, one step each per batch:

    model:    theta <- Adam step on  lambda_e * mean_s CE_s(theta) + (1 - lambda_e) * mean_i w_i CE_i(theta)
    selector: logits <- Adam step on  mean_i w_i(logits) * CE_i(theta)      (CE_i held constant)

with CE the per-example mean token cross-entropy, s a batch of safe examples (the upper level), i a
batch of user examples (w held constant in the model step), and lambda_e = upper_weight -
e * upper_weight_decay in epoch e. An example the safety-trained model finds unlikely gets its
logit pushed down. Training then keeps the `keep_fraction` of user rows with the highest logits.
The logits are cached in `<workdir>/seal_scores.npz` under a fingerprint of the policy, both data
sets and every setting they depend on, so a rerun (or another keep_fraction) reuses them.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

import dss.data
import dss.hub
import dss.models
from dss import cache, distributed, objectives, sharding
from dss.data.pipeline import like_user_data
from dss.step import micro_batches, total_steps

log = logging.getLogger(__name__)

SCORES_FILE = "seal_scores.npz"
# Fixed as in the official code: Adam betas of both optimizers (weight decay 0), and DeepSpeed's
# gradient clipping of the model (max_norm 1.0) and of the selector (its own config, 10.0).
BETAS = (0.9, 0.95)
MODEL_CLIP, SELECTOR_CLIP = 1.0, 10.0


def initial_logits(n: int, activation: str) -> np.ndarray:
    """The official starting logits: 0.1 (softmax) or -1e-4 (sigmoid), so every weight starts at ~1."""
    return np.full(n, 0.1 if activation == "softmax" else -1e-4, np.float32)


def selector_weights(logits: jax.Array, activation: str) -> jax.Array:
    """Per-example weights from the logits: N softmax (mean 1) or 2 sigmoid (in (0, 2))."""
    if activation == "softmax":
        return logits.shape[0] * jax.nn.softmax(logits)
    return 2.0 * jax.nn.sigmoid(logits)


def upper_weights(s) -> list[float]:
    """lambda of each selector epoch: the weight of the safe loss, falling linearly."""
    return [s.upper_weight - e * s.upper_weight_decay for e in range(s.epochs)]


def example_ce(logp: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy over each example's trained tokens, float32 [B]."""
    mask = loss_mask.astype(bool)
    return -jnp.where(mask, logp, 0.0).sum(-1) / jnp.maximum(mask.sum(-1), 1).astype(jnp.float32)


def make_selector_step(graphdef, model_tx, selector_tx, activation: str, accum: int):
    """Jitted SEAL step: one model update and one selector update from a batch of safe examples
    (`safe`: input_ids, targets, loss_mask [B, T]) and one of user examples (`user`, with
    `user_index` [B] their rows), both evaluated at the current parameters and weights. Gradients
    are accumulated over `accum` micro-batches of each."""

    def example_losses(params, batch):
        model = nnx.merge(graphdef, params)
        hidden = model.hidden_states(batch["input_ids"])[0]
        logp, _ = objectives.hidden_token_terms(model.logits, hidden, batch["targets"])
        return example_ce(logp, batch["loss_mask"])

    def model_loss(params, safe, user, weights, lam, batch_size):
        safe_ce, user_ce = example_losses(params, safe), example_losses(params, user)
        loss = (lam * safe_ce.sum() + (1.0 - lam) * (weights * user_ce).sum()) / batch_size
        return loss, (safe_ce, user_ce)

    micro = functools.partial(micro_batches, accum=accum)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, logits, selector_state, safe, user, user_index, lam):
        batch_size = user_index.shape[0]
        weights = jax.lax.stop_gradient(selector_weights(logits, activation))[user_index]

        def body(grads, xs):
            s, u, w = xs
            (_, terms), g = jax.value_and_grad(model_loss, has_aux=True)(params, s, u, w, lam, batch_size)
            return jax.tree.map(jnp.add, grads, g), terms

        grads, (safe_ce, user_ce) = jax.lax.scan(
            body, jax.tree.map(jnp.zeros_like, params), jax.tree.map(micro, (safe, user, weights)))
        updates, opt_state = model_tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

        index = micro(user_index)
        selector_loss = lambda l: jnp.sum(selector_weights(l, activation)[index] * user_ce) / batch_size
        selector_grad = jax.grad(selector_loss)(logits)
        selector_updates, selector_state = selector_tx.update(selector_grad, selector_state, logits)
        logits = optax.apply_updates(logits, selector_updates)
        metrics = {"safe_loss": safe_ce.mean(), "user_loss": user_ce.mean(),
                   "weighted_user_loss": (micro(weights) * user_ce).mean()}
        return params, opt_state, logits, selector_state, metrics

    return step


def optimizers(s):
    """(model, selector) optimizers at constant rates, as the official scripts run them."""
    model_tx = optax.chain(optax.clip_by_global_norm(MODEL_CLIP), optax.adam(s.lr, *BETAS))
    selector_tx = optax.chain(optax.clip_by_global_norm(SELECTOR_CLIP), optax.adam(s.selector_lr, *BETAS))
    return model_tx, selector_tx


def train_selector(config, safe: list, user: list, pad_id: int) -> np.ndarray:
    """The trained selector logits, one per user example (see the module docstring)."""
    s = config.seal
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    model = dss.models.load_pretrained(dss.hub.resolve_path(config.model.path), dtype=config.model.dtype,
                                       param_dtype=config.model.param_dtype, mesh=mesh, remat=config.train.remat)
    graphdef, params = nnx.split(model)
    del model
    replicated, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    model_tx, selector_tx = optimizers(s)
    opt_state = sharding.replicate_rest(model_tx.init(params), mesh)
    logits = sharding.place(initial_logits(len(user), s.activation), replicated)
    selector_state = sharding.replicate_rest(selector_tx.init(logits), mesh)
    step_fn = make_selector_step(graphdef, model_tx, selector_tx, s.activation, s.global_batch // s.micro_batch)

    batchers = [dss.data.StepBatcher(data, None, s.global_batch, seed=config.seed + k, pad_id=pad_id,
                                     length=dss.data.bucket_length(max(len(e.targets) for e in data)))
                for k, data in enumerate((user, safe))]  # user order from seed, safe order from seed + 1
    steps_per_epoch = min(b.steps_per_epoch for b in batchers)  # the official zip of both loaders
    total = total_steps(steps_per_epoch, s.epochs, s.max_steps)
    with jax.set_mesh(mesh), tqdm(total=total, desc="seal selector", unit="step") as bar:
        for n in range(total):
            epoch, within = divmod(n, steps_per_epoch)
            user_batch, safe_batch = (b.batch(epoch * b.steps_per_epoch + within) for b in batchers)
            user_index = batchers[0].indices(epoch * batchers[0].steps_per_epoch + within)
            params, opt_state, logits, selector_state, metrics = step_fn(
                params, opt_state, logits, selector_state,
                {k: sharding.place(v, rows) for k, v in safe_batch.items()},
                {k: sharding.place(v, rows) for k, v in user_batch.items()},
                sharding.place(user_index, rows), jnp.float32(upper_weights(s)[epoch]))
            bar.update(1)
            bar.set_postfix({k: f"{float(v):.4f}" for k, v in metrics.items()})
    return np.asarray(logits.addressable_data(0), np.float32)


def fingerprint(config, safe: list, user: list) -> str:
    """What the logits depend on: policy weights, dtypes, both data sets, seed, settings."""
    s = config.seal
    settings = {k: s[k] for k in ("epochs", "max_steps", "global_batch", "micro_batch", "lr", "selector_lr",
                                  "upper_weight", "upper_weight_decay", "activation")}
    data = lambda encoded: [(e.input_ids.tolist(), np.flatnonzero(e.loss_mask).tolist()) for e in encoded]
    model_dir = dss.hub.resolve_path(config.model.path)
    return cache.fingerprint("seal", cache.weights_fingerprint(model_dir), config.model.dtype, config.model.param_dtype,
                             config.seed, settings, BETAS, MODEL_CLIP, SELECTOR_CLIP, data(safe), data(user))


def cached_scores(config, workdir: Path, safe: list, user: list, pad_id: int) -> np.ndarray:
    """Selector logits of the user examples from `<workdir>/seal_scores.npz`, or trained now."""
    arrays = cache.load_or_compute(
        Path(workdir) / SCORES_FILE, "seal_scores", fingerprint(config, safe, user),
        lambda: {"logits": train_selector(config, safe, user, pad_id)}, "policy, data or config.seal settings",
        write=distributed.is_writer())
    return arrays["logits"]


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices (ascending) of the floor(fraction * N) highest scores; ties go to the earlier row."""
    k = math.floor(fraction * len(scores) + 1e-9)
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:k])


def select(config, workdir, tokenizer, template_vars, encoded: list, examples: list, stats: dict):
    """SEAL's stage of `dss.train`: the user data (`encoded`, `examples`, `stats` from
    `dss.data.build_dataset`) reduced to its top-ranked rows; unchanged unless config.seal.enabled."""
    s = config.seal
    if not s.enabled:
        return encoded, examples, stats
    safe, _, safe_stats = dss.data.build_dataset(like_user_data(config.data, config.seal.safe_sources), tokenizer,
                                                 template_vars)
    for name, n in (("safe", len(safe)), ("user", len(encoded))):
        if n < s.global_batch:
            raise ValueError(f"config.seal.global_batch = {s.global_batch}: more than the {n} {name} examples "
                             "(each selector step takes that many of both)")
    scores = cached_scores(config, workdir, safe, encoded, tokenizer.pad_token_id or 0)
    keep = top_fraction(scores, s.keep_fraction)
    log.info("seal: kept %d of %d user examples (keep_fraction %s)", len(keep), len(encoded), s.keep_fraction)
    stats = {**stats, "seal": {"safe_examples": len(safe), "scored": len(encoded), "kept": len(keep),
                               "safe_sources": safe_stats["sources"]}}
    return [encoded[i] for i in keep], [examples[i] for i in keep], stats
