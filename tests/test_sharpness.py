"""Sharpness against the edge of stability (jaxnorm.probes.sharpness): λ_max exact on a quadratic of known spectrum,
the thresholds checked by their effect (the optimizer diverges just above them and converges just below), λ_max
equal to the dense Hessian's on a small network during gradient descent, warm starts cheaper than cold ones, and
Adam's preconditioned sharpness equal to the dense eigenvalue of P⁻¹H built from the optimizer state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import jaxnorm.probes as jp

SPECTRUM = (5.0, 3.0, 1.0, 0.5, -0.2)
CONVEX = (5.0, 3.0, 1.0, 0.5, 0.2)  # for the divergence tests: a negative direction diverges at any step size


def quadratic(spectrum=SPECTRUM):
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(5, 5)))
    a = jnp.asarray(q @ np.diag(spectrum) @ q.T, jnp.float32)
    return (lambda w, batch: 0.5 * w @ batch["a"] @ w), {"a": a}


def test_lambda_max_of_a_quadratic_is_its_top_eigenvalue():
    loss_fn, batch = quadratic()
    out = jp.sharpness(loss_fn, jnp.ones(5), batch, lr=0.3, tol=1e-7, num_iters=500)
    assert out["lambda_max"] == pytest.approx(5.0, rel=1e-5)
    assert out["threshold"] == pytest.approx(2 / 0.3) and out["ratio"] == pytest.approx(5.0 * 0.3 / 2, rel=1e-5)
    assert not out["at_edge"] and not out["above_threshold"]  # ratio 0.75
    assert out["converged"] and out["num_products"] < 500
    short = jp.sharpness(loss_fn, jnp.ones(5), batch, lr=0.3, tol=1e-7, num_iters=3)
    assert not short["converged"] and short["num_products"] == 3
    v = ravel_pytree(out["eigenvector"])[0]
    np.testing.assert_allclose(np.asarray(batch["a"] @ v), 5.0 * np.asarray(v), atol=1e-3)


def _diverges(step_fn, w, steps=400):
    for _ in range(steps):
        w = step_fn(w)
    return not bool(jnp.linalg.norm(w) < 10.0)


@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_gradient_descent_diverges_exactly_when_the_tracker_says_it_is_above_the_threshold(factor):
    loss_fn, batch = quadratic(CONVEX)
    lr = factor * 2.0 / 5.0
    grad = jax.jit(jax.grad(loss_fn))
    diverged = _diverges(lambda w: w - lr * grad(w, batch), jnp.ones(5))
    out = jp.sharpness(loss_fn, jnp.ones(5), batch, lr=lr, tol=1e-7, num_iters=500)
    assert diverged == out["above_threshold"] == (factor > 1)
    assert out["at_edge"]  # within the default band of 0.1


@pytest.mark.parametrize("kind", ["heavy_ball", "nesterov"])
@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_sgd_momentum_thresholds_by_their_effect(factor, kind):
    loss_fn, batch = quadratic(CONVEX)
    beta = 0.9
    lr = factor * jp.stability_threshold(1.0, momentum=beta, momentum_kind=kind) / 5.0  # λ_max = factor·threshold
    tx = optax.sgd(lr, momentum=beta, nesterov=kind == "nesterov")
    w, state = jnp.ones(5), tx.init(jnp.ones(5))
    grad = jax.jit(jax.grad(loss_fn))
    for _ in range(2000):
        u, state = tx.update(grad(w, batch), state)
        w = optax.apply_updates(w, u)
    out = jp.sharpness(loss_fn, jnp.ones(5), batch, lr=lr, momentum=beta, momentum_kind=kind, tol=1e-7, num_iters=500)
    assert (not bool(jnp.linalg.norm(w) < 10.0)) == out["above_threshold"] == (factor > 1)
    assert out["threshold"] == pytest.approx({"heavy_ball": 3.8, "nesterov": 3.8 / 2.8}[kind] / lr)


@pytest.mark.parametrize("factor", [0.97, 1.03])
def test_ema_momentum_threshold_by_its_effect(factor):
    beta, lam = 0.9, 5.0
    lr = factor * (2 + 2 * beta) / ((1 - beta) * lam)
    w, m = 1.0, 0.0
    for _ in range(3000):
        m = beta * m + (1 - beta) * lam * w
        w = w - lr * m
    threshold = jp.stability_threshold(lr, momentum=beta, momentum_kind="ema")
    assert (not abs(w) < 10.0) == (lam > threshold) == (factor > 1)  # `not <`: a diverged w ends as NaN
    assert jp.stability_threshold(1.0, momentum=0.9, momentum_kind="ema") == pytest.approx(38.0)  # Cohen et al. 2022


def mlp():
    r = np.random.default_rng(1)
    params = {
        "w1": jnp.asarray(r.normal(size=(4, 6)) * 0.8, jnp.float32),
        "b1": jnp.zeros(6, jnp.float32),
        "w2": jnp.asarray(r.normal(size=(6, 2)) * 0.8, jnp.float32),
    }
    batch = {
        "x": jnp.asarray(r.normal(size=(16, 4)), jnp.float32),
        "y": jnp.asarray(r.normal(size=(16, 2)), jnp.float32),
    }

    def loss_fn(p, b):
        return 0.5 * jnp.mean(jnp.sum((jnp.tanh(b["x"] @ p["w1"] + p["b1"]) @ p["w2"] - b["y"]) ** 2, -1))

    return loss_fn, params, batch


def dense_hessian(loss_fn, params, batch):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat), np.float64)


def largest(mat):
    """The largest (most positive) eigenvalue: λ_max, also where a negative one has the larger magnitude."""
    return np.linalg.eigvalsh(mat)[-1]


def test_the_tracker_equals_the_dense_hessian_during_gradient_descent_and_warm_starts_save_products():
    loss_fn, params, batch = mlp()
    lr = 0.2
    tracker = jp.SharpnessTracker(loss_fn, lr=lr, tol=1e-6, num_iters=500)
    # the probe kind's tracking default: a residual of 3e-2·|λ| puts λ within about (3e-2)²·|λ|/gap
    probe = jp.probe_kind("sharpness").defaults
    quick = jp.SharpnessTracker(loss_fn, lr=lr, tol=probe["tol"], num_iters=probe["num_iters"])
    grad = jax.jit(jax.grad(loss_fn))
    warm, cold = [], []
    for step in range(31):
        if step % 10 == 0:
            row = tracker(params, batch, step=step)
            want = largest(dense_hessian(loss_fn, params, batch))
            assert row["lambda_max"] == pytest.approx(want, rel=1e-3), step
            assert quick(params, batch, step=step)["lambda_max"] == pytest.approx(want, rel=5e-3), step
            assert row["ratio"] == pytest.approx(want * lr / 2, rel=1e-3) and row["step"] == step and row["lr"] == lr
            warm.append(row["num_products"])
            cold.append(jp.sharpness(loss_fn, params, batch, lr=lr, tol=1e-6, num_iters=500)["num_products"])
        params = jax.tree.map(lambda p, g: p - lr * g, params, grad(params, batch))
    assert sum(warm[1:]) < sum(cold[1:]), (warm, cold)


def test_adam_preconditioned_sharpness_equals_the_dense_eigenvalue_of_p_inverse_h():
    loss_fn, params, batch = mlp()
    tx = optax.adam(0.01, b1=0.9, b2=0.99)
    state = tx.init(params)
    grad = jax.jit(jax.grad(loss_fn))
    for _ in range(5):
        u, state = tx.update(grad(params, batch), state)
        params = optax.apply_updates(params, u)
    p = jp.adam_preconditioner(state, b2=0.99)
    adam_state = state[0]
    want_p = jax.tree.map(lambda n: np.sqrt(np.asarray(n) / (1 - 0.99**5)) + 1e-8, adam_state.nu)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want_p)):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)
    out = jp.sharpness(loss_fn, params, batch, lr=0.01, momentum=0.9, momentum_kind="ema", preconditioner=p,
                       tol=1e-7, num_iters=2000)  # fmt: skip
    d = 1.0 / np.sqrt(np.asarray(ravel_pytree(p)[0], np.float64))
    want = largest(d[:, None] * dense_hessian(loss_fn, params, batch) * d[None, :])
    assert out["lambda_max"] == pytest.approx(want, rel=1e-3)
    assert out["threshold"] == pytest.approx(38.0 / 0.01)
    plain = jp.sharpness(loss_fn, params, batch, lr=0.01, tol=1e-7, num_iters=2000)["lambda_max"]
    assert abs(plain - out["lambda_max"]) > 0.1 * abs(plain)  # the preconditioner changes the answer


def test_rmsprop_preconditioner_is_the_square_root_of_nu_plus_eps():
    _, params, _ = mlp()
    tx = optax.rmsprop(0.01, decay=0.9, eps=1e-6)
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    _, state = tx.update(g, state)
    p = jp.adam_preconditioner(state, eps=1e-6)
    for leaf in jax.tree.leaves(p):
        np.testing.assert_allclose(np.asarray(leaf), np.sqrt(0.1 + 1e-6), rtol=1e-6)


def test_bad_arguments_are_clear_errors():
    loss_fn, batch = quadratic()
    w = jnp.ones(5)
    with pytest.raises(ValueError, match=r"lr must be a finite step size > 0, got 0.0"):
        jp.sharpness(loss_fn, w, batch, lr=0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        jp.stability_threshold(0.1, momentum=1.0)
    with pytest.raises(
        ValueError, match=r"momentum_kind must be one of \('heavy_ball', 'nesterov', 'ema'\), got 'polyak'"
    ):
        jp.stability_threshold(0.1, momentum=0.9, momentum_kind="polyak")
    with pytest.raises(ValueError, match=r"num_iters must be an int >= 1, got 0"):
        jp.sharpness(loss_fn, w, batch, lr=0.1, num_iters=0)
    with pytest.raises(ValueError, match=r"v0 must be a pytree shaped like params \(5 values\)"):
        jp.sharpness(loss_fn, w, batch, lr=0.1, v0=jnp.ones(4))
    with pytest.raises(ValueError, match=r"preconditioner must be positive"):
        jp.sharpness(loss_fn, w, batch, lr=0.1, preconditioner=jnp.zeros(5))
    with pytest.raises(ValueError, match=r"holds 0 Adam/RMSProp states"):
        jp.adam_preconditioner(optax.sgd(0.1).init(w))
    with pytest.raises(ValueError, match=r"lr must be a finite step size > 0, got -1.0"):
        jp.SharpnessTracker(loss_fn, lr=-1.0)


def test_the_probe_kind_reads_adams_preconditioner_and_refuses_a_trace():
    import types

    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=True):
            return nn.Dense(3)(jnp.tanh(nn.Dense(8)(x)))

    r = np.random.default_rng(2)
    batch = {"x": jnp.asarray(r.normal(size=(16, 4)), jnp.float32), "y": jnp.asarray(r.integers(0, 3, 16))}
    model = Net()
    params = model.init(jax.random.key(0), batch["x"])["params"]
    tx = optax.adam(0.01)
    opt_state = tx.init(params)
    loss_fn = jp.model_state_loss_fn(model, train=True)
    inputs = {"batch": batch, "batch_stats": {}, "dropout_key": jax.random.key(1)}
    for _ in range(3):
        u, opt_state = tx.update(jax.grad(loss_fn)(params, inputs), opt_state)
        params = optax.apply_updates(params, u)
    state = types.SimpleNamespace(step=3, params=params, batch_stats={}, opt_state=opt_state)
    exact = {"tol": 1e-7, "num_iters": 2000}
    adam = {"momentum": 0.9, "momentum_kind": "ema", "preconditioner": "adam", **exact}
    rows = {
        name: jp.make_probe_fn(model, probes=("sharpness",), lr=0.01, options={"sharpness": opts})(
            state, batch, jax.random.key(3)
        )
        for name, opts in (("adam", adam), ("plain", exact))
    }
    want = jp.sharpness(loss_fn, params, inputs, lr=0.01, preconditioner=jp.adam_preconditioner(opt_state), **exact)
    assert rows["adam"]["sharpness/lambda_max"] == pytest.approx(want["lambda_max"], rel=1e-3)
    assert rows["adam"]["sharpness/threshold"] == pytest.approx(3800.0)
    assert rows["plain"]["sharpness/threshold"] == pytest.approx(200.0)
    assert abs(rows["plain"]["sharpness/lambda_max"] - want["lambda_max"]) > 0.1 * abs(want["lambda_max"])
    probe_fn = jp.make_probe_fn(model, probes=("sharpness",), lr=0.01)
    with pytest.raises(ValueError, match=r"'sharpness' probe is a host loop .* call probe_fn eagerly"):
        jax.jit(lambda p: probe_fn(types.SimpleNamespace(**{**vars(state), "params": p}), batch, jax.random.key(3)))(
            params
        )


def test_lambda_max_is_the_largest_eigenvalue_where_a_negative_one_dominates():
    # the case seen at the version floors on a real MLP: eigenvalues +3.35 and −3.40 (power iteration stalls there)
    loss_fn, batch = quadratic((3.35, -3.4, 1.0, 0.5, -0.2))
    out = jp.sharpness(loss_fn, jnp.ones(5), batch, lr=0.1, tol=1e-6)
    assert out["lambda_max"] == pytest.approx(3.35, rel=1e-5) and out["converged"]
