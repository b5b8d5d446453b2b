"""Shape-mismatch messages of the per-channel checks: a PyTorch-layout (NCHW) input passed with the default
``axis=-1`` gets the advice ``axis=1`` with the numbers, not new statistics for the width; and a correct NCHW call
(``axis=1``) equals the channels-last computation and a float64 numpy two-pass reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn

EPS = 1e-5
SHAPE = (8, 3, 16, 16)  # N C H W: C = 3, W = 16


def _x(shape=SHAPE, seed=0, loc=2.0):
    return loc + jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _noisy(x, scale, bias, stats, **kw):
    return jn.noisy_batch_norm(x, scale, bias, stats, key=jax.random.key(1), **kw)


BATCH_STAT_NORMS = {
    "batch_norm": jn.batch_norm,
    "batch_renorm": jn.batch_renorm,
    "lp_batch_norm": jn.lp_batch_norm,
    "noisy_batch_norm": _noisy,
}


def _assert_nchw_advice(err, name, what):
    msg = str(err)
    assert msg.startswith(f"{name}: "), msg
    assert "axis=1" in msg, msg
    assert "NCHW" in msg, msg
    assert f"{what} has 3 entries" in msg, msg
    assert "16 channels on axis -1" in msg, msg
    assert "x.shape=(8, 3, 16, 16)" in msg, msg
    assert "init_batch_stats(16)" not in msg, msg  # the old, wrong advice


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
@pytest.mark.parametrize("train", [True, False])
def test_nchw_stats_for_axis_1_suggest_axis_1(name, train):
    fn = BATCH_STAT_NORMS[name]
    with pytest.raises(ValueError) as err:
        fn(_x(), jnp.ones(3), jnp.zeros(3), jn.init_batch_stats(3), train=train)
    _assert_nchw_advice(err.value, name, "stats['mean']")


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
@pytest.mark.parametrize("param", ["scale", "bias"])
def test_nchw_scale_or_bias_for_axis_1_suggest_axis_1(name, param):
    fn = BATCH_STAT_NORMS[name]
    args = {"scale": None, "bias": None, param: jnp.ones(3)}
    with pytest.raises(ValueError) as err:  # stats match axis -1: the parameter is what is wrong
        fn(_x(), args["scale"], args["bias"], jn.init_batch_stats(16), train=True)
    _assert_nchw_advice(err.value, name, param)


def test_nchw_per_channel_scale_of_instance_and_group_norm_suggest_axis_1():
    with pytest.raises(ValueError) as err:
        jn.instance_norm(_x(), jnp.ones(3), jnp.zeros(3))
    _assert_nchw_advice(err.value, "instance_norm", "scale")
    with pytest.raises(ValueError) as err:
        jn.group_norm(_x(), None, jnp.zeros(3), num_groups=4)
    _assert_nchw_advice(err.value, "group_norm", "bias")


def test_the_existing_advice_stays_when_no_other_axis_matches():
    x = _x((8, 5, 16, 16))
    with pytest.raises(ValueError) as err:
        jn.batch_norm(x, None, None, jn.init_batch_stats(3), train=True)
    msg = str(err.value)
    assert "axis=1" not in msg and "init_batch_stats(16)" in msg, msg
    with pytest.raises(ValueError) as err:
        jn.batch_norm(x, jnp.ones(3), None, jn.init_batch_stats(16), train=True)
    msg = str(err.value)
    assert "axis=1" not in msg and "shape (16,) for the 16 channels on axis 3" in msg, msg
    # channels already on axis 1: a wrong size is not a layout problem
    with pytest.raises(ValueError) as err:
        jn.batch_norm(_x(), jnp.ones(16), None, jn.init_batch_stats(3), train=True, axis=1)
    msg = str(err.value)
    assert "NCHW" not in msg and "shape (3,) for the 3 channels on axis 1" in msg, msg
    # layer_norm has no axis argument: no advice to pass one
    with pytest.raises(ValueError) as err:
        jn.layer_norm(_x(), jnp.ones(3))
    assert "axis=1" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------------------
# the correct NCHW call


def _two_pass(x64, reduce_axes, scale, bias):
    """float64 two-pass reference: μ = mean(x), σ² = mean((x − μ)²), y = γ·(x − μ)/√(σ² + ε) + β over NCHW."""
    mean = x64.mean(reduce_axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(reduce_axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + EPS)
    return y * np.asarray(scale, np.float64).reshape(1, -1, 1, 1) + np.asarray(bias, np.float64).reshape(1, -1, 1, 1)


def _params(c=3):
    return (1.0 + 0.3 * jax.random.normal(jax.random.key(2), (c,)), 0.3 * jax.random.normal(jax.random.key(3), (c,)))


def test_nchw_batch_norm_with_axis_1_equals_channels_last_and_the_reference():
    x = _x(loc=50.0)
    scale, bias = _params()
    y, st = jn.batch_norm(x, scale, bias, jn.init_batch_stats(3), train=True, axis=1)
    y_last, st_last = jn.batch_norm(jnp.moveaxis(x, 1, -1), scale, bias, jn.init_batch_stats(3), train=True)
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(np.asarray(y_last), -1, 1), rtol=1e-5, atol=1e-5)
    for k in ("mean", "var"):
        np.testing.assert_allclose(np.asarray(st[k]), np.asarray(st_last[k]), rtol=1e-5, atol=1e-6)
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(np.asarray(y, np.float64), _two_pass(x64, (0, 2, 3), scale, bias), rtol=1e-4, atol=1e-4)
    ref_mean = x64.mean((0, 2, 3))
    np.testing.assert_allclose(np.asarray(st["mean"], np.float64), 0.01 * ref_mean, rtol=1e-5)
    # eval mode with the running statistics, both layouts
    y_eval, _ = jn.batch_norm(x, scale, bias, st, train=False, axis=1)
    y_eval_last, _ = jn.batch_norm(jnp.moveaxis(x, 1, -1), scale, bias, st, train=False)
    np.testing.assert_allclose(np.asarray(y_eval), np.moveaxis(np.asarray(y_eval_last), -1, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["instance_norm", "group_norm"])
def test_nchw_instance_and_group_norm_with_axis_1_equal_channels_last_and_the_reference(name):
    x = _x(loc=-20.0)
    scale, bias = _params()
    if name == "instance_norm":
        fn, reduce_axes = jn.instance_norm, (2, 3)
    else:  # 3 groups of 1 channel: per (example, channel), as instance norm; then 1 group of 3: layer norm
        fn, reduce_axes = (lambda *a, **k: jn.group_norm(*a, num_groups=3, **k)), (2, 3)
    y = fn(x, scale, bias, axis=1)
    y_last = fn(jnp.moveaxis(x, 1, -1), scale, bias)
    np.testing.assert_allclose(np.asarray(y), np.moveaxis(np.asarray(y_last), -1, 1), rtol=1e-5, atol=1e-5)
    x64 = np.asarray(x, np.float64)
    ref = _two_pass(x64, reduce_axes, scale, bias)
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=1e-4, atol=1e-4)
    if name == "group_norm":
        y1 = jn.group_norm(x, scale, bias, num_groups=1, axis=1)
        ref = _two_pass(x64, (1, 2, 3), scale, bias)
        np.testing.assert_allclose(np.asarray(y1, np.float64), ref, rtol=1e-4, atol=1e-4)


# --- group counts: the exact message, with the divisors and the nearest one (found by mutation testing) -----------


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        (
            {"num_groups": 5},
            "num_groups=5; choose a divisor of 12 such as 6 "
            r"\(divisors: \[1, 2, 3, 4, 6, 12\]\)",
        ),
        ({"num_groups": 0}, r"num_groups=0; choose a divisor of 12 such as 1 \(divisors: \[1, 2, 3, 4, 6, 12\]\)"),
        ({"num_groups": 13}, r"num_groups=13; choose a divisor of 12 such as 12 \(divisors"),
        ({"num_groups": 2.0}, r"num_groups=2.0; choose a divisor of 12 such as 1 \(divisors"),
        ({"group_size": 5}, r"group_size=5; choose a divisor of 12: \[1, 2, 3, 4, 6, 12\]$"),
        ({"group_size": 0}, r"group_size=0; choose a divisor of 12: \[1, 2, 3, 4, 6, 12\]$"),
        ({"group_size": 4.0}, r"group_size=4.0; choose a divisor of 12"),
    ],
)
def test_group_count_errors_name_the_divisors_and_the_nearest(kw, want):
    x = jnp.ones((2, 3, 12))
    with pytest.raises(ValueError, match=rf"^group_norm: 12 channels are not divisible by {want}"):
        jn.group_norm(x, **kw)


def test_group_count_both_or_neither_is_an_error_and_group_size_gives_the_count():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 12)), jnp.float32)
    for kw in ({}, {"num_groups": 3, "group_size": 4}):
        with pytest.raises(ValueError, match=r"^group_norm: give exactly one of num_groups and group_size"):
            jn.group_norm(x, **kw)
    np.testing.assert_array_equal(
        np.asarray(jn.group_norm(x, group_size=4)), np.asarray(jn.group_norm(x, num_groups=3))
    )
    assert not np.allclose(np.asarray(jn.group_norm(x, group_size=3)), np.asarray(jn.group_norm(x, num_groups=3)))


PER_EXAMPLE_NORMS = {  # name: (the call, its minimum rank, the layout its rank error names)
    "layer_norm": (jn.layer_norm, 2, "a batch axis and at least one feature axis"),
    "rms_norm": (jn.rms_norm, 2, "a batch axis and at least one feature axis"),
    "group_norm": (lambda x, **kw: jn.group_norm(x, num_groups=1, **kw), 2, "N×…×C"),
    "instance_norm": (
        jn.instance_norm,
        3,
        "N×spatial…×C; an N×C input has nothing to normalize per instance",
    ),
}


@pytest.mark.parametrize("name", sorted(PER_EXAMPLE_NORMS))
def test_a_per_example_norms_rank_and_parameter_errors_name_it_and_the_layout(name):
    """Each message begins with the transform's own name (the caller may have several in one model), and the rank
    error says which layout it expects."""
    fn, rank, layout = PER_EXAMPLE_NORMS[name]
    low = (4,) * (rank - 1)
    with pytest.raises(ValueError) as err:
        fn(jnp.ones(low))
    assert str(err.value) == f"{name}: expected an input of rank >= {rank} ({layout}), got shape {low}"
    x = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError) as err:
        fn(x, scale=jnp.ones((5,)))
    assert str(err.value).startswith(f"{name}: scale of shape (5,) does not broadcast against the input of shape "), err
    assert "pass one value per channel, shape (4,) for the 4 channels on axis 2" in str(err.value)
    with pytest.raises(ValueError, match=rf"^{name}: epsilon must be a finite number >= 0 .*got -1.0"):
        fn(x, epsilon=-1.0)
    with pytest.raises(ValueError, match=rf"^{name}: mask of shape \(2, 5\) must match the leading axes of the input"):
        fn(x, mask=jnp.ones((2, 5), bool))


AXIS_CALLS = {  # name: the call with an axis (or axes) out of range for a rank-3 input
    "layer_norm": lambda x: jn.layer_norm(x, axes=(1, 3)),
    "rms_norm": lambda x: jn.rms_norm(x, axes=3),
    "group_norm": lambda x: jn.group_norm(x, num_groups=1, axis=-4),
    "instance_norm": lambda x: jn.instance_norm(x, axis=3),
    "batch_moments": lambda x: jn.batch_moments(x, axis=3),
    **{
        n: (lambda f: lambda x: f(x, None, None, jn.init_batch_stats(4), train=True, axis=3))(f)
        for n, f in BATCH_STAT_NORMS.items()
    },
}


@pytest.mark.parametrize("name", sorted(AXIS_CALLS))
def test_an_axis_out_of_range_names_the_transform_and_the_range(name):
    with pytest.raises(ValueError) as err:
        AXIS_CALLS[name](jnp.ones((2, 3, 4)))
    bad = -4 if name == "group_norm" else 3
    assert str(err.value).startswith(
        f"{name}: axis {bad} is out of range for an input of rank 3 (axes run from -3 to 2)"
    )


REPEATED_AXES_CALLS = {  # name: the call naming axis 2 of a rank-3 input twice, once as -1
    "layer_norm": lambda x: jn.layer_norm(x, axes=(2, -1)),
    "rms_norm": lambda x: jn.rms_norm(x, axes=(1, 2, 2)),
    "batch_moments": lambda x: jn.batch_moments(x, axis=(-1, 2)),
}


@pytest.mark.parametrize("name", sorted(REPEATED_AXES_CALLS))
def test_an_axis_named_twice_is_refused_like_numpy(name):
    x = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError, match=rf"^{name}: axes \(.*\) name axis 2 twice for an input of rank 3; give each"):
        REPEATED_AXES_CALLS[name](x)
    with pytest.raises(ValueError, match="duplicate"):  # numpy's reductions refuse the same
        np.sum(np.ones((2, 3, 4)), axis=(2, -1))


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
@pytest.mark.parametrize("momentum", [1.5, -0.1])
def test_a_batch_stat_norms_momentum_out_of_range_is_refused_by_name(name, momentum):
    with pytest.raises(ValueError) as err:
        BATCH_STAT_NORMS[name](jnp.ones((4, 3)), None, None, jn.init_batch_stats(3), train=True, momentum=momentum)
    assert str(err.value) == f"{name}: momentum must be in [0, 1] (or None for a cumulative average), got {momentum}"


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
@pytest.mark.parametrize("train", [True, False])
def test_a_batch_stat_norms_bad_epsilon_is_refused_by_name_in_both_modes(name, train):
    with pytest.raises(ValueError, match=rf"^{name}: epsilon must be a finite number >= 0 .*got -1.0"):
        BATCH_STAT_NORMS[name](jnp.ones((4, 3)), None, None, jn.init_batch_stats(3), train=train, epsilon=-1.0)


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
@pytest.mark.parametrize(
    "stats, got", [({"mean": jnp.zeros(3)}, "['mean']"), ((jnp.zeros(3), jnp.ones(3)), "tuple"), (None, "NoneType")]
)
def test_a_batch_stat_norms_stats_without_mean_and_var_are_refused_with_what_came(name, stats, got):
    with pytest.raises(ValueError) as err:
        BATCH_STAT_NORMS[name](jnp.ones((4, 3)), None, None, stats, train=True)
    assert str(err.value) == (
        f"{name}: stats must be a dict with 'mean', 'var' and 'count' (got {got}); create them with "
        "jaxnorm.init_batch_stats(3)"
    )


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
def test_the_nchw_advice_names_the_axis_the_user_gave(name):
    """Channels on axis 2 (5 of them) and statistics of length 3, the size of axis 1: the advice says axis 2 has
    5 channels, not the last axis's 6."""
    x = jnp.ones((4, 3, 5, 6))
    with pytest.raises(ValueError) as err:
        BATCH_STAT_NORMS[name](x, None, None, jn.init_batch_stats(3), train=True, axis=2)
    assert str(err.value) == (
        f"{name}: stats['mean'] has 3 entries but x has 5 channels on axis 2 (x.shape=(4, 3, 5, 6)); for PyTorch's "
        "NCHW layout pass axis=1"
    )


@pytest.mark.parametrize("bad", [(3, 1), ()])
def test_running_statistics_of_another_rank_get_the_shape_message_not_the_nchw_advice(bad):
    """Only a 1-D statistic whose length is that of axis 1 suggests ``axis=1``; a (3, 1) or scalar mean is wrong
    whatever the layout."""
    x = jnp.ones((4, 3, 5))  # 3 on axis 1, 5 channels on the last
    stats = {"mean": jnp.zeros(bad), "var": jnp.ones(5), "count": jnp.zeros((), jnp.int32)}
    with pytest.raises(ValueError) as err:
        jn.batch_norm(x, None, None, stats, train=True)
    assert str(err.value) == (
        f"batch_norm: stats['mean'] has shape {bad} but the input has 5 channels on its feature axis; create "
        "matching stats with jaxnorm.init_batch_stats(5)"
    )


def test_noisy_batch_norm_names_an_option_batch_norm_does_not_take():
    with pytest.raises(TypeError, match=r"^noisy_batch_norm: unexpected keyword arguments \['momentm'\]; batch_norm "):
        _noisy(jnp.ones((4, 3)), None, None, jn.init_batch_stats(3), train=True, momentm=0.9)


@pytest.mark.parametrize("v, suggestion", [(3, 2), (16, 8), (0, 1), (-2, 1), (4.0, 1)])
def test_a_virtual_batch_size_that_does_not_divide_the_batch_gets_a_divisor_that_does(v, suggestion):
    """Ghost batch norm of a batch of 8: the largest divisor of 8 not above the given size is suggested (1 for a size
    that is not a positive int, a float included)."""
    x = jax.random.normal(jax.random.key(0), (8, 2, 3))
    with pytest.raises(ValueError) as err:
        jn.batch_norm(x, None, None, jn.init_batch_stats(3), train=True, virtual_batch_size=v)
    assert str(err.value) == (
        f"batch_norm: virtual_batch_size={v} must be a positive divisor of the batch size 8; choose e.g. {suggestion}"
    )


def test_a_virtual_batch_of_one_example_normalizes_each_example_alone():
    x = jax.random.normal(jax.random.key(0), (4, 5, 3)) * 3.0 + 1.0
    y, _ = jn.batch_norm(x, None, None, jn.init_batch_stats(3), train=True, virtual_batch_size=1)
    for i in range(4):
        want, _ = jn.batch_norm(x[i : i + 1], None, None, jn.init_batch_stats(3), train=True)
        np.testing.assert_allclose(y[i : i + 1], want, rtol=1e-6, atol=1e-6)


def test_noisy_batch_norm_reads_batch_norms_options_through_a_wrapper(monkeypatch):
    """noisy_batch_norm takes batch_norm's options and defaults from its signature: a functools.wraps wrapper (a
    tracing decorator, mutmut's trampoline) has no ``__kwdefaults__``, and reading those made every option unknown."""
    import functools

    from jaxnorm import norms

    @functools.wraps(norms.batch_norm)
    def wrapped(*args, **kwargs):
        return norms.batch_norm(*args, **kwargs)

    x, stats = jax.random.normal(jax.random.key(0), (6, 3)), jn.init_batch_stats(3)
    want = jn.noisy_batch_norm(x, None, None, stats, train=False, epsilon=0.5)
    monkeypatch.setattr(norms, "batch_norm", wrapped)
    got = norms.noisy_batch_norm(x, None, None, stats, train=False, epsilon=0.5)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[0], jn.batch_norm(x, None, None, stats, train=False, epsilon=0.5)[0])


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
def test_a_batch_stat_norms_mask_errors_name_it(name):
    x = jnp.ones((4, 3))
    stats = jn.init_batch_stats(3)
    with pytest.raises(ValueError, match=rf"^{name}: mask of shape \(4, 2\) does not broadcast to the input \(4, 3\)"):
        BATCH_STAT_NORMS[name](x, None, None, stats, train=True, mask=jnp.ones((4, 2), bool))
    with pytest.raises(ValueError, match=rf"^{name}: mask of shape \(4, 3, 1\) has more axes than the input"):
        BATCH_STAT_NORMS[name](x, None, None, stats, train=True, mask=jnp.ones((4, 3, 1), bool))


@pytest.mark.parametrize("name", ["instance_norm", "group_norm"])
@pytest.mark.parametrize("axis", [0, -3])
def test_the_batch_axis_as_the_channel_axis_is_refused_with_the_layouts(name, axis):
    fn = PER_EXAMPLE_NORMS[name][0]
    with pytest.raises(ValueError) as err:
        fn(jnp.ones((2, 3, 4)), axis=axis)
    assert str(err.value) == f"{name}: axis 0 is the batch axis; pass the channel axis (-1 for NHWC, 1 for NCHW)"


def test_instance_norm_of_one_spatial_value_says_why_and_what_to_do():
    with pytest.raises(ValueError) as err:
        jn.instance_norm(jnp.ones((2, 1, 1, 3)))
    assert str(err.value) == (
        "instance_norm: expected more than 1 spatial element per channel, got input shape (2, 1, 1, 3): the variance "
        "of one value is 0 and the output would be the bias alone (PyTorch raises the same error). Normalize before "
        "the spatial size reaches 1, or use group_norm/layer_norm"
    )


@pytest.mark.parametrize("name", sorted(BATCH_STAT_NORMS))
def test_one_value_per_channel_in_training_is_refused_unless_masked(name):
    """As PyTorch: one value per channel has a batch variance of 0. With a mask the batch may hold padding, so
    the check is left to the mask (a valid count of 1 is the caller's data, not a layout mistake)."""
    fn, x, st = BATCH_STAT_NORMS[name], jnp.ones((1, 3)), jn.init_batch_stats(3)
    with pytest.raises(ValueError) as err:
        fn(x, None, None, st, train=True)
    assert str(err.value) == (
        f"{name}: expected more than 1 value per channel in training, got input shape (1, 3): the batch variance of "
        "one value is 0 and the output would be the bias alone (PyTorch raises the same error). Use a batch of at "
        "least 2, train=False, or a per-example norm such as layer_norm/group_norm"
    )
    y, new = fn(x, None, None, st, train=True, mask=jnp.ones((1,), bool))
    assert y.shape == (1, 3) and int(new["count"]) == 1


def test_ghost_batches_with_an_axis_name_are_refused_with_both_ways_out():
    with pytest.raises(ValueError) as err:
        jn.batch_norm(
            jnp.ones((8, 3)), None, None, jn.init_batch_stats(3), train=True, virtual_batch_size=4, axis_name="batch"
        )
    assert str(err.value) == (
        "batch_norm: virtual_batch_size and axis_name cannot be combined: ghost batches are per-device already; pass "
        "axis_name=None (per-device statistics) or drop virtual_batch_size"
    )


def test_ghost_batches_of_the_feature_axis_are_refused_with_the_layouts():
    with pytest.raises(ValueError) as err:
        jn.batch_norm(jnp.ones((8, 3)), None, None, jn.init_batch_stats(8), train=True, axis=0, virtual_batch_size=4)
    assert str(err.value) == (
        "batch_norm: virtual_batch_size splits axis 0 into ghost batches, so axis 0 cannot be the feature axis; put "
        "the channels on another axis (axis=-1 for NHWC, axis=1 for NCHW) or drop virtual_batch_size"
    )


def test_a_one_element_parameter_broadcasts_channels_last_and_is_refused_channels_first():
    """A 1-D parameter is per channel; of length 1 it broadcasts from the right when the channels are last, and is
    refused when they are not (it would broadcast along the width, not the channels)."""
    x, two = _x((4, 3, 5)), jnp.full((1,), 2.0)
    np.testing.assert_allclose(jn.layer_norm(x, scale=two), 2 * jn.layer_norm(x), rtol=1e-6)
    np.testing.assert_allclose(jn.instance_norm(x, scale=two), 2 * jn.instance_norm(x), rtol=1e-6)
    with pytest.raises(ValueError, match=r"^instance_norm: scale of shape \(1,\)"):
        jn.instance_norm(x, scale=two, axis=1)
