"""Per-token training objectives: SFT, RS, STAR-DSS, Deep Token, KL-only.

All losses are pure, jit-able functions of arrays. `logits[:, t]` predicts `targets[:, t]`;
`loss_mask` marks the response tokens that are trained on. Every loss is a SUM over masked tokens
divided by `normalizer`, the number of response tokens in the whole global batch (across devices
and gradient-accumulation micro-batches), or by `sum(loss_mask)` of this batch when it is None.
With the global count, summing the losses (and gradients) of micro-batches gives exactly the loss
of the whole batch, rather than a mean of means.

Metrics are token sums divided by the same normaliser, so they accumulate the same way; only
`n_tokens` (this batch's response-token count) is a plain count.

Logits may be bfloat16; every reduction runs in float32. The reference model's inputs
(`ref_logp`, `ref_logits`) are constants: gradients never flow into them.

Each loss is written once, as `*_from_terms` of per-token label log-probs (and KL terms); the
logits-based functions (the public API) compute those terms from whole logits, while the train
step gets them from hidden states a chunk of positions at a time (`hidden_token_terms`), so no
training step builds [B, T, V] logits.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

KL_ESTIMATORS = ("k1", "k2", "k3", "full")

# Sequence positions per chunk of logits in `hidden_token_terms`: with a 128k vocabulary one
# float32 chunk intermediate is 256 * 128k * 4 B = 128 MiB per row of the batch.
DEFAULT_CHUNK_SIZE = 256


def token_logp(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(targets[b, t]) under `logits[b, t]`, float32 [B, T].

    Gathers the label logit and subtracts a float32 logsumexp instead of materialising a full
    log-softmax, so under jit XLA can fuse the cast into the reductions and keep no [B, T, V]
    float32 copy.
    """
    lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
    label = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return label.astype(jnp.float32) - lse


def logp_and_full_kl(logits, ref_logits, targets):
    """`token_logp(logits, targets)` and the exact per-token KL(p_theta || p_ref), float32 [B, T].

    All positions at once: both models' float32 log-softmaxes [B, T, V] exist together. The train
    step's full KL goes through `hidden_token_terms`, which never holds whole logits.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ref = jax.nn.log_softmax(jax.lax.stop_gradient(ref_logits).astype(jnp.float32), axis=-1)
    kl = jnp.sum(jnp.exp(logp) * (logp - ref), axis=-1)
    return token_logp(logits, targets), kl


def deep_token_betas(
    loss_mask: jax.Array,
    first: float = 0.5,
    early: float = 2.0,
    early_end: int = 5,
    rest: float = 0.1,
) -> jax.Array:
    """Deep Token beta schedule, float32 [B, T], counted from each row's first response token.

    Response token 1 gets `first`, response tokens 2..`early_end` get `early`, later ones `rest`
    (Qi et al. 2024: 0.5 / 2.0 for tokens 2-5 / 0.1), so rows whose responses start at different
    offsets get the same schedule. Tokens are numbered among the masked ones; for the usual
    contiguous response this is the distance from its first token. Unmasked positions get `rest`
    (they never enter the loss).
    """
    mask = loss_mask.astype(bool)
    k = jnp.cumsum(mask, axis=-1)  # 1-based index among response tokens
    betas = jnp.where(k == 1, first, jnp.where(k <= early_end, early, rest))
    return jnp.where(mask, betas, rest).astype(jnp.float32)


def _setup(loss_mask, normalizer):
    """Boolean mask and the loss denominator shared by every objective.

    Masked positions may hold padding targets such as -100: whatever the gather returns there
    (NaN for out-of-range ids) is dropped by the masked sums and passes no gradient.
    """
    mask = loss_mask.astype(bool)
    n_tokens = jnp.sum(mask, dtype=jnp.int32)
    denom = n_tokens if normalizer is None else normalizer
    # A batch without response tokens has loss 0 rather than 0/0.
    denom = jnp.maximum(jnp.asarray(denom, jnp.float32), 1.0)
    return mask, n_tokens, denom


def _log_ratio(logp, ref_logp, mask):
    """d = log p_theta - log p_ref on response tokens, 0 elsewhere.

    Zeroing d (not only the final sum) keeps padding values in `ref_logp` (inf, NaN) out of the
    gradient: a zero cotangent times a non-finite local derivative would still be NaN.
    """
    ref_logp = jax.lax.stop_gradient(jnp.asarray(ref_logp, jnp.float32))
    return jnp.where(mask, logp - ref_logp, 0.0)


def label_kl(logp, ref_logp, mask, kl_estimator="k2"):
    """Per-token KL estimates [B, T] from label log-probs: k1 = d, k2 = d^2 / 2, k3 = e^-d - 1 + d
    with d = log p_theta(y_t) - log p_ref(y_t) (0 outside `mask`)."""
    if kl_estimator not in ("k1", "k2", "k3"):
        raise ValueError(f"label_kl: kl_estimator must be k1, k2 or k3 (full needs both models' logits), "
                         f"got {kl_estimator!r}")
    d = _log_ratio(logp, ref_logp, mask)
    if kl_estimator == "k1":
        return d
    if kl_estimator == "k2":
        return 0.5 * d * d
    return jnp.exp(-d) - 1.0 + d


def _logp_and_kl(logits, targets, mask, ref_logp, ref_logits, kl_estimator):
    """Label log-probs and per-token KL estimates [B, T], with loud errors for missing inputs."""
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; expected one of {KL_ESTIMATORS}")
    if kl_estimator == "full":
        if ref_logits is None:
            raise ValueError(
                "kl_estimator='full' needs ref_logits (the reference model's logits [B, T, V])"
            )
        return logp_and_full_kl(logits, ref_logits, targets)
    if ref_logp is None:
        if ref_logits is None:
            raise ValueError(
                f"kl_estimator={kl_estimator!r} needs ref_logp (log p_ref of the label tokens, "
                "[B, T]) or ref_logits"
            )
        ref_logp = token_logp(jax.lax.stop_gradient(ref_logits), targets)
    logp = token_logp(logits, targets)
    return logp, label_kl(logp, ref_logp, mask, kl_estimator)


def _msum(x, mask, denom):
    """Sum of a per-token quantity over response tokens, divided by the normaliser."""
    return jnp.sum(jnp.where(mask, x, 0.0)) / denom


def sft_loss(logits, targets, loss_mask, normalizer=None):
    """Cross-entropy on response tokens."""
    return sft_from_terms(token_logp(logits, targets), loss_mask, normalizer)


def sft_from_terms(logp, loss_mask, normalizer=None):
    """SFT from per-token label log-probs [B, T] (every `*_from_terms` is its loss's one implementation;
    the logits versions and the train step's chunked path both call it)."""
    mask, n_tokens, denom = _setup(loss_mask, normalizer)
    loss = _msum(-logp, mask, denom)
    return loss, {"loss": loss, "ce": loss, "n_tokens": n_tokens}


def rs_loss(logits, targets, loss_mask, example_weights, normalizer=None):
    """Static shaping: each example's CE scaled by one weight from the guardrail's verdict on the
    whole response (hard 0/1 or soft P(safe)), `example_weights` [B]."""
    return rs_from_terms(token_logp(logits, targets), loss_mask, example_weights, normalizer)


def rs_from_terms(logp, loss_mask, example_weights, normalizer=None):
    """RS from per-token label log-probs [B, T]."""
    mask, n_tokens, denom = _setup(loss_mask, normalizer)
    w = jnp.asarray(example_weights, jnp.float32)[:, None]
    loss = _msum(-w * logp, mask, denom)
    metrics = {
        "loss": loss,
        "ce": _msum(-logp, mask, denom),
        "example_weight": _msum(w, mask, denom),
        "n_tokens": n_tokens,
    }
    return loss, metrics


def star_dss_loss(
    logits,
    targets,
    loss_mask,
    star_weights,
    ref_logp=None,
    ref_logits=None,
    kl_coef=0.5,
    kl_estimator="k2",
    normalizer=None,
):
    """STAR-DSS: `sum_t [w_t CE_t + (1 - w_t) kl_coef KL_t] / N`.

    Tokens the guardrail deems safe (w near 1) are imitated; unsafe ones (w near 0) are held to the
    reference model. `star_weights` [B, T] holds w_t per token. k1/k2/k3 need only `ref_logp`
    (precomputable once per dataset; derived from `ref_logits` if only those are given), `full`
    needs `ref_logits` (see `logp_and_full_kl`).
    """
    mask = loss_mask.astype(bool)
    logp, kl = _logp_and_kl(logits, targets, mask, ref_logp, ref_logits, kl_estimator)
    return star_dss_from_terms(logp, kl, loss_mask, star_weights, kl_coef, normalizer)


def star_dss_from_terms(logp, kl, loss_mask, star_weights, kl_coef=0.5, normalizer=None):
    """STAR-DSS from per-token label log-probs and KL terms [B, T] (see `hidden_token_terms`)."""
    mask, n_tokens, denom = _setup(loss_mask, normalizer)
    w = jnp.where(mask, jnp.asarray(star_weights, jnp.float32), 0.0)
    loss = _msum(w * -logp + (1.0 - w) * kl_coef * kl, mask, denom)
    metrics = {
        "loss": loss,
        "ce": _msum(-logp, mask, denom),
        "kl": _msum(kl, mask, denom),
        "star_weight": _msum(w, mask, denom),
        "n_tokens": n_tokens,
    }
    return loss, metrics


def deep_token_loss(logits, targets, loss_mask, ref_logp, betas=None, normalizer=None):
    """Deep Token (Qi et al. 2024): `-sum_t (2/beta_t) log sigmoid(beta_t d_t) / N` with
    d_t = log p_theta(y_t) - log p_ref(y_t).

    At d = 0 its gradient is exactly SFT's (-grad log p); as the policy drifts from the reference
    the sigmoid saturates, and large betas on the first response tokens keep those close to the
    reference. `betas` [B, T] (or a scalar) defaults to `deep_token_betas(loss_mask)`.
    """
    return deep_token_from_terms(token_logp(logits, targets), loss_mask, ref_logp, betas, normalizer)


def deep_token_from_terms(logp, loss_mask, ref_logp, betas=None, normalizer=None):
    """Deep Token from per-token label log-probs [B, T]."""
    if ref_logp is None:
        raise ValueError("deep_token_loss needs ref_logp (log p_ref of the label tokens, [B, T])")
    mask, n_tokens, denom = _setup(loss_mask, normalizer)
    beta = deep_token_betas(mask) if betas is None else jnp.asarray(betas, jnp.float32)
    d = _log_ratio(logp, ref_logp, mask)
    loss = _msum(-(2.0 / beta) * jax.nn.log_sigmoid(beta * d), mask, denom)
    metrics = {
        "loss": loss,
        "ce": _msum(-logp, mask, denom),
        "log_ratio": _msum(d, mask, denom),
        "n_tokens": n_tokens,
    }
    return loss, metrics


def kl_only_loss(
    logits,
    targets,
    loss_mask,
    ref_logp=None,
    ref_logits=None,
    kl_estimator="k2",
    normalizer=None,
):
    """Only hold the policy to the reference: `sum_t KL_t / N` (STAR-DSS with w = 0, kl_coef 1)."""
    mask = loss_mask.astype(bool)
    logp, kl = _logp_and_kl(logits, targets, mask, ref_logp, ref_logits, kl_estimator)
    return kl_only_from_terms(logp, kl, loss_mask, normalizer)


def kl_only_from_terms(logp, kl, loss_mask, normalizer=None):
    """KL-only from per-token label log-probs and KL terms [B, T]."""
    mask, n_tokens, denom = _setup(loss_mask, normalizer)
    loss = _msum(kl, mask, denom)
    return loss, {"loss": loss, "ce": _msum(-logp, mask, denom), "kl": loss, "n_tokens": n_tokens}


def hidden_token_terms(unembed, hidden, targets, ref=None, chunk_size=DEFAULT_CHUNK_SIZE):
    """Label log-probs [B, T] from final hidden states, and with `ref = (ref_unembed, ref_hidden)`
    the exact KL(p || p_ref) [B, T] too (else None): every objective's per-token terms.

    Logits are made `chunk_size` positions at a time by `unembed` ([B, c, E] -> [B, c, V]) and each
    chunk is recomputed in the backward pass, so no [B, T, V] logits of either model ever exist:
    with a 128k vocabulary that is the difference between MiBs and GiBs. `chunk_size` is reduced
    to a divisor of T.
    """
    b, t = targets.shape
    c = math.gcd(t, chunk_size)
    split = lambda x: x.reshape(b, t // c, c, *x.shape[2:]).swapaxes(0, 1)
    merge = lambda x: x.swapaxes(0, 1).reshape(b, t)
    if ref is None:

        @jax.checkpoint
        def chunk(carry, xs):
            h, y = xs
            return carry, token_logp(unembed(h), y)

        _, logp = jax.lax.scan(chunk, None, (split(hidden), split(targets)))
        return merge(logp), None
    ref_unembed, ref_hidden = ref[0], jax.lax.stop_gradient(ref[1])

    @jax.checkpoint
    def chunk_with_kl(carry, xs):
        h, h_ref, y = xs
        return carry, logp_and_full_kl(unembed(h), ref_unembed(h_ref), y)

    _, (logp, kl) = jax.lax.scan(chunk_with_kl, None, (split(hidden), split(ref_hidden), split(targets)))
    return merge(logp), merge(kl)
