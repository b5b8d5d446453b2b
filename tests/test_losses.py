"""jaxnorm.losses against float64 numpy references (computed here from the formulas in the docstrings), at the
boundaries of each argument's range, and with the errors' messages. Core: needs no extra."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import losses


def _rng(seed):
    return np.random.default_rng(seed)


def _log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_cross_entropy_per_example_is_minus_log_softmax_at_the_label():
    z = _rng(0).normal(size=(6, 5)) * 3.0
    y = np.array([0, 4, 2, 2, 1, 3])
    got = losses.per_example_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y))
    want = -_log_softmax(z)[np.arange(6), y]
    assert got.dtype == jnp.float32 and got.shape == (6,)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    explicit = losses.per_example_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y), "cross_entropy")
    np.testing.assert_array_equal(np.asarray(explicit), np.asarray(got))  # the default kind is cross-entropy


def test_mse_per_example_sums_every_non_batch_axis():
    f, y = _rng(1).normal(size=(4, 3, 2)), _rng(2).normal(size=(4, 3, 2))
    got = losses.per_example_loss(jnp.asarray(f, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16), "mse")
    fb = np.asarray(jnp.asarray(f, jnp.bfloat16), np.float64)
    yb = np.asarray(jnp.asarray(y, jnp.bfloat16), np.float64)
    assert got.dtype == jnp.float32 and got.shape == (4,)
    # the bf16 difference is rounded to bf16 before the float32 square and sum (relative 2^-8 per term)
    np.testing.assert_allclose(np.asarray(got), ((fb - yb) ** 2).reshape(4, -1).sum(-1), rtol=1e-2)
    got32 = losses.per_example_loss(jnp.asarray(f, jnp.float32), jnp.asarray(y, jnp.float32), "mse")
    np.testing.assert_allclose(np.asarray(got32), ((f - y) ** 2).reshape(4, -1).sum(-1), rtol=1e-5)


def test_unknown_loss_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"cross_entropy.*mse|mse.*cross_entropy"):
        losses.per_example_loss(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), "hinge")


def test_correct_count_with_and_without_mask():
    z = jnp.asarray([[0.1, 0.9, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 5.0], [1.0, 3.0, 2.0]])
    y = jnp.asarray([1, 0, 1, 1])  # right, right, wrong, right
    assert int(losses.correct_count(z, y)) == 3
    assert int(losses.correct_count(z, y, jnp.asarray([True, False, True, True]))) == 2
    assert int(losses.correct_count(z, y, jnp.asarray([False, False, True, False]))) == 0


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_masking_noise_zeroes_the_dropout_pattern_without_rescaling(fraction):
    x = jnp.asarray(_rng(3).uniform(1.0, 2.0, size=(200, 50)), jnp.float32)
    key = jax.random.key(7)
    y = np.asarray(losses.masking_noise(x, fraction, key=key))
    kept = y != 0
    np.testing.assert_array_equal(y[kept], np.asarray(x)[kept])  # unscaled
    assert abs(1.0 - kept.mean() - fraction) < 0.02  # 10 000 draws: 4 standard errors at most
    same = np.asarray(jaxnorm.dropout(x, fraction, key=key)) != 0  # the same mask as dropout with that key
    np.testing.assert_array_equal(kept, same)
    traced = np.asarray(jax.jit(lambda f: losses.masking_noise(x, f, key=key))(fraction))
    np.testing.assert_array_equal(traced, y)
    assert losses.masking_noise(x.astype(jnp.bfloat16), fraction, key=key).dtype == jnp.bfloat16


def test_masking_noise_zero_fraction_is_the_identity_and_needs_no_key():
    x = jnp.asarray(_rng(4).normal(size=(3, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(losses.masking_noise(x, 0.0)), np.asarray(x))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_masking_noise_refuses_a_fraction_outside_0_1(bad):
    with pytest.raises(
        ValueError,
        match=rf"^masking_noise: the masking fraction .* must be in \[0, 1\), got {bad}; 0 is no corruption, "
        r"0.1-0.5 is usual \(1 would zero every input\)$",
    ):
        losses.masking_noise(jnp.ones(3), bad, key=jax.random.key(0))


def test_masking_noise_without_a_key_says_how():
    with pytest.raises(
        ValueError,
        match=r"^masking_noise: a fraction > 0 needs a PRNG key: pass key=jax.random.key\(seed\) \(split it per step\), "
        r"or fraction=0 for no corruption$",
    ):
        losses.masking_noise(jnp.ones(3), 0.3)


def test_reconstruction_losses_match_float64():
    r = _rng(5)
    x = r.uniform(0.0, 1.0, size=(5, 4, 3))
    logits = r.normal(size=(5, 4, 3)) * 2.0
    p = 1.0 / (1.0 + np.exp(-logits))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    sq = ((p - x) ** 2).reshape(5, -1).sum(-1).mean()
    ce = -(x * np.log(p) + (1 - x) * np.log1p(-p)).reshape(5, -1).sum(-1).mean()
    np.testing.assert_allclose(float(losses.reconstruction_loss(f32(p), f32(x))), sq, rtol=1e-5)
    np.testing.assert_allclose(float(losses.reconstruction_loss(f32(logits), f32(x), from_logits=True)), sq, rtol=1e-5)
    np.testing.assert_allclose(float(losses.reconstruction_loss(f32(p), f32(x), "cross_entropy")), ce, rtol=1e-5)
    got = losses.reconstruction_loss(f32(logits), f32(x), "cross_entropy", from_logits=True)
    np.testing.assert_allclose(float(got), ce, rtol=1e-5)


def test_half_precision_losses_are_float32_at_float32_accuracy():
    """bfloat16 reconstructions, targets and kernels (a bfloat16 autoencoder): the losses are computed in float32
    from the bfloat16 values, to float32 accuracy (in bfloat16, 1 − x and log x̂ alone are off by up to 0.4%)."""
    r = _rng(9)
    x16 = jnp.asarray(r.uniform(0.0, 1.0, size=(8, 30)), jnp.bfloat16)
    logits16 = jnp.asarray(r.normal(size=(8, 30)) * 2.0, jnp.bfloat16)
    p16 = jax.nn.sigmoid(logits16)
    x, logits, p = (np.asarray(a.astype(jnp.float32), np.float64) for a in (x16, logits16, p16))
    q = 1.0 / (1.0 + np.exp(-logits))
    ce = lambda p: -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(-1).mean()  # noqa: E731
    for got, want in (
        (losses.reconstruction_loss(p16, x16), ((p - x) ** 2).sum(-1).mean()),
        (losses.reconstruction_loss(p16, x16, "cross_entropy"), ce(p)),
        (losses.reconstruction_loss(logits16, x16, "cross_entropy", from_logits=True), ce(q)),
    ):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(float(got), want, rtol=1e-5)
    w = jnp.asarray(r.normal(size=(64, 32)), jnp.bfloat16)
    got = losses.weight_decay({"kernel": w, "bias": jnp.ones(32, jnp.bfloat16)}, 0.3)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), 0.15 * np.sum(np.asarray(w.astype(jnp.float32), np.float64) ** 2), rtol=1e-5)


def test_per_example_losses_of_bfloat16_outputs_are_computed_in_float32():
    """bfloat16 logits and predictions: the softmax cross-entropy and the squared error in float32 from the bfloat16
    values (in bfloat16 the log-sum-exp alone is off by up to 0.4%)."""
    r = _rng(10)
    logits16 = jnp.asarray(r.normal(size=(16, 10)) * 3.0, jnp.bfloat16)
    y = r.integers(0, 10, size=16)
    z = np.asarray(logits16.astype(jnp.float32), np.float64)
    want = np.log(np.exp(z).sum(-1)) - z[np.arange(16), y]
    got = losses.per_example_loss(logits16, jnp.asarray(y))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    pred16 = jnp.asarray(r.normal(size=(16, 3, 4)), jnp.bfloat16)
    target16 = jnp.asarray(r.normal(size=(16, 3, 4)), jnp.bfloat16)
    p, t = (np.asarray(a.astype(jnp.float32), np.float64) for a in (pred16, target16))
    got = losses.per_example_loss(pred16, target16, "mse")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), ((p - t) ** 2).reshape(16, -1).sum(-1), rtol=1e-5)


def test_masking_noise_with_a_traced_bfloat16_fraction_draws_the_float32_mask():
    """A traced fraction is read in float32 whatever its dtype: a bfloat16 one gives the mask of the same value in
    float32 (bernoulli would otherwise draw bfloat16 uniforms: another mask)."""
    x = jnp.ones((64, 64))
    key = jax.random.key(3)
    f16 = jnp.asarray(0.3, jnp.bfloat16)
    traced = jax.jit(lambda f: losses.masking_noise(x, f, key=key))(f16)
    want = losses.masking_noise(x, float(f16.astype(jnp.float32)), key=key)
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(want))


def test_reconstruction_cross_entropy_clips_at_eps():
    """x̂ = 0 and 1 where the target disagrees: each term is −log(eps), finite, not inf."""
    x, x_hat = jnp.asarray([[1.0, 0.0]]), jnp.asarray([[0.0, 1.0]])
    for eps in (1e-7, 1e-3):
        got = float(losses.reconstruction_loss(x_hat, x, "cross_entropy", eps=eps))
        hi = float(np.float32(1.0) - np.float32(eps))  # the upper clip 1 − eps, as rounded in float32
        np.testing.assert_allclose(got, -math.log(eps) - math.log1p(-hi), rtol=1e-5)


def test_reconstruction_loss_errors():
    with pytest.raises(ValueError, match=r"reconstruction_loss: reconstruction shape \(2, 3\) != input shape \(2, 4\)"):
        losses.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"squared.*cross_entropy|cross_entropy.*squared"):
        losses.reconstruction_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), "l1")


def test_kl_bernoulli_matches_the_formula():
    rho, rho_hat = 0.05, np.array([0.05, 0.2, 0.01, 0.9])
    want = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    np.testing.assert_allclose(np.asarray(losses.kl_bernoulli(rho, jnp.asarray(rho_hat, jnp.float32))), want, atol=1e-6)


@pytest.mark.parametrize("shape", [(8, 5), (4, 3, 3, 5)])
def test_sparsity_penalty_is_beta_times_kl_of_the_unit_means(shape):
    code = _rng(6).uniform(0.01, 0.6, size=shape)
    rho, beta = 0.1, 2.5
    rho_hat = code.reshape(-1, shape[-1]).mean(0)  # every axis but the units
    want = beta * np.sum(rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))
    got = losses.sparsity_penalty(jnp.asarray(code, jnp.float32), rho, beta)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    default = float(losses.sparsity_penalty(jnp.asarray(code, jnp.float32)))  # rho = 0.05, beta = 3
    want_default = 3.0 * np.sum(0.05 * np.log(0.05 / rho_hat) + 0.95 * np.log(0.95 / (1 - rho_hat)))
    np.testing.assert_allclose(default, want_default, rtol=1e-5)


def test_sparsity_penalty_clips_the_means_at_eps():
    """All-zero codes: ρ̂ = eps, so the penalty is finite and equals β·KL(ρ‖eps) per unit; all-one codes: ρ̂ =
    1 − eps, finite too."""
    for eps in (1e-6, 1e-3):
        got = float(losses.sparsity_penalty(jnp.zeros((4, 2)), 0.05, 1.0, eps=eps))
        want = 2 * (0.05 * math.log(0.05 / eps) + 0.95 * math.log(0.95 / (1 - eps)))
        np.testing.assert_allclose(got, want, rtol=1e-4)
    eps = 1e-3  # 1 − 1e-6 is not a float32 number apart from 1 by enough to keep the log's argument accurate
    got = float(losses.sparsity_penalty(jnp.ones((4, 2)), 0.05, 1.0, eps=eps))
    want = 2 * (0.05 * math.log(0.05 / (1 - eps)) + 0.95 * math.log(0.95 / eps))
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_sparsity_penalty_of_half_precision_codes_is_computed_in_float32():
    """bfloat16 codes (a bfloat16 autoencoder's sigmoid): the unit means and the KL in float32, a float32 scalar
    at float32 accuracy (computed in bfloat16 the mean of 512 codes alone is off by about 1e-3)."""
    code = _rng(7).uniform(0.01, 0.2, size=(512, 6))
    code16 = jnp.asarray(code, jnp.bfloat16)
    c64 = np.asarray(code16.astype(jnp.float32), np.float64)
    rho_hat = c64.mean(0)
    want = 3.0 * np.sum(0.05 * np.log(0.05 / rho_hat) + 0.95 * np.log(0.95 / (1 - rho_hat)))
    got = losses.sparsity_penalty(code16)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_sparsity_penalty_errors():
    for rho in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(
            ValueError,
            match=rf"^sparsity_penalty: the target activation rho must be strictly inside \(0, 1\) \(a Bernoulli mean; "
            rf"KL\(rho\|\|rho_hat\) is undefined or infinite otherwise\), got {rho}; use e.g. rho=0.05$",
        ):
            losses.sparsity_penalty(jnp.full((2, 3), 0.5), rho, 1.0)
    with pytest.raises(
        ValueError,
        match=r"^sparsity_penalty: the sparsity weight beta must be >= 0, got -1.0; use e.g. beta=3.0, or beta=0 for no "
        r"sparsity penalty$",
    ):
        losses.sparsity_penalty(jnp.full((2, 3), 0.5), 0.05, -1.0)
    assert float(losses.sparsity_penalty(jnp.full((2, 3), 0.2), 0.05, 0.0)) == 0.0  # beta = 0 is allowed: no penalty
    with pytest.raises(ValueError, match=r"^sparsity_penalty: expected a batch of codes N×…×units, got shape \(3,\)"):
        losses.sparsity_penalty(jnp.full((3,), 0.5))


def test_weight_decay_is_half_lambda_times_the_kernels_squared_norm():
    w1, w2 = _rng(7).normal(size=(3, 4)), _rng(8).normal(size=(2, 2, 3, 4))
    params = {"a": {"kernel": jnp.asarray(w1), "bias": jnp.ones(4) * 100}, "b": {"kernel": jnp.asarray(w2)}}
    got = float(losses.weight_decay(params, 0.3))
    np.testing.assert_allclose(got, 0.15 * (np.sum(w1**2) + np.sum(w2**2)), rtol=1e-5)  # biases not decayed
    assert float(losses.weight_decay({"bias": jnp.ones(3)}, 0.3)) == 0.0
    assert float(losses.weight_decay(params, 0.0)) == 0.0
    with pytest.raises(
        ValueError,
        match=r"^weight_decay: the weight-decay coefficient must be >= 0, got -0.1; use e.g. 1e-4, or 0 for none$",
    ):
        losses.weight_decay(params, -0.1)
