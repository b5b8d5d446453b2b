"""The probes on Flax NNX and Equinox models: the loss-function helpers against the linen helper and by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen, nnx

import jaxnorm as jn
import jaxnorm.probes as jp

C_IN, HIDDEN, CLASSES, N = 5, 8, 3, 16


class LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x, train: bool = True):
        h = linen.Dense(HIDDEN)(x)
        h = jn.nn.BatchNorm(momentum=0.9)(h, train)
        h = jn.nn.Dropout(0.5)(jax.nn.relu(h), train)
        return linen.Dense(CLASSES)(h)


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.lin1 = nnx.Linear(C_IN, HIDDEN, rngs=rngs)
        self.bn = jn.nnx.BatchNorm(HIDDEN, momentum=0.9, rngs=rngs)
        self.drop = jn.nnx.Dropout(0.5, rngs=rngs)
        self.lin2 = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, x):
        return self.lin2(self.drop(jax.nn.relu(self.bn(self.lin1(x)))))


class EqxNet(eqx.Module):
    lin1: eqx.nn.Linear
    bn: jn.eqx.BatchNorm
    drop: jn.eqx.Dropout
    lin2: eqx.nn.Linear

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.lin1 = eqx.nn.Linear(C_IN, HIDDEN, key=k1)
        self.bn = jn.eqx.BatchNorm(HIDDEN, "batch", momentum=0.9)
        self.drop = jn.eqx.Dropout(0.5)
        self.lin2 = eqx.nn.Linear(HIDDEN, CLASSES, key=k2)

    def __call__(self, x, state, *, key=None):
        h, state = self.bn(self.lin1(x), state)
        return self.lin2(self.drop(jax.nn.relu(h), key=key)), state


@pytest.fixture(scope="module")
def batch():
    kx, ky = jax.random.split(jax.random.key(0))
    return {"x": 2.0 * jax.random.normal(kx, (N, C_IN)) + 1.0, "y": jax.random.randint(ky, (N,), 0, CLASSES)}


def _nnx_params_as_linen(model):
    return {
        "Dense_0": {"kernel": model.lin1.kernel[...], "bias": model.lin1.bias[...]},
        "BatchNorm_0": {"scale": model.bn.scale[...], "bias": model.bn.bias[...]},
        "Dense_1": {"kernel": model.lin2.kernel[...], "bias": model.lin2.bias[...]},
    }


def _stats(model):
    return {"BatchNorm_0": {"mean": model.bn.mean[...], "var": model.bn.var[...], "count": model.bn.count[...]}}


def test_nnx_loss_fn_equals_the_linen_loss_of_the_same_network_in_eval(batch):
    model = NnxNet(nnx.Rngs(0))
    model.bn.mean[...] = jnp.linspace(-1, 1, HIDDEN)
    model.bn.var[...] = jnp.linspace(0.5, 2, HIDDEN)
    loss_fn, params = jp.nnx_loss_fn(model, train=False)
    ref = jp.model_loss_fn(LinenNet(), _stats(model), train=False)
    np.testing.assert_allclose(loss_fn(params, batch), ref(_nnx_params_as_linen(model), batch), rtol=1e-6)
    # the gradient the probes take, too
    g = jax.grad(loss_fn)(params, batch)
    g_ref = jax.grad(ref)(_nnx_params_as_linen(model), batch)
    np.testing.assert_allclose(g["lin1"]["kernel"][...], g_ref["Dense_0"]["kernel"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g["bn"]["scale"][...], g_ref["BatchNorm_0"]["scale"], rtol=1e-5, atol=1e-7)


def _snapshot(model):
    def arr(v):
        return np.asarray(jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v)

    return jax.tree.map(arr, nnx.state(model).to_pure_dict())


def test_nnx_loss_fn_in_train_mode_uses_batch_statistics_fixed_masks_and_leaves_the_model_alone(batch):
    model = NnxNet(nnx.Rngs(0))
    before = _snapshot(model)
    loss_fn, params = jp.nnx_loss_fn(model)
    a, b = loss_fn(params, batch), loss_fn(params, batch)
    assert float(a) == float(b)  # the same dropout masks at every evaluation
    # by hand: batch statistics of the first layer's output, the masks the layer's stream draws next
    h = batch["x"] @ model.lin1.kernel[...] + model.lin1.bias[...]
    h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-5) * model.bn.scale[...] + model.bn.bias[...]
    key = nnx.clone(model).drop.rngs()
    h = jn.dropout(jax.nn.relu(h), 0.5, key=key)
    logits = h @ model.lin2.kernel[...] + model.lin2.bias[...]
    ref = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))
    np.testing.assert_allclose(a, ref, rtol=1e-5)
    after = _snapshot(model)
    jax.tree.map(np.testing.assert_array_equal, before, after)  # running statistics and rng counts untouched


def test_probes_run_on_an_nnx_model_and_match_dense_curvature(batch):
    model = NnxNet(nnx.Rngs(1))
    loss_fn, params = jp.nnx_loss_fn(model, train=False)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    dense = jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat)
    top = np.linalg.eigvalsh(np.asarray(dense, np.float64))[-1]
    vals, _ = jp.hessian_top_eigenvalues(loss_fn, params, batch, k=1, key=jax.random.key(0), num_iters=200)
    np.testing.assert_allclose(vals[0], top, rtol=2e-3)
    s = jp.santurkar_probe(loss_fn, params, batch, lr=0.1)
    assert np.all(np.isfinite(np.asarray(s["losses"])))
    np.testing.assert_allclose(s["losses"].min(), s["loss_min"], rtol=1e-6)


def _eqx_model():
    return eqx.nn.make_with_state(EqxNet)(jax.random.key(2))


def test_eqx_loss_fn_equals_a_by_hand_vmapped_loss(batch):
    model, state = _eqx_model()
    key = jax.random.key(5)
    loss_fn, params = jp.eqx_loss_fn(model, state, key)
    keys = jax.random.split(key, N)
    call = jax.vmap(lambda x, s, k: model(x, s, key=k), axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))
    logits, _ = call(batch["x"], state, keys)
    ref = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], 1))
    np.testing.assert_allclose(loss_fn(params, batch), ref, rtol=1e-6)
    assert float(loss_fn(params, batch)) == float(loss_fn(params, batch))  # fixed masks


def test_eqx_loss_fn_in_inference_mode_matches_the_linen_eval_loss(batch):
    model, state = _eqx_model()
    loss_fn, params = jp.eqx_loss_fn(model, state, train=False)
    st = state.get(model.bn.state_index)
    linen_params = {
        "Dense_0": {"kernel": model.lin1.weight.T, "bias": model.lin1.bias},
        "BatchNorm_0": {"scale": model.bn.weight, "bias": model.bn.bias},
        "Dense_1": {"kernel": model.lin2.weight.T, "bias": model.lin2.bias},
    }
    ref = jp.model_loss_fn(LinenNet(), {"BatchNorm_0": st}, train=False)
    np.testing.assert_allclose(loss_fn(params, batch), ref(linen_params, batch), rtol=1e-6)
    tr = jp.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=400)["trace"]
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    exact = np.trace(np.asarray(jax.jit(jax.hessian(lambda f: loss_fn(unravel(f), batch)))(flat), np.float64))
    np.testing.assert_allclose(tr, exact, rtol=0.25)  # Hutchinson with 400 probes


def test_the_helpers_refuse_an_unknown_loss_and_a_bad_batch(batch):
    model = NnxNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match="loss must be one of"):
        jp.nnx_loss_fn(model, loss="hinge")
    loss_fn, params = jp.nnx_loss_fn(model)
    with pytest.raises(ValueError, match="nnx_loss_fn: the batch needs keys 'x' and 'y'"):
        loss_fn(params, {"x": batch["x"]})
    m, state = _eqx_model()
    loss_fn, params = jp.eqx_loss_fn(m, state)
    with pytest.raises(ValueError, match="eqx_loss_fn: the batch"):
        loss_fn(params, [batch["x"]])
