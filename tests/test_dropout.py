"""Tests of the dropout transforms (jaxnorm/dropout.py) and the Flax dropout layers (jaxnorm/nn.py).

Statistical checks use fixed keys and 10^6 units with 3σ bands (σ from the sampling law of the estimator), so they
are deterministic; a correct implementation passes each with ~99.7% prior probability. Inputs are made with NumPy and
shared between tests (few distinct shapes), because on CPU the run time is dominated by XLA compilations.
"""

from __future__ import annotations

import math
import re

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxnorm
from jaxnorm import nn as jnn

N = 1_000_000
K = jax.random.key(0)

_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
ALPHA_PRIME = -_SELU_SCALE * _SELU_ALPHA  # SELU saturation value α' = −λα


def _np_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _selu_np(z):
    z = np.asarray(z, np.float64)
    return _SELU_SCALE * np.where(z > 0, z, _SELU_ALPHA * np.expm1(np.minimum(z, 0)))


X_NP = _np_normal(1, (8, 6, 5, 16))  # the shared N×H×W×C input; no zeros
X = jnp.asarray(X_NP)
ONES_X = jnp.asarray(np.ones(X.shape, np.float32))
ONES_N = jnp.asarray(np.ones((N,), np.float32))


def _kept(y):
    return np.asarray(y) != 0


def _eq(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------------------------------
# dropout: masks are a function of the key


def test_same_key_same_mask_and_mask_independent_of_values():
    a = jaxnorm.dropout(X, 0.5, key=K)
    _eq(a, jaxnorm.dropout(X, 0.5, key=K))
    # the mask depends on the key (and shape, rate) only, not on the values of x
    other = jnp.asarray(_np_normal(2, X.shape))
    _eq(_kept(a), _kept(jaxnorm.dropout(other, 0.5, key=K)))


def test_different_keys_different_masks():
    p = 0.5
    m0 = _kept(jaxnorm.dropout(ONES_X, p, key=jax.random.key(0)))
    m1 = _kept(jaxnorm.dropout(ONES_X, p, key=jax.random.key(1)))
    assert not np.array_equal(m0, m1)
    # independent masks disagree on a fraction 2p(1−p) of the units
    q = 2 * p * (1 - p)
    assert abs(np.mean(m0 != m1) - q) <= 3 * math.sqrt(q * (1 - q) / m0.size)


# ---------------------------------------------------------------------------------------------------------------------
# dropout: statistics and exact values


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_kept_fraction_within_3_sigma(rate):
    keep = 1.0 - rate
    kept = _kept(jaxnorm.dropout(ONES_N, rate, key=jax.random.key(11)))
    sigma = math.sqrt(keep * (1 - keep) / N)
    assert abs(kept.mean() - keep) <= 3 * sigma, (kept.mean(), keep, sigma)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_expectation_preserved(rate):
    c = 2.5
    keep = 1.0 - rate
    x = jnp.asarray(np.full((N,), c, np.float32))
    y = np.asarray(jaxnorm.dropout(x, rate, key=jax.random.key(12)), np.float64)
    # y = c ξ / keep has Var = c² rate / keep, so the mean of N units has σ = c sqrt(rate / (keep N))
    sigma = c * math.sqrt(rate / (keep * N))
    assert abs(y.mean() - c) <= 3 * sigma, (y.mean(), c, sigma)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.7])
def test_kept_units_scaled_dropped_units_exactly_zero(rate):
    y = np.asarray(jaxnorm.dropout(X, rate, key=K))
    kept = y != 0  # X has no zeros, so y == 0 exactly where dropped
    assert 0 < kept.sum() < y.size
    assert np.all(y[~kept] == 0.0)
    # kept: x / (1 − rate) to float32 rounding
    np.testing.assert_allclose(y[kept], X_NP.astype(np.float64)[kept] / (1.0 - rate), rtol=3e-7, atol=0)


def test_rate_half_doubles_exactly():
    y = np.asarray(jaxnorm.dropout(X, 0.5, key=K))
    kept = y != 0
    _eq(y[kept], 2 * X_NP[kept])


@pytest.mark.parametrize("rate", [0.9, 0.99, 0.999, 0.9999])
def test_kept_scale_precise_for_large_rates(rate):
    """Kept units must equal x / (1 − rate) to float32 rounding (≤ ~2 ulp) for every rate.

    Computing keep = 1 − float32(rate) in float32 would turn the float32 rounding error of `rate` (up to 3e-8
    absolute) into a relative error ~3e-8/keep of the scale 1/keep: 1e-6 at 0.99, 1.3e-5 at 0.999, 1.7e-4 at 0.9999;
    dropouts.py computes keep in float64 from the Python rate, as flax.linen.Dropout does.
    """
    y = np.asarray(jaxnorm.dropout(ONES_N, rate, key=jax.random.key(5)))
    kept = y[y != 0]
    assert kept.size > 0
    np.testing.assert_allclose(kept, 1.0 / (1.0 - rate), rtol=3e-7, atol=0)


# ---------------------------------------------------------------------------------------------------------------------
# dropout: rate 0, rate 1, test mode


def test_rate_zero_is_identity_even_in_train_mode_without_key():
    _eq(jaxnorm.dropout(X, 0.0, train=True), X)  # static 0: no key needed
    _eq(jaxnorm.dropout(X, 0.0, key=K, train=True), X)
    # a traced rate of 0 (no static short-cut): keep = 1 keeps every unit, scale 1
    _eq(jax.jit(lambda x, r, k: jaxnorm.dropout(x, r, key=k))(X, 0.0, K), X)


def test_rate_one_gives_zeros_and_finite_zero_gradient():
    _eq(jaxnorm.dropout(X, 1.0, key=K), 0.0)
    g = jax.grad(lambda x: jnp.sum(jaxnorm.dropout(x, 1.0, key=K)))(X)
    assert np.all(np.isfinite(np.asarray(g)))
    _eq(g, 0.0)
    # the same with the rate traced under jit (no static short-cut; 1/keep must not become inf·0)
    f = jax.jit(jax.value_and_grad(lambda x, r: jnp.sum(jaxnorm.dropout(x, r, key=K))))
    v, g = f(X, 1.0)
    assert float(v) == 0.0
    assert np.all(np.isfinite(np.asarray(g)))
    _eq(g, 0.0)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_test_mode_is_identity_and_needs_no_key(rate):
    assert jaxnorm.dropout(X, rate, train=False) is X
    _eq(jaxnorm.dropout(X, rate, key=K, train=False), X)


# ---------------------------------------------------------------------------------------------------------------------
# dropout: broadcast_dims, jit, vmap, grad


def test_broadcast_dims_share_the_mask():
    m = _kept(jaxnorm.dropout(X, 0.5, key=K, broadcast_dims=(1,)))
    _eq(m, np.broadcast_to(m[:, :1], m.shape))
    # the mask still varies along the other axes
    first = m[:, 0]
    assert 0 < first.mean() < 1
    assert not np.all(first == first[:1]) and not np.all(first == first[:, :1]) and not np.all(first == first[..., :1])
    # a negative axis addresses the same dimension and gives the same output
    _eq(jaxnorm.dropout(X, 0.5, key=K, broadcast_dims=(-3,)), jaxnorm.dropout(X, 0.5, key=K, broadcast_dims=(1,)))
    # several axes
    m2 = _kept(jaxnorm.dropout(X, 0.5, key=K, broadcast_dims=(1, 2)))
    _eq(m2, np.broadcast_to(m2[:, :1, :1], m2.shape))


def test_jit_matches_eager():
    eager = jaxnorm.dropout(X, 0.3, key=K)
    _eq(jax.jit(lambda x, k: jaxnorm.dropout(x, 0.3, key=k))(X, K), eager)
    # rate traced as an argument: same mask, same values to rounding
    traced = jax.jit(lambda x, r, k: jaxnorm.dropout(x, r, key=k))(X, 0.3, K)
    _eq(_kept(traced), _kept(eager))
    np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=1e-6)


def test_vmap_over_a_batch_of_keys():
    keys = jax.random.split(K, 4)
    ys = jax.vmap(lambda k: jaxnorm.dropout(X, 0.5, key=k))(keys)
    assert ys.shape == (4,) + X.shape
    for i in range(4):
        _eq(ys[i], jaxnorm.dropout(X, 0.5, key=keys[i]))
    assert len({m.tobytes() for m in _kept(ys)}) == 4  # every key its own mask


def test_grad_is_the_scaled_mask():
    rate = 0.4
    g = jax.grad(lambda x: jnp.sum(jaxnorm.dropout(x, rate, key=K)))(X)
    expected = _kept(jaxnorm.dropout(X, rate, key=K)) / (1 - rate)
    np.testing.assert_allclose(np.asarray(g), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: jaxnorm.dropout(x, 0.3, key=K),
        lambda x: jaxnorm.spatial_dropout(x, 0.3, key=K),
        lambda x: jaxnorm.gaussian_dropout(x, 0.3, key=K),
        lambda x: jaxnorm.alpha_dropout(x, 0.3, key=K),
    ],
    ids=["dropout", "spatial", "gaussian", "alpha"],
)
def test_check_grads_fixed_key(fn):
    # for a fixed key these maps are linear (affine) in x, so a large finite-difference step is exact up to
    # rounding; the default eps = 1e-4 drowns float32 differences in rounding noise (~5e-3 relative)
    check_grads(fn, (X,), order=1, modes=("rev", "fwd"), eps=1e-2)


# ---------------------------------------------------------------------------------------------------------------------
# spatial dropout


def test_spatial_dropout_one_mask_per_example_and_channel():
    y = jaxnorm.spatial_dropout(X, 0.5, key=K)
    m = _kept(y)
    _eq(m, np.broadcast_to(m[:, :1, :1, :], m.shape))
    per = m[:, 0, 0, :]
    assert not np.all(per == per[:1]) and not np.all(per == per[:, :1])  # varies over examples and channels
    _eq(np.asarray(y)[m], 2.0 * X_NP[m])
    # it is dropout with the spatial axes broadcast, same key → same output
    _eq(y, jaxnorm.dropout(X, 0.5, key=K, broadcast_dims=(1, 2)))
    # rank 3 (N×L×C)
    m3 = _kept(jaxnorm.spatial_dropout(X.reshape(8, 30, 16), 0.5, key=K))
    _eq(m3, np.broadcast_to(m3[:, :1], m3.shape))
    # test mode
    assert jaxnorm.spatial_dropout(X, 0.5, train=False) is X


def test_spatial_kept_fraction_of_channels():
    rate = 0.3
    n_ex, n_ch = 1000, 1000  # 10^6 (example, channel) pairs, 2 spatial positions each
    x = jnp.asarray(np.ones((n_ex, 2, 1, n_ch), np.float32))
    m = _kept(jaxnorm.spatial_dropout(x, rate, key=jax.random.key(15)))
    _eq(m[:, 0], m[:, 1])
    keep = 1 - rate
    assert abs(m[:, 0].mean() - keep) <= 3 * math.sqrt(keep * rate / (n_ex * n_ch))


# ---------------------------------------------------------------------------------------------------------------------
# DropConnect

W_NP = _np_normal(17, (16, 8))
W = jnp.asarray(W_NP)
XW_NP = _np_normal(18, (4, 16))


def test_dropconnect_masks_weights_elementwise():
    wd = np.asarray(jaxnorm.dropconnect(W, 0.4, key=K))
    m = wd != 0
    assert 0.45 < m.mean() < 0.75
    assert not np.all(m == m[:1]) and not np.all(m == m[:, :1])  # individual weights, not rows or columns
    np.testing.assert_allclose(wd[m], W_NP[m] / 0.6, rtol=3e-7)
    _eq(jaxnorm.dropconnect(W, 0.4, key=K), jaxnorm.dropout(W, 0.4, key=K))
    assert jaxnorm.dropconnect(W, 0.4, train=False) is W
    assert jaxnorm.dropconnect(W, 0.0, train=True) is W


def test_dropconnect_unbiased_over_keys():
    rate, n_keys = 0.4, 20_000
    keep = 1 - rate
    x = jnp.asarray(XW_NP)
    keys = jax.random.split(jax.random.key(20), n_keys)
    ys = jax.jit(jax.vmap(lambda k: x @ jaxnorm.dropconnect(W, rate, key=k)))(keys)
    mean = np.asarray(ys, np.float64).mean(0)
    x64, w64 = XW_NP.astype(np.float64), W_NP.astype(np.float64)
    target = x64 @ w64
    var = (x64**2) @ (w64**2) * rate / keep  # Var[(x @ W̃)_bj] = Σ_i x_bi² W_ij² · rate/keep
    # 32 entries: 4σ keeps the family-wise false-alarm rate ≈ 0.2%
    z = np.abs(mean - target) / np.sqrt(var / n_keys)
    assert np.all(z <= 4), z.max()


# ---------------------------------------------------------------------------------------------------------------------
# Gaussian dropout


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5, 0.8])
def test_gaussian_noise_mean_one_variance_rate_over_keep(rate):
    v = rate / (1 - rate)
    noise = np.asarray(jaxnorm.gaussian_dropout(ONES_N, rate, key=jax.random.key(21)), np.float64)
    assert abs(noise.mean() - 1.0) <= 3 * math.sqrt(v / N)
    # the sample variance of N normals has standard error v·sqrt(2/(N−1))
    assert abs(noise.var(ddof=1) - v) <= 3 * v * math.sqrt(2 / (N - 1)), (noise.var(ddof=1), v)


def test_gaussian_dropout_multiplies_and_test_identity():
    y = jaxnorm.gaussian_dropout(X, 0.5, key=K)
    noise = jaxnorm.gaussian_dropout(ONES_X, 0.5, key=K)  # same key, same shape → same ξ
    np.testing.assert_allclose(np.asarray(y), X_NP * np.asarray(noise), rtol=1e-6)
    assert jaxnorm.gaussian_dropout(X, 0.5, train=False) is X
    assert jaxnorm.gaussian_dropout(X, 0.0, train=True) is X


# ---------------------------------------------------------------------------------------------------------------------
# alpha dropout


def _alpha_affine(rate):
    q = 1.0 - rate
    a = (q + ALPHA_PRIME**2 * q * (1 - q)) ** -0.5
    b = -a * (1 - q) * ALPHA_PRIME
    return a, b


SELU_N = _selu_np(_np_normal(23, (N,)))  # the SELU fixed point: mean ≈ 0, var ≈ 1


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_alpha_dropout_keeps_zero_mean_unit_variance(rate):
    xs = SELU_N
    assert abs(xs.mean()) < 0.01 and abs(xs.var() - 1) < 0.01
    y = np.asarray(jaxnorm.alpha_dropout(jnp.asarray(xs, jnp.float32), rate, key=jax.random.key(24)), np.float64)
    assert abs(y.mean()) < 0.02, y.mean()
    assert abs(y.var() - 1.0) < 0.02, y.var()
    # each unit is either kept (a·x + b) or dropped (a·α' + b), dropped on a fraction `rate`
    a, b = _alpha_affine(rate)
    is_dropped = np.abs(y - (a * ALPHA_PRIME + b)) < 1e-5
    is_kept = np.abs(y - (a * xs + b)) < 1e-5 * (1 + np.abs(xs))
    assert np.all(is_dropped | is_kept)
    assert not np.any(is_dropped & is_kept)  # selu(z) > α' + 0.01 here, so the two cases are distinguishable
    assert abs(is_dropped.mean() - rate) <= 3 * math.sqrt(rate * (1 - rate) / N)


def test_alpha_dropout_test_mode_identity_and_rate_limits():
    assert jaxnorm.alpha_dropout(X, 0.5, train=False) is X
    assert jaxnorm.alpha_dropout(X, 0.0, train=True) is X
    _eq(jaxnorm.alpha_dropout(X, 1.0, key=K), 0.0)
    g = jax.grad(lambda x: jnp.sum(jaxnorm.alpha_dropout(x, 1.0, key=K)))(X)
    assert np.all(np.isfinite(np.asarray(g)))


def test_alpha_dropout_traced_rate_matches_eager():
    eager = jaxnorm.alpha_dropout(X, 0.2, key=K)
    f = jax.jit(lambda x, r: jaxnorm.alpha_dropout(x, r, key=K))
    np.testing.assert_allclose(np.asarray(f(X, 0.2)), np.asarray(eager), rtol=1e-6, atol=1e-6)


def test_alpha_dropout_traced_rate_one_matches_eager():
    """Under jit with the rate traced, rate 1 must still give the documented zeros (as the eager path does).

    The naive formula gives NaN there: with q = 0, a = (0 + 0)^(−1/2) = inf and a·α' + b = −inf + inf for every
    unit; alpha_dropout selects the zeros for a traced rate of 1.
    """
    y = jax.jit(lambda x, r: jaxnorm.alpha_dropout(x, r, key=K))(X, 1.0)
    assert np.all(np.isfinite(np.asarray(y)))
    _eq(y, jaxnorm.alpha_dropout(X, 1.0, key=K))


# ---------------------------------------------------------------------------------------------------------------------
# Srivastava et al. 2014: inverted dropout ≡ the original form (ξ ⊙ x at train, weights scaled by keep at test)
#
# For a linear layer W after dropout, inverted dropout computes W(ξ⊙x)/keep at train and Wx at test. The original
# form with weights W' = W/keep computes W'(ξ⊙x) = W(ξ⊙x)/keep at train — the same number for every mask ξ — and
# (keep·W')x = Wx at test. SGD on W' with learning rate η/keep² moves keep·W' exactly as SGD with rate η moves W
# (∂L/∂W' = keep·∂L/∂W), so the two trained networks give the same test predictions.

P_IN, P_H = 0.2, 0.5
KEEP_IN, KEEP_H = 1 - P_IN, 1 - P_H


def _xi_times(x, rate, key):
    """ξ ⊙ x without scaling, ξ exactly the mask jaxnorm.dropout draws for this key (read off a ones input)."""
    xi = jaxnorm.dropout(jnp.ones_like(x), rate, key=key) != 0
    return jnp.where(xi, x, 0.0)


def _mlp_inverted(p, x, key, train):
    k1, k2 = jax.random.split(key) if train else (None, None)
    h = jaxnorm.dropout(x, P_IN, key=k1, train=train)
    h = jax.nn.relu(h @ p["W1"] + p["b1"])
    h = jaxnorm.dropout(h, P_H, key=k2, train=train)
    return h @ p["W2"] + p["b2"]


def _mlp_original(p, x, key, train):
    if train:
        k1, k2 = jax.random.split(key)
        h = jax.nn.relu(_xi_times(x, P_IN, k1) @ p["W1"] + p["b1"])
        return _xi_times(h, P_H, k2) @ p["W2"] + p["b2"]
    h = jax.nn.relu(x @ (KEEP_IN * p["W1"]) + p["b1"])
    return h @ (KEEP_H * p["W2"]) + p["b2"]


def _to_original(p):
    return {"W1": p["W1"] / KEEP_IN, "b1": p["b1"], "W2": p["W2"] / KEEP_H, "b2": p["b2"]}


def test_inverted_and_original_dropout_same_network_before_and_after_training():
    d_in, d_h, d_out = 10, 32, 3
    x = jnp.asarray(_np_normal(33, (128, d_in)))
    t = jnp.asarray(np.tanh(_np_normal(33, (128, d_in)) @ _np_normal(34, (d_in, d_out))))
    p0 = {
        "W1": jnp.asarray(_np_normal(30, (d_in, d_h)) / math.sqrt(d_in)),
        "b1": jnp.zeros((d_h,)),
        "W2": jnp.asarray(_np_normal(31, (d_h, d_out)) / math.sqrt(d_h)),
        "b2": jnp.zeros((d_out,)),
    }
    eta = 0.05
    lr_orig = {"W1": eta / KEEP_IN**2, "b1": eta, "W2": eta / KEEP_H**2, "b2": eta}

    @jax.jit
    def both(p, po, key):
        """Train outputs (same mask), test outputs, and one SGD step of each form."""
        loss_i = lambda p: jnp.mean((_mlp_inverted(p, x, key, True) - t) ** 2)  # noqa: E731
        loss_o = lambda p: jnp.mean((_mlp_original(p, x, key, True) - t) ** 2)  # noqa: E731
        out = (
            _mlp_inverted(p, x, key, True),
            _mlp_original(po, x, key, True),
            _mlp_inverted(p, x, None, False),
            _mlp_original(po, x, None, False),
        )
        g, go = jax.grad(loss_i)(p), jax.grad(loss_o)(po)
        p = {n: p[n] - eta * g[n] for n in p}
        po = {n: po[n] - lr_orig[n] * go[n] for n in po}
        return out, p, po

    p, po = p0, _to_original(p0)
    for i, k in enumerate(jax.random.split(jax.random.key(35), 40)):
        (tr_i, tr_o, te_i, te_o), p, po = both(p, po, k)
        if i in (0, 39):
            # train time: identical for this mask; test time: identity vs weights scaled by keep, identical
            np.testing.assert_allclose(np.asarray(tr_o), np.asarray(tr_i), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.asarray(te_o), np.asarray(te_i), rtol=1e-4, atol=1e-5)
            assert not np.allclose(np.asarray(tr_i), np.asarray(te_i), atol=1e-3)  # dropout did act
    # training did something, and W = keep·W' throughout
    test_loss = lambda p: float(jnp.mean((_mlp_inverted(p, x, None, False) - t) ** 2))  # noqa: E731
    assert test_loss(p) < 0.9 * test_loss(p0)
    np.testing.assert_allclose(np.asarray(p["W1"]), np.asarray(KEEP_IN * po["W1"]), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(p["W2"]), np.asarray(KEEP_H * po["W2"]), rtol=1e-4, atol=1e-5)


def test_weight_scaling_rule_is_the_mask_average_for_a_linear_layer():
    """E_ξ[W(ξ⊙h)/keep] = W h: the test-time output of a linear layer after dropout is the average over masks."""
    h64 = np.maximum(XW_NP, 0).astype(np.float64)  # 4×16, ReLU features
    h = jnp.asarray(h64, jnp.float32)
    n_keys = 20_000
    keys = jax.random.split(jax.random.key(38), n_keys)
    outs = np.asarray(jax.jit(jax.vmap(lambda k: jaxnorm.dropout(h, P_H, key=k) @ W))(keys), np.float64)
    target = np.asarray(jaxnorm.dropout(h, P_H, train=False), np.float64) @ W_NP.astype(np.float64)
    var = (h64**2) @ (W_NP.astype(np.float64) ** 2) * P_H / KEEP_H
    z = np.abs(outs.mean(0) - target) / np.maximum(np.sqrt(var / n_keys), 1e-12)
    assert np.all(z <= 4), z.max()


# ---------------------------------------------------------------------------------------------------------------------
# bad input: ValueError naming the value and the fix

_FNS = ["dropout", "spatial_dropout", "dropconnect", "gaussian_dropout", "alpha_dropout"]


@pytest.mark.parametrize("name", _FNS)
@pytest.mark.parametrize("rate, shown", [(-0.1, r"-0\.1"), (1.5, r"1\.5"), (float("nan"), "nan")])
def test_bad_rate_raises(name, rate, shown):
    """Every function rejects rates outside [0, 1], naming itself (spatial_dropout too, though it delegates to
    dropout), the range and the value."""
    with pytest.raises(ValueError, match=rf"^{name}: rate must be in \[0, 1\].*got {shown}"):
        getattr(jaxnorm, name)(ONES_X, rate, key=K)


@pytest.mark.parametrize("name", _FNS)
def test_bad_rate_raises_even_in_test_mode(name):
    with pytest.raises(ValueError, match=r"got 1\.5"):
        getattr(jaxnorm, name)(ONES_X, 1.5, train=False)


@pytest.mark.parametrize("name", _FNS)
def test_train_without_key_raises(name):
    """The message names the function called (spatial_dropout, not the dropout it delegates to)."""
    with pytest.raises(ValueError, match=rf"^{name}: train=True needs a PRNG key: pass key=jax\.random\.key"):
        getattr(jaxnorm, name)(ONES_X, 0.5, train=True)


def test_gaussian_rate_one_raises_naming_the_value():
    """The message should name the value given ("got 1.0"), as every other rate error does.

    The message is "gaussian_dropout: rate must be < 1 (the noise variance rate/(1 − rate) is infinite at 1), got
    1.0; use a rate in [0, 1), e.g. 0.5".
    """
    with pytest.raises(ValueError, match=r"^gaussian_dropout: rate must be < 1"):
        jaxnorm.gaussian_dropout(ONES_X, 1.0, key=K)
    with pytest.raises(ValueError, match=r"^gaussian_dropout: rate must be < 1.*got 1\.0"):
        jaxnorm.gaussian_dropout(ONES_X, 1.0, key=K)


@pytest.mark.parametrize("shape", [(4, 3), (5,)])
def test_spatial_dropout_rank_error(shape):
    msg = (
        r"spatial_dropout: expected N×spatial…×C \(rank >= 3\), "
        rf"got shape {re.escape(str(shape))}; for N×C use dropout"
    )
    with pytest.raises(ValueError, match=msg):
        jaxnorm.spatial_dropout(jnp.asarray(np.ones(shape, np.float32)), 0.5, key=K)


@pytest.mark.parametrize("c, shown", [(0.0, r"0\.0"), (-1.0, r"-1\.0"), (float("nan"), "nan")])
def test_max_norm_bad_c(c, shown):
    with pytest.raises(ValueError, match=rf"max_norm: c must be > 0, got {shown}"):
        jaxnorm.max_norm(c)
    with pytest.raises(ValueError, match=rf"max_norm: c must be > 0, got {shown}"):
        jaxnorm.max_norm_project({"w": W}, c)


def test_max_norm_update_without_params_raises():
    params = {"w": W}
    tx = jaxnorm.max_norm(3.0)
    with pytest.raises(ValueError, match=r"^max_norm: update\(updates, state, params\) needs params .*weights$"):
        tx.update(params, tx.init(params))
    chained = optax.chain(optax.sgd(1.0), jaxnorm.max_norm(3.0))
    with pytest.raises(ValueError, match=r"needs params"):
        chained.update(params, chained.init(params))


# ---------------------------------------------------------------------------------------------------------------------
# max-norm

C = 2.5  # not the default c = 3, so that a projection ignoring its c fails


def _col_norms(w):
    w = np.asarray(w, np.float64)
    return np.sqrt(np.sum(w**2, axis=tuple(range(w.ndim - 1))))


def _max_norm_params():
    dense = _np_normal(40, (20, 6))
    dense[:, :3] *= 5.0  # columns 0–2 far above c = 3
    dense[:, 3:] *= 0.3  # columns 3–5 below
    conv = _np_normal(41, (3, 3, 4, 5))
    conv[..., 0] *= 0.1  # one filter below c, the others above
    return {
        "dense": {"kernel": jnp.asarray(dense), "bias": jnp.asarray(np.full((6,), 10.0, np.float32))},
        "conv": {"kernel": jnp.asarray(conv), "bias": jnp.asarray(np.full((5,), -10.0, np.float32))},
        "norm": {"scale": jnp.asarray(np.full((6,), 7.0, np.float32))},
    }


def test_max_norm_project():
    params = _max_norm_params()
    before = {n: _col_norms(params[n]["kernel"]) for n in ("dense", "conv")}
    for n in before:
        assert np.any(before[n] > C) and np.any(before[n] < C)
    out = jaxnorm.max_norm_project(params, C)
    for n in ("dense", "conv"):
        w0, w1 = np.asarray(params[n]["kernel"]), np.asarray(out[n]["kernel"])
        after = _col_norms(w1)
        assert np.all(after <= C * (1 + 1e-6))
        small = before[n] < C
        _eq(w1[..., small], w0[..., small])  # columns already inside the ball: untouched
        np.testing.assert_allclose(after[~small], C, rtol=1e-6)  # the others: onto the sphere …
        np.testing.assert_allclose(w1[..., ~small], w0[..., ~small] * (C / before[n][~small]), rtol=1e-5)  # … radially
        _eq(out[n]["bias"], params[n]["bias"])
    _eq(out["norm"]["scale"], params["norm"]["scale"])


def test_max_norm_optax_chain_under_jit():
    params = _max_norm_params()
    grads = jax.tree.map(lambda p: jnp.asarray(-2.0 * np.sign(np.asarray(p))), params)  # sgd(1.0) grows every weight
    tx = optax.chain(optax.sgd(1.0), jaxnorm.max_norm(C))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    new, state = step(params, state)
    unconstrained = jax.tree.map(lambda p, g: np.asarray(p) - np.asarray(g), params, grads)
    for n in ("dense", "conv"):
        norms = _col_norms(new[n]["kernel"])
        assert np.all(norms <= C * (1 + 1e-5)), norms.max()
        w = unconstrained[n]["kernel"]
        np.testing.assert_allclose(
            np.asarray(new[n]["kernel"]), w * np.minimum(1.0, C / _col_norms(w)), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(np.asarray(new[n]["bias"]), unconstrained[n]["bias"], rtol=1e-6)  # plain step
    _eq(new["norm"]["scale"], unconstrained["norm"]["scale"])
    for _ in range(3):  # further steps keep the constraint
        new, state = step(new, state)
        assert np.all(_col_norms(new["dense"]["kernel"]) <= C * (1 + 1e-5))


# ---------------------------------------------------------------------------------------------------------------------
# Flax layers


class _KeyProbe(fnn.Module):
    """Returns the key that the first make_rng('dropout') of a top-level module gets."""

    @fnn.compact
    def __call__(self):
        return self.make_rng("dropout")


def _derived_key(rng):
    return _KeyProbe().apply({}, rngs={"dropout": rng})


_LAYERS = [
    (jnn.Dropout(0.3), lambda x, k: jaxnorm.dropout(x, 0.3, key=k)),
    (jnn.Dropout(0.3, broadcast_dims=(1, 2)), lambda x, k: jaxnorm.dropout(x, 0.3, key=k, broadcast_dims=(1, 2))),
    (jnn.SpatialDropout(0.3), lambda x, k: jaxnorm.spatial_dropout(x, 0.3, key=k)),
    (jnn.GaussianDropout(0.3), lambda x, k: jaxnorm.gaussian_dropout(x, 0.3, key=k)),
    (jnn.AlphaDropout(0.3), lambda x, k: jaxnorm.alpha_dropout(x, 0.3, key=k)),
]


@pytest.mark.parametrize("layer, fn", _LAYERS, ids=["Dropout", "Dropout_bcast", "Spatial", "Gaussian", "Alpha"])
def test_layer_equals_pure_function_with_flax_derived_key(layer, fn):
    rng = jax.random.key(51)
    y = layer.apply({}, X, train=True, rngs={"dropout": rng})
    _eq(y, fn(X, _derived_key(rng)))
    assert not np.array_equal(np.asarray(y), X_NP)
    # test mode: identity, no rngs needed
    assert layer.apply({}, X, train=False) is X


def test_layer_under_jit():
    layer = jnn.Dropout(0.3)
    rng = jax.random.key(51)
    f = jax.jit(lambda x, r: layer.apply({}, x, train=True, rngs={"dropout": r}))
    _eq(f(X, rng), layer.apply({}, X, train=True, rngs={"dropout": rng}))
    _eq(jax.jit(lambda x: layer.apply({}, x, train=False))(X), X)


@pytest.mark.parametrize(
    "rate, bdims", [(0.1, ()), (0.3, ()), (0.5, ()), (0.7, ()), (0.9, ()), (0.5, (0,)), (0.3, (1, 2))]
)
def test_layer_dropout_equals_flax_linen_dropout(rate, bdims):
    """Same module path and rngs → the same mask and the same kept values as flax.linen.Dropout.

    The kept values agree to rtol 1e-6 (≤ 2 ulp at rate 0.9, where 1/keep rounds differently; see
    test_kept_scale_precise_for_large_rates).
    """
    rng = jax.random.key(53)
    ours = jnn.Dropout(rate, broadcast_dims=bdims).apply({}, X, train=True, rngs={"dropout": rng})
    theirs = fnn.Dropout(rate, broadcast_dims=bdims, deterministic=False).apply({}, X, rngs={"dropout": rng})
    _eq(_kept(ours), _kept(theirs))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6)
    _eq(ours, theirs)


def test_layer_dropout_equals_flax_inside_a_parent_module():
    class Net(fnn.Module):
        flax_impl: bool

        @fnn.compact
        def __call__(self, x):
            for _ in range(2):  # submodules Dropout_0, Dropout_1 under either implementation
                x = fnn.Dropout(0.5, deterministic=False)(x) if self.flax_impl else jnn.Dropout(0.5, train=True)(x)
            return x

    rngs = {"dropout": jax.random.key(3)}
    ours = Net(False).apply({}, X, rngs=rngs)
    _eq(ours, Net(True).apply({}, X, rngs=rngs))
    assert 0.15 < _kept(ours).mean() < 0.35  # two independent masks (keep 1/4), not the same one twice


def test_dropconnect_dense_layer():
    rate = 0.4
    layer = jnn.DropConnectDense(rate, features=8)
    x = jnp.asarray(XW_NP)
    v = layer.init({"params": jax.random.key(1)}, x, train=False)
    assert v["params"]["kernel"].shape == (16, 8) and v["params"]["bias"].shape == (8,)
    bias = jnp.asarray(np.arange(8, dtype=np.float32))
    v = {"params": {"kernel": W, "bias": bias}}
    rng = jax.random.key(56)
    y = layer.apply(v, x, train=True, rngs={"dropout": rng})
    _eq(y, x @ jaxnorm.dropconnect(W, rate, key=_derived_key(rng)) + bias)
    np.testing.assert_allclose(np.asarray(layer.apply(v, x, train=False)), XW_NP @ W_NP + np.arange(8), rtol=1e-5)
    msg = r"DropConnectDense: train=True needs a 'dropout' PRNG stream.*rngs=\{'dropout'"
    with pytest.raises(ValueError, match=msg):
        layer.apply(v, x, train=True)
    with pytest.raises(ValueError, match=r"features must be a positive int, got 0"):
        jnn.DropConnectDense(rate).init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize("cls", [jnn.Dropout, jnn.SpatialDropout, jnn.GaussianDropout, jnn.AlphaDropout])
def test_layer_train_without_dropout_rng_raises(cls):
    msg = rf"{cls.__name__}: train=True needs a 'dropout' PRNG stream: .*rngs=\{{'dropout': jax\.random\.key"
    with pytest.raises(ValueError, match=msg):
        cls(0.5).apply({}, X, train=True)
    with pytest.raises(ValueError, match=msg):  # other rng streams do not count
        cls(0.5).apply({}, X, train=True, rngs={"params": K})
    assert cls(0.0).apply({}, X, train=True) is X  # rate 0 needs no rng


def test_layer_custom_rng_collection():
    y = jnn.Dropout(0.5, rng_collection="noise").apply({}, X, train=True, rngs={"noise": K})
    _eq(y, jnn.Dropout(0.5).apply({}, X, train=True, rngs={"dropout": K}))
    with pytest.raises(ValueError, match=r"rngs=\{'noise'"):
        jnn.Dropout(0.5, rng_collection="noise").apply({}, X, train=True, rngs={"dropout": K})


def test_layer_train_attribute_and_call_argument():
    rngs = {"dropout": K}
    by_arg = jnn.Dropout(0.5).apply({}, X, train=True, rngs=rngs)
    _eq(jnn.Dropout(0.5, train=True).apply({}, X, rngs=rngs), by_arg)
    assert not np.array_equal(np.asarray(by_arg), X_NP)
    assert jnn.Dropout(0.5, train=False).apply({}, X) is X
    # flax.linen.merge_param semantics: exactly one of the two
    with pytest.raises(ValueError, match=r'"train" was passed to the constructor and at call time'):
        jnn.Dropout(0.5, train=True).apply({}, X, train=False, rngs=rngs)
    with pytest.raises(ValueError, match=r'"train" must be passed to the constructor or at call time'):
        jnn.Dropout(0.5).apply({}, X, rngs=rngs)
    with pytest.raises(TypeError, match=r"Dropout: train must be a Python bool .* got 'yes' \(str\)"):
        jnn.Dropout(0.5).apply({}, X, train="yes", rngs=rngs)


@pytest.mark.parametrize("cls", [jnn.Dropout, jnn.SpatialDropout, jnn.GaussianDropout, jnn.AlphaDropout])
def test_layer_bad_rate(cls):
    with pytest.raises(ValueError, match=rf"^{cls.__name__}: rate must be in \[0, 1\].*got 1\.5"):
        cls(1.5).apply({}, X, train=True, rngs={"dropout": K})
    with pytest.raises(ValueError, match=r"got -0\.1"):
        cls(-0.1).apply({}, X, train=False)


# ---------------------------------------------------------------------------------------------------------------------
# every dropout function: its own name in its errors, train as a traced bool, half precision kept

_DROPOUTS = {
    "dropout": jaxnorm.dropout,
    "original_dropout": jaxnorm.original_dropout,
    "spatial_dropout": jaxnorm.spatial_dropout,
    "dropconnect": jaxnorm.dropconnect,
    "gaussian_dropout": jaxnorm.gaussian_dropout,
    "alpha_dropout": jaxnorm.alpha_dropout,
}


@pytest.mark.parametrize("name", sorted(_DROPOUTS))
def test_each_dropout_names_itself_in_its_errors(name):
    fn, x = _DROPOUTS[name], jnp.ones((2, 3, 4, 5))
    with pytest.raises(ValueError, match=rf"^{name}: train=True needs a PRNG key"):
        fn(x, 0.5)
    with pytest.raises(ValueError, match=rf"^{name}: "):
        fn(x, 1.5, key=jax.random.key(0))
    with pytest.raises(TypeError, match=rf"^{name}: "):
        fn(jnp.ones((2, 3, 4, 5), jnp.int32), 0.5, key=jax.random.key(0))
    with pytest.raises(TypeError, match=rf"^{name}: "):
        fn(x, 0.5, key=jax.random.key(0), train="yes")


@pytest.mark.parametrize("name", sorted(_DROPOUTS))
def test_each_dropout_with_a_traced_train_flag_equals_the_static_modes(name):
    """``train`` as a traced bool under jit selects, per call, exactly what the static True/False compute."""
    fn, key = _DROPOUTS[name], jax.random.key(3)
    x = jnp.asarray(_np_normal(50, (4, 3, 3, 8)))
    traced = jax.jit(lambda x, t: fn(x, 0.3, key=key, train=t))
    on, off = fn(x, 0.3, key=key, train=True), fn(x, 0.3, key=key, train=False)
    assert not np.array_equal(np.asarray(on), np.asarray(off))  # the two modes differ, so the check means something
    # 2e-5: Gaussian dropout's normal sampler (erf_inv) rounds differently fused under jit than op by op, measured
    # 6.3e-6 relative at LLVM -O0 (tests/conftest.py); a mode that picked the other branch differs by O(1)
    np.testing.assert_allclose(np.asarray(traced(x, True)), np.asarray(on), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(traced(x, False)), np.asarray(off), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(_DROPOUTS))
def test_each_dropout_keeps_half_precision_in_both_modes(name, dtype):
    fn, x = _DROPOUTS[name], jnp.asarray(_np_normal(51, (4, 3, 3, 8)), dtype)
    for train in (True, False):
        y = fn(x, 0.3, key=jax.random.key(4), train=train)
        assert y.dtype == dtype and y.shape == x.shape, (train, y.dtype)
        y = jax.jit(lambda x, t: fn(x, 0.3, key=jax.random.key(4), train=t))(x, train)
        assert y.dtype == dtype, (train, y.dtype)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_original_dropout_scales_half_precision_by_keep_in_that_precision(dtype):
    """Evaluation scales by ``keep`` rounded to x's dtype, as ``x * (1 − rate)`` with a Python float does (Flax's
    weak typing; inverted dropout's ``x / keep`` likewise): keep = 0.7 is 0.69921875 in bfloat16, and a float32
    product rounded once differs from it in the last bit of about a fifth of the values."""
    x = jnp.asarray(_np_normal(53, (64, 32)), dtype)
    y = jaxnorm.original_dropout(x, 0.3, train=False)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(x * 0.7, np.float32))
    assert y.dtype == dtype


def test_a_traced_rate_outside_0_1_is_clipped_and_a_bfloat16_one_is_read_in_float32():
    """A traced rate cannot be checked, so it is clipped to [0, 1] where used: −0.5 drops nothing and rescales
    nothing, 1.5 drops everything (and original dropout's evaluation scales by 0, not by −0.5). A traced bfloat16
    rate draws the float32 rate's mask (bernoulli would otherwise draw bfloat16 uniforms: another mask)."""
    x = jnp.asarray(_np_normal(54, (64, 64)))
    key = jax.random.key(6)
    inverted = jax.jit(lambda r: jaxnorm.dropout(x, r, key=key))
    _eq(inverted(-0.5), x)
    _eq(inverted(1.5), jnp.zeros_like(x))
    scaled = jax.jit(lambda r: jaxnorm.original_dropout(x, r, train=False))
    _eq(scaled(-0.5), x)
    _eq(scaled(1.5), jnp.zeros_like(x))
    r16 = jnp.asarray(0.3, jnp.bfloat16)
    _eq(inverted(r16), jaxnorm.dropout(x, float(r16.astype(jnp.float32)), key=key))


def test_max_norm_default_is_three():
    """Srivastava et al.'s c = 3 when none is given, for the projection and for the optax transformation."""
    params = _max_norm_params()
    for n in ("dense", "conv"):
        assert np.any(_col_norms(params[n]["kernel"]) > 3.5)  # some columns far enough above 3 to see another c
    want = jaxnorm.max_norm_project(params, 3.0)
    for got in (
        jaxnorm.max_norm_project(params),
        optax.apply_updates(params, jaxnorm.max_norm().update(jax.tree.map(jnp.zeros_like, params), None, params)[0]),
    ):
        for n in ("dense", "conv"):
            np.testing.assert_allclose(np.asarray(got[n]["kernel"]), np.asarray(want[n]["kernel"]), rtol=1e-6)
            assert np.max(_col_norms(got[n]["kernel"])) == pytest.approx(3.0, rel=1e-5)


def test_max_norm_below_one_and_a_zero_column():
    """c < ‖w‖ < 1 is projected too (onto c), and an all-zero unit stays zero, without NaN."""
    w = np.zeros((4, 3), np.float32)
    w[:, 0] = [0.4, 0.4, 0.4, 0.4]  # ‖w‖ = 0.8
    w[:, 1] = [0.1, 0.0, 0.0, 0.0]  # ‖w‖ = 0.1, inside c = 0.5
    out = np.asarray(jaxnorm.max_norm_project({"kernel": jnp.asarray(w)}, 0.5)["kernel"])
    np.testing.assert_allclose(out[:, 0], w[:, 0] * (0.5 / 0.8), rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1:], w[:, 1:])


def test_max_norm_of_a_bfloat16_kernel_stays_bfloat16_with_its_norms_in_float32():
    """A bfloat16 kernel is projected to bfloat16, with the column norms accumulated in float32: each weight is the
    float64 projection rounded once (≤ half an ulp, 2⁻⁸ relative; norms summed in bfloat16 measured 0.0096). The
    optax transformation's float32 update lands exactly on that projection (a bfloat16 update, rounded twice, was
    off by up to 1.1%)."""
    w = (jax.random.normal(jax.random.key(0), (2048, 64)) * 0.2).astype(jnp.bfloat16)
    w64 = np.asarray(w.astype(jnp.float32), np.float64)
    want = w64 * np.minimum(1.0, C / _col_norms(w64))
    assert np.mean(_col_norms(w64) > C) > 0.9  # nearly every column is projected
    out = jaxnorm.max_norm_project({"kernel": w}, C)["kernel"]
    assert out.dtype == jnp.bfloat16
    err = np.abs(np.asarray(out.astype(jnp.float32), np.float64) - want) / np.abs(want)
    assert err.max() <= 2.0**-8, err.max()
    params = {"kernel": w}
    updates, _ = jaxnorm.max_norm(C).update(jax.tree.map(jnp.zeros_like, params), None, params)
    assert updates["kernel"].dtype == jnp.float32 and optax.apply_updates(params, updates)["kernel"].dtype == w.dtype
    np.testing.assert_array_equal(
        np.asarray(optax.apply_updates(params, updates)["kernel"].astype(jnp.float32)),
        np.asarray(out.astype(jnp.float32)),
    )


def test_gaussian_dropout_takes_a_traced_rate_and_refuses_a_static_one_of_one():
    x = jnp.asarray(_np_normal(52, (64, 32)))
    key = jax.random.key(5)
    traced = jax.jit(lambda r: jaxnorm.gaussian_dropout(x, r, key=key))
    np.testing.assert_allclose(
        np.asarray(traced(0.3)), np.asarray(jaxnorm.gaussian_dropout(x, 0.3, key=key)), rtol=1e-5, atol=1e-7
    )  # the traced std is rounded in float32 on the device, the static one on the host: 3.5e-6 relative measured
    with pytest.raises(ValueError, match=r"^gaussian_dropout: rate must be < 1"):
        jaxnorm.gaussian_dropout(x, 1.0, key=key)


def test_alpha_dropout_at_rate_one_is_zero_with_zero_gradient_even_at_zero_inputs():
    x = jnp.asarray([[0.0, 1.5, -2.0, 0.0]])
    y, vjp = jax.vjp(lambda x: jaxnorm.alpha_dropout(x, 1.0, key=jax.random.key(0)), x)
    np.testing.assert_array_equal(np.asarray(y), np.zeros((1, 4)))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.ones_like(y))[0]), np.zeros((1, 4)))
    traced = jax.jit(lambda r: jaxnorm.alpha_dropout(x, r, key=jax.random.key(0)))(1.0)
    np.testing.assert_array_equal(np.asarray(traced), np.zeros((1, 4)))
    # a traced rate 1 too: a and b are computed at a safe q, so no inf or NaN reaches the gradient
    grad = jax.jit(jax.grad(lambda x, r: jaxnorm.alpha_dropout(x, r, key=jax.random.key(0)).sum()))(x, 1.0)
    np.testing.assert_array_equal(np.asarray(grad), np.zeros((1, 4)))
