"""Landscape probes against closed forms: a quadratic L(w) = ½wᵀAw + bᵀw with known A, a 2-layer linear network for
ICS (Santurkar et al. Definition 2.1) by hand in numpy, filter normalization, the training state left untouched,
pmap over 4 fake devices equal to one device on the global batch, and every bad input."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm.probes as jp
from jaxnorm.lab.models import build_model
from jaxnorm.lab.train.steps import create_state
from jaxnorm.probes._common import execution, planned

N = 10
D = 4


def _spectrum_matrix(eigs, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigs), len(eigs))))
    return (q * np.asarray(eigs, np.float64)) @ q.T


SPD = np.array([10.0, 7.0, 5.0, 3.0, 2.0, 1.5, 1.0, 0.5, 0.2, 0.1])
INDEF = np.array([-9.0, 6.0, -4.0, 2.5, 2.0, -1.5, 1.0, 0.5, -0.3, 0.1])  # by magnitude: −9, 6, −4


def quad_loss(params, batch):
    w = params["w"]
    return 0.5 * w @ batch["A"] @ w + batch["b"] @ w


def _quadratic(eigs, seed=0):
    rng = np.random.default_rng(seed + 1)
    a = _spectrum_matrix(eigs, seed)
    b = rng.normal(size=N)
    w = rng.normal(size=N)
    params = {"w": jnp.asarray(w, jnp.float32)}
    batch = {"A": jnp.asarray(a, jnp.float32), "b": jnp.asarray(b, jnp.float32)}
    a32 = np.asarray(batch["A"], np.float64)  # the float32 matrix the loss actually sees
    return a32, np.asarray(batch["b"], np.float64), np.asarray(params["w"], np.float64), params, batch


# ---- Santurkar probes on the quadratic -----------------------------------------------------------------------------


def test_santurkar_quadratic_closed_form():
    a, b, w, params, batch = _quadratic(SPD)
    g = a @ w + b
    ag = a @ g
    r = jp.santurkar_probe(quad_loss, params, batch, lr=0.1)
    etas = 0.1 * np.geomspace(0.5, 4.0, 8)
    np.testing.assert_allclose(r["etas"], etas, rtol=1e-6)
    loss0 = 0.5 * w @ a @ w + b @ w
    # L(w − ηg) = L(w) − η‖g‖² + ½η² gᵀAg ; ∇L(w − ηg) − g = −ηAg
    np.testing.assert_allclose(r["losses"], loss0 - etas * (g @ g) + 0.5 * etas**2 * (g @ ag), rtol=1e-4)
    np.testing.assert_allclose(r["grad_changes"], etas * np.linalg.norm(ag), rtol=1e-4)
    beta = np.linalg.norm(ag) / np.linalg.norm(g)
    np.testing.assert_allclose(r["beta_smoothness"], beta, rtol=1e-4)
    assert beta <= SPD.max()
    np.testing.assert_allclose(r["loss"], loss0, rtol=1e-5)
    np.testing.assert_allclose(r["grad_norm"], np.linalg.norm(g), rtol=1e-5)
    np.testing.assert_allclose([r["loss_min"], r["loss_max"]], [r["losses"].min(), r["losses"].max()])
    np.testing.assert_allclose(
        [r["grad_change_min"], r["grad_change_max"]], [r["grad_changes"][0], r["grad_changes"][-1]], rtol=1e-6
    )
    # every evaluation plan gives the same numbers: one vmap, groups of 3 (+ a remainder of 2) unrolled or in a
    # scan loop, one at a time
    for chunk, unroll in ((None, None), (3, True), (3, False), (1, False)):
        rc = planned(jp.santurkar_probe, unroll=unroll)(quad_loss, params, batch, lr=0.1, chunk=chunk)
        np.testing.assert_allclose(rc["grad_changes"], r["grad_changes"], rtol=1e-5)
        np.testing.assert_allclose(rc["losses"], r["losses"], rtol=1e-5)
    # the host loop (one compiled program of `group` evaluations, called ⌈(K + 1) / group⌉ times; 8 + 1 = 9
    # evaluations: exact calls for 1 and 3, a padded last call for 2, 4 and 5, one call for 9 and 16)
    rnd = dict(lr=0.1, direction="random", key=jax.random.key(3))
    r_rnd = jp.santurkar_probe(quad_loss, params, batch, **rnd)
    for group in (1, 2, 3, 4, 5, 9, 16):
        host = planned(jp.santurkar_probe, loop="host", group=group)(quad_loss, params, batch, lr=0.1)
        assert host.keys() == r.keys()
        for k in r:
            np.testing.assert_allclose(host[k], r[k], rtol=1e-5, err_msg=f"group={group} {k}")
        host_rnd = planned(jp.santurkar_probe, loop="host", group=group)(quad_loss, params, batch, **rnd)
        for k in ("losses", "grad_changes", "beta_smoothness", "direction_norm"):
            np.testing.assert_allclose(host_rnd[k], r_rnd[k], rtol=1e-5, err_msg=f"random group={group} {k}")
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="group must be a positive int"):
            planned(jp.santurkar_probe, loop="host", group=bad)(quad_loss, params, batch, lr=0.1)
    with pytest.raises(ValueError, match="loop='host' runs a Python loop of compiled evaluations and cannot be traced"):
        jax.jit(lambda p: planned(jp.santurkar_probe, loop="host")(quad_loss, p, batch, lr=0.1))(params)
    lin = jp.eta_grid(0.1, 0.5, 4.0, num=4, spacing="linear")
    np.testing.assert_allclose(lin, [0.05, 0.1666667, 0.2833333, 0.4], rtol=1e-6)


def test_santurkar_random_direction_quadratic():
    a, b, w, params, batch = _quadratic(SPD)
    g = a @ w + b
    r = jp.santurkar_probe(quad_loss, params, batch, lr=0.1, direction="random", key=jax.random.key(3))
    np.testing.assert_allclose(r["direction_norm"], np.linalg.norm(g), rtol=1e-5)  # scaled to ‖g‖
    # on a quadratic ‖∇L(w − ηd) − g‖ = η‖Ad‖: linear in η, and β = ‖Ad‖/‖d‖ lies in [λ_min, λ_max]
    ratio = np.asarray(r["grad_changes"]) / np.asarray(r["etas"])
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-4)
    assert SPD.min() - 1e-4 <= float(r["beta_smoothness"]) <= SPD.max() + 1e-4
    r2 = jp.santurkar_probe(quad_loss, params, batch, lr=0.1, direction="random", key=jax.random.key(3))
    np.testing.assert_array_equal(r["losses"], r2["losses"])  # the key fixes the direction
    # the direction is not the gradient (whose β is ‖Ag‖/‖g‖), and another key is another direction
    beta_g = np.linalg.norm(a @ g) / np.linalg.norm(g)
    assert abs(float(r["beta_smoothness"]) - beta_g) > 1e-3 * beta_g
    r4 = jp.santurkar_probe(quad_loss, params, batch, lr=0.1, direction="random", key=jax.random.key(4))
    assert abs(float(r4["beta_smoothness"]) - float(r["beta_smoothness"])) > 1e-3 * beta_g
    assert not np.allclose(r4["losses"], r["losses"], rtol=1e-4)


def test_santurkar_compiles_once():
    _, _, _, params, batch = _quadratic(SPD)

    def counting(calls):
        def loss(p, bt):
            calls.append(1)
            return quad_loss(p, bt)

        return loss

    def run_all(loss_fn, rounds):
        for i in range(rounds):  # new params, batch, lr and grid values of the same shapes
            p = {"w": params["w"] + i}
            b = {"A": batch["A"] * (i + 1), "b": batch["b"]}
            jp.santurkar_probe(loss_fn, p, b, lr=0.1 * (i + 1))
            jp.santurkar_probe(loss_fn, p, b, lr=i + 1)  # a python int: the same program
            jp.santurkar_probe(loss_fn, p, b, etas=np.linspace(0.1, 1.0, 8) * (i + 1))

    first = []
    run_all(counting(first), 1)  # python calls of the loss while tracing the lr and the etas forms once
    calls = []
    run_all(chex.assert_max_traces(counting(calls), n=len(first)), 4)
    assert len(calls) == len(first)  # no retrace after the first round
    # the host loop compiles its one value-and-gradient program once, for every lr, grid and step size
    host = []
    loss_fn = counting(host)
    host_probe = planned(jp.santurkar_probe, loop="host")
    host_probe(loss_fn, params, batch, lr=0.1)
    once = len(host)
    for i in range(3):
        host_probe(loss_fn, {"w": params["w"] + i}, batch, lr=0.1 * (i + 1))
        host_probe(loss_fn, {"w": params["w"] + i}, batch, etas=np.linspace(0.1, 1.0, 5))
    assert len(host) == once, (once, len(host))


def test_santurkar_default_plan_is_one_evaluation_per_program_eagerly_on_cpu_and_one_program_traced():
    """loop='auto': eagerly on CPU, one compiled value-and-gradient evaluation called K + 1 times (the loss traced
    once, however many step sizes); under jit, the one-program plan (the loss traced once per evaluation)."""
    _, _, _, params, batch = _quadratic(SPD)
    traced = []

    def loss(p, b):
        traced.append(1)
        return quad_loss(p, b)

    eager = jp.santurkar_probe(loss, params, batch, lr=0.1)  # K = 8
    n_eager = len(traced)
    del traced[:]
    inside = jax.jit(lambda p: jp.santurkar_probe(loss, p, batch, lr=0.1))(params)
    assert n_eager <= 2 < 9 <= len(traced), (n_eager, len(traced))  # (+1: the scalar-loss check)
    for k in ("losses", "grad_changes", "beta_smoothness"):
        np.testing.assert_allclose(eager[k], inside[k], rtol=1e-5)


# ---- curvature on the quadratic ------------------------------------------------------------------------------------


def test_hvp_and_directional_curvature():
    a, b, w, params, batch = _quadratic(INDEF)
    v = np.random.default_rng(5).normal(size=N)
    np.testing.assert_allclose(
        jp.hvp(quad_loss, params, batch, {"w": jnp.asarray(v, jnp.float32)})["w"], a @ v, rtol=1e-4, atol=1e-4
    )
    g = a @ w + b
    np.testing.assert_allclose(jp.directional_curvature(quad_loss, params, batch), g @ a @ g / (g @ g), rtol=1e-4)
    np.testing.assert_allclose(
        jp.directional_curvature(quad_loss, params, batch, {"w": jnp.asarray(v, jnp.float32)}),
        v @ a @ v / (v @ v),
        rtol=1e-4,
    )


@pytest.mark.parametrize("eigs", [SPD, INDEF], ids=["spd", "indefinite"])
@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_top_eigenvalues_match_eigh(method, eigs):
    a, _, _, params, batch = _quadratic(eigs)
    lam, q = np.linalg.eigh(a)
    order = np.argsort(-np.abs(lam))[:3]
    for loop in ("device", "host"):
        vals, vecs = planned(jp.hessian_top_eigenvalues, loop=loop)(
            quad_loss,
            params,
            batch,
            k=3,
            key=jax.random.key(0),
            method=method,
            num_iters=150 if method == "power" else N,
            tol=1e-7,
        )
        np.testing.assert_allclose(vals, lam[order], rtol=1e-3, atol=1e-3)  # signed, by magnitude
        assert vecs["w"].shape == (3, N)
        overlap = np.abs(np.sum(np.asarray(vecs["w"], np.float64) * q[:, order].T, axis=1))
        np.testing.assert_allclose(overlap, 1.0, atol=1e-3)


def test_hessian_trace_hutchinson():
    a, _, _, params, batch = _quadratic(INDEF)
    trace_on = {loop: planned(jp.hessian_trace, loop=loop) for loop in ("host", "device")}
    r = trace_on["device"](quad_loss, params, batch, key=jax.random.key(1), num_samples=4000, chunk=None)
    # the same vectors on the host loop (groups of 3, the last one short) and the device program
    host = trace_on["host"](quad_loss, params, batch, key=jax.random.key(1), num_samples=7, chunk=3)
    dev = trace_on["device"](quad_loss, params, batch, key=jax.random.key(1), num_samples=7, chunk=3)
    np.testing.assert_allclose(host["trace"], dev["trace"], rtol=1e-5)
    off = a - np.diag(np.diag(a))
    se = np.sqrt(2 * np.sum(off**2) / 4000)  # the exact standard error of the mean
    assert abs(float(r["trace"]) - np.trace(a)) < 4 * se
    np.testing.assert_allclose(r["std_error"], se, rtol=0.15)
    assert float(r["num_params"]) == N


def test_spectral_density():
    a, _, _, params, batch = _quadratic(SPD)
    runs = 400
    r = planned(jp.hessian_spectral_density, loop="device")(
        quad_loss,
        params,
        batch,
        key=jax.random.key(2),
        num_lanczos_steps=N,
        num_runs=runs,
        num_points=2000,
        chunk=None,
    )
    few = [
        planned(jp.hessian_spectral_density, loop=loop)(
            quad_loss, params, batch, key=jax.random.key(2), num_lanczos_steps=N, num_runs=2, num_points=50
        )
        for loop in ("host", "device")
    ]
    np.testing.assert_allclose(few[0]["nodes"], few[1]["nodes"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(few[0]["density"], few[1]["density"], rtol=1e-3, atol=1e-5)
    grid, dens = np.asarray(r["grid"], np.float64), np.asarray(r["density"], np.float64)
    np.testing.assert_allclose(np.trapezoid(dens, grid), 1.0, atol=1e-3)
    np.testing.assert_allclose(np.sum(r["weights"], axis=1), 1.0, atol=1e-4)
    # N Lanczos steps on an N×N matrix: the nodes are its eigenvalues
    np.testing.assert_allclose(np.sort(np.asarray(r["nodes"][0])), SPD[::-1], rtol=1e-3, atol=1e-3)
    off = a - np.diag(np.diag(a))
    se = np.sqrt(2 * np.sum(off**2)) / N / np.sqrt(runs)  # std error of the mean of vᵀAv/N
    mean = np.trapezoid(dens * grid, grid)
    assert abs(mean - np.trace(a) / N) < 4 * se + 1e-3
    np.testing.assert_allclose(mean, np.mean(np.sum(r["nodes"] * r["weights"], axis=1)), rtol=1e-3)


# ---- internal covariate shift ---------------------------------------------------------------------------------------


def _two_layer():
    rng = np.random.default_rng(7)
    w1, w2 = rng.normal(size=(3, 4)), rng.normal(size=(2, 3))
    x, y = rng.normal(size=(4, 5)), rng.normal(size=(2, 5))
    params = {"layer1": jnp.asarray(w1, jnp.float32), "layer2": jnp.asarray(w2, jnp.float32)}
    batch = {"x": jnp.asarray(x, jnp.float32), "y": jnp.asarray(y, jnp.float32)}
    return [np.asarray(v, np.float64) for v in (w1, w2, x, y)], params, batch


def lin2_loss(params, batch):  # ½‖W2 W1 X − Y‖²_F
    r = params["layer2"] @ params["layer1"] @ batch["x"] - batch["y"]
    return 0.5 * jnp.sum(r**2)


def _lin2_grads(w1, w2, x, y):
    r = w2 @ w1 @ x - y
    return w2.T @ r @ x.T, r @ (w1 @ x).T  # ∂/∂W1, ∂/∂W2


def test_ics_two_layer_linear_by_hand():
    (w1, w2, x, y), params, batch = _two_layer()
    lr = 0.05
    g1, g2 = _lin2_grads(w1, w2, x, y)
    w1_new, w2_new = w1 - lr * g1, w2 - lr * g2
    g2_shift = _lin2_grads(w1_new, w2, x, y)[1]  # layer 2's gradient after layer 1 took its step
    r = jp.internal_covariate_shift(lin2_loss, params, batch, lr=lr)
    assert float(r["l2"]["layer1"]) == 0.0 and float(r["cos"]["layer1"]) == 1.0  # nothing precedes layer 1
    np.testing.assert_allclose(r["l2"]["layer2"], np.linalg.norm(g2 - g2_shift), rtol=1e-4)
    cos = np.sum(g2 * g2_shift) / (np.linalg.norm(g2) * np.linalg.norm(g2_shift))
    np.testing.assert_allclose(r["cos"]["layer2"], cos, rtol=1e-5)
    np.testing.assert_allclose(r["grad_norm"]["layer2"], np.linalg.norm(g2), rtol=1e-5)
    np.testing.assert_allclose(r["grad_norm_shifted"]["layer2"], np.linalg.norm(g2_shift), rtol=1e-5)
    # an explicit reversed order: layer 1's G′ now sees the updated layer 2
    rr = jp.internal_covariate_shift(lin2_loss, params, batch, lr=lr, order=["layer2", "layer1"], layers="layer1")
    assert list(rr["l2"]) == ["layer1"]
    np.testing.assert_allclose(rr["l2"]["layer1"], np.linalg.norm(g1 - _lin2_grads(w1, w2_new, x, y)[0]), rtol=1e-4)
    # an optax update (momentum SGD from a zero trace: the first step is SGD), as tx + opt_state or as update_fn
    tx = optax.sgd(lr, momentum=0.9)
    opt_state = tx.init(params)
    ro = jp.internal_covariate_shift(lin2_loss, params, batch, tx=tx, opt_state=opt_state, chunk=None)
    np.testing.assert_allclose(ro["l2"]["layer2"], r["l2"]["layer2"], rtol=1e-5)
    ru = planned(jp.internal_covariate_shift, unroll=False)(
        lin2_loss,
        params,
        batch,
        chunk=1,
        update_fn=lambda p, g: optax.apply_updates(p, tx.update(g, opt_state, p)[0]),
    )
    np.testing.assert_allclose(ru["l2"]["layer2"], r["l2"]["layer2"], rtol=1e-5)
    # Adam's first step moves every entry by ≈ lr·sign(g): a different W1′, so a different G′
    adam = optax.adam(lr)
    ra = jp.internal_covariate_shift(lin2_loss, params, batch, tx=adam, opt_state=adam.init(params))
    w1_adam = w1 - lr * g1 / (np.abs(g1) + 1e-8)
    np.testing.assert_allclose(ra["l2"]["layer2"], np.linalg.norm(g2 - _lin2_grads(w1_adam, w2, x, y)[1]), rtol=1e-4)


def test_layer_order_follows_the_computation_not_the_keys():
    params = {"a_last": jnp.ones((3, 2)), "z_first": jnp.ones((4, 3)), "unused": jnp.ones(())}

    def loss(p, x):
        return jnp.sum(jax.nn.relu(x @ p["z_first"]) @ p["a_last"])

    assert jp.layer_order(loss, params, jnp.ones((5, 4))) == ("z_first", "a_last", "unused")
    model = build_model("simple_cnn", channels=(2, 3), norm="batch", num_classes=2)
    x = jnp.ones((2, 4, 4, 1))
    v = jax.tree.map(
        lambda t: jnp.zeros(t.shape, t.dtype),  # shapes suffice: nothing runs
        jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)),
    )
    sorted_params = v["params"]  # as an optimizer step returns them: jax.tree.map sorts dict keys
    assert list(sorted_params) == ["conv_0", "conv_1", "head", "norm_0", "norm_1"]
    lf = jp.model_loss_fn(model, v["batch_stats"])
    assert jp.layer_order(lf, sorted_params, (x, jnp.zeros(2, jnp.int32))) == (
        "conv_0",
        "norm_0",
        "conv_1",
        "norm_1",
        "head",
    )


# ---- loss slices and filter normalization ---------------------------------------------------------------------------


def test_filter_normalization():
    rng = np.random.default_rng(0)
    params = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
        "dense": {"kernel": 3.0 * rng.normal(size=(5, 3))},
        "norm": {"scale": np.full(4, 2.0)},
    }
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
    key = jax.random.key(3)
    d = jp.filter_normalized_direction(key, params)
    for name, axes in (("conv", (0, 1, 2)), ("dense", (0,))):
        w, dk = np.asarray(params[name]["kernel"]), np.asarray(d[name]["kernel"])
        np.testing.assert_allclose(np.sqrt((dk**2).sum(axes)), np.sqrt((w**2).sum(axes)), rtol=1e-5)
    assert not np.any(np.asarray(d["conv"]["bias"])) and not np.any(np.asarray(d["norm"]["scale"]))
    d1 = jp.filter_normalized_direction(key, params, include_1d=True)
    np.testing.assert_allclose(np.linalg.norm(d1["norm"]["scale"]), np.linalg.norm(params["norm"]["scale"]), rtol=1e-5)
    np.testing.assert_array_equal(d1["conv"]["kernel"], d["conv"]["kernel"])


def test_loss_slices_quadratic():
    a, b, w, params, batch = _quadratic(SPD)
    g = a @ w + b
    loss0 = 0.5 * w @ a @ w + b @ w
    s = jp.loss_slice_1d(quad_loss, params, batch, key=jax.random.key(0), steps=5, span=2.0, include_1d=True)
    d = np.asarray(jp.filter_normalized_direction(jax.random.key(0), params, include_1d=True)["w"], np.float64)
    np.testing.assert_allclose(np.linalg.norm(d), np.linalg.norm(w), rtol=1e-5)  # a 1-D leaf as one filter
    al = np.asarray(s["alphas"])
    np.testing.assert_allclose(al, [-2, -1, 0, 1, 2])
    np.testing.assert_allclose(s["losses"], loss0 + al * (g @ d) + 0.5 * al**2 * (d @ a @ d), rtol=1e-4, atol=1e-4)
    # w is 1-D: by default the direction is zero and the slice is flat
    flat = jp.loss_slice_1d(quad_loss, params, batch, key=jax.random.key(0), steps=3)
    np.testing.assert_allclose(flat["losses"], loss0, rtol=1e-5)
    d1 = {"w": jnp.asarray(np.eye(N)[0], jnp.float32)}
    d2 = {"w": jnp.asarray(np.eye(N)[1], jnp.float32)}
    # a given direction is used as is (with a key too: the key is not drawn from), along e₀
    along = jp.loss_slice_1d(quad_loss, params, batch, key=jax.random.key(0), direction=d1, steps=3, span=1.5)
    al = np.asarray(along["alphas"])
    np.testing.assert_allclose(along["losses"], loss0 + al * g[0] + 0.5 * al**2 * a[0, 0], rtol=1e-4, atol=1e-4)
    s2 = jp.loss_slice_2d(quad_loss, params, batch, directions=(d1, d2), steps=(3, 4), span=(-1.0, 1.0), chunk=5)
    assert s2["losses"].shape == (3, 4)
    i, j = 2, 3
    wp = w.copy()
    wp[0] += float(s2["alphas"][i])
    wp[1] += float(s2["betas"][j])
    np.testing.assert_allclose(s2["losses"][i, j], 0.5 * wp @ a @ wp + b @ wp, rtol=1e-4)


# ---- Flax model: the training state stays untouched ------------------------------------------------------------------


def _bn_state():
    model = build_model("mlp", hidden=(6,), norm="batch", dropout="dropout", dropout_rate=0.3, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (8, 5))
    batch = {"x": x, "y": jnp.arange(8) % 3, "mask": jnp.ones(8, bool)}
    tx = optax.sgd(0.1, momentum=0.9)

    @jax.jit  # one compiled program: cheaper than dozens of eager ops
    def make():
        state = create_state(model, tx, x, 0)
        # non-trivial running statistics and momentum trace
        _, new_vars = model.apply(
            state.variables(), x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)}
        )
        _, opt_state = tx.update(jax.tree.map(jnp.ones_like, state.params), state.opt_state, state.params)
        return state.replace(batch_stats=new_vars["batch_stats"], opt_state=opt_state)

    return model, tx, make(), batch


def test_probes_leave_training_state_untouched():
    model, tx, state, batch = _bn_state()
    before = jax.tree.map(lambda v: np.array(v, copy=True), state)
    vmapped = {"chunk": None}  # one vmap: the smallest program to compile (CPU defaults unroll K evaluations)
    probe_fn = jax.jit(
        jp.make_probe_fn(
            model,
            probes=("santurkar", "ics", "directional_curvature"),
            lr=0.1,
            tx=tx,
            options={"santurkar": vmapped, "ics": {"layers": ["dense_0", "head"], **vmapped}},
        )
    )
    out = probe_fn(state, batch, jax.random.key(4))
    assert {
        "santurkar/beta_smoothness",
        "santurkar/losses",
        "ics/l2/head",
        "ics/cos/dense_0",
        "hessian/directional_curvature",
    } <= set(out)
    assert out["santurkar/losses"].shape == (8,)
    chex.assert_tree_all_finite(out)
    assert float(out["ics/l2/dense_0"]) == 0.0  # dense_0 is the first layer
    for leaf in jax.tree.leaves(state):
        assert not leaf.is_deleted()  # nothing donated
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)
    # model_loss_fn: a fixed dropout key gives a deterministic loss; train mode uses the batch's statistics
    lf = jax.jit(lambda k: jp.model_loss_fn(model, state.batch_stats, k)(state.params, batch))
    k9, k10 = jax.random.key(9), jax.random.key(10)
    assert float(lf(k9)) == float(lf(k9)) != float(lf(k10))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)


def test_probe_fn_ics_takes_the_optimizers_step_from_tx():
    """make_probe_fn(tx=SGD with momentum 0.9, trace 1): ICS's earlier layers move by −0.1·(g + 0.9), the step
    written by hand as update_fn, not by the plain −lr·g that the run would take without tx."""
    model, tx, state, batch = _bn_state()
    ics = {"layers": ["dense_0", "head"], "chunk": None}

    def run(**kw):
        fn = jax.jit(jp.make_probe_fn(model, probes=("ics",), **kw))
        return fn(state, batch, jax.random.key(4))

    by_tx = run(tx=tx, lr=0.1, options={"ics": ics})
    by_hand = run(
        options={"ics": {**ics, "update_fn": lambda p, g: jax.tree.map(lambda w, d: w - 0.1 * (d + 0.9), p, g)}}
    )
    plain = run(lr=0.1, options={"ics": ics})
    for k in ("ics/l2/head", "ics/cos/head"):
        np.testing.assert_allclose(by_tx[k], by_hand[k], rtol=1e-5, err_msg=k)
    assert abs(float(by_tx["ics/l2/head"]) - float(plain["ics/l2/head"])) > 1e-3 * abs(float(plain["ics/l2/head"]))


def test_probe_fn_eager_compiles_once_per_shape():
    """The loop may call probe_fn eagerly every N steps: one loss_fn serves every state, so the probes' compiled
    programs are reused."""
    model, tx, state, batch = _bn_state()
    traces = []

    class Counting:  # the probe's loss calls model.apply only while the probe is traced (compiled)
        def apply(self, *args, **kwargs):
            traces.append(1)
            return model.apply(*args, **kwargs)

    probe_fn = jp.make_probe_fn(
        Counting(), probes=("santurkar",), lr=lambda step: 0.1 + 0.01 * step, options={"santurkar": {"chunk": None}}
    )
    out = probe_fn(state, batch, jax.random.key(0))
    np.testing.assert_allclose(out["santurkar/etas"], 0.1 * np.geomspace(0.5, 4, 8), rtol=1e-6)
    size = len(traces)
    state2 = state.replace(step=state.step + 1, params=jax.tree.map(lambda w: w * 1.1, state.params))
    out2 = probe_fn(state2, batch, jax.random.key(1))
    np.testing.assert_allclose(out2["santurkar/etas"], 0.11 * np.geomspace(0.5, 4, 8), rtol=1e-6)
    assert size > 0 and len(traces) == size
    assert float(out2["santurkar/loss"]) != float(out["santurkar/loss"])


# ---- pmap over 4 fake devices = one device on the global batch ------------------------------------------------------


def test_pmap_probe_equals_global_batch():
    """make_probe_fn under pmap (axis_name='batch': losses, gradients and HVPs pmean'd; model_loss_fn's per-device
    share makes the mean exact even with an uneven mask) = the same probes on one device and the global batch."""
    assert jax.device_count() >= D, "tests/conftest.py fakes 4 CPU devices"
    model = build_model("mlp", hidden=(6,), num_classes=3)  # no batch statistics: per-example losses, exact
    rng = np.random.default_rng(0)  # numpy inputs: no eager jax ops to compile
    x = rng.normal(size=(16, 5)).astype(np.float32)
    mask = np.ones(16, bool)
    mask[[1, 2, 3, 9]] = False  # device 0 keeps 1 example, device 2 keeps 3
    batch = {"x": x, "y": np.arange(16) % 3, "mask": mask}
    state = jax.jit(lambda: create_state(model, optax.sgd(0.5), x, 1))()
    key = jax.random.key(2)
    kw = dict(
        probes=("santurkar_random", "directional_curvature"),
        lr=0.5,
        options={"santurkar_random": {"chunk": 2}},
    )
    with execution(unroll=False):  # groups of 2 in a lax.scan loop
        one = jax.jit(jp.make_probe_fn(model, **kw))(state, batch, key)
        many = jax.pmap(jp.make_probe_fn(model, axis_name="batch", **kw), axis_name="batch", in_axes=(None, 0, None))(
            state, {k: v.reshape((D, 4) + v.shape[1:]) for k, v in batch.items()}, key
        )
    assert set(many) == set(one)
    for name in (
        "santurkar_random/losses",
        "santurkar_random/grad_changes",
        "santurkar_random/beta_smoothness",
        "santurkar_random/grad_norm",
        "hessian/directional_curvature",
    ):
        got = np.asarray(many[name])
        np.testing.assert_allclose(got[0], one[name], rtol=3e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(got[0], got[3])  # the same on every device


def test_pmap_sync_batch_norm_equals_global_batch():
    """With batch norm the probes see per-device statistics unless the model syncs them (axis_name='batch'): then
    the pmap probe is the global-batch probe."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    batch = {"x": x, "y": np.arange(16) % 3}
    local = build_model("mlp", hidden=(6,), norm="batch", num_classes=3)
    synced = build_model("mlp", hidden=(6,), norm="batch", num_classes=3, axis_name="batch")
    state = jax.jit(lambda: create_state(local, optax.sgd(0.5), x, 1))()
    kw = dict(probes=("ics",), lr=0.5, options={"ics": {"chunk": None}})
    one = jax.jit(jp.make_probe_fn(local, **kw))(state, batch, jax.random.key(0))
    many = jax.pmap(jp.make_probe_fn(synced, axis_name="batch", **kw), axis_name="batch", in_axes=(None, 0, None))(
        state, {k: v.reshape((D, 4) + v.shape[1:]) for k, v in batch.items()}, jax.random.key(0)
    )
    for layer in ("dense_0", "norm_0", "head"):
        np.testing.assert_allclose(np.asarray(many[f"ics/l2/{layer}"])[0], one[f"ics/l2/{layer}"], rtol=1e-4, atol=1e-7)
    assert float(one["ics/l2/head"]) > 0


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    _, _, _, params, batch = _quadratic(SPD)
    with pytest.raises(ValueError, match=r"non-empty 1-D grid.*shape \(0,\)"):
        jp.santurkar_probe(quad_loss, params, batch, etas=[])
    with pytest.raises(ValueError, match=r"positive and finite, got \[0\.0, -0\.1\] in a grid of 3"):
        jp.santurkar_probe(quad_loss, params, batch, etas=[0.0, -0.1, 0.2])
    with pytest.raises(ValueError, match=r"lr must be a positive finite number.*got -0\.1"):
        jp.santurkar_probe(quad_loss, params, batch, lr=-0.1)
    with pytest.raises(ValueError, match=r"pass lr="):
        jp.santurkar_probe(quad_loss, params, batch)
    with pytest.raises(ValueError, match=r"direction must be one of"):
        jp.santurkar_probe(quad_loss, params, batch, lr=0.1, direction="hessian")
    with pytest.raises(ValueError, match=r"needs a PRNG key"):
        jp.santurkar_probe(quad_loss, params, batch, lr=0.1, direction="random")
    with pytest.raises(ValueError, match=r"need 0 < low ≤ high"):
        jp.eta_grid(0.1, -1.0, 4.0)

    (_, p2, b2) = _two_layer()
    with pytest.raises(ValueError, match=r"lr must be positive, got 0\.0"):
        jp.internal_covariate_shift(lin2_loss, p2, b2, lr=0.0)
    with pytest.raises(ValueError, match=r"no layer named 'layer3'.*valid layer names.*\['layer1', 'layer2'\]"):
        jp.internal_covariate_shift(lin2_loss, p2, b2, lr=0.1, layers=["layer1", "layer3"])
    with pytest.raises(ValueError, match=r"layers is empty; name at least one of \['layer1', 'layer2'\]"):
        jp.internal_covariate_shift(lin2_loss, p2, b2, lr=0.1, layers=[])
    with pytest.raises(ValueError, match=r"order must list every.*missing \['layer2'\]"):
        jp.internal_covariate_shift(lin2_loss, p2, b2, lr=0.1, order=["layer1"])
    with pytest.raises(ValueError, match=r"pass lr="):
        jp.internal_covariate_shift(lin2_loss, p2, b2)
    with pytest.raises(ValueError, match=r"tx= needs the optimizer state opt_state="):
        jp.internal_covariate_shift(lin2_loss, p2, b2, tx=optax.sgd(0.1))

    with pytest.raises(ValueError, match=r"k=11 eigenvalues but params has only 10 entries.*use k ≤ 10"):
        jp.hessian_top_eigenvalues(quad_loss, params, batch, k=11, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"num_iters ≥ k"):
        jp.hessian_top_eigenvalues(quad_loss, params, batch, k=3, key=jax.random.key(0), method="lanczos", num_iters=2)
    with pytest.raises(ValueError, match=r"method must be one of"):
        jp.hessian_top_eigenvalues(quad_loss, params, batch, key=jax.random.key(0), method="arnoldi")

    def vector_loss(p, bt):
        return p["w"] * 2.0

    for probe in (
        lambda: jp.santurkar_probe(vector_loss, params, batch, lr=0.1),
        lambda: jp.hvp(vector_loss, params, batch, params),
        lambda: jp.hessian_trace(vector_loss, params, batch, key=jax.random.key(0)),
        lambda: jp.loss_slice_1d(vector_loss, params, batch, key=jax.random.key(0)),
        lambda: jp.internal_covariate_shift(vector_loss, params, batch, lr=0.1),
    ):
        with pytest.raises(ValueError, match=r"must return a scalar, got shape \(10,\).*jnp\.mean"):
            probe()

    with pytest.raises(ValueError, match=r"span must be"):
        jp.loss_slice_1d(quad_loss, params, batch, key=jax.random.key(0), span=0.0)
    with pytest.raises(ValueError, match=r"unknown probes \['hessian'\]"):
        jp.make_probe_fn(None, probes=("hessian",), lr=0.1)
    with pytest.raises(ValueError, match=r"probes \['santurkar', 'ics'\] need lr="):
        jp.make_probe_fn(None, probes=("santurkar", "ics"))
