"""Objectives against hand-written float64 numpy references, values and gradients.

Gradients are checked w.r.t. the logits: for any loss sum_t c_t log p(y_t) / N the gradient at
token t is c_t (onehot(y_t) - softmax(logits_t)) / N, so each reference only needs dL/dlog p.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dss import objectives as O

B, T, V = 4, 8, 11
# Responses start at different offsets; row 2 has trailing padding, row 3 a one-token response.
MASK = np.array(
    [
        [0, 0, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],
    ],
    bool,
)
N = int(MASK.sum())


def log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def label_logp(logits, targets):
    return np.take_along_axis(log_softmax(logits), targets[..., None], -1)[..., 0]


def logp_grad(logits, targets, coef, mask=MASK, denom=N):
    """d/dlogits of sum_t mask_t coef_t log p(y_t) / denom."""
    onehot = np.eye(logits.shape[-1])[targets]
    g = coef[..., None] * (onehot - np.exp(log_softmax(logits)))
    return np.where(mask[..., None], g, 0.0) / denom


def np_full_kl(logits, ref_logits):
    lp, lq = log_softmax(logits), log_softmax(ref_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def full_kl_grad(logits, ref_logits, coef, mask=MASK, denom=N):
    """d/dlogits of sum_t mask_t coef_t KL_t / denom: p * (log p - log q - KL)."""
    lp, lq = log_softmax(logits), log_softmax(ref_logits)
    g = np.exp(lp) * (lp - lq - np_full_kl(logits, ref_logits)[..., None])
    return np.where(mask[..., None], coef[..., None] * g, 0.0) / denom


K = {"k1": lambda d: d, "k2": lambda d: d**2 / 2, "k3": lambda d: np.exp(-d) - 1 + d}
DK = {"k1": lambda d: np.ones_like(d), "k2": lambda d: d, "k3": lambda d: 1 - np.exp(-d)}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(B, T, V)).astype(np.float32) * 2
    ref_logits = (logits + rng.normal(size=(B, T, V)) * 0.7).astype(np.float32)
    targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
    return {
        "logits": logits,
        "targets": targets,
        "mask": MASK,
        "w": rng.uniform(size=(B, T)).astype(np.float32),
        "example_w": np.array([1.0, 0.0, 0.3, 0.8], np.float32),
        "ref_logits": ref_logits,
        "ref_logp": label_logp(ref_logits, targets).astype(np.float32),
        "betas": rng.uniform(0.1, 3.0, size=(B, T)).astype(np.float32),
    }


def value_and_grad(fn, logits):
    """Loss, metrics and d loss / d logits of `fn(logits) -> (loss, metrics)`."""
    (loss, metrics), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(logits))
    return loss, metrics, np.asarray(grad)


# Every objective, called on one batch dict; all [B, ...] arrays can be sliced into micro-batches.
OBJECTIVES = {
    "sft": lambda lg, d, **kw: O.sft_loss(lg, d["targets"], d["mask"], **kw),
    "rs": lambda lg, d, **kw: O.rs_loss(lg, d["targets"], d["mask"], d["example_w"], **kw),
    "star_k2": lambda lg, d, **kw: O.star_dss_loss(
        lg, d["targets"], d["mask"], d["w"], ref_logp=d["ref_logp"], **kw
    ),
    "star_k3": lambda lg, d, **kw: O.star_dss_loss(
        lg, d["targets"], d["mask"], d["w"], ref_logp=d["ref_logp"], kl_estimator="k3", **kw
    ),
    "star_full": lambda lg, d, **kw: O.star_dss_loss(
        lg, d["targets"], d["mask"], d["w"], ref_logits=d["ref_logits"], kl_estimator="full", **kw
    ),
    "deep_token": lambda lg, d, **kw: O.deep_token_loss(
        lg, d["targets"], d["mask"], d["ref_logp"], **kw
    ),
    "deep_token_betas": lambda lg, d, **kw: O.deep_token_loss(
        lg, d["targets"], d["mask"], d["ref_logp"], betas=d["betas"], **kw
    ),
    "kl_only_k1": lambda lg, d, **kw: O.kl_only_loss(
        lg, d["targets"], d["mask"], ref_logp=d["ref_logp"], kl_estimator="k1", **kw
    ),
    "kl_only_full": lambda lg, d, **kw: O.kl_only_loss(
        lg, d["targets"], d["mask"], ref_logits=d["ref_logits"], kl_estimator="full", **kw
    ),
}


def run(name, logits, d, normalizer=None):
    """Loss, metrics and d loss / d logits of objective `name` on batch `d`."""
    return value_and_grad(lambda x: OBJECTIVES[name](x, d, normalizer=normalizer), logits)


def test_sft_matches_numpy(data):
    lg, tg = data["logits"], data["targets"]
    loss, metrics, grad = value_and_grad(lambda x: O.sft_loss(x, tg, MASK), lg)
    ce = -label_logp(lg, tg)
    np.testing.assert_allclose(loss, ce[MASK].sum() / N, rtol=1e-6)
    np.testing.assert_allclose(metrics["ce"], ce[MASK].mean(), rtol=1e-6)
    assert int(metrics["n_tokens"]) == N
    np.testing.assert_allclose(grad, logp_grad(lg, tg, -np.ones((B, T))), atol=1e-7)


@pytest.mark.parametrize("est", ["k1", "k2", "k3", "full"])
def test_star_dss_matches_numpy(data, est):
    lg, tg, w, coef = data["logits"], data["targets"], data["w"], 0.7
    ref = {"ref_logits": data["ref_logits"]} if est == "full" else {"ref_logp": data["ref_logp"]}
    loss, metrics, grad = value_and_grad(
        lambda x: O.star_dss_loss(x, tg, MASK, w, kl_coef=coef, kl_estimator=est, **ref), lg
    )
    logp = label_logp(lg, tg)
    d = logp - data["ref_logp"]
    kl = np_full_kl(lg, data["ref_logits"]) if est == "full" else K[est](d)
    per_tok = w * -logp + (1 - w) * coef * kl
    np.testing.assert_allclose(loss, per_tok[MASK].sum() / N, rtol=1e-5)
    np.testing.assert_allclose(metrics["kl"], kl[MASK].mean(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(metrics["ce"], -logp[MASK].mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["star_weight"], w[MASK].mean(), rtol=1e-6)
    if est == "full":
        ref_grad = logp_grad(lg, tg, -w) + full_kl_grad(lg, data["ref_logits"], (1 - w) * coef)
    else:
        ref_grad = logp_grad(lg, tg, -w + (1 - w) * coef * DK[est](d))
    np.testing.assert_allclose(grad, ref_grad, atol=2e-6)


@pytest.mark.parametrize("est", ["k1", "k2", "k3", "full"])
def test_star_dss_weight_one_is_sft_exactly(data, est):
    lg, tg = data["logits"], data["targets"]
    ref = {"ref_logits": data["ref_logits"]} if est == "full" else {"ref_logp": data["ref_logp"]}
    ones = np.ones((B, T), np.float32)
    loss, _, grad = value_and_grad(
        lambda x: O.star_dss_loss(x, tg, MASK, ones, kl_estimator=est, **ref), lg
    )
    sft, _, sft_grad = value_and_grad(lambda x: O.sft_loss(x, tg, MASK), lg)
    np.testing.assert_array_equal(loss, sft)
    np.testing.assert_array_equal(grad, sft_grad)


@pytest.mark.parametrize("est", ["k2", "full"])
def test_star_dss_weight_zero_without_kl_is_zero(data, est):
    ref = {"ref_logits": data["ref_logits"]} if est == "full" else {"ref_logp": data["ref_logp"]}
    zeros = np.zeros((B, T), np.float32)
    loss, _, grad = value_and_grad(
        lambda x: O.star_dss_loss(
            x, data["targets"], MASK, zeros, kl_coef=0.0, kl_estimator=est, **ref
        ),
        data["logits"],
    )
    assert float(loss) == 0.0
    assert not np.any(grad)


def test_k2_gradient_is_d_times_grad_logp(data):
    """d/dtheta (d^2 / 2) = d * d/dtheta log p(y): the reference implementation's estimator."""
    lg, tg = data["logits"], data["targets"]
    _, metrics, grad = value_and_grad(
        lambda x: O.kl_only_loss(x, tg, MASK, ref_logp=data["ref_logp"]), lg
    )
    d = label_logp(lg, tg) - data["ref_logp"]
    np.testing.assert_allclose(grad, logp_grad(lg, tg, d), atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], (d[MASK] ** 2 / 2).mean(), rtol=1e-5)


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_k1_k3_values(data, est):
    lg, tg = data["logits"], data["targets"]
    loss, _ = O.kl_only_loss(lg, tg, MASK, ref_logp=data["ref_logp"], kl_estimator=est)
    d = label_logp(lg, tg) - data["ref_logp"]
    expected = {"k1": d, "k3": np.exp(-d) - 1 + d}[est]
    np.testing.assert_allclose(loss, expected[MASK].mean(), rtol=1e-5)


def test_ref_logp_derived_from_ref_logits(data):
    lg, tg, w = data["logits"], data["targets"], data["w"]
    a = O.star_dss_loss(lg, tg, MASK, w, ref_logp=data["ref_logp"], kl_estimator="k3")[0]
    b = O.star_dss_loss(lg, tg, MASK, w, ref_logits=data["ref_logits"], kl_estimator="k3")[0]
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_full_kl_matches_numpy(data):
    logp, kl = O.logp_and_full_kl(data["logits"], data["ref_logits"], data["targets"])
    expected_kl = np_full_kl(data["logits"], data["ref_logits"])
    np.testing.assert_allclose(kl, expected_kl, rtol=1e-5, atol=1e-6)
    expected_logp = label_logp(data["logits"], data["targets"])
    np.testing.assert_allclose(logp, expected_logp, rtol=1e-6, atol=1e-6)


def _hidden_case(b=2, t=8, e=5, v=V, seed=1):
    """Hidden states of a policy and a reference, linear unembeddings of both, targets."""
    rng = np.random.default_rng(seed)
    hidden, ref_hidden = (jnp.asarray(rng.normal(size=(b, t, e)), jnp.float32) for _ in range(2))
    w, ref_w = (jnp.asarray(rng.normal(size=(e, v)), jnp.float32) for _ in range(2))
    targets = jnp.asarray(rng.integers(0, v, size=(b, t)), jnp.int32)
    return (lambda h: h @ w), (lambda h: h @ ref_w), hidden, ref_hidden, targets


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 256])
def test_hidden_full_kl_chunks_equal_whole_logits(chunk_size):
    """Chunks of 1, gcd(8, 3) = 1, 4 and all 8 positions: the values and the gradient w.r.t. the
    policy's hidden states of `logp_and_full_kl` on whole logits; none reaches the reference."""
    unembed, ref_unembed, hidden, ref_hidden, targets = _hidden_case()

    def total(fn):
        return lambda h, r: sum(x.sum() for x in fn(h, r))

    chunked = lambda h, r: O.hidden_token_terms(unembed, h, targets, (ref_unembed, r), chunk_size)
    whole = lambda h, r: O.logp_and_full_kl(unembed(h), ref_unembed(r), targets)
    for a, b in zip(chunked(hidden, ref_hidden), whole(hidden, ref_hidden)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    (gc, gc_ref), (gw, _) = (jax.grad(total(f), argnums=(0, 1))(hidden, ref_hidden) for f in (chunked, whole))
    np.testing.assert_allclose(gc, gw, rtol=1e-5, atol=1e-6)
    assert not np.any(gc_ref)


@pytest.mark.parametrize("chunk_size", [1, 4, 256])
def test_hidden_label_logp_chunks_equal_whole_logits(chunk_size):
    """Without a reference: the label log-probs and their gradient of `token_logp` on whole logits."""
    unembed, _, hidden, _, targets = _hidden_case()
    logp, kl = O.hidden_token_terms(unembed, hidden, targets, None, chunk_size)
    assert kl is None
    np.testing.assert_allclose(logp, O.token_logp(unembed(hidden), targets), rtol=1e-6, atol=1e-6)
    grads = [jax.grad(lambda h: f(h).sum())(hidden) for f in (
        lambda h: O.hidden_token_terms(unembed, h, targets, None, chunk_size)[0],
        lambda h: O.token_logp(unembed(h), targets))]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_hidden_full_kl_never_holds_whole_logits():
    """Compiled scratch memory of the chunked full-KL gradient stays below ONE [B, T, V] float32
    tensor, where whole logits need two (both models' log-softmaxes)."""
    b, t, v = 2, 64, 1024
    unembed, ref_unembed, hidden, ref_hidden, targets = _hidden_case(b, t, 16, v)

    def temp_bytes(fn):
        step = jax.jit(jax.grad(lambda h, r: sum(x.sum() for x in fn(h, r))))
        return step.lower(hidden, ref_hidden).compile().memory_analysis().temp_size_in_bytes

    one_tensor = b * t * v * 4
    assert temp_bytes(lambda h, r: O.logp_and_full_kl(unembed(h), ref_unembed(r), targets)) >= 2 * one_tensor
    assert temp_bytes(lambda h, r: O.hidden_token_terms(unembed, h, targets, (ref_unembed, r), 8)) < one_tensor


def test_deep_token_matches_numpy(data):
    lg, tg, beta = data["logits"], data["targets"], data["betas"]
    loss, metrics, grad = value_and_grad(
        lambda x: O.deep_token_loss(x, tg, MASK, data["ref_logp"], betas=beta), lg
    )
    d = label_logp(lg, tg) - data["ref_logp"]
    per_tok = -(2 / beta) * -np.logaddexp(0, -beta * d)  # log sigmoid(x) = -log(1 + e^-x)
    np.testing.assert_allclose(loss, per_tok[MASK].sum() / N, rtol=1e-5)
    np.testing.assert_allclose(metrics["log_ratio"], d[MASK].mean(), rtol=1e-5)
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(grad, logp_grad(lg, tg, -2 * sigmoid(-beta * d)), atol=2e-6)


def test_deep_token_at_initialisation_has_sft_gradient(data):
    """With policy == reference, d = 0 and d/dtheta -(2/beta) log sigmoid(beta d)
    = -(2/beta) sigmoid(-beta d) beta grad d = -2 sigmoid(0) grad log p = -grad log p: SFT's
    gradient for every beta; the value is (2/beta) log 2 per token."""
    lg, tg = data["logits"], data["targets"]
    ref_logp = label_logp(lg, tg).astype(np.float32)
    for betas in (None, data["betas"]):
        loss, _, grad = value_and_grad(
            lambda x: O.deep_token_loss(x, tg, MASK, ref_logp, betas=betas), lg
        )
        _, _, sft_grad = value_and_grad(lambda x: O.sft_loss(x, tg, MASK), lg)
        np.testing.assert_allclose(grad, sft_grad, rtol=1e-5, atol=1e-7)
        beta = np.asarray(O.deep_token_betas(MASK)) if betas is None else betas
        np.testing.assert_allclose(loss, (2 / beta[MASK] * np.log(2)).sum() / N, rtol=1e-5)


def test_default_beta_schedule_counts_from_each_rows_first_response_token(data):
    f, e, r = 0.5, 2.0, 0.1
    expected = np.array(
        [
            [r, r, f, e, e, e, e, r],
            [r, r, r, r, r, f, e, e],
            [f, e, e, e, e, r, r, r],
            [r, r, r, r, r, r, r, f],
        ],
        np.float32,
    )
    np.testing.assert_array_equal(O.deep_token_betas(MASK), expected)
    lg, tg, ref = data["logits"], data["targets"], data["ref_logp"]
    default = O.deep_token_loss(lg, tg, MASK, ref)[0]
    np.testing.assert_allclose(default, O.deep_token_loss(lg, tg, MASK, ref, betas=expected)[0])


def test_beta_schedule_is_configurable():
    mask = np.array([[0, 1, 1, 1, 1]], bool)
    betas = O.deep_token_betas(mask, first=1.0, early=3.0, early_end=3, rest=0.2)
    np.testing.assert_allclose(betas, [[0.2, 1.0, 3.0, 3.0, 0.2]])


def test_rs_hard_and_soft_weights(data):
    lg, tg = data["logits"], data["targets"]
    hard = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    keep = MASK & (hard[:, None] > 0)
    loss, metrics, grad = value_and_grad(lambda x: O.rs_loss(x, tg, MASK, hard), lg)
    # hard 0/1: SFT on the kept examples, still normalised by all response tokens
    sft, _, sft_grad = value_and_grad(lambda x: O.sft_loss(x, tg, keep, normalizer=N), lg)
    np.testing.assert_allclose(loss, sft, rtol=1e-6)
    np.testing.assert_allclose(grad, sft_grad, atol=1e-8)
    np.testing.assert_allclose(metrics["example_weight"], keep.sum() / N, rtol=1e-6)

    soft = data["example_w"]
    loss, _, grad = value_and_grad(lambda x: O.rs_loss(x, tg, MASK, soft), lg)
    wt = np.broadcast_to(soft[:, None], (B, T))
    np.testing.assert_allclose(loss, (wt * -label_logp(lg, tg))[MASK].sum() / N, rtol=1e-6)
    np.testing.assert_allclose(grad, logp_grad(lg, tg, -wt), atol=1e-7)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_micro_batches_with_global_normalizer_sum_to_one_batch(data, name):
    """4 micro-batches of one row (3, 6, 6 and 1 response tokens), each normalised by the global
    count, summed: loss, gradient and metrics of the whole batch."""
    loss, metrics, grad = run(name, data["logits"], data)
    micro = [{k: v[i : i + 1] for k, v in data.items()} for i in range(B)]
    parts = [run(name, d["logits"], d, normalizer=N) for d in micro]
    np.testing.assert_allclose(sum(p[0] for p in parts), loss, rtol=1e-6)
    np.testing.assert_allclose(np.concatenate([p[2] for p in parts]), grad, rtol=1e-5, atol=1e-8)
    for key in metrics:
        summed = sum(p[1][key] for p in parts)
        np.testing.assert_allclose(summed, metrics[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_masked_out_tokens_have_no_effect(data, name):
    """Prompt and padding positions may hold anything: other logits, padding targets (-100),
    NaN weights and reference log-probs, zero betas."""
    rng = np.random.default_rng(2)
    out = ~MASK
    junk = {k: v.copy() for k, v in data.items()}
    junk["logits"][out] = rng.normal(size=(out.sum(), V)) * 5
    junk["ref_logits"][out] = rng.normal(size=(out.sum(), V)) * 5
    junk["targets"][out] = -100
    junk["w"][out] = np.nan
    junk["ref_logp"][out] = np.nan
    junk["betas"][out] = 0.0
    loss, metrics, grad = run(name, data["logits"], data)
    jloss, jmetrics, jgrad = run(name, junk["logits"], junk)
    np.testing.assert_allclose(jloss, loss, rtol=1e-6)
    for key in metrics:
        np.testing.assert_allclose(jmetrics[key], metrics[key], rtol=1e-6)
    np.testing.assert_allclose(jgrad, grad, rtol=1e-5, atol=1e-8)
    assert not np.any(jgrad[out])


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_no_response_tokens_gives_zero_loss(data, name):
    empty = dict(data, mask=np.zeros((B, T), bool))
    loss, metrics, grad = run(name, data["logits"], empty)
    assert float(loss) == 0.0 and int(metrics["n_tokens"]) == 0
    assert not np.any(grad)


@pytest.mark.parametrize("name", ["star_k2", "deep_token"])
def test_jit_matches_eager(data, name):
    eager = value_and_grad(lambda x: OBJECTIVES[name](x, data), data["logits"])
    fn = jax.jit(jax.value_and_grad(lambda x: OBJECTIVES[name](x, data), has_aux=True))
    (loss, _), grad = fn(data["logits"])
    np.testing.assert_allclose(loss, eager[0], rtol=1e-6)
    np.testing.assert_allclose(grad, eager[2], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["sft", "star_k2", "star_full", "deep_token"])
def test_bfloat16_logits_close_to_float32(data, name):
    lg16 = jnp.asarray(data["logits"], jnp.bfloat16)
    d16 = dict(data, ref_logits=jnp.asarray(data["ref_logits"], jnp.bfloat16))
    # the float32 reference sees the same (rounded) numbers, so only the arithmetic differs
    d32 = dict(data, ref_logits=np.asarray(d16["ref_logits"], np.float32))
    loss, _, grad = run(name, lg16, d16)
    loss32, _, grad32 = run(name, np.asarray(lg16, np.float32), d32)
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(loss, loss32, rtol=1e-5)
    np.testing.assert_allclose(grad.astype(np.float32), grad32, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize(
    "name", ["star_k2", "star_full", "kl_only_full", "deep_token", "kl_only_k1"]
)
def test_reference_inputs_get_no_gradient(data, name):
    """The reference is frozen: its log-probs and logits are constants of the loss."""
    grads = jax.grad(lambda ref: OBJECTIVES[name](data["logits"], dict(data, **ref))[0])(
        {"ref_logp": jnp.asarray(data["ref_logp"]), "ref_logits": jnp.asarray(data["ref_logits"])}
    )
    assert not np.any(grads["ref_logp"]) and not np.any(grads["ref_logits"])


def test_missing_reference_inputs_and_unknown_estimator(data):
    lg, tg, w = data["logits"], data["targets"], data["w"]
    with pytest.raises(ValueError, match="kl_estimator='k2' needs ref_logp"):
        O.star_dss_loss(lg, tg, MASK, w)
    with pytest.raises(ValueError, match="kl_estimator='full' needs ref_logits"):
        O.star_dss_loss(lg, tg, MASK, w, ref_logp=data["ref_logp"], kl_estimator="full")
    with pytest.raises(ValueError, match="unknown kl_estimator 'k4'"):
        O.star_dss_loss(lg, tg, MASK, w, ref_logp=data["ref_logp"], kl_estimator="k4")
    with pytest.raises(ValueError, match="kl_estimator='k3' needs ref_logp"):
        O.kl_only_loss(lg, tg, MASK, kl_estimator="k3")
    with pytest.raises(ValueError, match="deep_token_loss needs ref_logp"):
        O.deep_token_loss(lg, tg, MASK, None)
