"""Right numbers on every input (issue 12): large means against a float64 two-pass reference, masks that select
(NaN/inf padding), per-channel parameters on any feature axis, strict input checks, empty and all-masked batches,
traced ``train``, half precision. The reference is ``tests/_float64.py`` (numpy, float64, closed-form gradients)."""

import _float64 as ref
import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxnorm as jn

jax.config.update("jax_default_matmul_precision", "highest")

EPS = 1e-5
SHAPE = (32, 8, 8, 16)
MEANS = [1e2, 1e3, 1e4, 1e5]


def data(m, sd=1.0, shape=SHAPE, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    c = shape[-1]
    x = (m + sd * jax.random.normal(k1, shape)).astype(jnp.float32)
    return x, 1.0 + 0.2 * jax.random.normal(k2, (c,)), 0.2 * jax.random.normal(k3, (c,)), jax.random.normal(k4, shape)


def f64(*a):
    return [np.asarray(t, np.float64) for t in a]


def assert_accurate(y, dx, out, y_tol=1e-3, dx_tol=1e-3):
    """y within y_tol·std(y_ref), dx within dx_tol·max|dx_ref|."""
    y, dx = f64(y, dx)
    err_y = np.max(np.abs(y - out["y"])) / np.std(out["y"])
    err_dx = np.max(np.abs(dx - out["dx"])) / np.max(np.abs(out["dx"]))
    assert err_y < y_tol and err_dx < dx_tol, (err_y, err_dx)


FRESH = jn.init_batch_stats(SHAPE[-1])
M0 = {"momentum": 0.0}  # the new running variance is then the batch variance


# name → (f(x, s, b) → (y, batch var or None), reference kwargs for _float64.norm)
NORMS = {
    "batch": (lambda x, s, b: _bn(jn.batch_norm(x, s, b, FRESH, train=True, **M0)), dict(kind="batch")),
    "batch_renorm_r1d0": (
        lambda x, s, b: _bn(jn.batch_renorm(x, s, b, FRESH, train=True, r_max=1.0, d_max=0.0, **M0)),
        dict(kind="batch"),
    ),
    "lp_batch_norm_p2": (
        lambda x, s, b: (jn.lp_batch_norm(x, s, b, FRESH, train=True, p=2)[0], None),
        dict(kind="batch", mode="lp2"),
    ),
    "layer": (lambda x, s, b: (jn.layer_norm(x, s, b, epsilon=EPS), None), dict(kind="layer")),
    "instance": (lambda x, s, b: (jn.instance_norm(x, s, b, epsilon=EPS), None), dict(kind="instance")),
    "group4": (lambda x, s, b: (jn.group_norm(x, s, b, num_groups=4, epsilon=EPS), None), dict(kind="group", groups=4)),
    "group16": (
        lambda x, s, b: (jn.group_norm(x, s, b, num_groups=16, epsilon=EPS), None),
        dict(kind="group", groups=16),
    ),
    "rms": (lambda x, s, b: (jn.rms_norm(x, s, epsilon=EPS), None), dict(kind="layer", mode="rms")),
}


def _bn(out):
    return out[0], out[1]["var"]


@pytest.mark.parametrize("m", MEANS)
@pytest.mark.parametrize("name", sorted(NORMS))
def test_large_mean_matches_float64_two_pass(name, m):
    f, kw = NORMS[name]
    x, s, b, ct = data(m)
    bias = None if kw.get("mode") == "rms" else b
    out = ref.norm(*f64(x), scale=s, bias=bias, ct=ct, eps=EPS, **kw)
    y, var = f(x, s, b)
    dx = jax.grad(lambda x: jnp.sum(f(x, s, b)[0] * ct))(x)
    assert_accurate(y, dx, out)
    if var is not None:
        np.testing.assert_allclose(np.asarray(var, np.float64), out["var"], rtol=1e-4)


EPS_NORMS = {  # name → (f(x, s, b, **epsilon) → y, reference kwargs): every training-mode norm, ε given or left out
    "batch": (lambda x, s, b, **e: jn.batch_norm(x, s, b, FRESH, train=True, **e)[0], dict(kind="batch")),
    "batch_renorm_r1d0": (
        lambda x, s, b, **e: jn.batch_renorm(x, s, b, FRESH, train=True, r_max=1.0, d_max=0.0, **e)[0],
        dict(kind="batch"),
    ),
    "lp_batch_norm_p2": (
        lambda x, s, b, **e: jn.lp_batch_norm(x, s, b, FRESH, train=True, p=2, **e)[0],
        dict(kind="batch", mode="lp2"),
    ),
    "layer": (lambda x, s, b, **e: jn.layer_norm(x, s, b, **e), dict(kind="layer")),
    "instance": (lambda x, s, b, **e: jn.instance_norm(x, s, b, **e), dict(kind="instance")),
    "group4": (lambda x, s, b, **e: jn.group_norm(x, s, b, num_groups=4, **e), dict(kind="group", groups=4)),
    "rms": (lambda x, s, b, **e: jn.rms_norm(x, s, **e), dict(kind="layer", mode="rms")),
}


@pytest.mark.parametrize("name", sorted(EPS_NORMS))
def test_a_given_epsilon_reaches_the_output_and_the_gradient(name):
    """ε = 0.5 against variances of 0.25: y and ∂(Σ ct·y)/∂x against the float64 formula with that ε. A norm (or its
    hand-written backward rule) that falls back to the default ε = 1e-5 is off by tens of per cent."""
    f, kw = EPS_NORMS[name]
    x, s, b, ct = data(0.3, 0.5)
    bias = None if kw.get("mode") == "rms" else b
    out = ref.norm(*f64(x), scale=s, bias=bias, ct=ct, eps=0.5, **kw)
    y = f(x, s, b, epsilon=0.5)
    dx = jax.grad(lambda x: jnp.sum(f(x, s, b, epsilon=0.5) * ct))(x)
    assert_accurate(y, dx, out, y_tol=1e-5, dx_tol=1e-5)


@pytest.mark.parametrize("name", sorted(EPS_NORMS))
def test_the_default_epsilon_is_1e_5(name):
    """ε left out is 1e-5 (Flax's and PyTorch's default): against the float64 formula at variances (and, for the
    uncentred norms, mean squares) of about 1e-4, where ε is a tenth of them."""
    f, kw = EPS_NORMS[name]
    x, s, b, _ = data(0.0, 0.01)
    bias = None if kw.get("mode") == "rms" else b
    want = ref.norm(*f64(x), scale=s, bias=bias, eps=1e-5, **kw)["y"]
    np.testing.assert_allclose(np.asarray(f(x, s, b), np.float64), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    off = ref.norm(*f64(x), scale=s, bias=bias, eps=1e-4, **kw)["y"]  # the test tells ε = 1e-4 apart
    assert np.abs(off - want).max() > 1e-2 * np.abs(want).max()


@pytest.mark.parametrize("m,sd", [(1e4, 1.0), (5.0, 1e-3), (-1e3, 0.1)])
def test_batch_moments_population_stats_and_variants_at_large_means(m, sd):
    x, s, b, ct = data(m, sd)
    x64 = f64(x)[0]
    o = ref.norm(x64, "batch", eps=EPS)
    mo = jn.batch_moments(x)
    np.testing.assert_allclose(np.asarray(mo["var"], np.float64), o["var"], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(mo["mean"], np.float64), o["mean"], rtol=1e-6, atol=1e-6 * abs(m))
    # population statistics of 4 batches: E[μ_B] and m/(m−1)·E[σ²_B], from float64 batch moments
    parts = [x[i : i + 8] for i in range(0, 32, 8)]
    pop = jn.population_stats(jn.batch_moments(p) for p in parts)
    ms = [ref.norm(*f64(p), "batch") for p in parts]
    n = 8 * 8 * 8
    np.testing.assert_allclose(
        np.asarray(pop["var"], np.float64), n / (n - 1) * np.mean([q["var"] for q in ms], 0), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(pop["mean"], np.float64), np.mean([q["mean"] for q in ms], 0), rtol=1e-6, atol=1e-6 * abs(m)
    )
    # ghost batch norm: each virtual batch of 8 against its own float64 statistics
    y, st = jn.batch_norm(x, s, b, FRESH, train=True, virtual_batch_size=8, **M0)
    for i, p in enumerate(parts):
        out = ref.norm(*f64(p), "batch", scale=s, bias=b, eps=EPS)
        assert np.max(np.abs(np.asarray(y[8 * i : 8 * i + 8], np.float64) - out["y"])) < 1e-3 * np.std(out["y"])
    np.testing.assert_allclose(np.asarray(st["var"], np.float64), np.mean([q["var"] for q in ms], 0), rtol=1e-4)


def test_population_stats_weights_batches_by_their_counts():
    """Uneven (masked) batches: E[x] = Σnμ/Σn, Var = Σnσ²/Σ(n−1); an all-masked batch adds nothing."""
    x = data(3e3, shape=(30, 4))[0]
    sizes = [12, 10, 8]
    batches, masks, start = [], [], 0
    for n in sizes:
        batches.append(jnp.concatenate([x[start : start + n], jnp.full((12 - n, 4), jnp.nan)]))
        masks.append(jnp.arange(12) < n)
        start += n
    batches.append(jnp.full((12, 4), jnp.inf))
    masks.append(jnp.zeros(12, bool))
    pop = jn.population_stats(jn.batch_moments(b, mask=m) for b, m in zip(batches, masks))
    parts = np.split(f64(x)[0], np.cumsum(sizes)[:-1])
    n = np.array(sizes, np.float64)[:, None]
    mu = np.stack([p.mean(0) for p in parts])
    var = np.stack([p.var(0) for p in parts])
    np.testing.assert_allclose(np.asarray(pop["mean"], np.float64), (n * mu).sum(0) / n.sum(), rtol=1e-7)
    np.testing.assert_allclose(np.asarray(pop["var"], np.float64), (n * var).sum(0) / (n - 1).sum(), rtol=1e-4)
    assert int(pop["count"]) == 4


def test_population_stats_counts_a_one_value_batch_and_ignores_an_empty_one_holding_nan():
    """Moments by hand: a batch of one value enters E[x] with weight 1 (and Var with 0 degrees of freedom); a batch
    whose count is 0 adds nothing even when its moments are NaN (an empty batch's 0/0 from another source)."""
    moments = [
        {"mean": jnp.array([1.0, 2.0]), "var": jnp.array([0.5, 2.0]), "count": jnp.array(3)},
        {"mean": jnp.array([5.0, -2.0]), "var": jnp.array([0.0, 0.0]), "count": jnp.array(1)},
        {"mean": jnp.full(2, jnp.nan), "var": jnp.full(2, jnp.nan), "count": jnp.array(0)},
    ]
    pop = jn.population_stats(moments)
    np.testing.assert_allclose(pop["mean"], [(3 * 1.0 + 5.0) / 4, (3 * 2.0 - 2.0) / 4], rtol=1e-7)
    np.testing.assert_allclose(pop["var"], [3 * 0.5 / 2, 3 * 2.0 / 2], rtol=1e-7)
    assert int(pop["count"]) == 3
    # one batch alone: of one value (its mean, and Var 0 over 0 degrees of freedom), of two (one degree of freedom)
    one = jn.population_stats([{"mean": jnp.array([5.0]), "var": jnp.array([0.0]), "count": jnp.array(1)}])
    np.testing.assert_allclose([one["mean"][0], one["var"][0]], [5.0, 0.0])
    two = jn.population_stats([{"mean": jnp.array([5.0]), "var": jnp.array([0.25]), "count": jnp.array(2)}])
    np.testing.assert_allclose([two["mean"][0], two["var"][0]], [5.0, 0.5])  # 2·0.25/(2 − 1)
    # an empty first batch holding NaN is no reference for the others: one value after it is the mean
    late = jn.population_stats(moments[2:] + moments[1:2])
    np.testing.assert_allclose([late["mean"][0], late["var"][0]], [5.0, 0.0])


@pytest.mark.parametrize(
    "name, statistic",
    [
        # which values share a statistic with x[0, 1, 1, 0]: its (example, group of 2 channels), (example, channel),
        # (example) or (channel); every other value must stay finite, in y and in the gradient, as in PyTorch
        ("group", lambda idx: (idx[0] == 0) & (idx[3] < 2)),
        ("instance", lambda idx: (idx[0] == 0) & (idx[3] == 0)),
        ("layer", lambda idx: idx[0] == 0),
        ("batch", lambda idx: idx[3] == 0),
    ],
)
def test_a_non_finite_value_spoils_only_its_own_statistic(name, statistic):
    x = np.asarray(data(0.5, shape=(3, 3, 3, 8))[0]).copy()
    x[0, 1, 1, 0] = np.inf
    fn = {
        "group": lambda x: jn.group_norm(x, num_groups=4),
        "instance": lambda x: jn.instance_norm(x),
        "layer": lambda x: jn.layer_norm(x, axes=(1, 2, 3)),
        "batch": lambda x: jn.batch_norm(x, None, None, jn.init_batch_stats(8), train=True)[0],
    }[name]
    y, vjp = jax.vjp(fn, jnp.asarray(x))
    (dx,) = vjp(jnp.ones_like(y))
    shared = statistic(np.indices(x.shape))
    assert not np.isfinite(np.asarray(y)[shared]).all()
    assert np.isfinite(np.asarray(y)[~shared]).all() and np.isfinite(np.asarray(dx)[~shared]).all()


def test_constant_channels_have_zero_variance():
    x = jnp.broadcast_to(jnp.array([-1000.1, 10000.3, 5.0, 1e5], jnp.float32), (64, 4, 4))
    mean = np.asarray(x[0, 0], np.float64)
    for var in (
        jn.batch_norm(x, None, None, jn.init_batch_stats(4), train=True, momentum=0.0)[1]["var"],
        jn.batch_moments(x)["var"],
    ):
        assert np.all(np.asarray(var, np.float64) <= 1e-6 * mean**2), var
    # per example: a constant example normalizes to the bias
    y = jn.layer_norm(jnp.full((2, 5, 3), 10000.3), None, jnp.arange(3.0))
    np.testing.assert_allclose(y, np.broadcast_to(np.arange(3.0), (2, 5, 3)), atol=1e-6)


def test_sync_batch_norm_uneven_masked_shards_at_large_mean():
    """13 real examples spread 4/4/3/2 over 4 devices, padded with NaN; mean 1e4: exact global statistics."""
    x_real = data(1e4, shape=(13, 3, 5))[0]
    counts = [4, 4, 3, 2]
    shards, masks, start = [], [], 0
    for n in counts:
        shards.append(jnp.concatenate([x_real[start : start + n], jnp.full((4 - n, 3, 5), jnp.nan)]))
        masks.append(jnp.arange(4) < n)
        start += n
    stats = jn.init_batch_stats(5)
    f = jax.pmap(
        lambda x, m: jn.batch_norm(x, None, None, stats, train=True, momentum=0.0, axis_name="batch", mask=m),
        axis_name="batch",
    )
    y, s = f(jnp.stack(shards), jnp.stack(masks))
    out = ref.norm(*f64(x_real), "batch", eps=EPS)
    got = np.concatenate([np.asarray(y[i, :n], np.float64) for i, n in enumerate(counts)])
    assert np.max(np.abs(got - out["y"])) < 1e-3
    np.testing.assert_allclose(np.asarray(s["var"][0], np.float64), out["var"], rtol=1e-4)
    np.testing.assert_allclose(np.asarray(s["var"][3]), np.asarray(s["var"][0]))  # the same on every device


@pytest.mark.parametrize("counts", [(3, 0, 0, 2), (0, 0, 0, 0)], ids=["empty_devices", "nothing_valid"])
def test_sync_batch_norm_with_devices_holding_no_valid_example_equals_one_device(counts):
    """Devices whose examples are all padding, or no valid example anywhere: the shift the devices agree on (the
    largest valid one; 0 when there is none, as on one device) gives one device's output on the global batch, and
    the running statistics move only by the valid examples (not at all when there are none)."""
    x = data(50.0, shape=(4, 4, 3, 5))[0]  # finite padding: an all-padding batch still has a finite output
    mask = jnp.stack([jnp.arange(4) < n for n in counts])
    stats = jn.init_batch_stats(5)
    f = jax.pmap(
        lambda x, m: jn.batch_norm(x, None, None, stats, train=True, axis_name="batch", mask=m), axis_name="batch"
    )
    y, s = f(x, mask)
    y1, s1 = jn.batch_norm(x.reshape(16, 3, 5), None, None, stats, train=True, mask=mask.reshape(16))
    assert np.all(np.isfinite(np.asarray(y)))
    # y = (x − k − d)/σ, k and d as one device finds them: float32 rounding of d alone (|x| ≈ 50, σ ≈ 1)
    np.testing.assert_allclose(np.asarray(y).reshape(16, 3, 5), np.asarray(y1), rtol=1e-5, atol=2e-4)
    for k in ("mean", "var", "count"):
        np.testing.assert_allclose(np.asarray(s[k][0]), np.asarray(s1[k]), rtol=1e-5, err_msg=k)


# ---------------------------------------------------------------------------------------------------------------------
# masks select: NaN and inf in padding never reach the statistics

PAD = (jnp.nan, jnp.inf, -jnp.inf, 1e30)
MASKED = {
    "batch": lambda x, m, st: jn.batch_norm(x, None, None, st, train=True, mask=m),
    "batch_ghost": lambda x, m, st: jn.batch_norm(x, None, None, st, train=True, mask=m, virtual_batch_size=4),
    "batch_renorm": lambda x, m, st: jn.batch_renorm(x, None, None, st, train=True, mask=m),
    "lp1": lambda x, m, st: jn.lp_batch_norm(x, None, None, st, train=True, p=1, mask=m),
    "lp2": lambda x, m, st: jn.lp_batch_norm(x, None, None, st, train=True, p=2, mask=m),
    "lpinf": lambda x, m, st: jn.lp_batch_norm(x, None, None, st, train=True, p="inf", mask=m),
}


@pytest.mark.parametrize("pad", PAD)
@pytest.mark.parametrize("name", sorted(MASKED))
def test_masked_batch_statistics_ignore_nan_and_inf_padding(name, pad):
    f = MASKED[name]
    x = data(50.0, shape=(12, 3, 4))[0]
    xp = jnp.concatenate([x, jnp.full((4, 3, 4), pad)])
    mask = jnp.arange(16) < 12
    st = jn.init_batch_stats(4)
    y, s = f(xp, mask, st)
    y_ref, s_ref = f(x, None, st) if name != "batch_ghost" else f(x, jnp.ones(12, bool), st)
    assert np.all(np.isfinite(np.asarray(s["mean"]))) and np.all(np.isfinite(np.asarray(s["var"])))
    np.testing.assert_allclose(np.asarray(y[:12]), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    if name != "batch_ghost":  # ghost: the padded virtual batch is a real (fully masked) ghost batch
        np.testing.assert_allclose(np.asarray(s["var"]), np.asarray(s_ref["var"]), rtol=1e-5)
    # the input gradient at valid positions is the unpadded one, and padding gets exactly 0 from the statistics
    ct = jnp.concatenate([data(0.0, shape=(12, 3, 4), seed=3)[0], jnp.zeros((4, 3, 4))])
    if np.isfinite(pad):
        g = jax.grad(lambda x: jnp.sum(f(x, mask, st)[0] * ct))(xp)
        g_ref = jax.grad(
            lambda x: jnp.sum(f(x, None if name != "batch_ghost" else jnp.ones(12, bool), st)[0] * ct[:12])
        )(x)
        np.testing.assert_allclose(np.asarray(g[:12]), np.asarray(g_ref), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(MASKED) - {"batch_ghost"}))
def test_padding_first_at_a_large_mean_shifts_by_the_first_valid_value(name):
    """The padding leads the batch (NaN in its first 4 rows) at a mean of 1e4 with σ = 0.1: the shift must come from
    the first *valid* row, else the float32 statistics lose everything to cancellation; the variance against the
    float64 statistics of the valid rows (the unpadded batch as reference)."""
    f = MASKED[name]
    x = data(1e4, 0.1, shape=(12, 3, 4))[0]
    xp = jnp.concatenate([jnp.full((4, 3, 4), jnp.nan), x])
    mask = jnp.arange(16) >= 4
    st = jn.init_batch_stats(4)
    y, s = f(xp, mask, st)
    y_ref, s_ref = f(x, None, st)
    np.testing.assert_allclose(np.asarray(s["var"]), np.asarray(s_ref["var"]), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(y[4:]), np.asarray(y_ref), rtol=1e-4, atol=1e-4)
    if name == "batch":  # and the reference itself is right: float64 two-pass variance of the valid values
        var64 = np.var(np.asarray(x, np.float64), axis=(0, 1))
        np.testing.assert_allclose(np.asarray(s["var"]), 0.99 * 1.0 + 0.01 * var64, rtol=1e-4)


@pytest.mark.parametrize("pad", PAD)
@pytest.mark.parametrize("name", ["layer", "rms", "instance", "group"])
def test_masked_per_example_norms_select(name, pad):
    """Padded tokens (mask (N, T)) hold NaN/inf: each example's statistics over its valid tokens only."""
    x = data(1e3, shape=(3, 10, 8))[0]
    lengths = [10, 6, 1 if name in ("layer", "rms", "group") else 2]
    mask = jnp.arange(10)[None, :] < jnp.array(lengths)[:, None]
    xp = jnp.where(mask[..., None], x, pad)
    fs = {
        "layer": lambda x, m: jn.layer_norm(x, mask=m),
        "rms": lambda x, m: jn.rms_norm(x, mask=m),
        "instance": lambda x, m: jn.instance_norm(x, mask=m),
        "group": lambda x, m: jn.group_norm(x, num_groups=2, mask=m),
    }
    f = fs[name]
    y = f(xp, mask)
    for i, n in enumerate(lengths):
        y_ref = f(x[i : i + 1, :n], None)
        np.testing.assert_allclose(np.asarray(y[i : i + 1, :n]), np.asarray(y_ref), rtol=1e-4, atol=2e-4)


def test_masked_batch_norm_matches_flax_with_nan_padding():
    """Flax's own mask test puts NaN in the masked positions; its statistics (use_fast_variance=False) and ours."""
    x = data(2.0, shape=(8, 5, 3))[0]
    mask = (jnp.arange(8) < 5)[:, None, None] & jnp.ones((8, 5, 3), bool)
    xp = jnp.where(mask, x, jnp.nan)
    flax_bn = fnn.BatchNorm(use_running_average=False, momentum=0.9, use_fast_variance=False)
    v = flax_bn.init(jax.random.key(0), x)
    yf, upd = flax_bn.apply(v, xp, mask=mask, mutable=["batch_stats"])
    y, st = jn.batch_norm(xp, None, None, jn.init_batch_stats(3), train=True, momentum=0.9, mask=mask)
    np.testing.assert_allclose(np.asarray(y[:5]), np.asarray(yf[:5]), rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(st[k]), np.asarray(upd["batch_stats"][k]), rtol=1e-5, atol=1e-6)


def test_all_false_mask_and_empty_batch_leave_running_statistics_unchanged():
    stats = {"mean": jnp.arange(3.0), "var": jnp.full(3, 2.0), "count": jnp.array(5, jnp.int32)}
    x = jnp.full((4, 2, 3), jnp.nan)
    for fn in (
        lambda x, m: jn.batch_norm(x, None, None, stats, train=True, mask=m),
        lambda x, m: jn.batch_norm(x, None, None, stats, train=True, mask=m, momentum=None),
        lambda x, m: jn.batch_norm(x, None, None, stats, train=True, mask=m, convention="pytorch"),
        lambda x, m: jn.batch_renorm(x, None, None, stats, train=True, mask=m),
        lambda x, m: jn.lp_batch_norm(x, None, None, stats, train=True, mask=m, p=1),
    ):
        _, st = fn(x, jnp.zeros(4, bool))
        for k in stats:
            np.testing.assert_array_equal(np.asarray(st[k]), np.asarray(stats[k]))
        y, st = fn(jnp.zeros((0, 2, 3)), None)  # N = 0, as PyTorch: empty output, statistics untouched
        assert y.shape == (0, 2, 3)
        for k in stats:
            np.testing.assert_array_equal(np.asarray(st[k]), np.asarray(stats[k]))
    # a per-feature mask that empties one channel leaves that channel only
    m = jnp.ones((4, 2, 3), bool).at[..., 1].set(False)
    _, st = jn.batch_norm(jnp.ones((4, 2, 3)), None, None, stats, train=True, mask=m, momentum=0.0)
    np.testing.assert_allclose(np.asarray(st["mean"]), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.asarray(st["var"]), [0.0, 2.0, 0.0])
    assert int(st["count"]) == 6
    assert jn.layer_norm(jnp.zeros((0, 4))).shape == (0, 4)


# ---------------------------------------------------------------------------------------------------------------------
# per-channel parameters on any feature axis (PyTorch's NCHW)


@pytest.mark.parametrize("name", ["batch", "batch_renorm", "lp2", "lpinf", "instance", "group", "noisy"])
def test_nchw_axis1_with_per_channel_parameters_equals_nhwc(name):
    x, s, b, ct = data(3.0, shape=(4, 5, 6, 8))
    st = jn.init_batch_stats(8)
    fs = {
        "batch": lambda x, ax: jn.batch_norm(x, s, b, st, train=True, axis=ax),
        "batch_renorm": lambda x, ax: jn.batch_renorm(x, s, b, st, train=True, axis=ax),
        "lp2": lambda x, ax: jn.lp_batch_norm(x, s, b, st, train=True, p=2, axis=ax),
        "lpinf": lambda x, ax: jn.lp_batch_norm(x, s, b, st, train=True, p="inf", axis=ax),
        "instance": lambda x, ax: (jn.instance_norm(x, s, b, axis=ax), None),
        "group": lambda x, ax: (jn.group_norm(x, s, b, num_groups=4, axis=ax), None),
        "noisy": lambda x, ax: jn.noisy_batch_norm(x, s, b, st, train=False, axis=ax),
    }
    f = fs[name]
    to_nchw = lambda t: jnp.moveaxis(t, -1, 1)  # noqa: E731
    y, st1 = f(x, -1)
    y1, st2 = f(to_nchw(x), 1)
    np.testing.assert_allclose(np.asarray(y1), np.asarray(to_nchw(y)), rtol=1e-5, atol=1e-5)
    if st1 is not None:
        np.testing.assert_allclose(np.asarray(st2["var"]), np.asarray(st1["var"]), rtol=1e-5)
    g = jax.grad(lambda x: jnp.sum(f(x, -1)[0] * ct))(x)
    g1 = jax.grad(lambda x: jnp.sum(f(x, 1)[0] * to_nchw(ct)))(to_nchw(x))
    np.testing.assert_allclose(np.asarray(g1), np.asarray(to_nchw(g)), rtol=1e-4, atol=1e-5)


def test_nchw_batch_norm_matches_pytorch_formula_and_eval_mode():
    x = data(-20.0, 3.0, shape=(6, 4, 3, 3))[0]  # N C H W with C = 4
    s, b = data(0.0, shape=(6, 4))[1:3]
    st = jn.init_batch_stats(4)
    x_nhwc = np.moveaxis(f64(x)[0], 1, -1)
    out = ref.norm(x_nhwc, "batch", scale=s, bias=b, eps=EPS)
    y, st = jn.batch_norm(x, s, b, st, train=True, axis=1, convention="pytorch")
    np.testing.assert_allclose(np.moveaxis(np.asarray(y, np.float64), 1, -1), out["y"], rtol=1e-4, atol=1e-4)
    n = 6 * 3 * 3
    np.testing.assert_allclose(np.asarray(st["var"]), 0.9 + 0.1 * out["var"] * n / (n - 1), rtol=1e-5)
    y_eval, _ = jn.batch_norm(x, s, b, st, train=False, axis=1)
    mean, var = (np.asarray(st[k], np.float64).reshape(1, 4, 1, 1) for k in ("mean", "var"))
    np.testing.assert_allclose(
        np.asarray(y_eval, np.float64),
        (f64(x)[0] - mean) / np.sqrt(var + EPS) * np.asarray(s).reshape(1, 4, 1, 1) + np.asarray(b).reshape(1, 4, 1, 1),
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match=r"scale of shape \(3,\).*shape \(4,\) for the 4 channels on axis 1"):
        jn.batch_norm(x, jnp.ones(3), None, jn.init_batch_stats(4), train=True, axis=1)


@pytest.mark.parametrize("name", ["batch", "layer_masked", "group_axis1", "rms_masked", "lp1"])
def test_check_grads_masked_and_axis_variants(name):
    # float64 and a small step: a second-order rule 1e-4 wrong fails (float32 differences need ~5e-2)
    with jax.enable_x64(True):
        x = data(0.5, shape=(6, 3, 4))[0]
        s, b = data(0.0, shape=(4,), seed=1)[1:3]
        m = jnp.array([True, True, False, True, True, False])
        st = {"mean": jnp.full(4, 0.3), "var": jnp.full(4, 1.5), "count": jnp.array(1)}
        fs = {
            "batch": lambda x: jn.batch_norm(x, s, b, st, train=True, mask=m)[0],
            "layer_masked": lambda x: jn.layer_norm(x, s, b, mask=m),
            "group_axis1": lambda x: jn.group_norm(x, jnp.ones(3), jnp.zeros(3), num_groups=3, axis=1),
            "rms_masked": lambda x: jn.rms_norm(x, s, mask=m),
            "lp1": lambda x: jn.lp_batch_norm(x, s, b, st, train=True, p=1, mask=m)[0],
        }
        check_grads(
            jax.jit(fs[name]), (x.astype(jnp.float64),), order=2, modes=("rev", "fwd"), atol=1e-5, rtol=1e-5, eps=1e-4
        )


def test_hessian_vector_products_match_a_plain_two_pass_formula():
    """jvp-of-grad through the custom JVP equals the same of a plain jnp formula (second order, large mean)."""
    x, s, b, ct = data(1e3, shape=(8, 4, 6))
    v = data(0.0, shape=(8, 4, 6), seed=5)[0]

    def plain(x):
        xf = x - jax.lax.stop_gradient(x[:1, :1])  # a shift: the plain formula would cancel at mean 1e3 too
        mu = xf.mean((0, 1), keepdims=True)
        var = ((xf - mu) ** 2).mean((0, 1), keepdims=True)
        return jnp.sum(((xf - mu) / jnp.sqrt(var + EPS) * s + b) ** 3 * ct)

    fresh = jn.init_batch_stats(6)
    ours = lambda x: jnp.sum(jn.batch_norm(x, s, b, fresh, train=True)[0] ** 3 * ct)  # noqa: E731
    hv_ours = jax.jvp(jax.grad(ours), (x,), (v,))[1]
    hv_plain = jax.jvp(jax.grad(plain), (x,), (v,))[1]
    np.testing.assert_allclose(
        np.asarray(hv_ours), np.asarray(hv_plain), rtol=2e-3, atol=2e-3 * float(jnp.max(jnp.abs(hv_plain)))
    )


# ---------------------------------------------------------------------------------------------------------------------
# half precision: statistics in float32 from the half values, output in the input dtype


@pytest.mark.parametrize("dtype,tol", [(jnp.float16, 2e-3), (jnp.bfloat16, 1.6e-2)])
def test_half_precision_inputs(dtype, tol):
    x = data(30.0, shape=(16, 4, 4, 8))[0].astype(dtype)
    x64 = np.asarray(x.astype(jnp.float32), np.float64)  # the half values, exactly
    for name, y, kw in (
        ("batch", jn.batch_norm(x, None, None, jn.init_batch_stats(8), train=True)[0], dict(kind="batch")),
        ("layer", jn.layer_norm(x), dict(kind="layer")),
        ("group", jn.group_norm(x, num_groups=2), dict(kind="group", groups=2)),
        ("instance", jn.instance_norm(x), dict(kind="instance")),
        ("rms", jn.rms_norm(x), dict(kind="layer", mode="rms")),
    ):
        assert y.dtype == dtype, name
        out = ref.norm(x64, eps=EPS, **kw)
        err = np.max(np.abs(np.asarray(y.astype(jnp.float32), np.float64) - out["y"]))
        assert err < tol * np.max(np.abs(out["y"])) + tol, (name, err)
    mo = jn.batch_moments(x)
    assert mo["var"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(mo["var"], np.float64), ref.norm(x64, "batch")["var"], rtol=1e-4)


EVAL_NORMS = {
    "batch_norm": jn.batch_norm,
    "batch_renorm": jn.batch_renorm,
    "lp_batch_norm": lambda *a, **kw: jn.lp_batch_norm(*a, p=1, **kw),
    "noisy_batch_norm": jn.noisy_batch_norm,
}


@pytest.mark.parametrize("name", sorted(EVAL_NORMS))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("axis", [-1, 1])
def test_eval_mode_is_the_running_statistics_formula_in_float64(name, dtype, axis):
    """Eval mode: ``y = (x − μ_r)/√(σ²_r + ε)·γ + β`` with the running statistics, in the input's dtype, channels last
    (N, 3, C) and first (N, C, 3; ``axis=1``, where a norm that loses the axis on its way to the eval formula reads
    the 3 values on the last axis as the channels). ε = 0.3 against running variances of 0.01–0.05 makes ε dominate
    (a sign or factor slip in it is a 10× error), and the running mean of 1e3 makes the subtraction's rounding
    visible."""
    c = 6
    shape = (16, 3, c) if axis == -1 else (16, c, 3)
    x = (1e3 + jax.random.normal(jax.random.key(0), shape)).astype(dtype)
    st = {
        "mean": jnp.asarray(1e3 + np.linspace(-0.5, 0.5, c), jnp.float32),
        "var": jnp.asarray(np.linspace(0.01, 0.05, c), jnp.float32),
        "count": jnp.asarray(3, jnp.int32),
    }
    scale = jnp.asarray(np.linspace(0.5, 2.0, c), dtype)
    bias = jnp.asarray(np.linspace(-1.0, 1.0, c), dtype)
    y, new = EVAL_NORMS[name](x, scale, bias, st, train=False, epsilon=0.3, axis=axis)
    assert y.dtype == dtype and new is st
    per_channel = (c,) if axis == -1 else (c, 1)
    x64 = np.asarray(jnp.asarray(x, jnp.float32), np.float64)
    g, b, mu, var = (
        np.asarray(jnp.asarray(a, jnp.float32), np.float64).reshape(per_channel)
        for a in (scale, bias, st["mean"], st["var"])
    )
    want = (x64 - mu) / np.sqrt(var + 0.3) * g + b
    # float32: |x − μ| ≤ 5 computed from values of 1e3 (ulp 6e-5), so 1e-4 absolute; bfloat16: the output's own
    # rounding (8 bits: 0.4% of |y| ≤ 20)
    tol = 1e-4 if dtype == jnp.float32 else 0.1
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32), np.float64), want, atol=tol, rtol=0)


def test_one_value_per_channel_per_instance_and_per_group():
    with pytest.raises(ValueError, match=r"more than 1 value per channel in training.*PyTorch raises the same"):
        jn.batch_norm(jnp.ones((1, 4)), None, None, jn.init_batch_stats(4), train=True)
    with pytest.raises(ValueError, match=r"instance_norm: expected more than 1 spatial element.*\(2, 1, 1, 3\)"):
        jn.instance_norm(jnp.ones((2, 1, 1, 3)))
    # group norm with one value per group normalizes to 0 (the output is β), as torch.nn.functional.group_norm
    y = jn.group_norm(jax.random.normal(jax.random.key(0), (2, 1, 4)), None, jnp.arange(4.0), num_groups=4)
    np.testing.assert_allclose(np.asarray(y), np.broadcast_to(np.arange(4.0), (2, 1, 4)), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# strict input checks

NON_FLOAT = [jnp.ones((4, 3, 2), jnp.int32), jnp.ones((4, 3, 2), bool), jnp.ones((4, 3, 2), jnp.uint8)]
ALL_FNS = {
    "batch_norm": lambda x: jn.batch_norm(x, None, None, jn.init_batch_stats(2), train=True),
    "batch_norm_eval": lambda x: jn.batch_norm(x, None, None, jn.init_batch_stats(2), train=False),
    "batch_renorm": lambda x: jn.batch_renorm(x, None, None, jn.init_batch_stats(2), train=True),
    "lp_batch_norm": lambda x: jn.lp_batch_norm(x, None, None, jn.init_batch_stats(2), train=True),
    "noisy_batch_norm": lambda x: jn.noisy_batch_norm(x, None, None, jn.init_batch_stats(2), train=False),
    "layer_norm": lambda x: jn.layer_norm(x),
    "instance_norm": lambda x: jn.instance_norm(x),
    "group_norm": lambda x: jn.group_norm(x, num_groups=1),
    "rms_norm": lambda x: jn.rms_norm(x),
    "batch_moments": lambda x: jn.batch_moments(x),
    "weight_standardize": lambda x: jn.weight_standardize(x),
    "dropout": lambda x: jn.dropout(x, 0.5, key=jax.random.key(0)),
    "original_dropout": lambda x: jn.original_dropout(x, 0.5, key=jax.random.key(0)),
    "spatial_dropout": lambda x: jn.spatial_dropout(x, 0.5, key=jax.random.key(0)),
    "gaussian_dropout": lambda x: jn.gaussian_dropout(x, 0.5, key=jax.random.key(0)),
    "alpha_dropout": lambda x: jn.alpha_dropout(x, 0.5, key=jax.random.key(0)),
    "dropconnect": lambda x: jn.dropconnect(x, 0.5, key=jax.random.key(0)),
}


@pytest.mark.parametrize("name", sorted(ALL_FNS))
def test_integer_bool_and_complex_inputs_are_refused(name):
    f = ALL_FNS[name]
    for x in NON_FLOAT:
        with pytest.raises(
            TypeError,
            match=rf"{name.removesuffix('_eval')}: the input has dtype {x.dtype}.*cast to a float dtype first",
        ):
            f(x)
    with pytest.raises(TypeError, match=r"complex dtype complex64"):
        f(jnp.ones((4, 3, 2), jnp.complex64))


@pytest.mark.parametrize("bad", [-1e-5, float("nan"), float("inf")])
def test_bad_epsilon(bad):
    x = jnp.ones((4, 3, 2))
    for f in (
        lambda: jn.batch_norm(x, None, None, jn.init_batch_stats(2), train=True, epsilon=bad),
        lambda: jn.batch_norm(x, None, None, jn.init_batch_stats(2), train=False, epsilon=bad),
        lambda: jn.batch_renorm(x, None, None, jn.init_batch_stats(2), train=True, epsilon=bad),
        lambda: jn.lp_batch_norm(x, None, None, jn.init_batch_stats(2), train=True, epsilon=bad),
        lambda: jn.layer_norm(x, epsilon=bad),
        lambda: jn.instance_norm(x, epsilon=bad),
        lambda: jn.group_norm(x, num_groups=2, epsilon=bad),
        lambda: jn.rms_norm(x, epsilon=bad),
        lambda: jn.weight_standardize(x, epsilon=bad),
    ):
        with pytest.raises(ValueError, match=r"epsilon must be a finite number >= 0.*got"):
            f()


@pytest.mark.parametrize("bad", ["no", "False", 1, 0, None, jnp.array([True, False]), jnp.array(1)])
def test_train_must_be_a_bool(bad):
    x = jnp.ones((4, 3, 2))
    st = jn.init_batch_stats(2)
    for name, f in (
        ("batch_norm", lambda t: jn.batch_norm(x, None, None, st, train=t)),
        ("batch_renorm", lambda t: jn.batch_renorm(x, None, None, st, train=t)),
        ("lp_batch_norm", lambda t: jn.lp_batch_norm(x, None, None, st, train=t)),
        ("noisy_batch_norm", lambda t: jn.noisy_batch_norm(x, None, None, st, train=t)),
        ("dropout", lambda t: jn.dropout(x, 0.5, key=jax.random.key(0), train=t)),
        ("alpha_dropout", lambda t: jn.alpha_dropout(x, 0.5, key=jax.random.key(0), train=t)),
    ):
        with pytest.raises(TypeError, match=rf"{name}: train must be a Python bool.*got"):
            f(bad)
    with pytest.raises(TypeError, match=r"BatchNorm: train must be a Python bool"):
        jn.nn.BatchNorm().init(jax.random.key(0), x, train=bad if bad is not None else "x")


def test_traced_train_selects_the_mode_under_jit():
    x = data(2.0, shape=(8, 3, 4))[0]
    s, b = jnp.full(4, 1.5), jnp.full(4, 0.5)
    st = {"mean": jnp.full(4, 1.0), "var": jnp.full(4, 2.0), "count": jnp.array(3, jnp.int32)}
    key = jax.random.key(1)
    fns = {
        "batch_norm": lambda x, t: jn.batch_norm(x, s, b, st, train=t),
        "batch_renorm": lambda x, t: jn.batch_renorm(x, s, b, st, train=t),
        "lp_batch_norm": lambda x, t: jn.lp_batch_norm(x, s, b, st, train=t, p=1),
        "noisy_batch_norm": lambda x, t: jn.noisy_batch_norm(x, s, b, st, train=t, key=key),
        "dropout": lambda x, t: jn.dropout(x, 0.3, key=key, train=t),
        "original_dropout": lambda x, t: jn.original_dropout(x, 0.3, key=key, train=t),
        "spatial_dropout": lambda x, t: jn.spatial_dropout(x, 0.3, key=key, train=t),
        "gaussian_dropout": lambda x, t: jn.gaussian_dropout(x, 0.3, key=key, train=t),
        "alpha_dropout": lambda x, t: jn.alpha_dropout(x, 0.3, key=key, train=t),
        "dropconnect": lambda x, t: jn.dropconnect(x, 0.3, key=key, train=t),
    }
    for name, f in fns.items():
        jf = jax.jit(f)
        for t in (True, False):
            got, want = jf(x, jnp.asarray(t)), f(x, t)
            for a, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
                np.testing.assert_allclose(np.asarray(a), np.asarray(w), rtol=1e-6, atol=1e-6, err_msg=name)
    # and in a linen layer: the running statistics move only in training
    layer = jn.nn.BatchNorm(momentum=0.5)
    v = layer.init(jax.random.key(0), x, train=False)
    step = jax.jit(lambda v, x, t: layer.apply(v, x, train=t, mutable=["batch_stats"]))
    _, upd = step(v, x, jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(upd["batch_stats"]["mean"]), 0.0)
    _, upd = step(v, x, jnp.asarray(True))
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), 0.5 * np.asarray(x).mean((0, 1)), rtol=1e-5)


def test_mask_shape_errors():
    with pytest.raises(ValueError, match=r"mask of shape \(3, 2\) does not broadcast to the input \(3, 4\)"):
        jn.layer_norm(jnp.ones((3, 4)), mask=jnp.ones((3, 2), bool))
