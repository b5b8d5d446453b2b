"""Tests of weight norm (Salimans & Kingma 2016), spectral norm (Miyato et al. 2018) and Dynamic Tanh (Zhu et al.
2025): the papers' formulas against float64 numpy, parity with flax.linen.WeightNorm / SpectralNorm (outputs,
gradients, u and sigma over several steps, eval mode), gradients, jit/vmap, dtypes, errors, and the model zoo's
``norm='dyt'`` and ``kernel_norm=`` options. Tiny shapes: seconds on CPU."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxnorm as jn
import jaxnorm.lab.models as zoo
from jaxnorm import nn as jnn
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop, steps


def _check_grads64(f, args, order=2, modes=("fwd", "rev")):
    """jax.test_util.check_grads in float64, where finite differences meet its default tolerance (1e-5)."""
    with jax.enable_x64(True):
        args = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), args)
        check_grads(f, args, order=order, modes=modes)


def _normal(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


KERNELS = {"dense": (5, 7), "conv": (3, 3, 4, 6)}

# flax layer factories and matching inputs: Dense on N×C, Conv on N×H×W×C
LAYERS = {
    "dense": (lambda: nn.Dense(7), (4, 5)),
    "conv": (lambda: nn.Conv(6, (3, 3)), (2, 5, 5, 4)),
}


def _wrapped(wrapper, make_layer, spectral, **kw):
    class M(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            layer = wrapper(make_layer(), **kw)
            return layer(x, update_stats=train) if spectral else layer(x)

    return M()


def _tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(q))


def _tree_close(a, b, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=rtol, atol=atol)


# ---- weight norm: the formula ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KERNELS))
def test_weight_norm_sets_each_output_units_length_to_g(kind):
    shape = KERNELS[kind]
    v, g = _normal(0, shape), _normal(1, shape[-1:]) * 3
    w = np.asarray(jn.weight_norm(v, g, epsilon=0.0), np.float64).reshape(-1, shape[-1])
    v64, g64 = np.asarray(v, np.float64).reshape(-1, shape[-1]), np.asarray(g, np.float64)
    norms = np.linalg.norm(w, axis=0)
    np.testing.assert_allclose(norms, np.abs(g64), rtol=1e-6)  # ‖w_j‖ = |g_j|
    np.testing.assert_allclose(w / g64, v64 / np.linalg.norm(v64, axis=0), rtol=1e-5, atol=1e-7)  # direction v_j/‖v_j‖
    # g = None is g = 1; ε sits inside the square root
    np.testing.assert_allclose(
        np.linalg.norm(np.asarray(jn.weight_norm(v), np.float64).reshape(-1, shape[-1]), axis=0), 1.0, rtol=1e-6
    )
    eps = 0.5
    want = v64 / np.sqrt((v64**2).sum(0) + eps) * g64
    np.testing.assert_allclose(np.asarray(jn.weight_norm(v, g, epsilon=eps)).reshape(-1, shape[-1]), want, rtol=1e-5)


def test_weight_norm_axes_and_gain_shapes():
    v = _normal(0, (3, 4, 5))
    v64 = np.asarray(v, np.float64)
    # the norm over axis 0 only: one gain per (4, 5) position; a (5,) gain broadcasts against the kept (4, 5)
    g = _normal(1, (4, 5))
    want = v64 / np.linalg.norm(v64, axis=0, keepdims=True) * np.asarray(g, np.float64)
    np.testing.assert_allclose(np.asarray(jn.weight_norm(v, g, axes=0, epsilon=0.0)), want, rtol=1e-5)
    g5 = jnp.arange(1.0, 6.0)
    want = v64 / np.linalg.norm(v64, axis=0, keepdims=True) * np.arange(1.0, 6.0)
    np.testing.assert_allclose(np.asarray(jn.weight_norm(v, g5, axes=(0,), epsilon=0.0)), want, rtol=1e-5)
    # all axes: the Frobenius norm of the whole kernel (flax's feature_axes=None), a scalar gain
    w = np.asarray(jn.weight_norm(v, 2.0, axes=(0, 1, 2), epsilon=0.0), np.float64)
    np.testing.assert_allclose(np.linalg.norm(w), 2.0, rtol=1e-6)
    # a vector normalized as a whole, and axes=() entry by entry (≈ sign)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(jn.weight_norm(v[0, 0], axes=0))), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jn.weight_norm(v, axes=())), np.sign(v64), rtol=1e-5)


def test_weight_norm_grads_jit_vmap_and_bf16():
    v, g = _normal(0, (4, 3)), _normal(1, (3,)) + 2.0
    _check_grads64(lambda v, g: jn.weight_norm(v, g), (v, g))
    # Salimans & Kingma's gradient: ∇_g L = ∇_w L · v/‖v‖ (per unit), and ∇_v L ⊥ v
    ct = _normal(2, (4, 3))
    gv, gg = jax.grad(lambda v, g: jnp.sum(jn.weight_norm(v, g) * ct), (0, 1))(v, g)
    vn = np.asarray(v) / np.linalg.norm(np.asarray(v), axis=0)
    np.testing.assert_allclose(np.asarray(gg), (np.asarray(ct) * vn).sum(0), rtol=1e-5)
    np.testing.assert_allclose((np.asarray(gv) * np.asarray(v)).sum(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(jn.weight_norm)(v, g)), np.asarray(jn.weight_norm(v, g)), rtol=1e-6)
    vs = _normal(3, (5, 4, 3))
    batched = jax.vmap(jn.weight_norm)(vs, jnp.ones((5, 3)))
    for i in range(5):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(jn.weight_norm(vs[i])), rtol=1e-6)
    vb = v.astype(jnp.bfloat16)
    out = jn.weight_norm(vb, g)
    assert out.dtype == jnp.bfloat16
    # computed in float32 from the bf16 values, rounded once at the end
    want = jn.weight_norm(vb.astype(jnp.float32), g).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))


def test_float64_stays_float64():
    with jax.enable_x64(True):
        v = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float64)
        assert jn.weight_norm(v).dtype == jnp.float64
        assert jn.dyt(v, 0.5).dtype == jnp.float64
        w, u, s = jn.spectral_normalize(v, jn.init_spectral_state(jax.random.key(0), v))
        assert w.dtype == jnp.float64 and u.dtype == jnp.float32 and s.dtype == jnp.float64


@pytest.mark.parametrize(
    "args, kw, error, match",
    [
        (
            (jnp.ones((3, 4), jnp.int32),),
            {},
            TypeError,
            r"weight_norm: the kernel v has dtype int32.*cast to a float dtype first",
        ),
        ((jnp.ones((3, 4), jnp.complex64),), {}, TypeError, r"complex64.*cast to a float dtype first"),
        ((jnp.ones((4,)),), {}, ValueError, r"rank >= 2 .*got shape \(4,\); pass axes=0"),
        (
            (jnp.ones((3, 4)), jnp.ones((3,))),
            {},
            ValueError,
            r"g of shape \(3,\) does not broadcast against the axes of v that are kept, shape \(4,\).*shape \(4,\)",
        ),
        ((jnp.ones((3, 4)),), {"axes": 2}, ValueError, r"axis 2 is out of range for v of shape \(3, 4\)"),
        ((jnp.ones((3, 4)),), {"epsilon": -1.0}, ValueError, r"epsilon must be a finite number >= 0"),
    ],
)
def test_weight_norm_errors(args, kw, error, match):
    with pytest.raises(error, match=match):
        jn.weight_norm(*args, **kw)


# ---- weight norm: the layer, parity with flax ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(LAYERS))
def test_weight_norm_layer_matches_flax(kind, highest_precision):
    make, shape = LAYERS[kind]
    ours, theirs = _wrapped(jnn.WeightNorm, make, False), _wrapped(nn.WeightNorm, make, False)
    x = _normal(1, shape)
    v = theirs.init(jax.random.key(0), x, train=False)
    _tree_equal(ours.init(jax.random.key(0), x, train=False), v)  # same variables, names and values
    assert set(v["params"]["WeightNorm_0"]) == {f"{make().__class__.__name__}_0/kernel/scale"}
    # a gain away from 1 and a kernel away from its init, so that the formula is exercised
    v = jax.tree.map(lambda p: p * 1.7 + 0.1, v)
    np.testing.assert_allclose(
        np.asarray(ours.apply(v, x, train=True)), np.asarray(theirs.apply(v, x, train=True)), rtol=1e-6, atol=1e-6
    )

    def loss(m):
        return lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x, train=True)))

    _tree_close(jax.grad(loss(ours))(v["params"]), jax.grad(loss(theirs))(v["params"]), rtol=1e-5, atol=1e-5)
    _check_grads64(loss(ours), (v["params"],), order=1, modes=("rev",))


def test_weight_norm_layer_options_match_flax(highest_precision):
    x = _normal(1, (3, 5))
    for kw in (
        dict(feature_axes=None),
        dict(variable_filter=None),
        dict(use_scale=False),
        dict(scale_init=nn.initializers.constant(2.0), epsilon=1e-3),
    ):
        ours = _wrapped(jnn.WeightNorm, lambda: nn.Dense(4), False, **kw)
        theirs = _wrapped(nn.WeightNorm, lambda: nn.Dense(4), False, **kw)
        v = theirs.init(jax.random.key(0), x, train=False)
        _tree_equal(ours.init(jax.random.key(0), x, train=False), v)
        v = jax.tree.map(lambda p: p * 0.7 + 0.2, v)
        np.testing.assert_allclose(
            np.asarray(ours.apply(v, x, train=True)), np.asarray(theirs.apply(v, x, train=True)), rtol=1e-6, atol=1e-6
        )


# ---- spectral norm: the formula ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KERNELS))
def test_spectral_norm_converges_to_the_largest_singular_value(kind):
    shape = KERNELS[kind]
    w = _normal(0, shape)
    u = jn.init_spectral_state(jax.random.key(1), w)
    assert u.shape == (1, shape[-1]) and u.dtype == jnp.float32
    wn, u_new, sigma = jn.spectral_normalize(w, u, n_power_iterations=200)
    mat = np.asarray(w, np.float64).reshape(-1, shape[-1])
    s = np.linalg.svd(mat, compute_uv=False)
    np.testing.assert_allclose(float(sigma), s[0], rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(wn, np.float64).reshape(mat.shape), 2), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(wn), np.asarray(w) / float(sigma), rtol=1e-6)
    # u is the top right singular vector (up to sign), of unit length
    vt = np.linalg.svd(mat)[2][0]
    np.testing.assert_allclose(abs(float(np.asarray(u_new, np.float64)[0] @ vt)), 1.0, rtol=1e-5)


def test_spectral_norm_one_iteration_is_miyatos_algorithm_1():
    w, u = _normal(0, (6, 4)), _normal(1, (1, 4))
    wn, u1, sigma = jn.spectral_normalize(w, u, epsilon=0.0)
    W, U = np.asarray(w, np.float64), np.asarray(u, np.float64)
    v = U @ W.T
    v /= np.linalg.norm(v)
    U1 = v @ W
    U1 /= np.linalg.norm(U1)
    s = (v @ W @ U1.T)[0, 0]
    np.testing.assert_allclose(np.asarray(u1), U1, rtol=1e-5)
    np.testing.assert_allclose(float(sigma), s, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(wn), W / s, rtol=1e-5)
    # the gradient goes through σ's W only: ∂σ/∂W = vᵀu (u, v held fixed)
    g = jax.grad(lambda w: jn.spectral_normalize(w, u, epsilon=0.0)[2])(w)
    np.testing.assert_allclose(np.asarray(g), v.T @ U1, rtol=1e-4, atol=1e-6)


def test_spectral_norm_eval_modes_zero_kernel_jit_vmap_bf16():
    w, u = _normal(0, (3, 3, 2, 5)), _normal(1, (1, 5))
    wt, ut, st = jn.spectral_normalize(w, u, n_power_iterations=2, train=True)
    we, ue, se = jn.spectral_normalize(w, u, n_power_iterations=2, train=False)
    np.testing.assert_array_equal(np.asarray(we), np.asarray(wt))  # eval: the same computation from the stored u …
    assert float(se) == float(st)
    assert ue is u  # … but the state does not move
    ws, us, ss = jn.spectral_normalize(w, u, train=False, sigma=jnp.float32(2.5))  # a stored σ: no iteration
    np.testing.assert_allclose(np.asarray(ws), np.asarray(w) / 2.5, rtol=1e-6)
    assert us is u and float(ss) == 2.5
    # σ = 0 divides by 1: a zero kernel stays zero, with finite gradients
    z = jnp.zeros((4, 3))
    wz, uz, sz = jn.spectral_normalize(z, _normal(2, (1, 3)))
    assert float(sz) == 0.0 and not np.any(np.asarray(wz)) and np.all(np.isfinite(np.asarray(uz)))
    gz = jax.grad(lambda k: jnp.sum(jn.spectral_normalize(k, _normal(2, (1, 3)))[0]))(z)
    assert np.all(np.isfinite(np.asarray(gz)))
    # jit (n static) and vmap over kernels and their states
    f = jax.jit(jn.spectral_normalize, static_argnames=("n_power_iterations", "train"))
    _tree_close(f(w, u, n_power_iterations=2), (wt, ut, st))
    ws5, us5 = _normal(3, (5, 4, 3)), _normal(4, (5, 1, 3))
    out = jax.vmap(jn.spectral_normalize)(ws5, us5)
    for i in range(5):
        _tree_close(jax.tree.map(lambda t: t[i], out), jn.spectral_normalize(ws5[i], us5[i]))
    wb, ub, sb = jn.spectral_normalize(w.astype(jnp.bfloat16), u)
    assert wb.dtype == jnp.bfloat16 and ub.dtype == jnp.float32 and sb.dtype == jnp.float32


def test_spectral_norm_gradient_at_convergence_is_the_gradient_of_w_over_sigma_max():
    # with u, v converged, the stop-gradient rule is exact to first order: ∂σ_max/∂W = v₁ᵀu₁
    w = _normal(0, (5, 4))
    u = jn.spectral_normalize(w, _normal(1, (1, 4)), n_power_iterations=500)[1]
    _check_grads64(lambda w: jn.spectral_normalize(w, u, n_power_iterations=50)[0], (w,), order=1, modes=("rev",))


@pytest.mark.parametrize(
    "w, u, kw, error, match",
    [
        (
            jnp.ones((4,)),
            jnp.ones((1, 4)),
            {},
            ValueError,
            r"spectral_normalize: expected a kernel of rank >= 2.*\(4,\)",
        ),
        (
            jnp.ones((3, 4)),
            jnp.ones((1, 3)),
            {},
            ValueError,
            r"u has shape \(1, 3\) but the kernel of shape \(3, 4\) needs \(1, 4\).*jaxnorm.init_spectral_state\(key, w\)",
        ),
        (jnp.ones((3, 4)), jnp.ones((4,)), {}, ValueError, r"u has shape \(4,\) .* needs \(1, 4\)"),
        (
            jnp.ones((3, 4)),
            jnp.ones((1, 4)),
            {"n_power_iterations": 0},
            ValueError,
            r"n_power_iterations must be a positive int, got 0",
        ),
        (jnp.ones((3, 4)), jnp.ones((1, 4)), {"n_power_iterations": 1.5}, ValueError, r"positive int, got 1.5"),
        (jnp.ones((3, 4)), jnp.ones((1, 4)), {"n_power_iterations": True}, ValueError, r"positive int, got True"),
        (jnp.ones((3, 4)), jnp.ones((1, 4)), {"epsilon": -1e-3}, ValueError, r"epsilon must be a finite number >= 0"),
        (
            jnp.ones((3, 4), jnp.int32),
            jnp.ones((1, 4)),
            {},
            TypeError,
            r"the kernel w has dtype int32.*cast to a float dtype first",
        ),
        (jnp.ones((3, 4), jnp.complex64), jnp.ones((1, 4)), {}, TypeError, r"complex64.*cast to a float dtype first"),
        (
            jnp.ones((3, 4)),
            jnp.ones((1, 4), jnp.int32),
            {},
            TypeError,
            r"the power-iteration vector u has dtype int32.*cast to a float dtype",
        ),
        (
            jnp.ones((3, 4)),
            jnp.ones((1, 4)),
            {"sigma": 2.0},
            ValueError,
            r"sigma= replaces the power iteration in eval",
        ),
        (
            jnp.ones((3, 4)),
            jnp.ones((1, 4)),
            {"sigma": jnp.ones(2), "train": False},
            ValueError,
            r"sigma must be a scalar",
        ),
    ],
)
def test_spectral_norm_errors(w, u, kw, error, match):
    with pytest.raises(error, match=match):
        jn.spectral_normalize(w, u, **kw)


def test_init_spectral_state_errors():
    with pytest.raises(ValueError, match=r"init_spectral_state: expected a kernel of rank >= 2"):
        jn.init_spectral_state(jax.random.key(0), jnp.ones((3,)))
    with pytest.raises(TypeError, match=r"cast to a float dtype first"):
        jn.init_spectral_state(jax.random.key(0), jnp.ones((3, 2), jnp.int32))


# ---- spectral norm: the layer, parity with flax --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_spectral_norm_layer_matches_flax_over_training_steps(kind, n, highest_precision):
    make, shape = LAYERS[kind]
    ours = _wrapped(jnn.SpectralNorm, make, True, n_power_iterations=n)
    theirs = _wrapped(nn.SpectralNorm, make, True, n_steps=n)
    x = _normal(1, shape)
    v = theirs.init(jax.random.key(0), x, train=False)
    # u drawn from the same rng under the same names; like flax, init writes the kernel back divided by its first σ
    # estimate (nn.map_variables with init=True), which may differ from flax's in the last bit
    vo = ours.init(jax.random.key(0), x, train=False)
    _tree_equal(vo["batch_stats"], v["batch_stats"])
    _tree_close(vo["params"], v["params"], rtol=1e-6, atol=1e-7)
    name = make().__class__.__name__
    assert set(v["batch_stats"]["SpectralNorm_0"]) == {f"{name}_0/kernel/u", f"{name}_0/kernel/sigma"}

    def step(model, variables):
        def loss(p):
            y, st = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.sum(jnp.sin(y)), (y, st)

        (_, (y, st)), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        params = jax.tree.map(lambda p, d: p - 0.3 * d, variables["params"], g)
        return {"params": params, "batch_stats": st["batch_stats"]}, y, g

    vo = vt = v
    for _ in range(4):
        vo, yo, go = step(ours, vo)
        vt, yt, gt = step(theirs, vt)
        np.testing.assert_allclose(np.asarray(yo), np.asarray(yt), rtol=1e-5, atol=1e-5)
        _tree_close(go, gt, rtol=1e-4, atol=1e-5)
        _tree_close(vo["batch_stats"], vt["batch_stats"], rtol=1e-5, atol=1e-6)
        vo = vt  # continue from flax's state, so that rounding cannot accumulate
    # eval: deterministic, equal, nothing stored
    eo, so = ours.apply(vt, x, train=False, mutable=["batch_stats"])
    et = theirs.apply(vt, x, train=False)
    np.testing.assert_allclose(np.asarray(eo), np.asarray(et), rtol=1e-5, atol=1e-6)
    _tree_equal(so["batch_stats"], vt["batch_stats"])


def test_spectral_norm_layer_call_convention_and_checks(highest_precision):
    x = _normal(1, (3, 5))
    layer = _wrapped(jnn.SpectralNorm, lambda: nn.Dense(4), True)
    v = layer.init(jax.random.key(0), x, train=False)

    # the update_stats attribute form (used by the zoo) is the call form
    class Attr(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnn.SpectralNorm(nn.Dense(4), update_stats=True)(x)

    y1, s1 = layer.apply(v, x, train=True, mutable=["batch_stats"])
    y2, s2 = Attr().apply(v, x, mutable=["batch_stats"])
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    _tree_equal(s1, s2)

    class Missing(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnn.SpectralNorm(nn.Dense(4))(x)

    with pytest.raises(
        ValueError,
        match=r"SpectralNorm: pass update_stats=True in training .*"
        r"mutable=\['batch_stats'\]",
    ):
        Missing().init(jax.random.key(0), x)

    class Strict(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jnn.SpectralNorm(nn.Conv(4, (3, 3)), error_on_non_matrix=True)(x, update_stats=False)

    with pytest.raises(ValueError, match=r"Conv_0/kernel has shape \(3, 3, 2, 4\).*error_on_non_matrix=True.*18×4"):
        Strict().init(jax.random.key(0), _normal(1, (1, 4, 4, 2)))
    # gradients of the layer w.r.t. the parameters, in eval (u fixed, converged)
    conv = _wrapped(jnn.SpectralNorm, lambda: nn.Dense(4), True, n_power_iterations=50)
    vc = conv.init(jax.random.key(0), x, train=True)  # init with update_stats=True stores the iterated u (flax too)
    _check_grads64(
        lambda p: conv.apply({"params": p, "batch_stats": vc["batch_stats"]}, x, train=False),
        (vc["params"],),
        order=1,
        modes=("rev",),
    )


# ---- dynamic tanh ------------------------------------------------------------------------------------------------


def test_dyt_formula_grads_jit_vmap_dtypes():
    x, g, b = _normal(0, (2, 3, 4)) * 3, _normal(1, (4,)), _normal(2, (4,))
    y = np.asarray(jn.dyt(x, 0.7, g, b), np.float64)
    want = np.asarray(g, np.float64) * np.tanh(0.7 * np.asarray(x, np.float64)) + np.asarray(b, np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jn.dyt(x, 0.5)), np.tanh(0.5 * np.asarray(x, np.float64)), rtol=1e-6)
    _check_grads64(lambda x, a, g, b: jn.dyt(x, a, g, b), (x, jnp.float32(0.5), g, b))
    np.testing.assert_allclose(np.asarray(jax.jit(jn.dyt)(x, 0.7, g, b)), np.asarray(jn.dyt(x, 0.7, g, b)), rtol=1e-6)
    alphas = jnp.array([0.1, 0.5, 2.0])
    batched = jax.vmap(jn.dyt, in_axes=(None, 0))(x, alphas)
    for i, a in enumerate(alphas):
        np.testing.assert_allclose(np.asarray(batched[i]), np.asarray(jn.dyt(x, a)), rtol=1e-6)
    for dt in (jnp.bfloat16, jnp.float16):
        xl = x.astype(dt)
        out = jn.dyt(xl, 0.7, g, b)
        assert out.dtype == dt
        np.testing.assert_array_equal(
            np.asarray(out, np.float32), np.asarray(jn.dyt(xl.astype(jnp.float32), 0.7, g, b).astype(dt), np.float32)
        )


@pytest.mark.parametrize(
    "x, kw, error, match",
    [
        (jnp.ones((2, 3), jnp.int32), {}, TypeError, r"dyt: the input has dtype int32.*cast to a float dtype first"),
        (jnp.ones((2, 3), bool), {}, TypeError, r"dyt: the input has dtype bool.*cast to a float dtype first"),
        (jnp.ones((2, 3), jnp.complex64), {}, TypeError, r"dyt: the input has complex dtype complex64"),
        (
            jnp.ones((2, 3)),
            {"scale": jnp.ones(4)},
            ValueError,
            r"dyt: scale of shape \(4,\) does not broadcast against the input of shape \(2, 3\); pass one value per channel, "
            r"shape \(3,\)",
        ),
        (jnp.ones((2, 3)), {"alpha": jnp.ones(5)}, ValueError, r"dyt: alpha of shape \(5,\).*a scalar"),
        (jnp.ones((2, 3)), {"alpha": 1j}, TypeError, r"alpha is complex"),
    ],
)
def test_dyt_errors(x, kw, error, match):
    kw = {"alpha": 0.5, **kw}
    with pytest.raises(error, match=match):
        jn.dyt(x, **kw)


def test_dyt_layer_parameters_init_and_formula():
    x = _normal(0, (2, 5, 3)) * 2
    layer = jnn.DyT()
    v = layer.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v["params"]) == {"alpha": (), "scale": (3,), "bias": (3,)}
    assert float(v["params"]["alpha"]) == 0.5  # the paper's default α₀
    np.testing.assert_array_equal(np.asarray(v["params"]["scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(v["params"]["bias"]), 0.0)
    p = {"alpha": jnp.float32(0.8), "scale": _normal(1, (3,)), "bias": _normal(2, (3,))}
    y = layer.apply({"params": p}, x, train=True)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(layer.apply({"params": p}, x, train=False)))
    np.testing.assert_allclose(np.asarray(y), np.asarray(jn.dyt(x, p["alpha"], p["scale"], p["bias"])))
    _check_grads64(lambda p: layer.apply({"params": p}, x), (p,), order=1, modes=("rev",))
    v0 = jnn.DyT(alpha_init=1.0, scale_init=nn.initializers.zeros, use_bias=False).init(jax.random.key(0), x)
    assert float(v0["params"]["alpha"]) == 1.0 and not np.any(np.asarray(v0["params"]["scale"]))
    assert "bias" not in v0["params"]


# ---- the model zoo -----------------------------------------------------------------------------------------------

CNN = dict(channels=(4, 4), num_classes=3)
X_IMG = (2, 6, 6, 2)


def _init_train(model, shape=X_IMG):
    x = _normal(1, shape)
    v = model.init(jax.random.key(0), x, train=False)
    y, state = model.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    assert np.all(np.isfinite(np.asarray(y)))
    return x, v, y, state


def test_zoo_dyt_norm():
    spec = zoo.norm_spec("dyt")
    assert "dyt" in zoo.NORMS and not spec.absorbs_bias and not spec.batch_stats and spec.has_scale
    model = zoo.SimpleCNN(**CNN, norm="dyt")
    x, v, y, state = _init_train(model)
    assert "batch_stats" not in v and not state
    assert float(v["params"]["norm_0"]["alpha"]) == 0.5 and "bias" in v["params"]["conv_0"]  # bias kept
    # zero-initialized residual branches set γ = 0, options pass through make_norm
    r = zoo.ResNet(
        stage_sizes=(1,),
        block="basic",
        width=1 / 16,
        norm="dyt",
        zero_init_residual=True,
        norm_kwargs={"alpha_init": 1.5},
        num_classes=3,
    )
    _, vr, _, _ = _init_train(r)
    assert not np.any(np.asarray(vr["params"]["stage1_block1"]["norm2"]["scale"]))
    assert float(vr["params"]["stem_norm"]["alpha"]) == 1.5
    mlp = zoo.MLP(hidden=(6,), norm="dyt", num_classes=3)  # a dense model takes it too
    _init_train(mlp, (2, 5))


def test_zoo_weight_norm_option():
    model = zoo.SimpleCNN(**CNN, norm="batch", kernel_norm="weight")
    x, v, y, state = _init_train(model)
    p = v["params"]
    assert set(p["conv_0_weight_norm"]) == {"conv_0/kernel/scale"} and "kernel" in p["conv_0"]
    assert "head_weight_norm" not in p  # the head is left plain by default
    # each output channel's effective kernel has length g = 1 at init, whatever the raw kernel
    k = np.asarray(jn.weight_norm(p["conv_0"]["kernel"], p["conv_0_weight_norm"]["conv_0/kernel/scale"]), np.float64)
    np.testing.assert_allclose(np.linalg.norm(k.reshape(-1, 4), axis=0), 1.0, rtol=1e-6)
    # wrapping the head too; a dense model
    vh = zoo.SimpleCNN(**CNN, kernel_norm="weight", kernel_norm_head=True).init(jax.random.key(0), x, train=False)
    assert "head_weight_norm" in vh["params"]
    _, vm, _, _ = _init_train(zoo.MLP(hidden=(6, 6), kernel_norm="weight", num_classes=3), (2, 5))
    assert {"dense_0_weight_norm", "dense_1_weight_norm"} <= set(vm["params"])


def test_zoo_spectral_norm_option_updates_u_in_training_only():
    # where the wrappers go in a ResNet (shapes only: no compilation): every conv, the projection shortcut too
    resnet = zoo.ResNet(
        stage_sizes=(1, 1), block="basic", width=1 / 16, norm="group", kernel_norm="spectral", num_classes=3
    )
    shapes = jax.eval_shape(lambda x: resnet.init(jax.random.key(0), x, train=False), jnp.ones(X_IMG))
    bs = shapes["batch_stats"]
    assert "stem_conv_spectral_norm" in bs and "proj_conv_spectral_norm" in bs["stage2_block1"]
    assert "head_spectral_norm" not in bs
    assert len(jax.tree.leaves(bs)) == 2 * 6  # u and sigma of 6 convs
    model = zoo.SimpleCNN(**CNN, norm="group", kernel_norm="spectral")
    x, v, y, state = _init_train(model)
    bs, new = v["batch_stats"], state["batch_stats"]
    us = [
        (a, b)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(bs), jax.tree.leaves(new))
        if jax.tree_util.keystr(path).endswith("/u']")
    ]
    assert len(us) == 2 and all(not np.allclose(a, b) for a, b in us)  # training moved every u
    for a, b in us:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(b)), 1.0, rtol=1e-5)
    _, ev = model.apply(v, x, train=False, mutable=["batch_stats"])
    _tree_equal(ev["batch_stats"], bs)  # eval stores nothing
    # the trainer's step carries u in batch_stats (a small MLP keeps the compilation short)
    mlp = zoo.MLP(hidden=(4,), norm="layer", kernel_norm="spectral", num_classes=3)
    tx, xm = optax.sgd(0.1), _normal(1, (2, 5))
    st = steps.create_state(mlp, tx, xm, seed=0)
    step = jax.jit(steps.make_train_step(mlp, tx, lambda s: 0.1, seed=0))
    st2, metrics = step(st, {"x": xm, "y": jnp.array([0, 2]), "mask": jnp.ones(2, bool)})
    assert np.isfinite(float(metrics["loss"]))
    u0 = st.batch_stats["dense_0_spectral_norm"]["dense_0/kernel/u"]
    u1 = st2.batch_stats["dense_0_spectral_norm"]["dense_0/kernel/u"]
    assert u0.shape == u1.shape == (1, 4) and not np.allclose(u0, u1)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u1)), 1.0, rtol=1e-5)
    # the head with kernel_norm_head; DeepLinear's last layer counts as its head
    vh = zoo.MLP(hidden=(4,), kernel_norm="spectral", kernel_norm_head=True, num_classes=3).init(
        jax.random.key(0), jnp.ones((2, 5)), train=False
    )
    assert {"dense_0_spectral_norm", "head_spectral_norm"} == set(vh["batch_stats"])
    vd = zoo.DeepLinear(depth=3, width=4, kernel_norm="spectral").init(jax.random.key(0), jnp.ones((2, 4)), train=False)
    assert set(vd["batch_stats"]) == {"dense_0_spectral_norm", "dense_1_spectral_norm"}


def test_zoo_kernel_norm_errors():
    with pytest.raises(
        ValueError,
        match=r"unknown kernel_norm 'batch'; valid kernel_norms: 'none', 'weight', "
        r"'spectral'",
    ):
        zoo.SimpleCNN(**CNN, kernel_norm="batch")
    with pytest.raises(ValueError, match=r"weight_standardize=True and kernel_norm='weight' both reparametrize"):
        zoo.SimpleCNN(**CNN, weight_standardize=True, kernel_norm="weight")
    from jaxnorm.lab.models.autoencoder import UntiedAutoencoder

    with pytest.raises(ValueError, match=r"UntiedAutoencoder: kernel_norm='spectral'.*not supported"):
        UntiedAutoencoder(kernel_norm="spectral")
    with pytest.raises(ValueError, match=r"kernel_norm='spectral' needs train=True/False"):
        zoo.wrap_kernel_norm("spectral", nn.Dense(3))
    assert zoo.wrap_kernel_norm("none", layer := nn.Dense(3)) is layer


def test_config_kernel_norm_plumbing():
    c = config_lib.base_config()
    assert c.kernel_norm == "none" and config_lib.KERNEL_NORMS == zoo.KERNEL_NORMS
    # at its default the key is not part of a run's identity: results and checkpoints recorded before it still match
    assert "kernel_norm" not in config_lib.result_affecting(c)
    c.kernel_norm = "weight"
    assert config_lib.result_affecting(c)["kernel_norm"] == "weight"
    assert config_lib.result_affecting(c.to_dict())["kernel_norm"] == "weight"
    assert loop.model_kwargs(c, 10)["kernel_norm"] == "weight"
    assert "kernel_norm" not in loop.model_kwargs(config_lib.base_config(), 10)
    c.kernel_norm = "spectal"
    with pytest.raises(
        ValueError, match=r"unknown kernel_norm 'spectal'; valid kernel_norms: 'none', 'weight', 'spectral'"
    ):
        config_lib.validate(c)


def test_spectral_norm_layer_passes_epsilon_on():
    """ε inside √(‖v‖² + ε) of the power iteration: at ε = 5 (comparable to ‖v‖²) the layer's kernel is the pure
    function's at ε = 5, which differs from the default's."""

    class Net(nn.Module):
        eps: float

        @nn.compact
        def __call__(self, x, train):
            return jnn.SpectralNorm(nn.Dense(4), epsilon=self.eps)(x, update_stats=train)

    x = _normal(1, (3, 5))
    v = Net(5.0).init(jax.random.key(0), x, train=False)
    kernel, bias = v["params"]["Dense_0"]["kernel"], v["params"]["Dense_0"]["bias"]
    u0 = v["batch_stats"]["SpectralNorm_0"]["Dense_0/kernel/u"]
    y, _ = Net(5.0).apply(v, x, train=True, mutable=["batch_stats"])
    w5 = jn.spectral_normalize(kernel, u0, train=True, epsilon=5.0)[0]
    np.testing.assert_allclose(np.asarray(y), np.asarray(x @ w5 + bias), rtol=1e-5, atol=1e-6)
    w0 = jn.spectral_normalize(kernel, u0, train=True)[0]
    assert float(jnp.abs(w5 - w0).max()) > 1e-2  # ε = 5 changes the estimate: the test can see it
