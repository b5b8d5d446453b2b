"""Tests of the Flax NNX layers (jaxnorm.nnx): parity with flax.nnx over several training steps and in eval (outputs,
running mean/var, count), float64 numpy references where Flax's one-pass variance is too coarse, the train/eval
switches (model.train()/eval(), nnx.view, call-time overrides), NNX transforms (jit, split/merge, state dicts, vmap
ensembles, shard_map sync batch norm), a tiny CNN trained with nnx.Optimizer, the other layers against their pure
functions, population statistics, batch-norm folding and the error messages. Tiny shapes: seconds on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jaxnorm as jn
import jaxnorm.nnx

jnn = jn.nnx

from _float64 import close, f64, rand  # noqa: E402 (after jnn, which the helpers import)

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("highest_precision")


def set_affine(*layers, c, seed=1):
    """The same non-trivial γ, β on every layer (γ around 1, β around 0)."""
    g, b = rand((c,), seed, 1.0, 0.3), rand((c,), seed + 1, 0.0, 0.3)
    for layer in layers:
        if getattr(layer, "scale", None) is not None:
            layer.scale[...] = g
        if getattr(layer, "bias", None) is not None:
            layer.bias[...] = b
    return f64(g), f64(b)


def stats_of(layer):
    return {k: np.asarray(getattr(layer, k)[...]) for k in ("mean", "var", "count")}


# float64 two-pass references, independent of jaxnorm and flax ------------------------------------------------------


def ref_bn_train(x, g, b, eps=1e-5):
    """Batch norm in training: (y, biased batch mean, biased batch var), per last-axis channel."""
    x = f64(x)
    red = tuple(range(x.ndim - 1))
    mu, var = x.mean(red), x.var(red)
    return (x - mu) / np.sqrt(var + eps) * g + b, mu, var


def ref_norm(x, red, g=None, b=None, eps=1e-6, rms=False):
    """(x − μ)/√(σ² + ε)·γ + β over the axes ``red`` (rms: x/√(mean x² + ε)·γ)."""
    x = f64(x)
    if rms:
        y = x / np.sqrt((x * x).mean(red, keepdims=True) + eps)
    else:
        y = (x - x.mean(red, keepdims=True)) / np.sqrt(x.var(red, keepdims=True) + eps)
    return y * (1.0 if g is None else g) + (0.0 if b is None else b)


def ref_group_norm(x, groups, g, b, eps=1e-6):
    x = f64(x)
    c = x.shape[-1]
    xg = x.reshape(x.shape[:-1] + (groups, c // groups))
    red = tuple(range(1, x.ndim - 1)) + (x.ndim,)
    return ref_norm(xg, red, eps=eps).reshape(x.shape) * g + b


# ---------------------------------------------------------------------------------------------------------------------
# 1. parity with flax.nnx

HARD = [(3.0, 2.0), (1e3, 1.0)]  # (mean, std) of the inputs
SHAPES = [(16, 6), (4, 5, 5, 6)]


@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NHWC"])
@pytest.mark.parametrize("loc,scale", HARD, ids=["mean3", "mean1e3"])
def test_batch_norm_matches_flax_nnx_over_steps(shape, loc, scale):
    c = shape[-1]
    ours = jnn.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    g, b = set_affine(ours, theirs, c=c)
    # float64 running statistics, Flax's convention: r ← 0.9·r + 0.1·(biased batch statistic)
    r_mean, r_var = np.zeros(c), np.ones(c)
    # at mean 1e3 Flax's default one-pass variance E[x²] − E[x]² loses ~all float32 digits of σ² = 1
    # (E[x²] ≈ 1e6, ulp 0.06): there the reference is the float64 two-pass formula; at mean 3 Flax is compared too
    use_flax = loc < 100
    # the input itself is float32: values near 1e3 carry an absolute rounding of ~3e-5, hence the looser output tol
    ytol = 1e-5 if use_flax else 1e-4
    for step in range(3):
        x = rand(shape, seed=10 + step, loc=loc + step, scale=scale * (1 + 0.5 * step))
        y = ours(x)
        y_ref, mu, var = ref_bn_train(x, g, b)
        r_mean, r_var = 0.9 * r_mean + 0.1 * mu, 0.9 * r_var + 0.1 * var
        close(y, y_ref, ytol)
        close(ours.mean[...], r_mean, 1e-5)
        close(ours.var[...], r_var, 1e-5)
        if use_flax:
            yf = theirs(x)
            close(y, yf, 1e-5)
            close(ours.mean[...], theirs.mean[...], 1e-5)
            close(ours.var[...], theirs.var[...], 1e-5)
    assert int(ours.count[...]) == 3
    ours.eval()
    theirs.eval()
    x = rand((3,) + shape[1:], seed=99, loc=loc, scale=scale)
    y = ours(x)
    close(y, (f64(x) - r_mean) / np.sqrt(r_var + 1e-5) * g + b, ytol)
    if use_flax:
        close(y, theirs(x), 1e-5)
    assert int(ours.count[...]) == 3  # eval does not count


@pytest.mark.parametrize("shape", SHAPES, ids=["NC", "NHWC"])
def test_masked_batch_norm_equals_batch_norm_of_the_valid_rows(shape):
    c, n = shape[-1], shape[0]
    valid = np.arange(n) % 3 != 1
    x = np.array(rand(shape, seed=3, loc=3.0, scale=2.0))
    x[~valid] = np.nan  # padding must not reach the statistics
    masked = jnn.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    plain = jnn.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    set_affine(masked, plain, c=c)
    for step in range(2):
        xs = x + step
        y = masked(jnp.asarray(xs), mask=jnp.asarray(valid))
        y_ref = plain(jnp.asarray(xs[valid]))
        close(np.asarray(y)[valid], y_ref)
        for k in ("mean", "var"):
            assert np.all(np.isfinite(np.asarray(getattr(masked, k)[...])))
            close(getattr(masked, k)[...], getattr(plain, k)[...])
    assert int(masked.count[...]) == 2


def test_batch_norm_options_against_float64():
    """momentum=None (cumulative average), convention='pytorch' (update weight 0.1, unbiased running variance),
    axis=1 (NCHW) and an all-False mask (no update, count unchanged)."""
    cum = jnn.BatchNorm(6, momentum=None, rngs=nnx.Rngs(0))
    pt = jnn.BatchNorm(6, convention="pytorch", rngs=nnx.Rngs(0))
    nchw = jnn.BatchNorm(6, axis=1, momentum=0.9, rngs=nnx.Rngs(0))
    nhwc = jnn.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
    set_affine(nchw, nhwc, c=6)
    r_mean, r_var, seen = np.zeros(6), np.ones(6), []
    for step in range(3):
        x = rand((4, 2, 3, 6), seed=80 + step, loc=3.0 + step, scale=2.0)
        rows = f64(x).reshape(-1, 6)
        seen.append(rows)
        cum(x)
        pt(x)
        y = nchw(jnp.moveaxis(x, -1, 1))
        close(jnp.moveaxis(y, 1, -1), nhwc(x))
        r_mean, r_var = 0.9 * r_mean + 0.1 * rows.mean(0), 0.9 * r_var + 0.1 * rows.var(0, ddof=1)
    close(cum.mean[...], np.mean([r.mean(0) for r in seen], 0))
    close(cum.var[...], np.mean([r.var(0) for r in seen], 0))
    close(pt.mean[...], r_mean)
    close(pt.var[...], r_var)
    close(nchw.var[...], nhwc.var[...])
    assert int(cum.count[...]) == int(pt.count[...]) == int(nchw.count[...]) == 3
    x = rand((3, 6, 2, 2), seed=89)
    close(
        jnp.moveaxis(nchw(x, use_running_average=True), 1, -1), nhwc(jnp.moveaxis(x, 1, -1), use_running_average=True)
    )
    # a batch without valid values leaves the running statistics alone
    before = stats_of(pt)
    pt(jnp.full((4, 6), jnp.nan), mask=jnp.zeros(4, bool))
    for k, v in before.items():
        np.testing.assert_array_equal(stats_of(pt)[k], v)


PER_EXAMPLE = {
    # name: (ours, flax, input shapes, float64 reference(x, g, b))
    "layer": (
        lambda c: jnn.LayerNorm(c, axes=-1, epsilon=1e-6, rngs=nnx.Rngs(0)),
        lambda c: nnx.LayerNorm(c, rngs=nnx.Rngs(0)),
        [(8, 6), (2, 3, 3, 6)],
        lambda x, g, b: ref_norm(x, (-1,), g, b),
    ),
    "group": (
        lambda c: jnn.GroupNorm(c, 3, epsilon=1e-6, rngs=nnx.Rngs(0)),
        lambda c: nnx.GroupNorm(c, 3, rngs=nnx.Rngs(0)),
        [(8, 6), (2, 3, 3, 6)],
        lambda x, g, b: ref_group_norm(x, 3, g, b),
    ),
    "rms": (
        lambda c: jnn.RMSNorm(c, axes=-1, epsilon=1e-6, rngs=nnx.Rngs(0)),
        lambda c: nnx.RMSNorm(c, rngs=nnx.Rngs(0)),
        [(8, 6), (2, 3, 3, 6)],
        lambda x, g, b: ref_norm(x, (-1,), g, None, rms=True),
    ),
    "instance": (
        lambda c: jnn.InstanceNorm(c, epsilon=1e-6, rngs=nnx.Rngs(0)),
        lambda c: nnx.InstanceNorm(c, rngs=nnx.Rngs(0)),
        [(2, 5, 6), (2, 3, 3, 6)],
        lambda x, g, b: ref_norm(x, tuple(range(1, x.ndim - 1)), g, b),
    ),
}
PER_EXAMPLE_CASES = [(k, s) for k in sorted(PER_EXAMPLE) for s in PER_EXAMPLE[k][2]]


@pytest.mark.parametrize("loc,scale", HARD, ids=["mean3", "mean1e3"])
@pytest.mark.parametrize("kind,shape", PER_EXAMPLE_CASES, ids=[f"{k}-{len(s)}d" for k, s in PER_EXAMPLE_CASES])
def test_per_example_norms_match_flax_nnx(kind, shape, loc, scale):
    """Outputs over several batches; use_running_average is accepted and changes nothing."""
    make_ours, make_flax, _, ref = PER_EXAMPLE[kind]
    c = shape[-1]
    ours, theirs = make_ours(c), make_flax(c)
    g, b = set_affine(ours, theirs, c=c)
    # RMS norm has no cancellation, Flax's one-pass variance does at mean 1e3 (float64 reference only there)
    use_flax = loc < 100 or kind == "rms"
    ytol = 1e-5 if loc < 100 else 1e-4  # float32 inputs near 1e3 are rounded by ~3e-5
    for step in range(3):
        x = rand(shape, seed=20 + step, loc=loc, scale=scale)
        y = ours(x)
        y_eval = ours(x, use_running_average=True)  # accepted and ignored: the same computation
        close(y, ref(x, g, b), ytol)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(y_eval))
        if use_flax:
            yf, exact = f64(theirs(x)), ref(x, g, b)
            flax_err = np.abs(yf - exact).max()
            if flax_err <= ytol:
                close(y, yf, ytol)
            else:  # Flax's one-pass E[x²] − E[x]² loses digits when a group's variance is small against its
                # squared mean (N×C group norm: groups of 2 values); then ours must be the closer to float64
                assert np.abs(f64(y) - exact).max() < 0.1 * flax_err


def test_group_norm_by_group_size_matches_flax():
    ours = jnn.GroupNorm(6, num_groups=None, group_size=2, epsilon=1e-6, rngs=nnx.Rngs(0))
    theirs = nnx.GroupNorm(6, num_groups=None, group_size=2, rngs=nnx.Rngs(0))
    g, b = set_affine(ours, theirs, c=6)
    assert ours.num_groups == 3
    x = rand((2, 3, 3, 6), seed=5, loc=3.0, scale=2.0)
    close(ours(x), theirs(x))
    close(ours(x), ref_group_norm(x, 3, g, b))


def test_dropout_matches_flax_nnx_masks():
    x = rand((6, 5, 4), loc=1.0)
    for rate, bdims in [(0.3, ()), (0.5, (1,))]:
        ours = jnn.Dropout(rate, broadcast_dims=bdims, rngs=nnx.Rngs(dropout=7))
        theirs = nnx.Dropout(rate, broadcast_dims=bdims, rngs=nnx.Rngs(dropout=7))
        outs = []
        for _ in range(3):
            y = ours(x)
            np.testing.assert_array_equal(np.asarray(y), np.asarray(theirs(x)))
            outs.append(np.asarray(y))
        dropped = np.mean(outs[0] == 0)
        assert 0.1 < dropped < 0.75  # something was dropped and something kept
        kept = outs[0] != 0
        close(outs[0][kept], (np.asarray(x) / (1 - rate))[kept])
        assert not np.array_equal(outs[0], outs[1])  # a new mask per call
        if bdims:
            assert np.all((outs[0] == 0) == (outs[0][:, :1] == 0))
        # deterministic: identity (call-time and constructor)
        np.testing.assert_array_equal(np.asarray(ours(x, deterministic=True)), np.asarray(x))
        det = jnn.Dropout(rate, deterministic=True, rngs=nnx.Rngs(dropout=7))
        np.testing.assert_array_equal(np.asarray(det(x)), np.asarray(x))


# ---------------------------------------------------------------------------------------------------------------------
# 2. train / eval switches


class Block(nnx.Module):
    def __init__(self, rngs, axis_name=None, rate=0.5):
        self.lin = nnx.Linear(5, 6, rngs=rngs)
        self.bn = jnn.BatchNorm(6, momentum=0.9, axis_name=axis_name, rngs=rngs)
        self.drop = jnn.Dropout(rate, rngs=rngs)
        self.out = nnx.Linear(6, 3, rngs=rngs)

    def __call__(self, x, **kw):
        return self.out(self.drop(nnx.relu(self.bn(self.lin(x), **kw))))


def _bn_eval_ref(m, x):
    """The block in eval, by hand: running statistics, no dropout."""
    h = f64(m.lin(x))
    h = (h - f64(m.bn.mean[...])) / np.sqrt(f64(m.bn.var[...]) + 1e-5) * f64(m.bn.scale[...]) + f64(m.bn.bias[...])
    return np.maximum(h, 0) @ f64(m.out.kernel[...]) + f64(m.out.bias[...])


def test_train_eval_and_view_switches():
    x = rand((8, 5), loc=2.0)
    m = Block(nnx.Rngs(0, dropout=1))
    m(x)  # one training step: non-trivial running statistics
    assert int(m.bn.count[...]) == 1
    m.eval()
    assert m.bn.use_running_average is True and m.drop.deterministic is True
    before = stats_of(m.bn)
    y1, y2 = m(x), m(x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))  # no dropout
    close(y1, _bn_eval_ref(m, x), 1e-5)
    for k, v in before.items():  # eval: the running statistics do not move
        np.testing.assert_array_equal(stats_of(m.bn)[k], v)

    m.train()
    assert m.bn.use_running_average is False and m.drop.deterministic is False
    ya, yb = m(x), m(x)
    assert not np.allclose(np.asarray(ya), np.asarray(yb))  # new dropout masks
    assert int(m.bn.count[...]) == 3
    assert not np.allclose(m.bn.mean[...], before["mean"])

    # nnx.view: a model in eval mode sharing the variables; the original keeps its flags
    v = nnx.view(m, use_running_average=True, deterministic=True)
    assert v.bn.use_running_average is True and v.drop.deterministic is True
    assert m.bn.use_running_average is False and m.drop.deterministic is False
    before = stats_of(m.bn)
    close(v(x), _bn_eval_ref(m, x), 1e-5)
    for k, val in before.items():
        np.testing.assert_array_equal(stats_of(m.bn)[k], val)
    # a training view of an eval model: the flags differ, and the update lands in the statistics the view shares
    # with the original (as for flax's own nnx.BatchNorm, checked alongside)
    m.eval()
    theirs = nnx.BatchNorm(6, momentum=0.9, use_running_average=True, rngs=nnx.Rngs(0))
    vt = nnx.view(m, use_running_average=False, deterministic=True)
    vf = nnx.view(theirs, use_running_average=False)
    assert m.bn.use_running_average is True and vt.bn.use_running_average is False
    assert theirs.use_running_average is True and vf.use_running_average is False
    h = m.lin(x)
    vt(x)
    vf(h)
    assert int(m.bn.count[...]) == 4
    close(m.bn.mean[...], 0.9 * before["mean"] + 0.1 * f64(h).mean(0), 1e-5)
    close(theirs.mean[...], 0.1 * f64(h).mean(0), 1e-5)


def test_call_time_flags_override_the_attributes():
    x = rand((8, 6), loc=3.0, scale=2.0)
    bn = jnn.BatchNorm(6, momentum=0.9, use_running_average=True, rngs=nnx.Rngs(0))
    y0 = bn(x)  # eval: running statistics 0 / 1
    close(y0, f64(x) / np.sqrt(1 + 1e-5))
    assert int(bn.count[...]) == 0
    y = bn(x, use_running_average=False)  # the call wins: batch statistics, updated running statistics
    close(y, ref_bn_train(x, 1.0, 0.0)[0])
    assert int(bn.count[...]) == 1
    close(bn.mean[...], 0.1 * f64(x).mean(0))

    bn2 = jnn.BatchNorm(6, momentum=0.9, use_running_average=False, rngs=nnx.Rngs(0))
    close(bn2(x, use_running_average=True), f64(x) / np.sqrt(1 + 1e-5))
    assert int(bn2.count[...]) == 0 and np.all(np.asarray(bn2.mean[...]) == 0)

    d = jnn.Dropout(0.5, deterministic=True, rngs=nnx.Rngs(dropout=0))
    assert np.mean(np.asarray(d(x, deterministic=False)) == 0) > 0.2
    d2 = jnn.Dropout(0.5, deterministic=False, rngs=nnx.Rngs(dropout=0))
    np.testing.assert_array_equal(np.asarray(d2(x, deterministic=True)), np.asarray(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: jnn.BatchNorm(4, use_running_average=None, rngs=nnx.Rngs(0)),
        lambda: jnn.BatchRenorm(4, use_running_average=None, rngs=nnx.Rngs(0)),
        lambda: jnn.LpBatchNorm(4, use_running_average=None, rngs=nnx.Rngs(0)),
        lambda: jnn.NoisyBatchNorm(4, use_running_average=None, rngs=nnx.Rngs(0)),
    ],
    ids=["bn", "renorm", "lp", "noisy"],
)
def test_no_mode_anywhere_is_an_error_naming_the_flag(make):
    layer = make()
    with pytest.raises(ValueError, match="use_running_average"):
        layer(rand((4, 4)))
    assert int(layer.count[...]) == 0
    y = layer(rand((4, 4)), use_running_average=True)  # fine once given
    assert y.shape == (4, 4)


def test_no_deterministic_anywhere_is_an_error_naming_the_flag():
    d = jnn.Dropout(0.5, deterministic=None, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(ValueError, match="deterministic"):
        d(rand((4, 4)))
    np.testing.assert_array_equal(np.asarray(d(rand((4, 4)), deterministic=True)), np.asarray(rand((4, 4))))


# ---------------------------------------------------------------------------------------------------------------------
# 3. transforms


def test_jit_updates_the_statistics_like_eager():
    x = rand((8, 5), loc=2.0)
    eager = Block(nnx.Rngs(0, dropout=1))
    jitted = Block(nnx.Rngs(0, dropout=1))

    @nnx.jit
    def fwd(m, x):
        return m(x)

    for step in range(2):
        close(fwd(jitted, x + step), eager(x + step), 1e-5)
        assert int(jitted.bn.count[...]) == step + 1
        close(jitted.bn.mean[...], eager.bn.mean[...], 1e-6)
        close(jitted.bn.var[...], eager.bn.var[...], 1e-6)
    jitted.eval()
    eager.eval()
    close(fwd(jitted, x), eager(x), 1e-5)
    assert int(jitted.bn.count[...]) == 2


def test_traced_mode_flags_under_jit():
    """use_running_average / deterministic as traced booleans (lax.cond inside)."""
    x = rand((8, 6), loc=3.0, scale=2.0)
    bn = jnn.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
    d = jnn.Dropout(0.5, rngs=nnx.Rngs(dropout=0))

    @nnx.jit
    def fwd(bn, d, x, off):
        return d(bn(x, use_running_average=off), deterministic=off)

    y = fwd(bn, d, x, jnp.array(True))
    close(y, f64(x) / np.sqrt(1 + 1e-5))  # eval: running statistics, no dropout
    np.testing.assert_array_equal(bn.mean[...], np.zeros(6))
    np.testing.assert_array_equal(bn.var[...], np.ones(6))
    y = fwd(bn, d, x, jnp.array(False))
    close(bn.mean[...], 0.1 * f64(x).mean(0))
    y_bn = ref_bn_train(x, 1.0, 0.0)[0]
    kept = np.asarray(y) != 0
    assert 0.2 < kept.mean() < 0.8
    close(np.asarray(y)[kept], (y_bn / 0.5)[kept])
    assert int(bn.count[...]) == 1


def test_split_merge_and_state_dict_round_trip():
    x = rand((8, 5), loc=2.0)
    m = Block(nnx.Rngs(0, dropout=1))
    m(x)
    ref = nnx.clone(m)  # an independent copy to run in lockstep (merge may share m's variables)
    graphdef, state = nnx.split(m)
    m2 = nnx.merge(graphdef, state)
    assert isinstance(m2.bn, jnn.BatchNorm) and isinstance(m2.drop, jnn.Dropout)
    # a state dict into a differently initialized model of the same structure
    pure = nnx.state(ref).to_pure_dict()
    assert set(pure["bn"]) == {"scale", "bias", "mean", "var", "count"}
    m3 = Block(nnx.Rngs(5, dropout=9))
    assert not np.allclose(m3.lin.kernel[...], ref.lin.kernel[...])
    st3 = nnx.state(m3)
    nnx.replace_by_pure_dict(st3, pure)
    nnx.update(m3, st3)
    assert int(m2.bn.count[...]) == 1 and int(m3.bn.count[...]) == 1
    for other in (m2, m3):
        np.testing.assert_array_equal(other.bn.mean[...], ref.bn.mean[...])
    # training (dropout stream state included) and eval give the same numbers
    for step in range(2):
        ys = [mm(x + step) for mm in (ref, m2, m3)]
        assert np.mean(np.asarray(ys[0]) == 0) < 1  # the output is not all dropped
        for y in ys[1:]:
            np.testing.assert_array_equal(np.asarray(y), np.asarray(ys[0]))
    for mm in (ref, m2, m3):
        mm.eval()
    ys = [mm(x) for mm in (ref, m2, m3)]
    for y in ys[1:]:
        np.testing.assert_array_equal(np.asarray(y), np.asarray(ys[0]))
    for mm in (ref, m2, m3):
        assert int(mm.bn.count[...]) == 3
        np.testing.assert_array_equal(mm.bn.var[...], ref.bn.var[...])


def test_vmap_ensemble_of_batch_norms():
    e, c = 3, 4

    @nnx.split_rngs(splits=e)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
        return jnn.BatchNorm(c, momentum=0.9, scale_init=nnx.initializers.normal(1.0), rngs=rngs)

    ens = create(nnx.Rngs(0))
    assert ens.scale[...].shape == (e, c) and ens.count[...].shape == (e,)
    scales = np.asarray(ens.scale[...])
    assert not np.allclose(scales[0], scales[1])  # members differ

    @nnx.jit
    @nnx.vmap(in_axes=(0, 0), out_axes=0)
    def fwd(m, x):
        return m(x)

    xs = rand((e, 8, c), loc=3.0, scale=2.0)
    for step in range(2):
        y = fwd(ens, xs + step)
        for i in range(e):
            y_ref, _, _ = ref_bn_train(xs[i] + step, scales[i], 0.0)
            close(y[i], y_ref)
    np.testing.assert_array_equal(ens.count[...], [2] * e)
    for i in range(e):  # each member's running statistics are those of its own batches
        x0, x1 = f64(xs[i]), f64(xs[i]) + 1
        close(ens.mean[...][i], 0.9 * 0.1 * x0.mean(0) + 0.1 * x1.mean(0))
        close(ens.var[...][i], 0.81 + 0.09 * x0.var(0) + 0.1 * x1.var(0))


def _shard_bn(mesh, bn, x, mask=None):
    graphdef, state = nnx.split(bn)
    sh = jax.NamedSharding(mesh, P("batch"))

    def f(state, x, mask):
        layer = nnx.merge(graphdef, state)
        y = layer(x, mask=mask)
        return y, nnx.state(layer, nnx.BatchStat)

    args = (state, jax.device_put(x, sh), None if mask is None else jax.device_put(mask, sh))
    specs = (P(), P("batch"), None if mask is None else P("batch"))
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=(P("batch"), P())))(*args)


@pytest.mark.parametrize("masked", [False, True], ids=["even", "uneven-mask"])
def test_sync_batch_norm_under_shard_map_equals_global_batch(masked):
    assert len(jax.devices()) >= 4
    mesh = jax.make_mesh((4,), ("batch",))
    n, c = 16, 6
    x = np.array(rand((n, c), seed=4, loc=3.0, scale=2.0))
    # shards of 4 rows with 4, 1, 0 and 3 valid rows: uneven counts across devices
    valid = np.zeros(n, bool)
    valid[[0, 1, 2, 3, 4, 12, 13, 14]] = True
    if masked:
        x[~valid] = np.nan
    synced = jnn.BatchNorm(c, momentum=0.9, axis_name="batch", rngs=nnx.Rngs(0))
    glob = jnn.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    g, b = set_affine(synced, glob, c=c)
    y, st = _shard_bn(mesh, synced, jnp.asarray(x), jnp.asarray(valid) if masked else None)
    if masked:
        y_ref = glob(jnp.asarray(x[valid]))
        close(np.asarray(y)[valid], y_ref, 1e-5)
        close(y_ref, ref_bn_train(x[valid], g, b)[0], 1e-5)
    else:
        close(y, glob(jnp.asarray(x)), 1e-5)
    close(st["mean"][...], glob.mean[...], 1e-6)
    close(st["var"][...], glob.var[...], 1e-6)
    assert int(st["count"][...]) == 1


# ---------------------------------------------------------------------------------------------------------------------
# 4. a tiny CNN trained with nnx.Optimizer


class TinyCNN(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), rngs=rngs)
        self.bn = jnn.BatchNorm(8, momentum=0.9, rngs=rngs)
        self.drop = jnn.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(8, 2, rngs=rngs)

    def __call__(self, x):
        h = self.drop(nnx.relu(self.bn(self.conv(x))))
        return self.head(h.mean((1, 2)))


def test_tiny_cnn_trains_with_nnx_optimizer():
    n = 32
    labels = np.arange(n) % 2
    noise = np.asarray(rand((n, 6, 6, 3), seed=8))
    pattern = np.zeros((6, 6, 3), np.float32)
    pattern[:, :, 0] = 1.0
    pattern[::2, :, 1] = -1.0
    x = jnp.asarray(noise + np.where(labels[:, None, None, None] == 1, 1.5, -1.5) * pattern)
    y = jnp.asarray(labels)
    model = TinyCNN(nnx.Rngs(0, dropout=1))
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    kernel0 = np.asarray(model.conv.kernel[...])

    @nnx.jit
    def step(model, opt, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, x, y)) for _ in range(20)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    assert int(model.bn.count[...]) == 20
    assert not np.allclose(model.bn.mean[...], 0.0) and not np.allclose(model.bn.var[...], 1.0)
    assert not np.allclose(model.conv.kernel[...], kernel0)
    model.eval()
    eval_loss = float(optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean())
    assert np.isfinite(eval_loss) and eval_loss < losses[0]


# ---------------------------------------------------------------------------------------------------------------------
# 5. the other layers


def test_batch_renorm_without_clipping_is_batch_norm():
    rn = jnn.BatchRenorm(6, r_max=1.0, d_max=0.0, momentum=0.9, rngs=nnx.Rngs(0))
    bn = jnn.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
    set_affine(rn, bn, c=6)
    for step in range(3):
        x = rand((4, 3, 6), seed=30 + step, loc=3.0 + step, scale=2.0)
        close(rn(x), bn(x), 1e-5)
        close(rn.mean[...], bn.mean[...], 1e-6)
        close(rn.var[...], bn.var[...], 1e-6)
    assert int(rn.count[...]) == 3
    x = rand((4, 3, 6), seed=39, loc=3.0)
    close(rn(x, use_running_average=True), bn(x, use_running_average=True), 1e-5)


@pytest.mark.parametrize("p", [2, 1, "inf"])
def test_lp_batch_norm_matches_the_pure_function(p):
    layer = jnn.LpBatchNorm(6, p=p, momentum=0.9, rngs=nnx.Rngs(0))
    g, b = set_affine(layer, c=6)
    stats = jn.init_batch_stats(6)
    for step in range(2):
        x = rand((8, 6), seed=40 + step, loc=1.0, scale=2.0)
        y_ref, stats = jn.lp_batch_norm(
            x, jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32), stats, train=True, p=p, momentum=0.9
        )
        close(layer(x), y_ref)
        close(layer.mean[...], stats["mean"])
        close(layer.var[...], stats["var"])
    if p == 2:  # ℓ2: s² = mean(x²) (before the mean shift) enters the running 'var'
        x0, x1 = (f64(rand((8, 6), seed=40 + i, loc=1.0, scale=2.0)) for i in range(2))
        close(layer.var[...], 0.9 * (0.9 + 0.1 * (x0**2).mean(0)) + 0.1 * (x1**2).mean(0))
    x = rand((3, 6), seed=49)
    y_ref, _ = jn.lp_batch_norm(x, jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32), stats, train=False, p=p)
    close(layer(x, use_running_average=True), y_ref)


def test_noisy_batch_norm_noise_in_training_only():
    x = rand((8, 6), loc=3.0, scale=2.0)
    layer = jnn.NoisyBatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0, dropout=5))
    plain = jnn.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
    g, b = set_affine(layer, plain, c=6)
    gj, bj = jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32)
    # eval: exactly batch norm with the running statistics, no key needed
    np.testing.assert_array_equal(
        np.asarray(layer(x, use_running_average=True)), np.asarray(plain(x, use_running_average=True))
    )
    # training with the layer's own stream: the key is the one the forked 'dropout' stream draws
    stream = nnx.Rngs(0, dropout=5)["dropout"].fork()
    k1, k2 = stream(), stream()
    stats = jn.init_batch_stats(6)
    y1 = layer(x)
    y1_ref, stats = jn.noisy_batch_norm(x, gj, bj, stats, train=True, key=k1, momentum=0.9)
    close(y1, y1_ref)
    y2 = layer(x)
    y2_ref, stats = jn.noisy_batch_norm(x, gj, bj, stats, train=True, key=k2, momentum=0.9)
    close(y2, y2_ref)
    assert not np.allclose(np.asarray(y1), np.asarray(y2))  # new noise per call
    y_plain = plain(x)
    assert np.abs(np.asarray(y1) - np.asarray(y_plain)).max() > 0.05  # there is noise
    close(layer.mean[...], stats["mean"])
    close(layer.var[...], stats["var"])
    # a key passed at the call
    key = jax.random.key(123)
    y3 = layer(x, rngs=key)
    y3_ref, stats = jn.noisy_batch_norm(x, gj, bj, stats, train=True, key=key, momentum=0.9)
    close(y3, y3_ref)
    close(layer.var[...], stats["var"])
    # an nnx.Rngs passed at the call: its 'dropout' stream's next key
    y4 = layer(x, rngs=nnx.Rngs(dropout=11))
    y4_ref, stats = jn.noisy_batch_norm(
        x, gj, bj, stats, train=True, key=nnx.Rngs(dropout=11)["dropout"](), momentum=0.9
    )
    close(y4, y4_ref)
    # eval after training: no noise, the running statistics
    y_eval = layer(x, use_running_average=True)
    close(y_eval, jn.batch_norm(x, gj, bj, stats, train=False)[0])
    np.testing.assert_array_equal(np.asarray(layer(x, use_running_average=True)), np.asarray(y_eval))


def test_dyt_matches_the_pure_function():
    layer = jnn.DyT(6, alpha_init=0.7, rngs=nnx.Rngs(0))
    g, b = set_affine(layer, c=6)
    x = rand((4, 3, 6), loc=1.0, scale=3.0)
    y = layer(x)
    close(y, jn.dyt(x, jnp.float32(0.7), jnp.asarray(g, jnp.float32), jnp.asarray(b, jnp.float32)))
    close(y, g * np.tanh(0.7 * f64(x)) + b, 1e-5)
    assert layer.alpha[...].shape == ()


def test_standardized_conv_equals_conv_with_standardized_kernel():
    sc = jnn.StandardizedConv(3, 5, (3, 3), epsilon=0.3, rngs=nnx.Rngs(0))  # ε ≈ the kernel variance
    conv = nnx.Conv(3, 5, (3, 3), rngs=nnx.Rngs(0))
    sc.kernel[...] = sc.kernel[...] * 2.0 + 0.3  # a kernel far from standardized
    sc.bias[...] = rand((5,), 3)
    raw = np.asarray(sc.kernel[...]).copy()
    conv.kernel[...] = jn.weight_standardize(sc.kernel[...], epsilon=0.3)
    conv.bias[...] = sc.bias[...]
    x = rand((2, 6, 6, 3), seed=1)
    close(sc(x), conv(x), 1e-5)
    np.testing.assert_array_equal(np.asarray(sc.kernel[...]), raw)  # the stored kernel is the raw one
    w = f64(raw).reshape(-1, 5)
    w_hat = (w - w.mean(0)) / np.sqrt(w.var(0) + 0.3)
    close(conv.kernel[...], w_hat.reshape(raw.shape), 1e-5)

    # gradients reach the raw kernel through the standardization
    ct = rand((2, 6, 6, 5), seed=2)
    g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * ct)))(sc)
    g_ref = jax.jit(
        jax.grad(lambda k: jnp.sum((conv2d(x, jn.weight_standardize(k, epsilon=0.3)) + sc.bias[...]) * ct))
    )(jnp.asarray(raw))
    close(g.kernel[...], g_ref, 1e-4)
    assert np.abs(np.asarray(g_ref)).max() > 0


def conv2d(x, k):
    """nnx.Conv's default map (stride 1, 'SAME' padding, NHWC × HWIO), written with lax."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_weight_norm_equals_the_wrapped_layer_with_the_pure_kernel(conv):
    inner = nnx.Conv(3, 4, (2, 2), rngs=nnx.Rngs(0)) if conv else nnx.Linear(5, 4, rngs=nnx.Rngs(0))
    wn = jnn.WeightNorm(inner, rngs=nnx.Rngs(1))
    wn.scales["kernel"][...] = rand((4,), 7, 1.0, 0.5)
    inner.bias[...] = rand((4,), 8)
    raw = np.asarray(inner.kernel[...]).copy()
    g = np.asarray(wn.scales["kernel"][...])
    x = rand((2, 5, 5, 3) if conv else (6, 5), seed=2)
    red = (0, 1, 2) if conv else (0,)
    w = jn.weight_norm(jnp.asarray(raw), jnp.asarray(g), axes=red)
    w64 = f64(raw) / np.sqrt((f64(raw) ** 2).sum(red, keepdims=True)) * f64(g)
    close(w, w64, 1e-5)
    ref_layer = nnx.Conv(3, 4, (2, 2), rngs=nnx.Rngs(0)) if conv else nnx.Linear(5, 4, rngs=nnx.Rngs(0))
    ref_layer.kernel[...] = w
    ref_layer.bias[...] = inner.bias[...]
    y = wn(x)
    close(y, ref_layer(x), 1e-5)
    np.testing.assert_array_equal(np.asarray(inner.kernel[...]), raw)  # the wrapped layer keeps its raw v

    ct = rand(y.shape, seed=9)
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) * ct)))(wn)

    def pure(v, gain, bias):
        k = jn.weight_norm(v, gain, axes=red)
        return jnp.sum(((conv2d(x, k) if conv else x @ k) + bias) * ct)

    gv, gg, gb = jax.jit(jax.grad(pure, (0, 1, 2)))(jnp.asarray(raw), jnp.asarray(g), inner.bias[...])
    close(grads.layer_instance.kernel[...], gv, 1e-4)
    close(grads.scales["kernel"][...], gg, 1e-4)
    close(grads.layer_instance.bias[...], gb, 1e-4)
    assert np.abs(np.asarray(grads.layer_instance.kernel[...])).max() > 0


def test_spectral_norm_power_iteration_and_eval():
    inner = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    inner.kernel[...] = inner.kernel[...] * 3.0
    inner.bias[...] = rand((5,), 4)
    sn = jnn.SpectralNorm(inner, rngs=nnx.Rngs(1))
    w = f64(inner.kernel[...])
    s_true = np.linalg.svd(w, compute_uv=False)[0]
    x = rand((4, 6), seed=3)
    step = nnx.jit(lambda m, x: m(x, update_stats=True))
    for _ in range(30):
        y = step(sn, x)
    sigma = float(sn.batch_stats["kernel/sigma"][...])
    assert abs(sigma - s_true) < 1e-3 * s_true
    eff = w / sigma
    assert abs(np.linalg.svd(eff, compute_uv=False)[0] - 1.0) < 1e-3
    close(y, f64(x) @ eff + f64(inner.bias[...]), 1e-4)
    np.testing.assert_array_equal(np.asarray(inner.kernel[...]), w.astype(np.float32))  # raw kernel kept

    # eval: u and sigma do not move (update_stats=False, model.eval(), nnx.view)
    u0 = np.asarray(sn.batch_stats["kernel/u"][...]).copy()
    s0 = np.asarray(sn.batch_stats["kernel/sigma"][...]).copy()
    y_eval = sn(x, update_stats=False)
    sn.eval()
    y_eval2 = sn(x)
    y_eval3 = nnx.view(sn, update_stats=False)(x)
    for ye in (y_eval, y_eval2, y_eval3):
        close(ye, f64(x) @ (w / s_true) + f64(inner.bias[...]), 1e-4)
    np.testing.assert_array_equal(np.asarray(sn.batch_stats["kernel/u"][...]), u0)
    np.testing.assert_array_equal(np.asarray(sn.batch_stats["kernel/sigma"][...]), s0)
    sn.train()
    assert sn.use_running_average is False


def test_spectral_norm_first_call_moves_u():
    sn = jnn.SpectralNorm(nnx.Linear(6, 5, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    u0 = np.asarray(sn.batch_stats["kernel/u"][...]).copy()
    sn(rand((2, 6)))
    assert not np.allclose(np.asarray(sn.batch_stats["kernel/u"][...]), u0)


def test_dropconnect_linear():
    layer = jnn.DropConnectLinear(64, 48, rate=0.3, rngs=nnx.Rngs(0, dropout=2))
    layer.bias[...] = rand((48,), 5)
    w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
    x = rand((4, 64), seed=1)
    close(layer(x, deterministic=True), f64(x) @ f64(w) + f64(b), 1e-5)
    eye = jnp.eye(64)
    eff = f64(layer(eye)) - f64(b)  # the masked kernel the call used
    dropped = np.isclose(eff, 0.0, atol=1e-7)
    assert abs(dropped.mean() - 0.3) < 0.04  # 3072 entries: std of the fraction ~0.008
    close(eff[~dropped], (f64(w) / 0.7)[~dropped], 1e-5)
    eff2 = f64(layer(eye)) - f64(b)
    assert not np.array_equal(np.isclose(eff2, 0.0, atol=1e-7), dropped)  # a new mask per call
    key = jax.random.key(7)
    close(layer(x, rngs=key), f64(x) @ f64(jn.dropconnect(jnp.asarray(w), 0.3, key=key)) + f64(b), 1e-5)
    # the same rngs give the same masks
    a = jnn.DropConnectLinear(64, 48, rate=0.3, rngs=nnx.Rngs(0, dropout=2))
    b2 = jnn.DropConnectLinear(64, 48, rate=0.3, rngs=nnx.Rngs(0, dropout=2))
    for _ in range(2):
        np.testing.assert_array_equal(np.asarray(a(x)), np.asarray(b2(x)))


STOCHASTIC = {
    "gaussian": (jnn.GaussianDropout, jn.gaussian_dropout, lambda x, r: x),
    "alpha": (jnn.AlphaDropout, jn.alpha_dropout, lambda x, r: x),
    "spatial": (jnn.SpatialDropout, jn.spatial_dropout, lambda x, r: x),
    "original": (jnn.OriginalDropout, jn.original_dropout, lambda x, r: (1 - r) * x),
    "dropout": (jnn.Dropout, jn.dropout, lambda x, r: x),
}


@pytest.mark.parametrize("kind", sorted(STOCHASTIC))
def test_stochastic_layers_match_the_pure_functions(kind):
    cls, fn, at_test = STOCHASTIC[kind]
    rate = 0.3
    x = rand((4, 3, 3, 5), loc=0.5)
    layer = cls(rate, rngs=nnx.Rngs(dropout=3))
    key = jax.random.key(11)
    y = layer(x, rngs=key)
    close(y, fn(x, rate, key=key, train=True), 1e-6)
    assert not np.allclose(np.asarray(y), np.asarray(x))
    # the layer's own stream: the forked 'dropout' stream's keys, in order
    stream = nnx.Rngs(dropout=3)["dropout"].fork()
    for _ in range(2):
        close(layer(x), fn(x, rate, key=stream(), train=True), 1e-6)
    # an RngStream at the call
    close(
        layer(x, rngs=nnx.Rngs(dropout=4)["dropout"]),
        fn(x, rate, key=nnx.Rngs(dropout=4)["dropout"](), train=True),
        1e-6,
    )
    close(layer(x, deterministic=True), at_test(f64(x), rate), 1e-6)
    if kind == "spatial":  # one value per example and channel
        assert np.all((np.asarray(y) == 0) == (np.asarray(y)[:, :1, :1] == 0))


# ---------------------------------------------------------------------------------------------------------------------
# 6. population statistics and folding


class TwoBN(nnx.Module):
    def __init__(self, rngs):
        self.lin1 = nnx.Linear(4, 6, rngs=rngs)
        self.bn1 = jnn.BatchNorm(6, rngs=rngs)
        self.drop = jnn.Dropout(0.5, rngs=rngs)
        self.lin2 = nnx.Linear(6, 5, rngs=rngs)
        self.bn2 = jnn.BatchNorm(5, rngs=rngs)

    def __call__(self, x):
        return self.bn2(self.lin2(self.drop(nnx.relu(self.bn1(self.lin1(x))))))


def test_population_batch_stats_against_float64_batch_moments():
    m = TwoBN(nnx.Rngs(0, dropout=1))
    set_affine(m.bn1, c=6)
    set_affine(m.bn2, c=5, seed=4)
    batches = [rand((8, 4), seed=50 + i, loc=2.0 + 0.3 * i, scale=1.5) for i in range(5)]
    m(batches[0])  # the running statistics have moved once: population statistics must overwrite them
    params = jax.tree.map(np.asarray, nnx.state(m, nnx.Param).to_pure_dict())

    # pre-BN activations per batch, in float64: bn1 normalized with the batch's own statistics, dropout off
    p = {k: jax.tree.map(f64, v) for k, v in params.items()}
    pre1, pre2 = [], []
    for x in batches:
        h1 = f64(x) @ p["lin1"]["kernel"] + p["lin1"]["bias"]
        a = np.maximum(ref_bn_train(h1, p["bn1"]["scale"], p["bn1"]["bias"])[0], 0)
        pre1.append(h1)
        pre2.append(a @ p["lin2"]["kernel"] + p["lin2"]["bias"])
    out = jnn.population_batch_stats(m, batches)
    assert out is m
    for layer, pre in ((m.bn1, pre1), (m.bn2, pre2)):
        n = pre[0].shape[0]
        mean = np.mean([h.mean(0) for h in pre], 0)  # E_B[μ_B]
        var = np.mean([h.var(0) * n / (n - 1) for h in pre], 0)  # E_B[m/(m−1)·σ²_B]
        close(layer.mean[...], mean, 1e-5)
        close(layer.var[...], var, 1e-4)
        assert int(layer.count[...]) == len(batches)
    # the same through jaxnorm's pure helpers
    ref = jn.population_stats({"bn": jn.batch_moments(jnp.asarray(h, jnp.float32))} for h in pre2)["bn"]
    close(m.bn2.mean[...], ref["mean"], 1e-5)
    close(m.bn2.var[...], ref["var"], 1e-5)
    # parameters and flags untouched
    after = jax.tree.map(np.asarray, nnx.state(m, nnx.Param).to_pure_dict())
    jax.tree.map(np.testing.assert_array_equal, after, params)
    assert m.bn1.use_running_average is False and m.drop.deterministic is False


def test_population_batch_stats_needs_a_batch_norm():
    with pytest.raises(ValueError, match="batch-statistics layer"):
        jnn.population_batch_stats(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), [jnp.ones((2, 3))])


class LinBN(nnx.Module):
    def __init__(self, rngs, use_bias=True, conv=False, flax_bn=False):
        self.lin = (
            nnx.Conv(3, 5, (3, 3), use_bias=use_bias, rngs=rngs)
            if conv
            else nnx.Linear(4, 5, use_bias=use_bias, rngs=rngs)
        )
        self.bn = (nnx.BatchNorm if flax_bn else jnn.BatchNorm)(5, momentum=0.5, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.lin(x)))


@pytest.mark.parametrize(
    "use_bias,conv,flax_bn",
    [(True, False, False), (False, False, False), (True, True, False), (False, True, False), (True, False, True)],
    ids=["linear", "linear-nobias", "conv", "conv-nobias", "flax-bn"],
)
def test_fold_batch_norm_equals_the_model_in_eval(use_bias, conv, flax_bn):
    m = LinBN(nnx.Rngs(0), use_bias=use_bias, conv=conv, flax_bn=flax_bn)
    set_affine(m.bn, c=5)
    shape = (4, 5, 5, 3) if conv else (8, 4)
    for step in range(3):  # non-trivial running statistics
        m(rand(shape, seed=60 + step, loc=2.0, scale=1.5))
    m.eval()
    before = jax.tree.map(np.asarray, nnx.state(m).to_pure_dict())
    folded = jnn.fold_batch_norm(m, {"lin": "bn"})
    assert isinstance(folded.bn, jnn.FoldedBatchNorm)
    assert isinstance(m.bn, nnx.BatchNorm if flax_bn else jnn.BatchNorm)  # the original is not modified
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(m).to_pure_dict()), before)
    x = rand(shape, seed=70, loc=2.0, scale=1.5)
    y = m(x)
    close(folded(x), y, 1e-5, atol=1e-5 * float(np.abs(np.asarray(y)).max()))
    assert folded.lin.bias is not None
    folded.train()  # nothing left to train: still the same map
    close(folded(x), y, 1e-5, atol=1e-5 * float(np.abs(np.asarray(y)).max()))


def test_fold_batch_norm_in_a_sequential_and_bad_paths():
    seq = nnx.Sequential(nnx.Linear(4, 5, rngs=nnx.Rngs(0)), jnn.BatchNorm(5, momentum=0.5, rngs=nnx.Rngs(1)))
    seq(rand((8, 4), loc=1.0))
    seq.eval()
    folded = jnn.fold_batch_norm(seq, {"layers/0": "layers/1"})
    assert isinstance(folded.layers[1], jnn.FoldedBatchNorm) and isinstance(seq.layers[1], jnn.BatchNorm)
    x = rand((3, 4), seed=2)
    close(folded(x), seq(x), 1e-5)
    m = LinBN(nnx.Rngs(0))
    with pytest.raises(KeyError, match="'nope'"):
        jnn.fold_batch_norm(m, {"lin": "nope"})
    with pytest.raises(KeyError, match="layers/7"):
        jnn.fold_batch_norm(seq, {"layers/7": "layers/1"})
    with pytest.raises(ValueError, match="kernel"):
        jnn.fold_batch_norm(m, {"bn": "bn"})


# ---------------------------------------------------------------------------------------------------------------------
# 7. bad input


def test_num_features_mismatch_names_the_numbers():
    for layer in (
        jnn.BatchNorm(6, rngs=nnx.Rngs(0)),
        jnn.LayerNorm(6, rngs=nnx.Rngs(0)),
        jnn.GroupNorm(6, 3, rngs=nnx.Rngs(0)),
    ):
        with pytest.raises(ValueError, match=r"num_features=6") as e:
            layer(jnp.ones((4, 5)))
        assert "(4, 5)" in str(e.value) and "num_features=5" in str(e.value)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"num_groups=4.*\[1, 2, 3, 6\]"):
        jnn.GroupNorm(6, 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rate"):
        jnn.Dropout(1.5, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(ValueError, match="momentum"):
        jnn.BatchNorm(4, momentum=2.0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="convention.*'flax', 'pytorch'"):
        jnn.BatchNorm(4, convention="tensorflow", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="r_max"):
        jnn.BatchRenorm(4, r_max=0.5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="p must be"):
        jnn.LpBatchNorm(4, p=3, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match="nnx.Rngs"):
        jnn.BatchNorm(4, rngs=0)


def test_dropout_without_rngs_in_training_says_how_to_fix_it():
    x = rand((4, 4))
    for layer in (jnn.Dropout(0.5), jnn.GaussianDropout(0.5), jnn.AlphaDropout(0.5)):
        with pytest.raises(ValueError, match="rngs"):
            layer(x)
        np.testing.assert_array_equal(np.asarray(layer(x, deterministic=True)), np.asarray(x))
        y = layer(x, rngs=jax.random.key(0))  # a key at the call is enough
        assert not np.allclose(np.asarray(y), np.asarray(x))


def test_noisy_batch_norm_deterministic_turns_the_noise_off_and_population_stats_collect_without_it():
    x = rand((8, 4), 3)
    nb = jnn.NoisyBatchNorm(4, rngs=nnx.Rngs(0, dropout=1))
    ref, _ = jn.batch_norm(x, jnp.ones(4), jnp.zeros(4), jn.init_batch_stats(4), train=True)
    np.testing.assert_allclose(nb(x, deterministic=True), ref, atol=1e-6)  # batch statistics, no noise
    assert int(nb.count[...]) == 1  # the statistics still update
    assert float(jnp.abs(nb(x) - ref).max()) > 0.05  # noise on by default
    nb.eval()
    assert nb.deterministic is True and nb.use_running_average is True

    class M(nnx.Module):
        def __init__(self, rngs):
            self.nb = jnn.NoisyBatchNorm(4, rngs=rngs)
            self.bn = jnn.BatchNorm(4, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.nb(x))

    m = M(nnx.Rngs(0, dropout=1))
    jnn.population_batch_stats(m, [rand((8, 4), s) for s in range(3)])
    # without noise the first layer's outputs have mean 0 and biased variance ~1 in every batch
    np.testing.assert_allclose(m.bn.mean[...], 0.0, atol=1e-6)
    np.testing.assert_allclose(m.bn.var[...], 8 / 7, rtol=1e-3)
    with pytest.raises(TypeError, match="deterministic .* must be a Python bool"):
        nnx.jit(lambda nb, x, f: nb(x, deterministic=f))(jnn.NoisyBatchNorm(4, rngs=nnx.Rngs(0)), x, jnp.array(True))


def test_spectral_norm_refuses_a_traced_update_stats_with_its_own_message():
    sn = jnn.SpectralNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    with pytest.raises(TypeError, match="update_stats must be a Python bool"):
        nnx.jit(lambda m, x, f: m(x, update_stats=f))(sn, jnp.ones((1, 3)), jnp.array(True))


def test_every_norm_layer_takes_mask_so_models_can_swap_them():
    x, mask = rand((4, 6), 4), jnp.array([True, True, False, True])
    for layer in (
        jnn.DyT(6, rngs=nnx.Rngs(0)),
        jnn.LayerNorm(6, rngs=nnx.Rngs(0)),
        jnn.RMSNorm(6, rngs=nnx.Rngs(0)),
        jnn.GroupNorm(6, 2, rngs=nnx.Rngs(0)),
        jnn.BatchNorm(6, rngs=nnx.Rngs(0)),
    ):
        y = layer(x, mask=mask)
        assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.parametrize(
    "make,call,flag",
    [
        (lambda: jnn.BatchNorm(4, use_running_average="yes", rngs=nnx.Rngs(0)), {}, "use_running_average"),
        (lambda: jnn.BatchNorm(4, rngs=nnx.Rngs(0)), {"use_running_average": 1}, "use_running_average"),
        (lambda: jnn.BatchRenorm(4, rngs=nnx.Rngs(0)), {"use_running_average": "no"}, "use_running_average"),
        (lambda: jnn.LpBatchNorm(4, use_running_average="yes", rngs=nnx.Rngs(0)), {}, "use_running_average"),
        (lambda: jnn.NoisyBatchNorm(4, use_running_average="yes", rngs=nnx.Rngs(0)), {}, "use_running_average"),
        (lambda: jnn.NoisyBatchNorm(4, deterministic="yes", rngs=nnx.Rngs(0)), {}, "deterministic"),
        (lambda: jnn.Dropout(0.5, deterministic="yes", rngs=nnx.Rngs(dropout=0)), {}, "deterministic"),
        (lambda: jnn.Dropout(0.5, rngs=nnx.Rngs(dropout=0)), {"deterministic": "no"}, "deterministic"),
    ],
    ids=["bn_ctor", "bn_call_int", "renorm_call", "lp_ctor", "noisy_ura", "noisy_det", "drop_ctor", "drop_call"],
)
def test_bad_flag_value_names_the_nnx_argument_not_train(make, call, flag):
    layer = make()
    with pytest.raises(TypeError) as e:
        layer(rand((4, 4)), **call)
    msg = str(e.value)
    assert f"{flag} must be a Python bool" in msg and f"pass {flag}=True or {flag}=False" in msg, msg
    assert "train" not in msg.replace("training", ""), msg  # NNX layers have no train argument
    assert "'yes'" in msg or "'no'" in msg or "1 (int)" in msg, msg  # the value shown


def test_bad_update_stats_names_update_stats():
    sn = jnn.SpectralNorm(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    with pytest.raises(TypeError, match=r"SpectralNorm: update_stats must be a Python bool .*got 'yes'"):
        sn(jnp.ones((1, 3)), update_stats="yes")
    sn.use_running_average = "yes"  # as a bad nnx.view would set it
    with pytest.raises(TypeError, match=r"SpectralNorm: use_running_average must be a Python bool .*got 'yes'"):
        sn(jnp.ones((1, 3)))


def test_noisy_batch_norm_constants_reach_the_noise():
    """n_μ = r_μ = r_σ = 0 and n_σ = 1 draw s = 1, m = 0: training is BatchNorm exactly (a constant ignored brings
    the paper's noise back); other constants equal the pure function with the same constants and key."""
    x = rand((8, 6), loc=3.0, scale=2.0)
    quiet = jnn.NoisyBatchNorm(6, n_mu=0.0, n_sigma=1.0, r_mu=0.0, r_sigma=0.0, rngs=nnx.Rngs(0, dropout=5))
    plain = jnn.BatchNorm(6, rngs=nnx.Rngs(0))
    set_affine(quiet, plain, c=6)
    np.testing.assert_array_equal(np.asarray(quiet(x)), np.asarray(plain(x)))
    consts = dict(n_mu=2.0, n_sigma=3.0, r_mu=0.4, r_sigma=0.3)
    layer = jnn.NoisyBatchNorm(6, rngs=nnx.Rngs(0, dropout=5), **consts)
    g, b = set_affine(layer, c=6)
    key = nnx.Rngs(0, dropout=5)["dropout"].fork()()
    y_ref, _ = jn.noisy_batch_norm(
        x,
        jnp.asarray(g, jnp.float32),
        jnp.asarray(b, jnp.float32),
        jn.init_batch_stats(6),
        train=True,
        key=key,
        **consts,
    )
    close(layer(x), y_ref)


def test_axis_index_groups_normalize_each_group_over_its_own_devices():
    """BatchNorm(axis_name='d', axis_index_groups=[[0, 1], [2, 3]]) under pmap over the 4 fake devices: each device
    normalizes with its pair's statistics (float64 reference), not all four devices' nor its own."""
    groups = [[0, 1], [2, 3]]
    x = rand((4, 4, 3), loc=1.0, scale=2.0) + 3.0 * jnp.arange(4.0)[:, None, None]
    layer = jnn.BatchNorm(3, momentum=0.9, axis_name="d", axis_index_groups=groups, rngs=nnx.Rngs(0))
    g, b = set_affine(layer, c=3)
    gdef, state = nnx.split(layer)

    def f(a, st):
        m = nnx.merge(gdef, st)
        y = m(a, use_running_average=False)
        return y, m.mean[...], m.var[...]

    y, mean_run, var_run = jax.pmap(f, axis_name="d", in_axes=(0, None))(x, state)
    for dev in range(4):
        pair = f64(x)[2 * (dev // 2) : 2 * (dev // 2) + 2].reshape(-1, 3)
        close(y[dev], (f64(x)[dev] - pair.mean(0)) / np.sqrt(pair.var(0) + 1e-5) * g + b)
        close(mean_run[dev], 0.1 * pair.mean(0))
        close(var_run[dev], 0.9 + 0.1 * pair.var(0))


def test_ghost_batch_norm_layer_normalizes_each_virtual_batch():
    """BatchNorm(virtual_batch_size=4) on 12 examples: each group of 4 normalized by its own statistics, the running
    ones the mean of the three (momentum 0), as the pure function computes them."""
    x = rand((12, 3), loc=1.0, scale=2.0)
    layer = jnn.BatchNorm(3, momentum=0.0, virtual_batch_size=4, use_scale=False, use_bias=False, rngs=nnx.Rngs(0))
    y_ref, st = jn.batch_norm(x, None, None, jn.init_batch_stats(3), train=True, virtual_batch_size=4, momentum=0.0)
    close(layer(x), y_ref)
    close(layer.var[...], st["var"])
    close(y_ref[:4], ref_bn_train(x[:4], 1.0, 0.0)[0])


def test_population_batch_stats_of_a_channels_first_batch_norm():
    """BatchNorm(axis=1) on N×C×L batches: the population statistics are per channel of axis 1 (float64 reference,
    the unbiased variance averaged over batches), not per position of the last axis."""
    m = nnx.Sequential(jnn.BatchNorm(3, axis=1, rngs=nnx.Rngs(0)))
    batches = [rand((4, 3, 5), seed=70 + i, loc=1.0 + i, scale=2.0) for i in range(3)]
    bn = jnn.population_batch_stats(m, batches).layers[0]
    n = 4 * 5
    close(bn.mean[...], np.mean([f64(x).mean((0, 2)) for x in batches], 0))
    close(bn.var[...], np.mean([f64(x).var((0, 2)) * n / (n - 1) for x in batches], 0), 1e-4)


def test_spectral_norm_layer_takes_n_steps_power_iterations():
    """SpectralNorm(n_steps=5): the first call's σ and normalized kernel are the pure function's after 5 power
    iterations from the layer's initial u (one iteration gives another σ here)."""
    lin = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    w = lin.kernel[...]
    sn = jnn.SpectralNorm(lin, n_steps=5, rngs=nnx.Rngs(1))
    u0 = sn.batch_stats["kernel/u"][...]
    x = rand((2, 6))
    y = sn(x, update_stats=True)
    w5, _, s5 = jn.spectral_normalize(w, u0, n_power_iterations=5, train=True)
    close(y, f64(x) @ f64(w5) + f64(lin.bias[...]), 1e-5)
    close(sn.batch_stats["kernel/sigma"][...], s5)
    s1 = jn.spectral_normalize(w, u0, n_power_iterations=1, train=True)[2]
    assert abs(float(s5) - float(s1)) > 1e-4 * float(s5)


def test_weight_and_spectral_norm_layers_pass_epsilon_on():
    """ε = 5, comparable to ‖v‖² (about 1 here): WeightNorm's kernel is weight_norm(v, g, ε = 5) and SpectralNorm's
    first call is spectral_normalize(..., ε = 5), each different from the default ε's."""
    lin = nnx.Linear(6, 5, rngs=nnx.Rngs(0))
    raw = lin.kernel[...]
    x = rand((3, 6))
    wn = jnn.WeightNorm(lin, epsilon=5.0, rngs=nnx.Rngs(1))
    g = wn.scales["kernel"][...]
    w5 = jn.weight_norm(raw, g, axes=(0,), epsilon=5.0)
    close(wn(x), f64(x) @ f64(w5) + f64(lin.bias[...]), 1e-5)
    assert float(jnp.abs(w5 - jn.weight_norm(raw, g, axes=(0,))).max()) > 1e-2
    sn = jnn.SpectralNorm(nnx.Linear(6, 5, rngs=nnx.Rngs(0)), epsilon=5.0, rngs=nnx.Rngs(1))
    u0 = sn.batch_stats["kernel/u"][...]
    y = sn(x, update_stats=True)
    s5 = jn.spectral_normalize(raw, u0, train=True, epsilon=5.0)
    close(y, f64(x) @ f64(s5[0]) + f64(lin.bias[...]), 1e-5)
    assert abs(float(s5[2]) - float(jn.spectral_normalize(raw, u0, train=True)[2])) > 1e-3


def test_population_batch_stats_of_a_synchronized_batch_norm():
    """A BatchNorm synchronized across devices (axis_name) gets the population statistics of the given whole
    batches, those of the same layer without axis_name, outside any mapped context; it keeps its axis_name."""
    batches = [rand((4, 3), seed=80 + i, loc=1.0 + i) for i in range(3)]
    synced = nnx.Sequential(jnn.BatchNorm(3, axis_name="batch", rngs=nnx.Rngs(0)))
    local = nnx.Sequential(jnn.BatchNorm(3, rngs=nnx.Rngs(0)))
    a = jnn.population_batch_stats(synced, batches).layers[0]
    b = jnn.population_batch_stats(local, batches).layers[0]
    close(a.mean[...], b.mean[...], 0.0)
    close(a.var[...], b.var[...], 0.0)
    assert a.axis_name == "batch" and int(a.count[...]) == 3
