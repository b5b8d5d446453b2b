"""Tests of the Equinox layers (jaxnorm.eqx): parity with equinox.nn (BatchNorm in 'batch' mode over several steps,
LayerNorm, GroupNorm, RMSNorm, Dropout), the vmapped batch norm against the pure function on the whole batch (float64
numpy references, a large-mean input, masks with NaN padding), ``eqx.nn.inference_mode``, a tiny CNN trained with
optax under ``eqx.filter_jit``, the other layers against their pure functions or numpy, ``eqx.nn.Sequential`` and the
error messages. One example per call, channels first; the batch comes from ``jax.vmap(..., axis_name='batch')``.
Tiny shapes: seconds on CPU."""

import functools
import os
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _float64 import close, f64, rand

import jaxnorm as jn
import jaxnorm.eqx as je

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("highest_precision")


# Everything runs compiled: one XLA program per call is much faster on CPU than op-by-op dispatch (arrays traced,
# Python options static under eqx.filter_jit).
J = eqx.filter_jit


def batched(layer, in_axes=(0, None), out_axes=(0, None)):
    """The Equinox way of running a stateful layer on a batch: x mapped, state shared (jit-compiled)."""
    return J(jax.vmap(layer, axis_name="batch", in_axes=in_axes, out_axes=out_axes))


def with_affine(layer, c, seed=1):
    """``layer`` with the same non-trivial per-channel γ, β as every other layer built with this seed."""
    g, b = rand((c,), seed, 1.0, 0.3), rand((c,), seed + 1, 0.0, 0.3)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (g, b)), f64(g), f64(b)


def bn_ref(x, g, b, eps=1e-5, mean=None, var=None):
    """float64 two-pass batch norm of an N×C×… batch, per channel over every other axis (or with given stats)."""
    x = f64(x)
    red = tuple(i for i in range(x.ndim) if i != 1)
    shp = [1, x.shape[1]] + [1] * (x.ndim - 2)
    if mean is None:
        mean = x.mean(red)
        var = ((x - mean.reshape(shp)) ** 2).mean(red)
    y = (x - f64(mean).reshape(shp)) / np.sqrt(f64(var).reshape(shp) + eps)
    return y * f64(g).reshape(shp) + f64(b).reshape(shp)


# ---------------------------------------------------------------------------------------------------------------------
# 1. parity with equinox.nn


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 4, 4)], ids=["NxC", "NxCxHxW"])
def test_batchnorm_matches_equinox_batch_mode_over_steps(shape):
    c, m = shape[1], 0.9
    theirs, st_e = eqx.nn.make_with_state(eqx.nn.BatchNorm)(c, "batch", momentum=m, mode="batch")
    ours, st_j = eqx.nn.make_with_state(je.BatchNorm)(c, "batch", momentum=m)
    theirs, _, _ = with_affine(theirs, c)
    ours, g, b = with_affine(ours, c)
    for step in range(3):
        x = rand(shape, seed=10 + step, loc=3.0, scale=2.0)
        ye, st_e = batched(theirs)(x, st_e)
        yj, st_j = batched(ours)(x, st_j)
        close(yj, ye)
        close(yj, bn_ref(x, g, b), 1e-4)
        hidden_mean, hidden_var = st_e.get(theirs.batch_state_index)
        stats = st_j.get(ours.state_index)
        close(stats["mean"], hidden_mean)  # the same EMA r <- m r + (1 - m) stat, from mean 0, var 1
        close(stats["var"], hidden_var)
    assert int(stats["count"]) == 3 == int(st_e.get(theirs.batch_counter))
    assert float(np.abs(f64(stats["mean"])).min()) > 0.5  # three steps towards mean 3 moved every channel

    # At inference jaxnorm uses the stored statistics as they are (Flax / PyTorch); eqx's 'batch' mode divides the
    # hidden averages by 1 - m^k (zero-debias), so the two differ on purpose: each is checked against its formula.
    x = rand(shape, seed=99, loc=3.0, scale=2.0)
    yj, st_after = batched(eqx.nn.inference_mode(ours))(x, st_j)
    ref, _ = J(jn.batch_norm)(x, ours.weight, ours.bias, stats, train=False, axis=1)
    close(yj, ref)
    close(yj, bn_ref(x, g, b, mean=stats["mean"], var=stats["var"]), 1e-4)
    for k in ("mean", "var", "count"):
        np.testing.assert_array_equal(np.asarray(st_after.get(ours.state_index)[k]), np.asarray(stats[k]))
    ye, _ = batched(eqx.nn.inference_mode(theirs))(x, st_e)
    debias = 1.0 - m**3
    close(ye, bn_ref(x, g, b, mean=f64(hidden_mean) / debias, var=f64(hidden_var) / debias), 1e-4)
    assert float(np.abs(f64(ye) - f64(yj)).max()) > 0.1  # the documented difference is real


def test_a_bfloat16_batchnorm_keeps_float32_running_statistics_that_reach_the_batch_mean():
    """``dtype=bfloat16`` makes γ, β bfloat16 and the running statistics float32 (as Flax keeps them): stored in
    bfloat16, an average with momentum 0.99 of batches at mean 5 stops moving at 4.0, where a step's change falls
    under half the rounding unit."""
    bn, state = eqx.nn.make_with_state(je.BatchNorm)(2, "batch", momentum=0.99, dtype=jnp.bfloat16)
    assert bn.weight.dtype == jnp.bfloat16
    x = (jnp.array([5.0, -3.0]) + 0.5 * jax.random.normal(jax.random.key(0), (16, 2))).astype(jnp.bfloat16)
    step = batched(bn)
    for _ in range(1500):
        state = step(x, state)[1]
    stats = state.get(bn.state_index)
    assert stats["mean"].dtype == jnp.float32 and stats["var"].dtype == jnp.float32
    batch_mean = np.asarray(x.astype(jnp.float32), np.float64).mean(0)
    np.testing.assert_allclose(np.asarray(stats["mean"], np.float64), batch_mean, rtol=1e-3)  # 0.99^1500 = 3e-7


@pytest.mark.parametrize(
    "make",
    [
        lambda lib: lib.LayerNorm((6, 3, 3)),
        lambda lib: lib.GroupNorm(3, 6),
        lambda lib: lib.RMSNorm((6, 3, 3)),
    ],
    ids=["LayerNorm", "GroupNorm", "RMSNorm"],
)
def test_per_example_norms_match_equinox(make):
    theirs, ours = make(eqx.nn), make(je)
    leaves = jax.tree.leaves(eqx.filter(theirs, eqx.is_array))  # (weight, bias), the same shapes
    assert [a.shape for a in leaves] == [a.shape for a in jax.tree.leaves(eqx.filter(ours, eqx.is_array))]
    assert len(leaves) == 2
    # the same non-trivial parameters in both
    new = [rand(leaf.shape, seed=i + 1, loc=1.0 if i == 0 else 0.0, scale=0.3) for i, leaf in enumerate(leaves)]
    theirs = eqx.tree_at(lambda m: (m.weight, m.bias), theirs, tuple(new))
    ours = eqx.tree_at(lambda m: (m.weight, m.bias), ours, tuple(new))
    x = rand((4, 6, 3, 3), loc=1.5, scale=2.0)
    close(J(jax.vmap(ours))(x), J(jax.vmap(theirs))(x), 1e-5, atol=1e-5)
    ct = rand(x.shape, 5)
    g_ours = J(jax.grad(lambda x: jnp.sum(jax.vmap(ours)(x) * ct)))(x)
    g_theirs = J(jax.grad(lambda x: jnp.sum(jax.vmap(theirs)(x) * ct)))(x)
    close(g_ours, g_theirs, 1e-4, atol=1e-4)


def test_dropout_matches_equinox_same_key_same_mask():
    x = rand((6, 5, 5), loc=2.0)
    for seed in range(3):
        k = jax.random.key(seed)
        y = J(je.Dropout(0.3))(x, key=k)
        np.testing.assert_array_equal(np.asarray(y), np.asarray(J(eqx.nn.Dropout(0.3))(x, key=k)))
        kept = np.asarray(y) != 0
        assert 0.4 < kept.mean() < 0.95
        close(np.asarray(y)[kept], f64(x)[kept] / 0.7)
    np.testing.assert_array_equal(np.asarray(je.Dropout(0.3, inference=True)(x)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(je.Dropout(0.3)(x, inference=True)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(je.Dropout(0.0)(x)), np.asarray(x))  # p = 0 needs no key


@pytest.mark.parametrize(
    "loc,scale,convention,momentum",
    [(3.0, 2.0, "flax", 0.9), (1e4, 1.0, "flax", 0.9), (3.0, 2.0, "pytorch", 0.1), (-2.0, 0.5, "flax", None)],
    ids=["flax", "mean1e4", "pytorch", "cumulative"],
)
def test_vmapped_batchnorm_matches_pure_batch_norm(loc, scale, convention, momentum):
    c = 4
    ours, st = eqx.nn.make_with_state(je.BatchNorm)(c, "batch", momentum=momentum, convention=convention)
    ours, g, b = with_affine(ours, c)
    stats = jn.init_batch_stats(c)
    run_mean, run_var = np.zeros(c), np.ones(c)  # float64 running statistics, each convention's formula
    for step in range(2):
        x = rand((6, c, 3, 3), seed=20 + step, loc=loc, scale=scale)
        y, st = batched(ours)(x, st)
        ref, stats = J(jn.batch_norm)(
            x, ours.weight, ours.bias, stats, train=True, axis=1, momentum=momentum, convention=convention
        )
        close(y, ref, 1e-5, atol=1e-5)
        # float64 two-pass from the same float32 inputs: at mean 1e4 a one-pass float32 variance would be noise
        close(y, bn_ref(x, g, b), 1e-4, atol=1e-4)
        for k in ("mean", "var"):
            close(st.get(ours.state_index)[k], stats[k], 1e-5)
        xf = f64(x)
        mu, var = xf.mean((0, 2, 3)), xf.var((0, 2, 3))
        n = xf.size // c
        if momentum is None:  # cumulative average: the k-th batch has weight 1/k
            w = 1.0 / (step + 1)
        else:
            w = momentum if convention == "pytorch" else 1.0 - momentum
        if convention == "pytorch":
            var = var * n / (n - 1)
        run_mean, run_var = (1 - w) * run_mean + w * mu, (1 - w) * run_var + w * var
        close(st.get(ours.state_index)["mean"], run_mean, 1e-5)
        close(st.get(ours.state_index)["var"], run_var, 1e-4)
    assert int(st.get(ours.state_index)["count"]) == 2


def test_batchnorm_mask_keeps_nan_padding_out():
    c = 3
    ours, st = eqx.nn.make_with_state(je.BatchNorm)(c, "batch", momentum=0.9)
    ours, g, b = with_affine(ours, c)
    x = rand((8, c, 2, 2), loc=3.0, scale=2.0)
    valid = np.array([True, False, True, True, False, True, False, True])
    x = x.at[~valid].set(jnp.nan)
    y, st = batched(lambda x, s, m: ours(x, s, mask=m), in_axes=(0, None, 0))(x, st, jnp.asarray(valid))
    close(np.asarray(y)[valid], bn_ref(np.asarray(x)[valid], g, b), 1e-4, atol=1e-4)
    stats = st.get(ours.state_index)
    ref_y, ref = J(jn.batch_norm)(
        x[valid], ours.weight, ours.bias, jn.init_batch_stats(c), train=True, axis=1, momentum=0.9
    )
    close(np.asarray(y)[valid], ref_y)
    for k in ("mean", "var"):
        assert np.all(np.isfinite(np.asarray(stats[k])))
        close(stats[k], ref[k])
    xv = f64(x)[valid]
    close(stats["mean"], 0.1 * xv.mean((0, 2, 3)), 1e-5)
    close(stats["var"], 0.9 + 0.1 * xv.var((0, 2, 3)), 1e-5)
    assert int(stats["count"]) == 1

    # gradients (finite padding): the valid inputs get the gradient of batch norm on the valid examples alone, the
    # masked ones exactly zero
    x = jnp.where(jnp.asarray(valid)[:, None, None, None], x, 100.0)
    ct = rand(x.shape, 5)

    def loss(x):
        y, _ = jax.vmap(
            lambda x, s, m: ours(x, s, mask=m), axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None)
        )(x, st, jnp.asarray(valid))
        return jnp.sum(jnp.where(jnp.asarray(valid)[:, None, None, None], y * ct, 0.0))

    gx = np.asarray(J(jax.grad(loss))(x))
    g_ref = J(
        jax.grad(
            lambda xv: jnp.sum(
                jn.batch_norm(xv, ours.weight, ours.bias, jn.init_batch_stats(c), train=True, axis=1)[0] * ct[valid]
            )
        )
    )(x[valid])
    close(gx[valid], g_ref, 1e-4, atol=1e-5)
    np.testing.assert_array_equal(gx[~valid], 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# 2. eqx.nn.inference_mode


class BNDrop(eqx.Module):
    bn: je.BatchNorm
    drop: je.Dropout

    def __init__(self, c):
        self.bn, self.drop = je.BatchNorm(c, momentum=0.9), je.Dropout(0.5)

    def __call__(self, x, state, key=None):
        x, state = self.bn(x, state)
        return self.drop(x, key=key), state


def test_inference_mode_switches_every_flag():
    c = 4
    model, st = eqx.nn.make_with_state(BNDrop)(c)
    x = rand((6, c, 3, 3), loc=2.0, scale=3.0)
    keys = jax.random.split(jax.random.key(0), 6)
    run = batched(model, in_axes=(0, None, 0))
    y, st = run(x, st, keys)  # training: batch statistics, half the units dropped
    assert 0.2 < float(jnp.mean(y == 0)) < 0.8
    stats = st.get(model.bn.state_index)
    assert int(stats["count"]) == 1

    inf = eqx.nn.inference_mode(model)
    assert inf.bn.inference is True and inf.drop.inference is True
    yi, st_i = batched(inf, in_axes=(0, None, 0))(x, st, keys)
    ref, _ = J(jn.batch_norm)(x, model.bn.weight, model.bn.bias, stats, train=False, axis=1)
    close(yi, ref)  # dropout is the identity, batch norm uses the stored statistics
    close(yi, bn_ref(x, model.bn.weight, model.bn.bias, mean=stats["mean"], var=stats["var"]), 1e-4, atol=1e-5)
    for k in ("mean", "var", "count"):
        np.testing.assert_array_equal(np.asarray(st_i.get(model.bn.state_index)[k]), np.asarray(stats[k]))

    back = eqx.nn.inference_mode(inf, False)
    assert back.bn.inference is False and back.drop.inference is False
    yb, st_b = batched(back, in_axes=(0, None, 0))(x, st, keys)
    close(yb, y)  # training again: the same keys give the same output
    assert int(st_b.get(model.bn.state_index)["count"]) == 2


# ---------------------------------------------------------------------------------------------------------------------
# 3. a tiny model trained with optax


class TinyNet(eqx.Module):
    conv: eqx.nn.Conv2d
    bn: je.BatchNorm
    drop: je.Dropout
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 8, 3, padding=1, key=k1)
        self.bn = je.BatchNorm(8, momentum=0.5)  # short memory: the averages track the conv as it trains
        self.drop = je.Dropout(0.1)
        self.head = eqx.nn.Linear(8, 2, key=k2)

    def __call__(self, x, state, key):
        x, state = self.bn(self.conv(x), state)
        x = self.drop(jax.nn.relu(x), key=key)
        return self.head(jnp.mean(x, axis=(1, 2))), state


def test_tiny_cnn_trains_with_optax_under_filter_jit():
    n = 32
    labels = jnp.arange(n) % 2
    # class 0: bright top half, class 1: bright bottom half, plus noise; a +5 offset so batch norm has work to do
    top = jnp.concatenate([jnp.ones((3, 6)), jnp.zeros((3, 6))])
    imgs = jnp.where(labels[:, None, None] == 0, top, top[::-1]) + 5.0
    imgs = (imgs + 0.3 * jax.random.normal(jax.random.key(1), imgs.shape))[:, None]
    model, state = eqx.nn.make_with_state(TinyNet)(jax.random.key(0))
    opt = optax.adam(5e-2)
    opt_state = opt.init(eqx.filter(model, eqx.is_array))

    def loss_fn(model, state, x, y, key):
        logits, state = jax.vmap(model, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))(
            x, state, jax.random.split(key, len(x))
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    @eqx.filter_jit
    def step(model, state, opt_state, x, y, key):
        (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model, state, x, y, key)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), state, opt_state, loss

    losses = []
    for key in jax.random.split(jax.random.key(2), 20):
        model, state, opt_state, loss = step(model, state, opt_state, imgs, labels, key)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses
    stats = state.get(model.bn.state_index)
    assert int(stats["count"]) == 20
    assert float(jnp.abs(stats["mean"]).max()) > 0.1  # moved from 0 towards the conv outputs' means
    assert float(jnp.abs(stats["var"] - 1.0).max()) > 0.01
    # the trained model at inference classifies the training set
    logits, _ = J(
        jax.vmap(eqx.nn.inference_mode(model), axis_name="batch", in_axes=(0, None, None), out_axes=(0, None))
    )(imgs, state, None)
    assert float(jnp.mean(jnp.argmax(logits, -1) == labels)) >= 0.9


# ---------------------------------------------------------------------------------------------------------------------
# 4. the other layers


def test_batch_renorm_with_r1_d0_is_batch_norm():
    c = 4
    rn, st_r = eqx.nn.make_with_state(je.BatchRenorm)(c, momentum=0.9, r_max=1.0, d_max=0.0)
    bn, st_b = eqx.nn.make_with_state(je.BatchNorm)(c, momentum=0.9)
    rn, _, _ = with_affine(rn, c)
    bn, _, _ = with_affine(bn, c)
    for step in range(2):
        x = rand((6, c, 3, 3), seed=30 + step, loc=2.0, scale=3.0)
        yr, st_r = batched(rn)(x, st_r)
        yb, st_b = batched(bn)(x, st_b)
        close(yr, yb, 1e-5, atol=1e-5)
        for k in ("mean", "var"):
            close(st_r.get(rn.state_index)[k], st_b.get(bn.state_index)[k])
    assert int(st_r.get(rn.state_index)["count"]) == 2


def test_batch_renorm_matches_pure():
    c = 4
    rn, st = eqx.nn.make_with_state(je.BatchRenorm)(c, momentum=0.9)  # r_max 3, d_max 5
    rn, _, _ = with_affine(rn, c)
    stats = jn.init_batch_stats(c)
    for step in range(2):  # the second step has r, d away from 1, 0 (running stats from step one, mean 2 std 3)
        x = rand((6, c, 3, 3), seed=30 + step, loc=2.0, scale=3.0)
        y, st = batched(rn)(x, st)
        ref, stats = J(jn.batch_renorm)(x, rn.weight, rn.bias, stats, train=True, momentum=0.9, axis=1)
        close(y, ref, 1e-5, atol=1e-5)
        for k in ("mean", "var"):
            close(st.get(rn.state_index)[k], stats[k])
    plain = J(jn.batch_norm)(x, rn.weight, rn.bias, stats, train=True, axis=1)[0]
    assert float(jnp.abs(y - plain).max()) > 0.05  # renormalization changed the output


@pytest.mark.parametrize("p", [2, 1, "inf"])
def test_lp_batch_norm_matches_pure(p):
    c = 4
    ours, st = eqx.nn.make_with_state(je.LpBatchNorm)(c, momentum=0.9, p=p)
    ours, g, b = with_affine(ours, c)
    stats = jn.init_batch_stats(c)
    for step in range(2):
        x = rand((6, c, 3, 3), seed=40 + step, loc=1.0, scale=2.0)
        y, st = batched(ours)(x, st)
        ref, stats = J(jn.lp_batch_norm)(x, ours.weight, ours.bias, stats, train=True, p=p, momentum=0.9, axis=1)
        close(y, ref, 1e-5, atol=1e-5)
        for k in ("mean", "var"):
            close(st.get(ours.state_index)[k], stats[k])
    if p == 2:  # s² = mean(x²) per channel, float64
        xf = f64(x)
        s2 = (xf**2).mean((0, 2, 3))
        mu = xf.mean((0, 2, 3))
        close(y, bn_ref(x, g, b, mean=mu, var=s2), 1e-4, atol=1e-4)
    yi, st_i = batched(eqx.nn.inference_mode(ours))(x, st)
    close(yi, J(jn.batch_norm)(x, ours.weight, ours.bias, stats, train=False, axis=1)[0])
    for k in ("mean", "var", "count"):  # inference does not move the state
        np.testing.assert_array_equal(
            np.asarray(st_i.get(ours.state_index)[k]), np.asarray(st.get(ours.state_index)[k])
        )


def test_noisy_batch_norm_matches_pure_on_the_whole_batch():
    c = 4
    ours, st = eqx.nn.make_with_state(je.NoisyBatchNorm)(c, momentum=0.9)
    ours, _, _ = with_affine(ours, c)
    x = rand((6, c, 3, 3), loc=1.0, scale=2.0)
    key = jax.random.key(7)
    y, st = batched(functools.partial(ours, key=key))(x, st)  # one shared key (vmap would map a keyword argument)
    ref, stats = J(jn.noisy_batch_norm)(
        x, ours.weight, ours.bias, jn.init_batch_stats(c), train=True, key=key, axis=1, momentum=0.9
    )
    close(y, ref, 1e-5, atol=1e-5)
    for k in ("mean", "var"):
        close(st.get(ours.state_index)[k], stats[k])
    plain, _ = J(jn.batch_norm)(x, ours.weight, ours.bias, stats, train=True, axis=1, momentum=0.9)
    assert float(jnp.abs(y - plain).max()) > 0.05  # there is noise
    yi, st_i = batched(eqx.nn.inference_mode(ours))(x, st)  # no noise, no key needed, the state does not move
    close(yi, J(jn.batch_norm)(x, ours.weight, ours.bias, st.get(ours.state_index), train=False, axis=1)[0])
    for k in ("mean", "var", "count"):
        np.testing.assert_array_equal(
            np.asarray(st_i.get(ours.state_index)[k]), np.asarray(st.get(ours.state_index)[k])
        )


def test_instance_norm_and_dyt_match_pure():
    c = 4
    x = rand((3, c, 4, 4), loc=2.0, scale=3.0)
    inorm, g, b = with_affine(je.InstanceNorm(c), c)
    close(J(jax.vmap(inorm))(x), J(jn.instance_norm)(x, inorm.weight, inorm.bias, axis=1))
    xf = f64(x)
    mu, var = xf.mean((2, 3), keepdims=True), xf.var((2, 3), keepdims=True)
    close(J(jax.vmap(inorm))(x), (xf - mu) / np.sqrt(var + 1e-5) * g[:, None, None] + b[:, None, None], 1e-4, atol=1e-5)

    shape = (c, 4, 4)
    dyt = je.DyT(shape)
    w, bb = rand(shape, 1, 1.0, 0.3), rand(shape, 2, 0.0, 0.3)
    dyt = eqx.tree_at(lambda m: (m.alpha, m.weight, m.bias), dyt, (jnp.float32(0.7), w, bb))
    close(J(jax.vmap(dyt))(x), J(jn.dyt)(x, 0.7, w, bb))
    close(J(jax.vmap(dyt))(x), f64(w) * np.tanh(0.7 * xf) + f64(bb), 1e-5, atol=1e-6)
    assert float(je.DyT(3).alpha) == 0.5


def test_standardized_conv_equals_conv_with_standardized_kernel():
    key = jax.random.key(3)
    sc = je.StandardizedConv(2, 3, 5, 3, padding=1, key=key)
    raw = eqx.nn.Conv(2, 3, 5, 3, padding=1, key=key)
    np.testing.assert_array_equal(np.asarray(sc.conv.weight), np.asarray(raw.weight))
    w = f64(raw.weight)  # out × in × kh × kw: standardize each output channel over the other axes
    mu, var = w.mean((1, 2, 3), keepdims=True), w.var((1, 2, 3), keepdims=True)
    ws = (w - mu) / np.sqrt(var + 1e-5)
    x = rand((3, 6, 6), loc=1.0)
    ref = J(eqx.tree_at(lambda c: c.weight, raw, jnp.asarray(ws, jnp.float32)))(x)
    y = J(sc)(x)
    close(y, ref, 1e-5, atol=1e-5)
    assert float(jnp.abs(y - J(raw)(x)).max()) > 0.1
    np.testing.assert_array_equal(np.asarray(sc.conv.weight), np.asarray(raw.weight))  # the call stores nothing


def test_weight_norm_init_gain_and_gradients():
    lin = eqx.nn.Linear(5, 4, key=jax.random.key(0))
    wn = je.WeightNorm(lin)
    x = rand((5,), 1)
    close(wn(x), lin(x), 1e-6, atol=1e-6)  # g starts at ‖v‖ per output row
    v = f64(lin.weight)
    close(wn.g, np.linalg.norm(v, axis=1))

    g = jnp.array([0.5, 2.0, -1.0, 3.0])
    wn = eqx.tree_at(lambda m: m.g, wn, g)
    w_eff = f64(g)[:, None] * v / np.linalg.norm(v, axis=1, keepdims=True)
    close(np.linalg.norm(w_eff, axis=1), np.abs(f64(g)))
    close(wn(x), w_eff @ f64(x) + f64(lin.bias), 1e-5, atol=1e-6)

    ct = rand((4,), 2)
    grads = J(eqx.filter_grad(lambda m: jnp.sum(m(x) * ct)))(wn)

    def formula(v, g):
        w = g[:, None] * v / jnp.sqrt(jnp.sum(v * v, axis=1, keepdims=True) + 1e-12)
        return jnp.sum((w @ x + lin.bias) * ct)

    gv, gg = J(jax.grad(formula, (0, 1)))(lin.weight, g)
    assert np.all(np.isfinite(np.asarray(grads.layer.weight)))
    close(grads.layer.weight, gv, 1e-5, atol=1e-6)
    close(grads.g, gg, 1e-5, atol=1e-6)
    close(grads.layer.bias, ct)
    # the direction's gradient is orthogonal to v per row (the norm is factored out)
    close(np.sum(f64(grads.layer.weight) * v, axis=1), np.zeros(4), atol=1e-5)

    whole = je.WeightNorm(lin, axis=None)  # one norm of the whole array
    assert whole.g.shape == ()
    close(whole.g, np.linalg.norm(v))
    close(whole(x), lin(x), 1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_spectral_norm_sigma_converges_and_inference_is_frozen(kind):
    key = jax.random.key(4)
    layer = eqx.nn.Linear(6, 4, key=key) if kind == "linear" else eqx.nn.Conv2d(2, 3, 2, key=key)
    x = rand((6,) if kind == "linear" else (2, 4, 4), 1)
    sn, st = eqx.nn.make_with_state(je.SpectralNorm)(layer, key=jax.random.key(5))
    call = eqx.filter_jit(lambda m, x, s: m(x, s))
    for _ in range(30):
        y, st = call(sn, x, st)
    w = f64(layer.weight)
    top = np.linalg.svd(w.reshape(w.shape[0], -1), compute_uv=False)[0]
    stored = st.get(sn.state_index)
    close(stored["sigma"], top, 1e-4)
    ref = eqx.tree_at(lambda m: m.weight, layer, layer.weight / stored["sigma"])(x)
    close(y, ref, 1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(sn.layer.weight), np.asarray(layer.weight))
    yi, st_i = J(eqx.nn.inference_mode(sn))(x, st)
    close(yi, ref, 1e-4, atol=1e-5)
    for k in ("u", "sigma"):
        np.testing.assert_array_equal(np.asarray(st_i.get(sn.state_index)[k]), np.asarray(stored[k]))


def test_spatial_dropout_zeroes_whole_channels():
    x = rand((8, 4, 4), loc=2.0) + 0.1
    k = jax.random.key(1)
    y = np.asarray(J(je.SpatialDropout(0.5))(x, key=k))
    dropped = np.all(y == 0, axis=(1, 2))
    kept = np.all(y != 0, axis=(1, 2))
    assert np.all(dropped | kept) and dropped.any() and kept.any()
    close(y[kept], f64(x)[kept] / 0.5)
    ref = J(jn.spatial_dropout)(jnp.moveaxis(x, 0, -1)[None], 0.5, key=k)[0]
    close(y, jnp.moveaxis(ref, -1, 0))
    np.testing.assert_array_equal(np.asarray(je.SpatialDropout(0.5)(x, inference=True)), np.asarray(x))


@pytest.mark.parametrize(
    "layer,fn",
    [
        (je.GaussianDropout, jn.gaussian_dropout),
        (je.AlphaDropout, jn.alpha_dropout),
        (je.OriginalDropout, jn.original_dropout),
        (je.Dropout, jn.dropout),
    ],
    ids=["gaussian", "alpha", "original", "inverted"],
)
def test_dropout_variants_match_pure(layer, fn):
    x = rand((6, 5), loc=0.5)
    k = jax.random.key(9)
    y = J(layer(0.3))(x, key=k)
    close(y, J(fn)(x, 0.3, key=k, train=True), 1e-6, atol=1e-6)
    assert float(jnp.abs(y - x).max()) > 0.05
    close(layer(0.3, inference=True)(x), fn(x, 0.3, train=False), 1e-6, atol=1e-6)
    close(eqx.nn.inference_mode(layer(0.3))(x), fn(x, 0.3, train=False), 1e-6, atol=1e-6)
    if layer is je.OriginalDropout:  # (1 − p)·x at inference
        close(layer(0.3)(x, inference=True), 0.7 * f64(x), 1e-6)


def test_dropconnect_linear():
    dc = je.DropConnectLinear(5, 3, p=0.4, key=jax.random.key(0))
    x = rand((5,), 1)
    w, b = f64(dc.linear.weight), f64(dc.linear.bias)
    close(dc(x, inference=True), w @ f64(x) + b, 1e-5, atol=1e-6)
    close(eqx.nn.inference_mode(dc)(x), w @ f64(x) + b, 1e-5, atol=1e-6)
    k = jax.random.key(2)
    wd = f64(jn.dropconnect(dc.linear.weight, 0.4, key=k))
    assert 0 < np.mean(wd == 0) < 1
    close(J(dc)(x, key=k), wd @ f64(x) + b, 1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# 5. stateless layers take (x, state); eqx.nn.Sequential


@pytest.mark.parametrize(
    "layer",
    [je.LayerNorm((4, 3)), je.RMSNorm((4, 3)), je.GroupNorm(2, 4), je.InstanceNorm(4), je.DyT((4, 3))],
    ids=["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm", "DyT"],
)
def test_stateless_layers_pass_the_state_through(layer):
    state = eqx.nn.State(je.BatchNorm(4))
    x = rand((4, 3), loc=1.0, scale=2.0)
    y, same = layer(x, state)
    close(y, layer(x), 0, atol=0)
    assert same is state


def test_sequential_of_stateless_layers():
    seq = eqx.nn.Sequential([je.LayerNorm((4, 3)), eqx.nn.Lambda(jax.nn.relu), je.Dropout(0.5), je.RMSNorm((4, 3))])
    x = rand((4, 3), loc=1.0, scale=2.0)
    k = jax.random.key(0)
    y = J(seq)(x, key=k)
    k_drop = jax.random.split(k, 4)[2]  # Sequential splits the key over its layers
    h = je.Dropout(0.5)(jax.nn.relu(jn.layer_norm(x[None])[0]), key=k_drop)
    close(y, jn.rms_norm(h[None])[0], 1e-5, atol=1e-5)
    close(eqx.nn.inference_mode(seq)(x), jn.rms_norm(jax.nn.relu(jn.layer_norm(x[None])))[0], 1e-5, atol=1e-5)


def test_sequential_with_batchnorm_and_stateless_layers():
    c = 4
    seq, st = eqx.nn.make_with_state(eqx.nn.Sequential)(
        [je.BatchNorm(c, momentum=0.9), eqx.nn.Lambda(jax.nn.relu), je.LayerNorm((c, 3))]
    )
    x = rand((6, c, 3), loc=2.0, scale=3.0)
    y, st = batched(seq)(x, st)
    h, stats = J(jn.batch_norm)(x, None, None, jn.init_batch_stats(c), train=True, axis=1, momentum=0.9)
    close(y, J(jn.layer_norm)(jax.nn.relu(h)), 1e-5, atol=1e-5)
    bn_stats = st.get(seq.layers[0].state_index)
    close(bn_stats["mean"], stats["mean"])
    assert int(bn_stats["count"]) == 1


# ---------------------------------------------------------------------------------------------------------------------
# 6. errors


def test_batchnorm_outside_vmap_names_the_vmap_call():
    bn, st = eqx.nn.make_with_state(je.BatchNorm)(3)
    with pytest.raises(NameError, match=r"jax\.vmap"):
        bn(jnp.ones((3, 2)), st)
    y, _ = bn(jnp.ones((3, 2)), st, inference=True)  # inference needs no batch axis
    close(y, jnp.ones((3, 2)) / np.sqrt(1 + 1e-5))


def test_batchnorm_wrong_channel_count():
    bn, st = eqx.nn.make_with_state(je.BatchNorm)(6)
    with pytest.raises(ValueError, match=r"input_size=6.*\(5, 3\)"):
        batched(bn)(jnp.ones((4, 5, 3)), st)


def _noisy_training_without_key():
    nbn, st = eqx.nn.make_with_state(je.NoisyBatchNorm)(2)
    return batched(nbn)(jnp.ones((3, 2)), st)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: je.GroupNorm(4, 6), "GroupNorm"),
        (lambda: je.Dropout(1.5), r"\[0, 1\]"),
        (lambda: je.Dropout(0.5)(jnp.ones((3,))), "key"),
        (lambda: _noisy_training_without_key(), "key"),
    ],
    ids=["groups", "rate", "dropout_key", "noisy_key"],
)
def test_construction_and_call_errors(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_import_without_equinox_names_the_extra():
    code = (
        "import sys; sys.modules['equinox'] = None\n"
        "try:\n    import jaxnorm.eqx\nexcept ImportError as e:\n    print('MSG', e)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert r.returncode == 0, r.stderr
    assert "MSG" in r.stdout and "jaxnorm[equinox]" in r.stdout, r.stdout + r.stderr


def test_bad_inference_value_names_inference_not_train():
    bn, st = eqx.nn.make_with_state(je.BatchNorm)(3)
    with pytest.raises(TypeError) as e:
        jax.vmap(lambda x, s: bn(x, s, inference="yes"), axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
            jnp.ones((4, 3)), st
        )
    assert "inference must be a Python bool" in str(e.value) and "got 'yes'" in str(e.value), str(e.value)
    assert "pass inference=True or inference=False" in str(e.value) and "train=" not in str(e.value)
    with pytest.raises(TypeError, match=r"Dropout: inference must be a Python bool .*got 'no'"):
        je.Dropout(0.5, inference="no")(jnp.ones(3), key=jax.random.key(0))
    sn, st = eqx.nn.make_with_state(je.SpectralNorm)(eqx.nn.Linear(3, 2, key=jax.random.key(0)), key=jax.random.key(1))
    with pytest.raises(TypeError, match=r"SpectralNorm: inference must be a Python bool .*got 1 \(int\)"):
        sn(jnp.ones(3), st, inference=1)


def test_noisy_batch_norm_constants_reach_the_noise():
    """n_μ = r_μ = r_σ = 0 and n_σ = 1 draw s = 1, m = 0: training is BatchNorm exactly (a constant ignored brings
    the paper's noise back); other constants equal the pure function with the same constants and key."""
    c = 3
    x = rand((6, c, 3, 3), loc=1.0, scale=2.0)
    key = jax.random.key(7)
    quiet, st = eqx.nn.make_with_state(je.NoisyBatchNorm)(c, n_mu=0.0, n_sigma=1.0, r_mu=0.0, r_sigma=0.0)
    quiet, _, _ = with_affine(quiet, c)
    plain, st_plain = eqx.nn.make_with_state(je.BatchNorm)(c)
    plain, _, _ = with_affine(plain, c)
    y, _ = batched(functools.partial(quiet, key=key))(x, st)
    y_plain, _ = batched(plain)(x, st_plain)
    # 1-ulp differences (2.4e-7 measured) between the two compiled programs; the smallest noise would be ~1e-2
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_plain), rtol=1e-6, atol=1e-6)
    consts = dict(n_mu=2.0, n_sigma=3.0, r_mu=0.4, r_sigma=0.3)
    ours, st = eqx.nn.make_with_state(je.NoisyBatchNorm)(c, **consts)
    ours, _, _ = with_affine(ours, c)
    y, _ = batched(functools.partial(ours, key=key))(x, st)
    ref, _ = J(jn.noisy_batch_norm)(
        x, ours.weight, ours.bias, jn.init_batch_stats(c), train=True, key=key, axis=1, **consts
    )
    close(y, ref, 1e-5, atol=1e-5)


def test_kernel_layers_pass_eps_and_power_iterations_on():
    """Non-default options against the pure functions, each at a value that changes the result: StandardizedConv
    eps = 0.3 (the kernel variance is about 0.01), WeightNorm eps = 5 (‖v‖² ≈ 0.3), SpectralNorm 5 power
    iterations, and eps = 5."""
    key = jax.random.key(3)
    sc = je.StandardizedConv(2, 3, 5, 3, padding=1, eps=0.3, key=key)
    w = f64(sc.conv.weight)
    mu, var = w.mean((1, 2, 3), keepdims=True), w.var((1, 2, 3), keepdims=True)
    x = rand((3, 6, 6), loc=1.0)
    for eps in (0.3, 1e-5):
        ws = jnp.asarray((w - mu) / np.sqrt(var + eps), jnp.float32)
        ref = J(eqx.tree_at(lambda c: c.weight, sc.conv, ws))(x)
        if eps == 0.3:
            close(J(sc)(x), ref, 1e-5, atol=1e-5)
        else:
            assert float(jnp.abs(J(sc)(x) - ref).max()) > 0.1
    lin = eqx.nn.Linear(5, 4, key=jax.random.key(0))
    xl = rand((5,), 1)
    wn = je.WeightNorm(lin, eps=5.0)
    v = f64(lin.weight)
    w_eff = f64(wn.g)[:, None] * v / np.sqrt((v**2).sum(1, keepdims=True) + 5.0)
    close(wn(xl), w_eff @ f64(xl) + f64(lin.bias), 1e-5, atol=1e-6)
    assert float(jnp.abs(wn(xl) - lin(xl)).max()) > 1e-2  # the default ε gives back lin at initialization
    layer = eqx.nn.Linear(6, 4, key=jax.random.key(4))
    for opts, pure in (
        (dict(num_power_iterations=5), dict(n_power_iterations=5)),
        (dict(eps=5.0), dict(epsilon=5.0)),
    ):
        sn, st = eqx.nn.make_with_state(je.SpectralNorm)(layer, key=jax.random.key(5), **opts)
        u0 = st.get(sn.state_index)["u"]
        _, st1 = J(sn)(rand((6,), 1), st)
        want = jn.spectral_normalize(layer.weight.T, u0, train=True, **pure)[2]
        close(st1.get(sn.state_index)["sigma"], want, 1e-6, atol=1e-7)
        default = jn.spectral_normalize(layer.weight.T, u0, train=True)[2]
        assert abs(float(want) - float(default)) > 1e-4 * float(default), opts
