"""Normalization transforms against independent references: flax.linen, PyTorch's formulas in numpy, the papers'
equations (backward identity, population statistics, folding) and analytic properties."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn

jax.config.update("jax_default_matmul_precision", "highest")

TOL = 1e-5


def rand(shape, seed=0, loc=0.0, scale=1.0, dtype=jnp.float32):
    return (loc + scale * jax.random.normal(jax.random.key(seed), shape)).astype(dtype)


def close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=tol, rtol=tol)


def affine(c, seed=1):
    return rand((c,), seed, 1.0, 0.3), rand((c,), seed + 1, 0.0, 0.3)


# ---------------------------------------------------------------------------------------------------------------------
# parity with flax.linen: outputs, running statistics after several steps, gradients


def test_batch_norm_matches_flax_over_steps():
    c = 6
    flax_bn = fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    x0 = rand((8, 5, 5, c))
    fv = flax_bn.init(jax.random.key(0), x0)
    scale, bias = affine(c)
    fv = {"params": {"scale": scale, "bias": bias}, "batch_stats": fv["batch_stats"]}
    stats = jn.init_batch_stats(c)
    for step in range(4):
        x = rand((8, 5, 5, c), seed=10 + step, loc=step - 1.0, scale=1.0 + step)
        yf, upd = flax_bn.apply(fv, x, mutable=["batch_stats"])
        fv = {"params": fv["params"], "batch_stats": upd["batch_stats"]}
        y, stats = jn.batch_norm(x, scale, bias, stats, train=True, momentum=0.9)
        close(y, yf)
        close(stats["mean"], fv["batch_stats"]["mean"])
        close(stats["var"], fv["batch_stats"]["var"])
    assert int(stats["count"]) == 4
    x = rand((3, 5, 5, c), seed=99)
    yf = fnn.BatchNorm(use_running_average=True, epsilon=1e-5).apply(fv, x)
    y, same = jn.batch_norm(x, scale, bias, stats, train=False)
    close(y, yf)
    assert same is stats


@pytest.mark.parametrize("train", [True, False])
def test_batch_norm_gradients_match_flax(train):
    c = 4
    x = rand((6, 3, 3, c), loc=0.5)
    scale, bias = affine(c)
    stats = {"mean": rand((c,), 3) * 0.1, "var": 1.0 + 0.1 * jnp.abs(rand((c,), 4)), "count": jnp.array(0)}
    ct = rand(x.shape, 7)

    def flax_loss(x, s, b):
        y = fnn.BatchNorm(use_running_average=not train, epsilon=1e-5).apply(
            {"params": {"scale": s, "bias": b}, "batch_stats": {"mean": stats["mean"], "var": stats["var"]}},
            x,
            mutable=["batch_stats"],
        )[0]
        return jnp.sum(y * ct)

    def ours(x, s, b):
        return jnp.sum(jn.batch_norm(x, s, b, stats, train=train)[0] * ct)

    for gf, g in zip(jax.grad(flax_loss, (0, 1, 2))(x, scale, bias), jax.grad(ours, (0, 1, 2))(x, scale, bias)):
        close(g, gf, 1e-4)


def _flax_apply(module, x, scale, bias):
    params = {"scale": scale} if bias is None else {"scale": scale, "bias": bias}
    return module.apply({"params": params}, x)


@pytest.mark.parametrize(
    "name,ours,theirs,has_bias",
    [
        (
            "layer_all",
            lambda x, s, b: jn.layer_norm(x, s, b, epsilon=1e-5),
            fnn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5),
            True,
        ),
        ("layer_last", lambda x, s, b: jn.layer_norm(x, s, b, epsilon=1e-6, axes=-1), fnn.LayerNorm(), True),
        (
            "group32",
            lambda x, s, b: jn.group_norm(x, s, b, num_groups=32, epsilon=1e-5),
            fnn.GroupNorm(num_groups=32, epsilon=1e-5),
            True,
        ),
        (
            "group_size4",
            lambda x, s, b: jn.group_norm(x, s, b, group_size=4, epsilon=1e-5),
            fnn.GroupNorm(num_groups=None, group_size=4, epsilon=1e-5),
            True,
        ),
        ("instance", lambda x, s, b: jn.instance_norm(x, s, b, epsilon=1e-5), fnn.InstanceNorm(epsilon=1e-5), True),
        (
            "rms_all",
            lambda x, s, b: jn.rms_norm(x, s, epsilon=1e-5),
            fnn.RMSNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5),
            False,
        ),
        ("rms_last", lambda x, s, b: jn.rms_norm(x, s, epsilon=1e-6, axes=-1), fnn.RMSNorm(), False),
    ],
)
def test_per_example_norms_match_flax(name, ours, theirs, has_bias):
    c = 64
    x = rand((3, 4, 5, c), loc=0.3, scale=2.0)
    scale, bias = affine(c)
    bias = bias if has_bias else None
    close(ours(x, scale, bias), _flax_apply(theirs, x, scale, bias))
    ct = rand(x.shape, 5)
    args = (x, scale) if bias is None else (x, scale, bias)
    argn = tuple(range(len(args)))
    g_ours = jax.grad(lambda *a: jnp.sum(ours(a[0], a[1], a[2] if len(a) > 2 else None) * ct), argn)(*args)
    g_flax = jax.grad(lambda *a: jnp.sum(_flax_apply(theirs, a[0], a[1], a[2] if len(a) > 2 else None) * ct), argn)(
        *args
    )
    for a, b in zip(g_ours, g_flax):
        close(a, b, 1e-4)


@pytest.mark.parametrize(
    "layer,flax_layer",
    [
        (jn.nn.LayerNorm(), fnn.LayerNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5)),
        (jn.nn.GroupNorm(num_groups=4), fnn.GroupNorm(num_groups=4, epsilon=1e-5)),
        (jn.nn.InstanceNorm(), fnn.InstanceNorm(epsilon=1e-5)),
        (jn.nn.RMSNorm(), fnn.RMSNorm(reduction_axes=(1, 2, 3), feature_axes=-1, epsilon=1e-5)),
    ],
)
def test_flax_layers_same_params_same_output(layer, flax_layer):
    x = rand((2, 3, 3, 8), loc=1.0)
    v = layer.init(jax.random.key(0), x)
    vf = flax_layer.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, vf)
    close(layer.apply(v, x, train=True), flax_layer.apply(vf, x))


def test_batchnorm_layer_matches_flax_layer_and_collections():
    x = rand((8, 4, 4, 3), loc=2.0)
    ours, theirs = jn.nn.BatchNorm(momentum=0.9), fnn.BatchNorm(momentum=0.9, epsilon=1e-5)
    v = ours.init(jax.random.key(0), x, train=False)
    vf = theirs.init(jax.random.key(0), x, use_running_average=False)
    assert set(v["batch_stats"]) == {"mean", "var", "count"} and set(v["params"]) == {"scale", "bias"}
    close(v["batch_stats"]["mean"], 0.0)  # init does not move the running averages (as in Flax)
    for step in range(3):
        xs = x * (step + 1) + step
        y, upd = ours.apply(v, xs, train=True, mutable=["batch_stats"])
        yf, updf = theirs.apply(vf, xs, use_running_average=False, mutable=["batch_stats"])
        v, vf = {**v, **upd}, {**vf, **updf}
        close(y, yf)
        close(v["batch_stats"]["var"], vf["batch_stats"]["var"])
    close(ours.apply(v, x, train=False), theirs.apply(vf, x, use_running_average=True))


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch's conventions as numpy formulas


def torch_bn_reference(xs, momentum=0.1, eps=1e-5, cumulative=False):
    """torch.nn.BatchNorm2d in numpy (channels last): biased var to normalize, unbiased var in the running var."""
    rm, rv, outs = np.zeros(xs[0].shape[-1]), np.ones(xs[0].shape[-1]), []
    for k, x in enumerate(xs, 1):
        x = np.asarray(x, np.float64)
        axes = tuple(range(x.ndim - 1))
        n = x.size // x.shape[-1]
        mu, var = x.mean(axes), x.var(axes)
        outs.append((x - mu) / np.sqrt(var + eps))
        w = 1.0 / k if cumulative else momentum
        rm = (1 - w) * rm + w * mu
        rv = (1 - w) * rv + w * var * n / (n - 1)
    return outs, rm, rv


@pytest.mark.parametrize("cumulative", [False, True])
def test_batch_norm_pytorch_convention(cumulative):
    xs = [rand((4, 3, 3, 5), seed=s, loc=s, scale=1 + s) for s in range(3)]
    outs, rm, rv = torch_bn_reference(xs, cumulative=cumulative)
    stats = jn.init_batch_stats(5)
    kw = {"momentum": None} if cumulative else {}  # default momentum under 'pytorch' is 0.1
    layer = jn.nn.BatchNorm(convention="pytorch", use_scale=False, use_bias=False, **kw)  # the linen front-end
    v = layer.init(jax.random.key(0), xs[0], train=False)
    for x, ref in zip(xs, outs):
        y, stats = jn.batch_norm(x, None, None, stats, train=True, convention="pytorch", **kw)
        close(y, ref, 1e-4)
        y_layer, upd = layer.apply(v, x, train=True, mutable=["batch_stats"])
        v = {**v, **upd}
        close(y_layer, ref, 1e-4)
    close(stats["mean"], rm)
    close(stats["var"], rv)
    close(v["batch_stats"]["mean"], rm)
    close(v["batch_stats"]["var"], rv)
    x = xs[0]
    y, _ = jn.batch_norm(x, None, None, stats, train=False, convention="pytorch")
    close(y, (np.asarray(x) - rm) / np.sqrt(rv + 1e-5), 1e-4)


def test_cumulative_average_flax_convention_is_plain_mean():
    xs = [rand((16, 3), seed=s, loc=s) for s in range(5)]
    stats = jn.init_batch_stats(3)
    for x in xs:
        _, stats = jn.batch_norm(x, None, None, stats, train=True, momentum=None)
    close(stats["mean"], np.mean([np.asarray(x).mean(0) for x in xs], 0))
    close(stats["var"], np.mean([np.asarray(x).var(0) for x in xs], 0))


# ---------------------------------------------------------------------------------------------------------------------
# sync batch norm across devices


def _pmapped_bn(x_sharded, mask_sharded, stats):
    def f(x, m):
        return jn.batch_norm(x, None, None, stats, train=True, momentum=0.9, axis_name="batch", mask=m)

    return jax.pmap(f, axis_name="batch")(x_sharded, mask_sharded)


def test_sync_batch_norm_pmap_equals_global_batch():
    assert jax.local_device_count() >= 4, "conftest fakes 4 CPU devices"
    x = rand((16, 3, 3, 5), loc=1.0, scale=2.0)
    stats = jn.init_batch_stats(5)
    y_ref, s_ref = jn.batch_norm(x, None, None, stats, train=True, momentum=0.9)
    mask = jnp.ones((4, 4), bool)
    y, s = _pmapped_bn(x.reshape(4, 4, 3, 3, 5), mask, stats)
    close(y.reshape(x.shape), y_ref)
    for k in ("mean", "var"):
        close(s[k][0], s_ref[k])
        close(s[k][3], s_ref[k])


def test_sync_batch_norm_uneven_shards_via_mask():
    # 13 real examples spread 4/4/3/2 over 4 devices, padded to 4 each with garbage
    x_real = rand((13, 2, 5), loc=-1.0, scale=3.0)
    counts = [4, 4, 3, 2]
    shards, masks, start = [], [], 0
    for n in counts:
        pad = jnp.full((4 - n, 2, 5), 1e3)
        shards.append(jnp.concatenate([x_real[start : start + n], pad]))
        masks.append(jnp.arange(4) < n)
        start += n
    stats = jn.init_batch_stats(5)
    y, s = _pmapped_bn(jnp.stack(shards), jnp.stack(masks), stats)
    y_ref, s_ref = jn.batch_norm(x_real, None, None, stats, train=True, momentum=0.9)
    got = jnp.concatenate([y[i, :n] for i, n in enumerate(counts)])
    close(got, y_ref, 1e-4)
    close(s["mean"][0], s_ref["mean"])
    close(s["var"][0], s_ref["var"])


def test_sync_batch_norm_under_shard_map():
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:4]), ("batch",))
    x = rand((16, 6), loc=3.0)
    stats = jn.init_batch_stats(6)

    def f(x):
        y, s = jn.batch_norm(x, None, None, stats, train=True, axis_name="batch")
        return y, s["var"]

    shmap = getattr(jax, "shard_map", None)
    if shmap is None:
        from jax.experimental.shard_map import shard_map as shmap
    y, var = jax.jit(shmap(f, mesh=mesh, in_specs=P("batch"), out_specs=(P("batch"), P())))(x)
    y_ref, s_ref = jn.batch_norm(x, None, None, stats, train=True)
    close(y, y_ref)
    close(var, s_ref["var"])


SYNC_NORMS = {
    "batch_norm": lambda x, st, **kw: jn.batch_norm(x, None, None, st, train=True, **kw),
    "batch_renorm": lambda x, st, **kw: jn.batch_renorm(x, None, None, st, train=True, r_max=1.5, d_max=0.5, **kw),
    "lp_batch_norm_p1": lambda x, st, **kw: jn.lp_batch_norm(x, None, None, st, train=True, p=1, **kw),
    "lp_batch_norm_p2": lambda x, st, **kw: jn.lp_batch_norm(x, None, None, st, train=True, p=2, **kw),
    "lp_batch_norm_inf": lambda x, st, **kw: jn.lp_batch_norm(x, None, None, st, train=True, p="inf", **kw),
}


@pytest.mark.parametrize("name", sorted(SYNC_NORMS))
def test_every_batch_statistics_norm_synchronizes_over_its_axis_name(name):
    """4 shards of 4 examples under ``vmap(axis_name='b')``: the outputs and the new running statistics equal the
    norm of the whole batch of 16 (each shard's own statistics differ: the shards have other means and scales)."""
    f = SYNC_NORMS[name]
    x = rand((16, 6), loc=1.0) * jnp.repeat(jnp.array([0.5, 1.0, 2.0, 4.0]), 4)[:, None]
    st = {"mean": jnp.full(6, 0.5), "var": jnp.full(6, 2.0), "count": jnp.zeros((), jnp.int32)}
    y, new = jax.vmap(lambda xs: f(xs, st, axis_name="b"), axis_name="b")(x.reshape(4, 4, 6))
    y_ref, new_ref = f(x, st)
    close(y.reshape(16, 6), y_ref)
    for k in ("mean", "var"):
        close(new[k], jnp.broadcast_to(new_ref[k], (4, 6)))
    y_alone, _ = jax.vmap(lambda xs: f(xs, st), axis_name="b")(x.reshape(4, 4, 6))
    assert np.abs(np.asarray(y_alone).reshape(16, 6) - np.asarray(y_ref)).max() > 0.1


@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_lp_batch_norm_of_one_valid_value_per_channel(p):
    """A mask that keeps one value per channel: s = |x₀| for every p (the mean of one |value|, the root of one
    square, the max of one), so momentum 0 stores s² = x₀², and the padding (NaN here) changes nothing."""
    x = jnp.array([[-3.0, 0.5], [jnp.nan, jnp.nan], [7.0, -9.0], [1e6, 2.0]])
    mask = jnp.array([True, False, False, False])[:, None]
    y, st = jn.lp_batch_norm(x, None, None, jn.init_batch_stats(2), train=True, p=p, momentum=0.0, mask=mask)
    np.testing.assert_allclose(st["mean"], [-3.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(st["var"], [9.0, 0.25], rtol=1e-6)
    np.testing.assert_allclose(y[0], [0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_lp_batch_norm_with_scale_bias_and_finite_padding_against_float64(p, dtype):
    """y = γ·(x − μ)/√(s² + ε) + β with μ and s from the valid values only, s = (mean |x|^p)^(1/p) or max |x|; the
    padded rows are normalized by the same statistics (as batch norm's are), and y keeps x's dtype."""
    r = np.random.default_rng(3)
    x64 = r.normal(2.0, 1.5, size=(12, 5))
    valid = np.arange(12) < 9
    gamma, beta = r.normal(1.0, 0.3, size=5), r.normal(size=5)
    x = jnp.asarray(x64, dtype)
    x64 = np.asarray(x, np.float64)  # the rounded input, for the reference
    y, st = jn.lp_batch_norm(
        x,
        jnp.asarray(gamma, jnp.float32),
        jnp.asarray(beta, jnp.float32),
        jn.init_batch_stats(5),
        train=True,
        p=p,
        epsilon=0.1,
        mask=jnp.asarray(valid)[:, None],
    )
    a = np.abs(x64[valid])
    s = a.max(0) if p == "inf" else (a**p).mean(0) ** (1 / p)
    want = gamma * (x64 - x64[valid].mean(0)) / np.sqrt(s**2 + 0.1) + beta
    assert y.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=tol, atol=tol * np.abs(want).max())


def test_masked_batch_norm_single_device_ignores_padding():
    x = rand((10, 4))
    xp = jnp.concatenate([x, jnp.full((6, 4), 1e4)])
    stats = jn.init_batch_stats(4)
    y, s = jn.batch_norm(xp, None, None, stats, train=True, mask=jnp.arange(16) < 10)
    y_ref, s_ref = jn.batch_norm(x, None, None, stats, train=True)
    close(y[:10], y_ref)
    close(s["var"], s_ref["var"])


# ---------------------------------------------------------------------------------------------------------------------
# the papers' equations


def test_bn_backward_identity():
    """∂L/∂x = (γ/σ)(g − mean(g) − mean(g·x̂)·x̂), and the squared-norm form, per channel (SCIENCE.md)."""
    m, c = 32, 3
    x = rand((m, c), loc=2.0, scale=3.0)
    gamma = rand((c,), 1, 1.0, 0.5)
    g = rand((m, c), 2)
    eps = 1e-5
    dx = jax.grad(
        lambda x: jnp.sum(jn.batch_norm(x, gamma, None, jn.init_batch_stats(c), train=True, epsilon=eps)[0] * g)
    )(x)
    xn = np.asarray(x, np.float64)
    sigma = np.sqrt(xn.var(0) + eps)
    xhat = (xn - xn.mean(0)) / sigma
    gn, gam = np.asarray(g, np.float64), np.asarray(gamma, np.float64)
    expected = gam / sigma * (gn - gn.mean(0) - (gn * xhat).mean(0) * xhat)
    close(dx, expected, 1e-4)
    sq = (gam**2 / sigma**2) * ((gn**2).sum(0) - gn.sum(0) ** 2 / m - (gn * xhat).sum(0) ** 2 / m)
    close(np.sum(np.asarray(dx, np.float64) ** 2, 0), sq, 1e-3)


def test_population_stats_matches_ioffe_szegedy_formula():
    batches = [rand((8, 3), seed=s, loc=0.5 * s, scale=1 + 0.2 * s) for s in range(6)]
    moments = [jn.batch_moments(b) for b in batches]
    pop = jn.population_stats(moments)
    arr = np.stack([np.asarray(b, np.float64) for b in batches])
    m = arr.shape[1]
    close(pop["mean"], arr.mean(1).mean(0))
    close(pop["var"], m / (m - 1) * arr.var(1).mean(0))
    assert int(pop["count"]) == 6


class ConvBN(fnn.Module):
    fold: bool = False

    @fnn.compact
    def __call__(self, x, train=False):
        x = fnn.Conv(8, (3, 3), use_bias=self.fold, name="conv1")(x)
        if not self.fold:
            x = jn.nn.BatchNorm(name="bn1")(x, train)
        x = fnn.relu(x)
        x = fnn.Dense(5, use_bias=True, name="dense")(x.mean((1, 2)))
        if not self.fold:
            x = jn.nn.BatchNorm(name="bn2")(x, train)
        return x


def test_folded_bn_model_equals_unfolded_in_eval():
    model, folded = ConvBN(), ConvBN(fold=True)
    x = rand((6, 7, 7, 3))
    v = model.init(jax.random.key(0), x)
    # give the running statistics and BN parameters non-trivial values by training a few batches
    for s in range(3):
        _, upd = model.apply(v, rand(x.shape, s + 3, loc=1.0, scale=2.0), train=True, mutable=["batch_stats"])
        v = {**v, **upd}
    v["params"]["bn1"] = {"scale": rand((8,), 11, 1.0, 0.3), "bias": rand((8,), 12)}
    fp = jn.fold_batch_norm_params(v["params"], v["batch_stats"], {"conv1": "bn1", "dense": "bn2"})
    assert "bn1" not in fp and "bn2" not in fp and "bn1" in v["params"]  # input untouched
    close(folded.apply({"params": fp}, x), model.apply(v, x, train=False), 1e-4)


def _fold64(kernel, bias, gamma, beta, st, epsilon):
    """W' = W·a, b' = a·(b − E[x]) + β with a = γ/√(Var + ε), in float64."""
    f = lambda v: np.asarray(v, np.float64)  # noqa: E731
    a = f(gamma) / np.sqrt(f(st["var"]) + epsilon)
    return f(kernel) * a, a * (f(bias) - f(st["mean"])) + f(beta)


def test_fold_batch_norm_params_nested_paths_the_layers_bias_epsilon_and_frozen_params():
    """A pair of nested paths ('block/conv' → 'block/bn'): the layer gets W', b' from its own bias and the given ε,
    the BN module goes and nothing else moves (the head is untouched); frozen (FrozenDict) parameters come back as
    plain dicts, and the input is not modified."""
    from flax.core import freeze

    r = np.random.default_rng(7)
    f32 = lambda *shape, loc=0.0, scale=1.0: jnp.asarray(r.normal(loc, scale, size=shape), jnp.float32)  # noqa: E731
    conv = {"kernel": f32(3, 3, 2, 4), "bias": f32(4)}
    bn = {"scale": f32(4, loc=1.0, scale=0.3), "bias": f32(4)}
    head = {"kernel": f32(4, 3), "bias": f32(3)}
    st = {"mean": f32(4), "var": jnp.asarray(r.uniform(0.01, 0.05, size=4), jnp.float32), "count": jnp.asarray(3)}
    params = freeze({"block": {"conv": conv, "bn": bn}, "head": head})
    out = jn.fold_batch_norm_params(params, {"block": {"bn": st}}, {"block/conv": "block/bn"}, epsilon=0.3)
    assert isinstance(out, dict) and isinstance(out["block"], dict) and set(out["block"]) == {"conv"}
    assert set(params["block"]) == {"conv", "bn"}  # the input keeps its BN
    w, b = _fold64(conv["kernel"], conv["bias"], bn["scale"], bn["bias"], st, 0.3)
    np.testing.assert_allclose(out["block"]["conv"]["kernel"], w, rtol=1e-6, atol=1e-6 * np.abs(w).max())
    np.testing.assert_allclose(out["block"]["conv"]["bias"], b, rtol=1e-6, atol=1e-6 * np.abs(b).max())
    for k in head:
        np.testing.assert_array_equal(out["head"][k], head[k])


def test_fold_batch_norm_params_names_the_missing_path():
    params = {"block": {"conv": {"kernel": jnp.ones((2, 3))}, "bn": {}}}
    stats = {"block": {"bn": jn.init_batch_stats(3)}}
    cases = [
        ({"block/nope": "block/bn"}, stats, "layer path 'block/nope' not found (at 'nope'; have ['conv', 'bn'])"),
        ({"block/conv": "block/bx"}, stats, "bn path 'block/bx' not found (at 'bx'; have ['conv', 'bn'])"),
        ({"block/conv": "block/bn"}, {"block": {}}, "bn statistics path 'block/bn' not found (at 'bn'; have [])"),
    ]
    for pairs, st, message in cases:
        with pytest.raises(KeyError) as err:
            jn.fold_batch_norm_params(params, st, pairs)
        assert err.value.args[0] == f"fold_batch_norm_params: {message}"


def test_fold_batch_norm_default_epsilon_and_its_errors():
    """ε defaults to 1e-5, batch norm's (variances of 1e-4, so that ε is 10% of them); stats that do not match the
    kernel's output channels are refused by name."""
    r = np.random.default_rng(5)
    kernel, bias = r.normal(size=(3, 4)), r.normal(size=4)
    gamma, beta = r.normal(1.0, 0.3, size=4), r.normal(size=4)
    st = {"mean": r.normal(size=4), "var": r.uniform(0.5e-4, 1.5e-4, size=4)}
    j = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    w, b = jn.fold_batch_norm(j(kernel), j(bias), j(gamma), j(beta), {k: j(v) for k, v in st.items()})
    w64, b64 = _fold64(kernel, bias, gamma, beta, st, 1e-5)
    np.testing.assert_allclose(w, w64, rtol=1e-5)
    np.testing.assert_allclose(b, b64, rtol=1e-5, atol=1e-5 * np.abs(b64).max())
    with pytest.raises(ValueError, match=r"^fold_batch_norm: stats\['mean'\] has shape \(5,\) but the input has 4 "):
        jn.fold_batch_norm(j(kernel), None, None, None, jn.init_batch_stats(5))
    with pytest.raises(ValueError, match=r"^fold_batch_norm: stats must be a dict with 'mean', 'var' and 'count'"):
        jn.fold_batch_norm(j(kernel), None, None, None, {"mean": j(st["mean"])})


def test_fold_batch_norm_of_bfloat16_layers_is_computed_in_float32_and_rounded_once():
    """bfloat16 kernel, bias, BN parameters and statistics: W' and b' are bfloat16, each the float64 fold of the
    bfloat16 inputs rounded once (a computed in bfloat16 is off by up to 2⁻⁹ and rounds a third of W' wrong)."""
    r = np.random.default_rng(9)
    bf = lambda v: jnp.asarray(v, jnp.bfloat16)  # noqa: E731
    kernel, bias = bf(r.normal(size=(3, 3, 8, 64))), bf(r.normal(size=64))
    gamma, beta = bf(r.normal(1.0, 0.3, size=64)), bf(r.normal(size=64))
    st = {"mean": bf(r.normal(size=64)), "var": bf(r.uniform(0.5, 2.0, size=64))}
    w, b = jn.fold_batch_norm(kernel, bias, gamma, beta, st, epsilon=0.1)
    assert w.dtype == b.dtype == jnp.bfloat16
    w64, b64 = _fold64(kernel, bias, gamma, beta, st, np.float32(0.1))
    assert np.mean(np.asarray(w) == np.asarray(jnp.asarray(w64, jnp.bfloat16))) >= 0.99
    assert np.mean(np.asarray(b) == np.asarray(jnp.asarray(b64, jnp.bfloat16))) >= 0.95


@pytest.mark.parametrize("epsilon", [1e-5, 0.3])
def test_fold_batch_norm_equals_the_eval_formula_in_float64(epsilon):
    """W' = W·a, b' = a·(b − E[x]) + β, a = γ/√(Var + ε): against the eval-mode formula, with variances small
    enough (0.01–0.05) that ε = 0.3 dominates them, so an ε dropped or misplaced fails by orders of magnitude."""
    r = np.random.default_rng(4)
    kernel, bias = r.normal(size=(3, 3, 2, 4)), r.normal(size=4)
    gamma, beta = r.normal(1.0, 0.3, size=4), r.normal(size=4)
    st = {"mean": r.normal(size=4), "var": r.uniform(0.01, 0.05, size=4), "count": 3}
    x = r.normal(size=(5, 3, 3, 2))
    w, b = jn.fold_batch_norm(
        jnp.asarray(kernel, jnp.float32),
        jnp.asarray(bias, jnp.float32),
        jnp.asarray(gamma, jnp.float32),
        jnp.asarray(beta, jnp.float32),
        {k: jnp.asarray(v, jnp.float32) for k, v in st.items()},
        epsilon=epsilon,
    )
    z = np.einsum("nhwc,hwcd->nd", x, kernel) + bias
    want = (z - st["mean"]) / np.sqrt(st["var"] + epsilon) * gamma + beta
    got = np.einsum("nhwc,hwcd->nd", x, np.asarray(w, np.float64)) + np.asarray(b, np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_population_batch_stats_for_a_flax_model():
    model = ConvBN()
    x = rand((6, 5, 5, 3))
    v = model.init(jax.random.key(0), x)
    batches = [rand(x.shape, s, loc=0.3 * s) for s in range(4)]
    v2 = jn.nn.population_batch_stats(model.apply, v, batches)
    # reference: the conv output of each batch, then the seed formula
    conv = lambda b: fnn.Conv(8, (3, 3), use_bias=False).apply({"params": v["params"]["conv1"]}, b)  # noqa: E731
    outs = np.stack([np.asarray(conv(b), np.float64).reshape(-1, 8) for b in batches])
    m = outs.shape[1]
    close(v2["batch_stats"]["bn1"]["mean"], outs.mean(1).mean(0), 1e-4)
    close(v2["batch_stats"]["bn1"]["var"], m / (m - 1) * outs.var(1).mean(0), 1e-4)
    assert v["batch_stats"]["bn1"]["count"] == 0  # input variables untouched


# ---------------------------------------------------------------------------------------------------------------------
# analytic properties


def test_layer_norm_invariant_to_weight_and_example_rescaling():
    x = rand((4, 10))
    w = rand((10, 7), 1)
    base = jn.layer_norm(x @ w, epsilon=0.0)
    close(jn.layer_norm(x @ (3.7 * w), epsilon=0.0), base, 1e-4)  # weight-matrix re-scaling
    x2 = x.at[2].multiply(5.0)  # one example re-scaled
    close(jn.layer_norm(x2 @ w, epsilon=0.0), base, 1e-4)
    # batch norm is not invariant to re-scaling one example: a sanity check that the test can fail
    st = jn.init_batch_stats(7)
    assert not np.allclose(
        jn.batch_norm(x2 @ w, None, None, st, train=True)[0],
        jn.batch_norm(x @ w, None, None, st, train=True)[0],
        atol=1e-3,
    )


def test_group_norm_special_cases():
    x = rand((2, 4, 4, 8), loc=1.0)
    close(jn.group_norm(x, num_groups=1), jn.layer_norm(x))
    close(jn.group_norm(x, group_size=1), jn.instance_norm(x))


def test_weight_standardize_and_standardized_conv():
    k = rand((3, 3, 4, 6), loc=0.5, scale=2.0)
    ws = np.asarray(jn.weight_standardize(k, epsilon=0.0), np.float64).reshape(-1, 6)
    close(ws.mean(0), 0.0)
    close(ws.var(0), 1.0, 1e-4)
    conv = jn.nn.StandardizedConv(6, (3, 3), use_bias=False, epsilon=0.0)
    x = rand((2, 5, 5, 4))
    v = conv.init(jax.random.key(0), x)
    ref = fnn.Conv(6, (3, 3), use_bias=False).apply(
        {"params": {"kernel": jn.weight_standardize(v["params"]["kernel"], epsilon=0.0)}}, x
    )
    close(conv.apply(v, x), ref, 1e-4)


def test_bf16_input_gives_float32_statistics():
    x32 = rand((64, 4, 4, 8), loc=3.0, scale=0.5)
    xb = x32.astype(jnp.bfloat16)
    stats = jn.init_batch_stats(8)
    y, s = jn.batch_norm(xb, None, None, stats, train=True, momentum=0.0)
    assert y.dtype == jnp.bfloat16 and s["mean"].dtype == jnp.float32
    ref = np.asarray(xb.astype(jnp.float32), np.float64).reshape(-1, 8)  # the bf16 values, exactly
    close(s["mean"], ref.mean(0), 1e-5)
    close(s["var"], ref.var(0), 1e-5)
    # the normalized bf16 output is as accurate as bf16 allows: within bf16 rounding of the float64 answer
    close(y.astype(jnp.float32), (ref - ref.mean(0)).reshape(x32.shape) / np.sqrt(ref.var(0) + 1e-5), 2e-2)


def test_ghost_batch_norm_normalizes_each_virtual_batch():
    x = rand((12, 3), loc=1.0)
    stats = jn.init_batch_stats(3)
    # ε = 0.5 against unit variances: a ghost path that drops ε for the default 1e-5 is off by 25%
    y, s = jn.batch_norm(x, None, None, stats, train=True, virtual_batch_size=4, momentum=0.0, epsilon=0.5)
    parts = [jn.batch_norm(x[i : i + 4], None, None, stats, train=True, momentum=0.0, epsilon=0.5) for i in (0, 4, 8)]
    close(y, jnp.concatenate([p[0] for p in parts]))
    close(s["mean"], np.mean([p[1]["mean"] for p in parts], 0))
    close(s["var"], np.mean([p[1]["var"] for p in parts], 0))
    # the linen layer passes virtual_batch_size on (its momentum 0.0: the statistics are this batch's)
    layer = jn.nn.BatchNorm(momentum=0.0, epsilon=0.5, virtual_batch_size=4, use_scale=False, use_bias=False)
    v = layer.init(jax.random.key(0), x, train=False)
    y_layer, upd = layer.apply(v, x, train=True, mutable=["batch_stats"])
    close(y_layer, y)
    close(upd["batch_stats"]["var"], s["var"])


@pytest.mark.parametrize(
    "valid, pytorch",
    [((4, 1, 0), False), ((4, 1, 0), True), ((0, 3, 0), False), ((2, 0, 4), True)],
)
def test_ghost_batch_norm_averages_the_running_statistics_over_the_ghosts_that_hold_values(valid, pytorch):
    """Three ghost batches of 4 with ``valid[g]`` unmasked examples each (the rest NaN padding): the running statistics
    are the plain average over the ghosts with at least one valid value — a ghost with one value counts (its variance
    0), an empty one does not — and the PyTorch convention's unbiased factor uses the averaged count."""
    x = np.asarray(rand((12, 3), loc=2.0), np.float64)
    mask = np.zeros(12, bool)
    for g, k in enumerate(valid):
        mask[4 * g : 4 * g + k] = True
    x[~mask] = np.nan
    kw = dict(momentum=1.0, convention="pytorch") if pytorch else dict(momentum=0.0)
    _, s = jn.batch_norm(
        jnp.asarray(x, jnp.float32),
        None,
        None,
        jn.init_batch_stats(3),
        train=True,
        mask=mask,
        virtual_batch_size=4,
        **kw,
    )
    ghosts = [x[4 * g : 4 * g + k] for g, k in enumerate(valid) if k]
    mean = np.mean([gh.mean(0) for gh in ghosts], 0)
    var = np.mean([gh.var(0) for gh in ghosts], 0)
    n = np.mean([len(gh) for gh in ghosts])
    if pytorch:
        var = var * n / max(n - 1, 1)
    close(s["mean"], mean, 1e-5)
    close(s["var"], var, 1e-5)
    assert int(s["count"]) == 1


def test_update_running_stats_by_hand():
    """Both conventions and the cumulative average, against the formulas in float64; a channel with no values keeps
    its statistics; the batch count grows by one when any channel was updated."""
    st = {"mean": jnp.array([1.0, 2.0, 3.0]), "var": jnp.array([1.0, 0.5, 2.0]), "count": jnp.asarray(4, jnp.int32)}
    mean, var, n = jnp.array([3.0, -2.0, 9.0]), jnp.array([4.0, 0.25, 7.0]), jnp.array([5.0, 2.0, 0.0])
    flax = jn.update_running_stats(st, mean, var, n, momentum=0.9)
    close(flax["mean"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2, 3.0])
    close(flax["var"], [0.9 * 1 + 0.1 * 4, 0.9 * 0.5 + 0.1 * 0.25, 2.0])  # biased variance as given
    torch = jn.update_running_stats(st, mean, var, n, momentum=0.1, convention="pytorch")
    close(torch["mean"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2, 3.0])
    close(torch["var"], [0.9 * 1 + 0.1 * 4 * 5 / 4, 0.9 * 0.5 + 0.1 * 0.25 * 2 / 1, 2.0])  # unbiased: n/(n−1)
    cum = jn.update_running_stats(st, mean, var, n, momentum=None)  # the 5th batch: r + (stat − r)/5
    close(cum["mean"], [1 + (3 - 1) / 5, 2 + (-2 - 2) / 5, 3.0])
    close(cum["var"], [1 + (4 - 1) / 5, 0.5 + (0.25 - 0.5) / 5, 2.0])
    for out in (flax, torch, cum):
        assert out["count"].dtype == jnp.int32 and int(out["count"]) == 5
    empty = jn.update_running_stats(st, mean, var, jnp.zeros(3), momentum=0.9)  # nothing valid: nothing changes
    close(empty["mean"], st["mean"], 0.0)
    close(empty["var"], st["var"], 0.0)
    assert int(empty["count"]) == 4
    # one value per channel in the PyTorch convention: n/(n−1) is capped at n (the variance is 0 anyway)
    one = jn.update_running_stats(st, mean, var, jnp.ones(3), momentum=1.0, convention="pytorch")
    close(one["var"], var)


def test_update_running_stats_of_flax_style_statistics_without_a_count():
    """Statistics as Flax keeps them, ``{'mean', 'var'}``: the update counts from 0, an int32 batch count."""
    st = {"mean": jnp.zeros(2), "var": jnp.ones(2)}
    out = jn.update_running_stats(st, jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]), 4, momentum=0.5)
    close(out["mean"], [0.5, 1.0])
    assert out["count"].dtype == jnp.int32 and int(out["count"]) == 1
    _, bn = jn.batch_norm(rand((6, 2)), None, None, st, train=True)
    assert bn["count"].dtype == jnp.int32 and int(bn["count"]) == 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_running_statistics_keep_their_dtype(dtype):
    """Running statistics kept in half precision (``init_batch_stats(C, dtype)``) come back in it: a training loop
    carries them through ``lax.scan``/``fori_loop``, which refuses a carry whose dtype changes."""
    st = jn.init_batch_stats(3, dtype)
    out = jn.update_running_stats(st, jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 1.0, 1.0]), 8, momentum=0.5)
    assert out["mean"].dtype == dtype and out["var"].dtype == dtype
    close(out["mean"].astype(jnp.float32), [0.5, 1.0, 1.5])
    # the update is computed in float32 and rounded once: each new value is the float64 formula's, rounded. In
    # bfloat16 arithmetic the weights 0.99 and 0.01 themselves round (to 0.98828 and 0.01001), and 2·0.99 + 3·0.01
    # came out 2.0 instead of 2.015625
    k1, k2 = jax.random.split(jax.random.key(0))
    r = jax.random.uniform(k1, (256,), jnp.float32, 1.0, 4.0).astype(dtype)
    stat = jax.random.uniform(k2, (256,), jnp.float32, 1.0, 4.0)
    half = {"mean": r, "var": r, "count": jnp.asarray(3, jnp.int32)}
    new = jn.update_running_stats(half, stat, stat, 8, momentum=0.99)
    want = 0.99 * np.asarray(r.astype(jnp.float32), np.float64) + 0.01 * np.asarray(stat, np.float64)
    rounded = np.asarray(jnp.asarray(want, jnp.float32).astype(dtype).astype(jnp.float32))
    assert np.mean(np.asarray(new["mean"].astype(jnp.float32)) == rounded) > 0.99
    assert np.mean(np.asarray(new["var"].astype(jnp.float32)) == rounded) > 0.99
    x = rand((8, 3)).astype(dtype)
    _, carried = jax.lax.fori_loop(
        0, 2, lambda i, c: jn.batch_norm(x, None, None, c[1], train=True), (x, st)
    )  # raises if the carry's dtypes changed
    assert carried["mean"].dtype == dtype and int(carried["count"]) == 2


def test_batch_renorm_defaults_are_ioffes_limits_by_the_formula():
    """Defaults r_max = 3, d_max = 5, momentum 0.99 (Ioffe 2017's final values), each limit binding on one channel:
    ``y = (x − μ_B)/σ_B · r + d`` with ``r = clip(σ_B/σ, 1/r_max, r_max)``, ``d = clip((μ_B − μ)/σ, ±d_max)``
    against running statistics μ = 0, σ² = 1 (float64)."""
    z = np.asarray(rand((64, 3)), np.float64)
    z = (z - z.mean(0)) / z.std(0)
    x = z * [0.5, 10.0, 0.1] + [10.0, 0.5, -8.0]  # d clipped at +5; r at 3; r at 1/3 and d at −5
    y, st = jn.batch_renorm(jnp.asarray(x, jnp.float32), None, None, jn.init_batch_stats(3), train=True)
    mu_b, sigma_b = x.mean(0), np.sqrt(x.var(0) + 1e-5)
    sigma = np.sqrt(1.0 + 1e-5)
    r, d = np.clip(sigma_b / sigma, 1 / 3, 3), np.clip(mu_b / sigma, -5, 5)
    np.testing.assert_allclose(r, [0.5, 3.0, 1 / 3], rtol=1e-4)
    np.testing.assert_allclose(d, [5.0, 0.5, -5.0], rtol=1e-4)
    close(y, (x - mu_b) / sigma_b * r + d, 1e-4)
    close(st["mean"], 0.01 * mu_b, 1e-5)


def test_batch_renorm_reduces_to_batch_norm_and_clips():
    x = rand((16, 5), loc=1.0, scale=2.0)
    stats = jn.init_batch_stats(5)
    s, b = affine(5)
    y_bn, st_bn = jn.batch_norm(x, s, b, stats, train=True)
    y, st = jn.batch_renorm(x, s, b, stats, train=True, r_max=1.0, d_max=0.0)
    close(y, y_bn)
    close(st["var"], st_bn["var"])
    # with generous limits and running stats (0, 1): r = σ_B/σ, d = (μ_B − μ)/σ, so x̂ = (x − μ)/σ
    y, _ = jn.batch_renorm(x, None, None, stats, train=True, r_max=100.0, d_max=100.0, epsilon=1e-5)
    close(y, (x - 0.0) / np.sqrt(1.0 + 1e-5), 1e-4)
    # r and d carry no gradient (Ioffe 2017): the gradient is batch norm's, scaled by r
    ct = rand(x.shape, 9)
    far = {"mean": jnp.full(5, 10.0), "var": jnp.full(5, 100.0), "count": jnp.array(1)}
    g = jax.grad(lambda x: jnp.sum(jn.batch_renorm(x, s, b, far, train=True, d_max=0.5)[0] * ct))(x)
    g_bn = jax.grad(lambda x: jnp.sum(jn.batch_norm(x, s, b, far, train=True)[0] * ct))(x)
    sigma_b = np.sqrt(np.asarray(x).var(0) + 1e-5)
    r = np.clip(sigma_b / np.sqrt(100.0 + 1e-5), 1 / 3, 3)
    close(g, np.asarray(g_bn) * r, 1e-4)


@pytest.mark.parametrize("p", [1, 2, "inf"])
def test_lp_batch_norm_formula(p):
    x = rand((20, 3, 4), loc=0.7)
    stats = jn.init_batch_stats(4)
    y, st = jn.lp_batch_norm(x, None, None, stats, train=True, p=p, epsilon=0.0, momentum=0.0)
    a = np.asarray(x, np.float64).reshape(-1, 4)
    s = np.abs(a).max(0) if p == "inf" else (np.mean(np.abs(a) ** p, 0)) ** (1 / p)
    close(y, (np.asarray(x) - a.mean(0)) / s, 1e-4)
    close(st["var"], s**2, 1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# gradients of every transform by finite differences, and jit/vmap safety

STATS4 = {"mean": jnp.array([0.1, -0.2, 0.0, 0.3]), "var": jnp.array([1.2, 0.8, 1.0, 2.0]), "count": jnp.array(3)}
FAR4 = {"mean": jnp.full(4, 10.0), "var": jnp.full(4, 100.0), "count": jnp.array(3)}
TRANSFORMS = {
    "batch_norm_train": lambda x, s, b: jn.batch_norm(x, s, b, STATS4, train=True)[0],
    "batch_norm_eval": lambda x, s, b: jn.batch_norm(x, s, b, STATS4, train=False)[0],
    "batch_norm_ghost": lambda x, s, b: jn.batch_norm(x, s, b, STATS4, train=True, virtual_batch_size=3)[0],
    # running statistics far from the batch's: r and d sit at their clip bounds, so the function is locally
    # what its (stop-gradient) derivative says and finite differences apply
    "batch_renorm": lambda x, s, b: jn.batch_renorm(x, s, b, FAR4, train=True, d_max=0.5)[0],
    "lp_batch_norm_1": lambda x, s, b: jn.lp_batch_norm(x, s, b, STATS4, train=True, p=1)[0],
    "lp_batch_norm_2": lambda x, s, b: jn.lp_batch_norm(x, s, b, STATS4, train=True, p=2)[0],
    "layer_norm": lambda x, s, b: jn.layer_norm(x, s, b),
    "instance_norm": lambda x, s, b: jn.instance_norm(x, s, b),
    "group_norm": lambda x, s, b: jn.group_norm(x, s, b, num_groups=2),
    "rms_norm": lambda x, s, b: jn.rms_norm(x, s) + b,
    "weight_standardize": lambda x, s, b: jn.weight_standardize(x) * s + b,
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_check_grads_every_transform(name):
    f = TRANSFORMS[name]
    # in float64 with a small step, so that the tolerance catches a backward rule 1e-4 wrong (a 1% error fails by
    # three orders of magnitude); float32 finite differences would need percent-level tolerances
    with jax.enable_x64(True):
        x = rand((6, 3, 4), loc=0.4).astype(jnp.float64)
        s, b = (v.astype(jnp.float64) for v in affine(4))
        check_grads(jax.jit(f), (x, s, b), order=1, modes=("rev", "fwd"), atol=1e-5, rtol=1e-5, eps=1e-4)
    x = rand((6, 3, 4), loc=0.4)
    s, b = affine(4)
    y = jax.jit(f)(x, s, b)
    close(y, f(x, s, b), 1e-5)


def test_lp_inf_grads():
    with jax.enable_x64(True):  # float64 and a small step: see test_check_grads_every_transform
        x = rand((6, 4), loc=0.4).astype(jnp.float64)
        check_grads(
            jax.jit(lambda x: jn.lp_batch_norm(x, None, None, STATS4, train=True, p="inf")[0]),
            (x,),
            order=1,
            modes=("rev",),
            atol=1e-5,
            rtol=1e-5,
            eps=1e-4,
        )


def test_vmap_of_batch_norm_over_independent_batches():
    xs = rand((3, 8, 4), loc=1.0)
    stats = jn.init_batch_stats(4)
    ys, ss = jax.vmap(lambda x: jn.batch_norm(x, None, None, stats, train=True))(xs)
    for i in range(3):
        y, s = jn.batch_norm(xs[i], None, None, stats, train=True)
        close(ys[i], y)
        close(ss["var"][i], s["var"])


# ---------------------------------------------------------------------------------------------------------------------
# bad input: what is wrong, the numbers, the fix


def test_group_norm_errors():
    x = jnp.ones((2, 4, 4, 48))
    with pytest.raises(ValueError, match=r"48 channels are not divisible by num_groups=32.*such as"):
        jn.group_norm(x, num_groups=32)
    with pytest.raises(ValueError, match=r"exactly one of num_groups and group_size"):
        jn.group_norm(x, num_groups=4, group_size=12)
    with pytest.raises(ValueError, match=r"exactly one of num_groups and group_size"):
        jn.group_norm(x)
    with pytest.raises(ValueError, match=r"not divisible by group_size=5"):
        jn.group_norm(x, group_size=5)
    with pytest.raises(ValueError, match=r"num_groups=32"):
        jn.nn.GroupNorm().init(jax.random.key(0), x)


def test_batch_norm_errors():
    stats = jn.init_batch_stats(4)
    with pytest.raises(ValueError, match=r"more than 1 value per channel.*PyTorch"):
        jn.batch_norm(jnp.ones((1, 4)), None, None, stats, train=True)
    jn.batch_norm(jnp.ones((1, 4)), None, None, stats, train=False)  # eval on one example is fine
    with pytest.raises(
        ValueError, match=r"stats\['mean'\] has shape \(4,\) but the input has 6 channels.*init_batch_stats\(6\)"
    ):
        jn.batch_norm(jnp.ones((3, 6)), None, None, stats, train=True)
    with pytest.raises(ValueError, match=r"'mean', 'var'.*init_batch_stats\(4\)"):
        jn.batch_norm(jnp.ones((3, 4)), None, None, {"mean": jnp.zeros(4)}, train=True)
    with pytest.raises(ValueError, match=r"unknown batch-norm convention 'torch'.*'flax', 'pytorch'"):
        jn.batch_norm(jnp.ones((3, 4)), None, None, stats, train=True, convention="torch")
    with pytest.raises(ValueError, match=r"axis_name='batch' is not bound.*jax.pmap"):
        jn.batch_norm(jnp.ones((3, 4)), None, None, stats, train=True, axis_name="batch")
    with pytest.raises(ValueError, match=r"virtual_batch_size=5 must be a positive divisor of the batch size 8"):
        jn.batch_norm(jnp.ones((8, 4)), None, None, stats, train=True, virtual_batch_size=5)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        jn.batch_norm(jnp.ones((8, 4)), None, None, stats, train=True, momentum=1.5)
    with pytest.raises(ValueError, match=r"scale of shape \(3,\) does not broadcast"):
        jn.batch_norm(jnp.ones((8, 4)), jnp.ones(3), None, stats, train=True)
    with pytest.raises(ValueError, match=r"init_batch_stats: num_features must be a positive int"):
        jn.init_batch_stats(0)


def test_other_errors():
    with pytest.raises(ValueError, match=r"p must be one of 1, 2, 'inf'"):
        jn.lp_batch_norm(jnp.ones((4, 4)), None, None, jn.init_batch_stats(4), train=True, p=3)
    with pytest.raises(ValueError, match=r"instance_norm: expected an input of rank >= 3"):
        jn.instance_norm(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match=r"r_max >= 1"):
        jn.batch_renorm(jnp.ones((4, 4)), None, None, jn.init_batch_stats(4), train=True, r_max=0.5)
    with pytest.raises(ValueError) as err:
        jn.population_stats([])
    assert str(err.value) == "population_stats: the iterator of batch moments was empty; pass at least one batch"
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) must match the leading axes"):
        jn.batch_norm(jnp.ones((4, 2)), None, None, jn.init_batch_stats(2), train=True, mask=jnp.ones(3, bool))
    with pytest.raises(KeyError, match=r"'nope' not found"):
        jn.fold_batch_norm_params({"a": {"kernel": jnp.ones((2, 2))}}, {}, {"nope": "a"})


# ---------------------------------------------------------------------------------------------------------------------
# noisy batch norm (Santurkar et al. 2018, Algorithm 1)


def test_noisy_batch_norm_noise_statistics_match_algorithm_1():
    shape = (4000, 5, 64)  # 20000 samples (spatial positions count as samples) × 64 units
    s, m = jn.norms.batch_norm_noise(jax.random.key(3), shape)
    s = np.asarray(s).reshape(-1, 64)
    m = np.asarray(m).reshape(-1, 64)
    mu_j, sigma_j = m.mean(0), s.mean(0)  # per-unit centres (within ±1e-3 of the drawn μ_j, σ_j)
    assert np.all(np.abs(mu_j) <= 0.5 + 0.01) and mu_j.max() - mu_j.min() > 0.5  # μ_j ~ U(−0.5, 0.5)
    assert np.all((sigma_j >= 1 - 0.01) & (sigma_j <= 1.25 + 0.01))  # σ_j ~ U(1, 1.25)
    dev_m = m - mu_j
    assert np.abs(dev_m).max() <= 0.1 + 3e-3 and abs(dev_m.std() - 0.1 / np.sqrt(3)) < 2e-3  # U(μ_j ± r_μ)
    assert abs((s - sigma_j).std() - 0.1) < 2e-3  # N(σ_j, r_σ)


def test_noisy_batch_norm_new_noise_each_step_and_none_in_eval():
    x = rand((8, 4, 6), loc=1.0)
    stats = jn.init_batch_stats(6)
    y_bn, st_bn = jn.batch_norm(x, None, None, stats, train=True)
    y1, st1 = jn.noisy_batch_norm(x, None, None, stats, train=True, key=jax.random.key(1))
    y2, _ = jn.noisy_batch_norm(x, None, None, stats, train=True, key=jax.random.key(2))
    assert not np.allclose(y1, y2) and not np.allclose(y1, y_bn)
    close(st1["mean"], st_bn["mean"])  # the noise is after the statistics: running averages are BN's
    s, m = jn.norms.batch_norm_noise(jax.random.key(1), x.shape)
    close(y1, np.asarray(y_bn) * np.asarray(s) + np.asarray(m))
    y_eval, _ = jn.noisy_batch_norm(x, None, None, st1, train=False)
    close(y_eval, jn.batch_norm(x, None, None, st1, train=False)[0])
    layer = jn.nn.NoisyBatchNorm()
    v = layer.init(jax.random.key(0), x, train=False)
    a, _ = layer.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(5)})
    b, _ = layer.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(6)})
    assert not np.allclose(a, b)
    close(
        layer.apply(v, x, train=False),
        jn.batch_norm(x, v["params"]["scale"], v["params"]["bias"], v["batch_stats"], train=False)[0],
    )
    with pytest.raises(ValueError, match=r"needs a 'dropout' PRNG stream"):
        layer.apply(v, x, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match=r"n_sigma >= 1"):
        jn.noisy_batch_norm(x, None, None, stats, train=True, key=jax.random.key(1), n_sigma=0.5)


@pytest.mark.parametrize(
    "name",
    [
        "batch_norm",
        "ghost",
        "layer_norm",
        "group_norm",
        "instance_norm",
        "rms_norm",
        "batch_renorm",
        "lp1",
        "lp2",
        "lpinf",
    ],
)
def test_nan_in_masked_padding_never_reaches_the_gradients(name):
    """The loss sees only valid examples; NaN padding must leave every gradient finite and equal to the one with
    finite padding (it used to reach them as 0·NaN in the transpose of the normalization's JVP)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(2, 3, (8, 3, 4)), jnp.float32)
    valid = jnp.asarray([1, 1, 0, 1, 1, 0, 1, 1], bool)
    ct = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    w, b = jnp.asarray(rng.normal(1, 0.2, 4), jnp.float32), jnp.asarray(rng.normal(0, 0.2, 4), jnp.float32)
    st = jn.init_batch_stats(4)
    f = {
        "batch_norm": lambda x, w, b: jn.batch_norm(x, w, b, st, train=True, mask=valid)[0],
        "ghost": lambda x, w, b: jn.batch_norm(x, w, b, st, train=True, mask=valid, virtual_batch_size=4)[0],
        "layer_norm": lambda x, w, b: jn.layer_norm(x, w, b, mask=valid),
        "group_norm": lambda x, w, b: jn.group_norm(x, w, b, num_groups=2, mask=valid),
        "instance_norm": lambda x, w, b: jn.instance_norm(x, w, b, mask=valid),
        "rms_norm": lambda x, w, b: jn.rms_norm(x, w, mask=valid) + b,
        "batch_renorm": lambda x, w, b: jn.batch_renorm(x, w, b, st, train=True, mask=valid)[0],
        "lp1": lambda x, w, b: jn.lp_batch_norm(x, w, b, st, train=True, p=1, mask=valid)[0],
        "lp2": lambda x, w, b: jn.lp_batch_norm(x, w, b, st, train=True, p=2, mask=valid)[0],
        "lpinf": lambda x, w, b: jn.lp_batch_norm(x, w, b, st, train=True, p="inf", mask=valid)[0],
    }[name]

    def loss(x, w, b):
        return jnp.sum(jnp.where(valid[:, None, None], f(x, w, b) * ct, 0.0))

    g_nan = jax.grad(loss, argnums=(0, 1, 2))(jnp.where(valid[:, None, None], x, jnp.nan), w, b)
    g_fin = jax.grad(loss, argnums=(0, 1, 2))(x, w, b)
    for a, ref in zip(g_nan, g_fin):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_array_equal(
            np.where(valid[:, None, None], a, 0) if a.ndim == 3 else a,
            np.where(valid[:, None, None], ref, 0) if ref.ndim == 3 else ref,
        )


def test_noisy_batch_norm_noise_constants_set_the_distributions():
    """Algorithm 1 at constants other than the paper's: each one moves the distribution it names (a constant
    ignored, i.e. its default used, fails one of these bounds), and noisy_batch_norm passes them on."""
    n_mu, n_sigma, r_mu, r_sigma = 2.0, 3.0, 0.4, 0.3
    shape = (4000, 5, 64)
    s, m = jn.norms.batch_norm_noise(jax.random.key(3), shape, n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma)
    s, m = np.asarray(s).reshape(-1, 64), np.asarray(m).reshape(-1, 64)
    mu_j, sigma_j = m.mean(0), s.mean(0)  # per-unit centres, within ±3e-3 of the drawn μ_j, σ_j (20000 samples)
    assert np.all(np.abs(mu_j) <= n_mu + 0.01) and mu_j.max() - mu_j.min() > 2.0  # U(−2, 2): 64 draws span > 2
    assert np.all((sigma_j >= 1 - 0.01) & (sigma_j <= n_sigma + 0.01)) and sigma_j.max() - sigma_j.min() > 1.0
    dev_m = m - mu_j
    assert np.abs(dev_m).max() <= r_mu + 5e-3 and abs(dev_m.std() - r_mu / np.sqrt(3)) < 3e-3
    assert abs((s - sigma_j).std() - r_sigma) < 3e-3
    x = rand((8, 4, 6), loc=1.0)
    stats = jn.init_batch_stats(6)
    consts = dict(n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma)
    y, _ = jn.noisy_batch_norm(x, None, None, stats, train=True, key=jax.random.key(1), **consts)
    s, m = jn.norms.batch_norm_noise(jax.random.key(1), x.shape, **consts)
    y_bn, _ = jn.batch_norm(x, None, None, stats, train=True)
    close(y, np.asarray(y_bn) * np.asarray(s) + np.asarray(m))


def test_noisy_batch_norm_layer_without_noise_is_batch_norm():
    """The linen layer with n_μ = r_μ = r_σ = 0 and n_σ = 1 draws s = 1, m = 0: training equals BatchNorm exactly
    (any constant ignored would bring the paper's noise back)."""
    x = rand((8, 4, 6), loc=1.0, scale=2.0)
    quiet = jn.nn.NoisyBatchNorm(momentum=0.9, n_mu=0.0, n_sigma=1.0, r_mu=0.0, r_sigma=0.0)
    plain = jn.nn.BatchNorm(momentum=0.9)
    v = plain.init(jax.random.key(0), x, train=False)
    v = {**v, "params": {"scale": affine(6)[0], "bias": affine(6)[1]}}
    y_ref, st_ref = plain.apply(v, x, train=True, mutable=["batch_stats"])
    y, st = quiet.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(5)})
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    close(st["batch_stats"]["mean"], st_ref["batch_stats"]["mean"])
    noisy = jn.nn.NoisyBatchNorm(momentum=0.9)
    y_noisy, _ = noisy.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(5)})
    assert float(jnp.abs(y_noisy - y_ref).max()) > 0.05


def test_axis_index_groups_normalize_each_group_over_its_own_devices():
    """Synchronized batch norm over the device groups [[0, 1], [2, 3]] (pmap over the 4 fake devices): each device
    normalizes with its own pair's statistics, not the four devices' (the groups ignored) nor its own (no psum).
    The pure batch_norm, batch_moments and the linen layer."""
    assert jax.local_device_count() >= 4, "conftest fakes 4 CPU devices"
    groups = [[0, 1], [2, 3]]
    x = rand((4, 4, 3), loc=1.0, scale=2.0) + 3.0 * jnp.arange(4.0)[:, None, None]  # devices differ in mean
    stats = jn.init_batch_stats(3)
    g, b = affine(3)

    def pure(a):
        kw = dict(axis_name="d", axis_index_groups=groups)
        y, s = jn.batch_norm(a, g, b, stats, train=True, momentum=0.9, **kw)
        return y, s, jn.batch_moments(a, **kw)

    layer = jn.nn.BatchNorm(momentum=0.9, axis_name="d", axis_index_groups=groups)
    v = {"params": {"scale": g, "bias": b}, "batch_stats": {k: v for k, v in stats.items()}}

    def linen(a):
        y, st = layer.apply(v, a, train=True, mutable=["batch_stats"])
        return y, st["batch_stats"]

    y, s, m = jax.pmap(pure, axis_name="d")(x)
    y_layer, s_layer = jax.pmap(linen, axis_name="d")(x)
    x64 = np.asarray(x, np.float64)
    for dev in range(4):
        pair = x64[2 * (dev // 2) : 2 * (dev // 2) + 2].reshape(-1, 3)
        mean, var = pair.mean(0), pair.var(0)
        y_ref = (x64[dev] - mean) / np.sqrt(var + 1e-5) * np.asarray(g) + np.asarray(b)
        close(y[dev], y_ref)
        close(y_layer[dev], y_ref)
        for st in (s, s_layer):
            close(st["mean"][dev], 0.1 * mean)
            close(st["var"][dev], 0.9 + 0.1 * var)  # flax's convention: the biased variance
        close(m["mean"][dev], mean)
        close(m["var"][dev], var)
        assert int(m["count"][dev]) == 8


def test_init_dtypes_are_the_ones_asked_for():
    """init_batch_stats' and init_spectral_state's dtype reach the arrays (the count stays int32)."""
    st = jn.init_batch_stats(3, jnp.float16)
    assert (st["mean"].dtype, st["var"].dtype, st["count"].dtype) == (jnp.float16, jnp.float16, jnp.int32)
    assert st["var"].tolist() == [1.0, 1.0, 1.0] and st["mean"].tolist() == [0.0, 0.0, 0.0]
    u = jn.init_spectral_state(jax.random.key(0), jnp.ones((3, 3, 4, 8)), jnp.bfloat16)
    assert u.dtype == jnp.bfloat16 and u.shape == (1, 8)
    close(u, jax.random.normal(jax.random.key(0), (1, 8), jnp.bfloat16))


def test_batch_moments_shift_is_the_one_pass_formulas_k():
    """``shift`` is the k of σ² = Σ(x−k)²/n − (μ−k)²: at k = 0 float32 cancels the whole variance of data at mean
    3000 with σ = 0.1 (what the default, the first value, avoids); at k near the mean it is the float64 variance."""
    r = np.random.default_rng(0)
    x = (3000.0 + 0.1 * r.normal(size=(64, 3))).astype(np.float32)
    var64 = x.astype(np.float64).var(0)
    at_zero = jn.batch_moments(jnp.asarray(x), shift=jnp.zeros(3))
    assert np.all(np.abs(np.asarray(at_zero["var"]) - var64) > 0.5 * var64)  # measured: 0, 1, 1 vs ~0.01
    for shift in (None, x.astype(np.float64).mean(0), np.full(3, 2999.9)):
        m = jn.batch_moments(jnp.asarray(x), shift=None if shift is None else jnp.asarray(shift, jnp.float32))
        np.testing.assert_allclose(m["var"], var64, rtol=1e-4)  # measured 2e-5 at k = 2999.9
        np.testing.assert_allclose(m["mean"], x.astype(np.float64).mean(0), rtol=1e-7, atol=1e-4)


def test_linen_layers_pass_their_axes_and_group_size_on():
    """LayerNorm(axes=1) and RMSNorm(axes=1) reduce over axis 1 only, GroupNorm(num_groups=None, group_size=2)
    makes groups of 2 channels: each equals the pure function with the same option (and differs from the default,
    so an option not passed on fails)."""
    x = rand((4, 3, 6), loc=1.0, scale=2.0) * jnp.arange(1.0, 7.0)
    cases = (
        (jn.nn.LayerNorm(axes=1), lambda x, p: jn.layer_norm(x, p["scale"], p["bias"], axes=1), jn.nn.LayerNorm()),
        (jn.nn.RMSNorm(axes=1), lambda x, p: jn.rms_norm(x, p["scale"], axes=1), jn.nn.RMSNorm()),
        (
            jn.nn.GroupNorm(num_groups=None, group_size=2),
            lambda x, p: jn.group_norm(x, p["scale"], p["bias"], group_size=2),
            jn.nn.GroupNorm(num_groups=1),
        ),
    )
    for layer, pure, default in cases:
        v = layer.init(jax.random.key(0), x)
        y = layer.apply(v, x)
        close(y, pure(x, v["params"]))
        assert float(jnp.abs(y - default.apply(default.init(jax.random.key(0), x), x)).max()) > 1e-2, layer
