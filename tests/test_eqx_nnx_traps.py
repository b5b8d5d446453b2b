"""Regression tests of traps a review found in the Equinox and NNX layers: integer input silently accepted by the
Equinox layer and RMS norms, error messages that gave advice which fails when followed (NoisyBatchNorm's key) or
spoke the pure functions' ``train=`` instead of the family's ``inference`` / ``deterministic``, GaussianDropout's
rate 1 accepted at construction, WeightNorm dropping the call's key, DropConnectLinear's dtype rules against
``flax.nnx.Linear``, and the docstrings the API reference needs. Error messages are checked by their content, and
each piece of advice is followed literally. Tiny shapes: seconds on CPU."""

import functools
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.eqx as je
import jaxnorm.nnx as jnn

pytestmark = pytest.mark.usefixtures("highest_precision")

KEY = jax.random.key(0)


# ---------------------------------------------------------------------------------------------------------------------
# 1. the Equinox LayerNorm and RMSNorm refuse integer input, as every other layer does


@pytest.mark.parametrize("cls", [je.LayerNorm, je.RMSNorm], ids=["LayerNorm", "RMSNorm"])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_], ids=["int32", "bool"])
def test_eqx_layer_and_rms_norm_refuse_non_float_input(cls, dtype):
    name = cls.__name__
    x = jnp.array([1, 2, 3]).astype(dtype)
    with pytest.raises(TypeError) as e:
        cls(3)(x)
    msg = str(e.value)
    assert msg.startswith(f"{name}: the input has dtype {jnp.dtype(dtype)}, which is not a float dtype"), msg
    assert "x.astype(jnp.float32)" in msg, msg
    with pytest.raises(TypeError, match=f"^{name}: the input has dtype"):  # the state-threading call too
        cls(3)(x, "state")
    with pytest.raises(TypeError, match=f"^{name}: the input has dtype"):  # and under vmap
        jax.vmap(cls(3))(jnp.stack([x, x]))
    for dt in (jnp.float32, jnp.bfloat16, jnp.float16):  # float inputs still run, in their dtype
        y = cls(3)(jnp.array([1.0, 2.0, 3.0], dt))
        assert y.dtype == dt and bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    assert "TypeError" in cls.__call__.__doc__  # the Raises: section says so


# ---------------------------------------------------------------------------------------------------------------------
# 2. NoisyBatchNorm's missing-key advice works when followed literally


def test_eqx_noisy_batch_norm_missing_key_advice_runs_as_written():
    model, state = eqx.nn.make_with_state(je.NoisyBatchNorm)(3)
    x = jax.random.normal(KEY, (4, 3))
    key = jax.random.key(1)
    with pytest.raises(ValueError) as e:
        jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
    msg = str(e.value)
    assert msg.startswith("NoisyBatchNorm: training (inference=False) needs key="), msg
    assert "inference=True" in msg and "train=" not in msg, msg
    found = re.search(r"jax\.vmap\(functools\.partial\(model, key=key\), .*?\)\(x, state\)", msg)
    assert found, msg
    y, new_state = eval(
        found.group(0), {"jax": jax, "functools": functools}, {"model": model, "key": key, "x": x, "state": state}
    )
    # the advice binds ONE key for the batch: the pure function on the whole batch with that key
    ref, ref_state = jn.noisy_batch_norm(x, model.weight, model.bias, jn.init_batch_stats(3), key=key, train=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), atol=1e-5)
    np.testing.assert_allclose(new_state.get(model.state_index)["mean"], ref_state["mean"], atol=1e-6)
    y0, _ = model(x[0], state, inference=True)  # the other advice: inference=True needs no key
    assert y0.shape == (3,)


# ---------------------------------------------------------------------------------------------------------------------
# 3. GaussianDropout with rate 1 is refused at construction (Equinox, NNX and linen)


def test_gaussian_dropout_rate_one_is_refused_at_construction():
    with pytest.raises(ValueError) as e:
        je.GaussianDropout(1.0)
    assert str(e.value) == (
        "GaussianDropout: p must be < 1 (the noise variance p/(1 − p) is infinite at p=1), got 1.0; "
        "use p in [0, 1), e.g. p=0.5"
    )
    with pytest.raises(ValueError) as e:
        jnn.GaussianDropout(1.0, rngs=nnx.Rngs(dropout=0))
    assert str(e.value) == (
        "GaussianDropout: rate must be < 1 (the noise variance rate/(1 − rate) is infinite at 1), got 1.0; "
        "use a rate in [0, 1), e.g. 0.5"
    )
    with pytest.raises(ValueError) as e:
        jn.nn.GaussianDropout(1.0)  # linen: before any apply, so eval-only use cannot hide it
    assert str(e.value) == (
        "GaussianDropout: rate must be < 1 (the noise variance rate/(1 − rate) is infinite at 1), got 1.0; "
        "use a rate in [0, 1), e.g. 0.5"
    )
    x = jnp.ones(3)
    assert bool((jn.nn.GaussianDropout(0.9).apply({}, x, train=False) == x).all())
    assert bool((je.GaussianDropout(0.9)(x, inference=True) == x).all())  # below 1: fine
    assert bool((jnn.GaussianDropout(0.9)(x, deterministic=True) == x).all())
    assert bool((je.Dropout(1.0)(x, key=KEY) == 0).all())  # Bernoulli dropout's p = 1 stays valid
    # the Equinox layers' [0, 1] check names Equinox's p, with the number and how to fix it
    with pytest.raises(ValueError) as e:
        je.Dropout(1.5)
    assert str(e.value) == (
        "Dropout: p must be in [0, 1] (the probability of dropping a unit), got 1.5; "
        "p=0 keeps everything, p=1 drops everything"
    )
    with pytest.raises(TypeError, match=r"^AlphaDropout: p must be a number in \[0, 1\] .*got 'half'"):
        je.AlphaDropout("half")


# ---------------------------------------------------------------------------------------------------------------------
# 4. WeightNorm passes the call's key to the wrapped layer


class _KeyedLinear(eqx.Module):
    """A linear map that adds N(0, 1) noise from its key when it gets one."""

    weight: jax.Array

    def __call__(self, x, *, key=None):
        y = self.weight @ x
        return y if key is None else y + jax.random.normal(key, y.shape)


class _KeylessLinear(eqx.Module):
    """A linear map whose call takes no key at all."""

    weight: jax.Array

    def __call__(self, x):
        return self.weight @ x


def test_eqx_weight_norm_passes_the_key_to_the_wrapped_layer():
    w, x, key = jax.random.normal(KEY, (4, 3)), jnp.arange(3.0), jax.random.key(5)
    wn = je.WeightNorm(_KeyedLinear(w))
    plain = wn(x)
    np.testing.assert_allclose(plain, w @ x, rtol=1e-5, atol=1e-5)  # g = ‖v‖ at init: the wrapped layer's map
    np.testing.assert_allclose(wn(x, key=key), plain + jax.random.normal(key, (4,)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(wn(x, key=key), plain)
    sn, st = eqx.nn.make_with_state(je.SpectralNorm)(_KeyedLinear(w), key=jax.random.key(2))
    y_sn, _ = sn(x, st, key=key, inference=True)  # SpectralNorm did so already: the same rule
    y_sn0, _ = sn(x, st, inference=True)
    np.testing.assert_allclose(y_sn - y_sn0, jax.random.normal(key, (4,)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(je.WeightNorm(_KeylessLinear(w))(x), w @ x, rtol=1e-5, atol=1e-5)  # no key: x only


# ---------------------------------------------------------------------------------------------------------------------
# 5. the dropout layers' messages speak their family: Equinox key= / inference=True, NNX rngs / deterministic=True


EQX_DROPOUTS = {
    "Dropout": lambda: je.Dropout(0.5),
    "OriginalDropout": lambda: je.OriginalDropout(0.5),
    "SpatialDropout": lambda: je.SpatialDropout(0.5),
    "GaussianDropout": lambda: je.GaussianDropout(0.5),
    "AlphaDropout": lambda: je.AlphaDropout(0.5),
    "DropConnectLinear": lambda: je.DropConnectLinear(6, 2, key=jax.random.key(3)),
}


@pytest.mark.parametrize("name", list(EQX_DROPOUTS))
def test_eqx_dropout_missing_key_speaks_equinox_and_its_advice_runs(name):
    layer = EQX_DROPOUTS[name]()
    x = jnp.ones((4, 6))  # 4 examples (SpatialDropout: 4 examples... seen one at a time below)
    example = x[0] if name != "SpatialDropout" else jnp.ones((2, 6))
    with pytest.raises(ValueError) as e:
        layer(example)
    msg = str(e.value)
    assert msg.startswith(f"{name}: training (inference=False) needs a PRNG key: pass key=jax.random.key(seed)"), msg
    assert "inference=True" in msg and "train=" not in msg, msg
    found = re.search(r"jax\.vmap\(layer\)\(x, key=jax\.random\.split\(key, len\(x\)\)\)", msg)
    assert found, msg
    xs = x if name != "SpatialDropout" else jnp.ones((4, 2, 6))
    y = eval(found.group(0), {"jax": jax}, {"layer": layer, "x": xs, "key": KEY})  # followed literally
    assert y.shape[0] == 4 and bool(jnp.all(jnp.isfinite(y)))
    assert layer(example, inference=True).shape == layer(example, key=KEY).shape  # the other way out


def test_eqx_dropout_traced_inference_without_key_names_key():
    with pytest.raises(ValueError, match=r"^Dropout: training \(inference=False\) needs a PRNG key"):
        jax.jit(lambda x, f: je.Dropout(0.5)(x, inference=f))(jnp.ones(3), jnp.array(False))


def test_eqx_spatial_dropout_reports_the_users_shape():
    for shape in [(3,), ()]:
        with pytest.raises(ValueError) as e:
            je.SpatialDropout(0.5)(jnp.ones(shape), key=KEY)
        msg = str(e.value)
        assert msg.startswith(
            f"SpatialDropout: expected one example C×spatial… (rank >= 2, channels first), got shape {shape}"
        ), msg
        assert "N×" not in msg and "(1, 3)" not in msg and "use Dropout" in msg, msg


def test_eqx_dropout_non_float_input_names_the_layer():
    with pytest.raises(TypeError, match=r"^Dropout: the input has dtype int32"):
        je.Dropout(0.5)(jnp.array([1, 2, 3]), key=KEY)
    with pytest.raises(TypeError, match=r"^GaussianDropout: the input has dtype int32"):
        je.GaussianDropout(0.5)(jnp.array([1, 2, 3]), inference=True)


@pytest.mark.parametrize(
    "cls", [jnn.Dropout, jnn.OriginalDropout, jnn.GaussianDropout, jnn.AlphaDropout, jnn.SpatialDropout]
)
def test_nnx_dropout_missing_stream_names_nnx_flags(cls):
    x = jnp.ones((2, 3, 4))
    with pytest.raises(ValueError) as e:
        cls(0.5)(x)
    msg = str(e.value)
    assert msg.startswith(f"{cls.__name__}: training (deterministic=False) needs random numbers"), msg
    assert "rngs=nnx.Rngs(dropout=0)" in msg and "deterministic=True" in msg and "train=" not in msg, msg
    cls(0.5)(x, deterministic=True)  # both pieces of advice run as written
    cls(0.5, rngs=nnx.Rngs(dropout=0))(x)
    y = cls(0.5)(x, rngs=nnx.Rngs(dropout=0))
    assert y.shape == x.shape


def test_nnx_noisy_batch_norm_missing_stream_names_deterministic():
    nb = jnn.NoisyBatchNorm(3, rngs=nnx.Rngs(0))
    nb.rngs = None  # as a layer whose noise stream was dropped
    with pytest.raises(ValueError, match=r"deterministic=True") as e:
        nb(jnp.ones((4, 3)))
    assert "train=" not in str(e.value)


def test_nnx_spatial_dropout_names_the_layer_and_the_users_shape():
    with pytest.raises(ValueError) as e:
        jnn.SpatialDropout(0.5, rngs=nnx.Rngs(dropout=0))(jnp.ones((2, 3)))
    msg = str(e.value)
    assert msg.startswith("SpatialDropout: expected N×spatial…×C (rank >= 3, channels last), got shape (2, 3)"), msg
    assert "use Dropout" in msg, msg
    with pytest.raises(TypeError, match=r"^Dropout: the input has dtype int32"):
        jnn.Dropout(0.5, rngs=nnx.Rngs(dropout=0))(jnp.array([1, 2, 3]))


# ---------------------------------------------------------------------------------------------------------------------
# 6. NNX DropConnectLinear follows nnx.Linear's dtype rules


@pytest.mark.parametrize("x_dtype", [jnp.float32, jnp.bfloat16, jnp.int32], ids=["f32", "bf16", "int32"])
@pytest.mark.parametrize(
    "dtype,param_dtype",
    [(None, jnp.float32), (jnp.bfloat16, jnp.float32), (None, jnp.bfloat16)],
    ids=["default", "dtype_bf16", "param_bf16"],
)
@pytest.mark.parametrize("off", ["rate0", "deterministic"])
def test_nnx_dropconnect_linear_matches_nnx_linear_dtypes(x_dtype, dtype, param_dtype, off):
    rate = 0.0 if off == "rate0" else 0.5
    kw = {} if dtype is None else {"dtype": dtype}  # nnx.Linear's dtype argument, new here
    ours = jnn.DropConnectLinear(3, 2, rate=rate, param_dtype=param_dtype, rngs=nnx.Rngs(0, dropout=1), **kw)
    theirs = nnx.Linear(3, 2, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    theirs.kernel[...] = ours.kernel[...]
    ours.bias[...] = theirs.bias[...] = jnp.array([0.25, -0.5], param_dtype)
    x = (jnp.arange(6.0).reshape(2, 3) * 1.37 + 0.3).astype(x_dtype)
    y = ours(x, deterministic=off == "deterministic")
    ref = theirs(x)
    assert y.dtype == ref.dtype, (y.dtype, ref.dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref, np.float32))
    if dtype is None and param_dtype == jnp.float32:  # promoted to float32: the kernel is neither truncated nor rounded
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(y, x.astype(jnp.float32) @ ours.kernel[...] + ours.bias[...], rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# 7. the NNX model helpers have Google-style docstrings


@pytest.mark.parametrize("obj", [jnn.population_batch_stats, jnn.fold_batch_norm, jnn.BatchMoments])
def test_nnx_helpers_have_google_style_docstrings(obj):
    doc = obj.__doc__
    summary, _, body = doc.partition("\n\n")
    assert "\n" not in summary.strip() and summary.strip().endswith("."), summary
    sections = ["Args:", "Examples:", "Reduces over:", "Reference:"]
    if obj is not jnn.BatchMoments:
        sections += ["Returns:", "Raises:"]
    for section in sections:
        assert section in body, f"{obj.__name__}: no {section}"
    assert ">>> " in body


# ---------------------------------------------------------------------------------------------------------------------
# 8. the Equinox LayerNorm and RMSNorm document their own __call__, which delegates


@pytest.mark.parametrize("cls", [je.LayerNorm, je.RMSNorm], ids=["LayerNorm", "RMSNorm"])
def test_eqx_layer_and_rms_norm_have_their_own_documented_call(cls):
    assert "__call__" in vars(cls), "inherited __call__ is left out of the API reference"
    doc = cls.__call__.__doc__
    assert doc != je._Elementwise.__call__.__doc__
    for section in ("Args:", "Returns:", "Raises:", "Examples:"):
        assert section in doc
    layer = cls((2, 3))
    layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.full((2, 3), 1.5), jnp.full((2, 3), 0.25)))
    x = jax.random.normal(KEY, (2, 3))
    np.testing.assert_array_equal(layer(x), je._Elementwise.__call__(layer, x))  # no behaviour change
    y, st = layer(x, "state", key=KEY)
    np.testing.assert_array_equal(y, layer(x))
    assert st == "state"
