"""A researcher's script on the core install (``pip install jaxnorm``, no extras): run by tests/test_install.py in a
fresh venv with jax, flax and optax at the floors pyproject declares. Prints one JSON line of what it checked."""

import json
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxnorm as jn
import jaxnorm.probes as jp
from jaxnorm import stats

x = jax.random.normal(jax.random.key(0), (64, 8, 8, 6)) * 1e-2 + 1e4  # a large mean and a tiny spread
x64 = np.asarray(x, np.float64)
scale, bias = jnp.full(6, 2.0), jnp.full(6, 0.5)

# pure batch norm at a large mean against a float64 two-pass reference
y, st = jn.batch_norm(x, scale, bias, jn.init_batch_stats(6), train=True)
mu = x64.mean((0, 1, 2))
ref = 2.0 * (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean((0, 1, 2)) + 1e-5) + 0.5
assert np.abs(np.asarray(y) - ref).max() < 2e-2, np.abs(np.asarray(y) - ref).max()
y_eval, _ = jn.batch_norm(x, scale, bias, st, train=False)
assert np.all(np.isfinite(np.asarray(y_eval)))

# group norm against the reference with groups of 2 channels
g = jn.group_norm(x, scale, bias, num_groups=3)
xg = x64.reshape(64, 8, 8, 3, 2)
mg = xg.mean((1, 2, 4), keepdims=True)
ref_g = ((xg - mg) / np.sqrt(((xg - mg) ** 2).mean((1, 2, 4), keepdims=True) + 1e-5)).reshape(x.shape) * 2.0 + 0.5
assert np.abs(np.asarray(g) - ref_g).max() < 2e-2

# inverted dropout: zeros at about the rate, kept units scaled by 1/(1 - rate), identity in eval
d = jn.dropout(jnp.ones((1000,)), 0.25, key=jax.random.key(1), train=True)
kept = np.asarray(d) != 0
assert 0.70 < kept.mean() < 0.80 and np.allclose(np.asarray(d)[kept], 1 / 0.75)
assert np.array_equal(np.asarray(jn.dropout(x, 0.25, train=False)), np.asarray(x))


class Net(nn.Module):  # a linen model with jaxnorm's BatchNorm and Dropout
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(16)(x)
        x = jn.nn.BatchNorm()(x, train)
        x = jn.nn.Dropout(0.5)(nn.relu(x), train)
        return nn.Dense(3)(x)


inputs = jax.random.normal(jax.random.key(2), (32, 5))
labels = jnp.arange(32) % 3
net = Net()
variables = net.init({"params": jax.random.key(3), "dropout": jax.random.key(4)}, inputs, train=False)
tx = optax.sgd(0.1)
opt_state = tx.init(variables["params"])


@jax.jit
def step(params, batch_stats, opt_state, key):
    def loss_fn(p):
        logits, upd = net.apply(
            {"params": p, "batch_stats": batch_stats},
            inputs,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), upd

    (loss, upd), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), upd["batch_stats"], opt_state, loss


params, batch_stats = variables["params"], variables["batch_stats"]
for t in range(3):
    params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jax.random.key(10 + t))
assert np.isfinite(float(loss))
assert not np.allclose(np.asarray(jax.tree.leaves(batch_stats)[0]), 0.0)  # running statistics moved


class NNXNet(nnx.Module):  # an NNX model with jaxnorm's BatchNorm
    def __init__(self, rngs):
        self.lin = nnx.Linear(5, 8, rngs=rngs)
        self.bn = jn.nnx.BatchNorm(8, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.lin(x))


m = NNXNet(nnx.Rngs(0))
out = m(inputs)
assert out.shape == (32, 8) and abs(float(out.mean())) < 1e-4
m.eval()
assert np.all(np.isfinite(np.asarray(m(inputs))))

# the Hessian-vector product of a quadratic: H = A
A = jnp.array([[3.0, 1.0], [1.0, 2.0]])
w = {"w": jnp.array([0.5, -1.0])}
hv = jp.hvp(lambda p, b: 0.5 * p["w"] @ A @ p["w"], w, None, {"w": jnp.array([1.0, 0.0])})
assert np.allclose(np.asarray(hv["w"]), [3.0, 1.0], atol=1e-5)

iv = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
assert iv.low < 2.5 < iv.high

# the extras say what to install
for name, extra in (("jaxnorm.lab", "[train]"), ("jaxnorm.lab.train", "[train]"), ("jaxnorm.eqx", "[equinox]")):
    try:
        __import__(name)
    except ImportError as e:
        assert extra in str(e), (name, str(e))
    else:
        raise AssertionError(f"{name} imported on the core install")

assert not [m for m in sys.modules if m.startswith("jaxnorm.lab")]
print(json.dumps({"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "ok": True}))
