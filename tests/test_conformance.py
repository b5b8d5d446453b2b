"""Every layer of every family (linen ``jaxnorm.nn``, NNX ``jaxnorm.nnx``, Equinox ``jaxnorm.eqx``) against the
pure function it wraps, from ONE table.

For each row and family: the same input and parameters (random γ, β, non-default ε and momentum) give the pure
function's output in training, the same running statistics after the training step, and in eval the output of the
pure function with those statistics (batch norms) or with ``train=False`` (dropout: the identity, or ``(1 − p)·x``
for the original dropout). The layer classes of each family are read from the module itself; a class no row covers
must be listed in ``EXCEPTIONS`` with a reason, so a layer added to one family and forgotten in another fails here.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm as jn
import jaxnorm.nn as jnn
import jaxnorm.nnx as jnnx

eqx = pytest.importorskip("equinox")
import jaxnorm.eqx as jeqx  # noqa: E402

FAMILIES = {"linen": jnn, "nnx": jnnx, "eqx": jeqx}
BASES = {"linen": linen.Module, "nnx": nnx.Module, "eqx": eqx.Module}

C, EPS, MOM, RATE = 4, 1e-3, 0.9, 0.3
K, KEY = jax.random.key(0), jax.random.key(7)  # K: parameters and inputs; KEY: dropout masks and noise
X2 = jax.random.normal(jax.random.key(1), (6, C)) * 2.0 + 0.5  # N×C
X4 = jax.random.normal(jax.random.key(2), (2, 3, 3, C)) * 2.0 + 0.5  # N×H×W×C
GAMMA = jax.random.uniform(jax.random.key(3), (C,), minval=0.5, maxval=1.5)
BETA = jax.random.normal(jax.random.key(4), (C,))
ALPHA = 0.7
TOL = dict(rtol=2e-5, atol=2e-5)


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer in the three families: ``kind`` picks the protocol, ``pure`` the reference, ``pure_kw`` its
    options; ``make[family]`` builds the layer (None: the family has no such layer, see EXCEPTIONS)."""

    kind: str  # 'batch' (running statistics), 'example' (per-example norm), 'dropout', 'dropconnect'
    pure: Callable
    pure_kw: dict
    make: dict[str, Callable[[], Any] | None]
    spatial: bool = False  # N×H×W×C input (else N×C)
    bias: bool = True  # the pure function takes β (RMSNorm: no)
    noise: bool = False  # needs a key in training (noisy batch norm)

    @property
    def x(self):
        return X4 if self.spatial else X2


def _bn(cls_name, pure, extra=None, noise=False, eqx_extra=None):
    e = extra or {}
    return Row(
        "batch",
        pure,
        dict(momentum=MOM, epsilon=EPS, **e),
        {
            "linen": lambda: getattr(jnn, cls_name)(momentum=MOM, epsilon=EPS, **e),
            "nnx": lambda: getattr(jnnx, cls_name)(C, momentum=MOM, epsilon=EPS, rngs=nnx.Rngs(0, dropout=1), **e),
            "eqx": lambda: eqx.nn.make_with_state(getattr(jeqx, cls_name))(
                C, eps=EPS, momentum=MOM, **(eqx_extra or e)
            ),
        },
        noise=noise,
    )


def _drop(cls_name, pure, spatial=False):
    return Row(
        "dropout",
        pure,
        {},
        {
            "linen": lambda: getattr(jnn, cls_name)(RATE),
            "nnx": lambda: getattr(jnnx, cls_name)(RATE, rngs=nnx.Rngs(dropout=1)),
            "eqx": lambda: getattr(jeqx, cls_name)(RATE),
        },
        spatial=spatial,
    )


TABLE: dict[str, Row] = {
    "BatchNorm": _bn("BatchNorm", jn.batch_norm),
    "NoisyBatchNorm": _bn("NoisyBatchNorm", jn.noisy_batch_norm, noise=True),
    "BatchRenorm": _bn("BatchRenorm", jn.batch_renorm, dict(r_max=1.5, d_max=0.5)),
    "LpBatchNorm": _bn("LpBatchNorm", jn.lp_batch_norm, dict(p=1)),
    "LayerNorm": Row(
        "example",
        jn.layer_norm,
        dict(epsilon=EPS),
        {
            "linen": lambda: jnn.LayerNorm(epsilon=EPS),
            "nnx": lambda: jnnx.LayerNorm(C, epsilon=EPS, rngs=nnx.Rngs(0)),
            "eqx": lambda: jeqx.LayerNorm(C, eps=EPS),
        },
    ),
    "RMSNorm": Row(
        "example",
        jn.rms_norm,
        dict(epsilon=EPS),
        {
            "linen": lambda: jnn.RMSNorm(epsilon=EPS),
            "nnx": lambda: jnnx.RMSNorm(C, epsilon=EPS, rngs=nnx.Rngs(0)),
            "eqx": lambda: jeqx.RMSNorm(C, eps=EPS, use_bias=False),
        },
        bias=False,
    ),
    "GroupNorm": Row(
        "example",
        jn.group_norm,
        dict(epsilon=EPS, num_groups=2),
        {
            "linen": lambda: jnn.GroupNorm(num_groups=2, epsilon=EPS),
            "nnx": lambda: jnnx.GroupNorm(C, 2, epsilon=EPS, rngs=nnx.Rngs(0)),
            "eqx": lambda: jeqx.GroupNorm(2, C, eps=EPS),
        },
        spatial=True,
    ),
    "InstanceNorm": Row(
        "example",
        jn.instance_norm,
        dict(epsilon=EPS),
        {
            "linen": lambda: jnn.InstanceNorm(epsilon=EPS),
            "nnx": lambda: jnnx.InstanceNorm(C, epsilon=EPS, rngs=nnx.Rngs(0)),
            "eqx": lambda: jeqx.InstanceNorm(C, eps=EPS),
        },
        spatial=True,
    ),
    "DyT": Row(
        "example",
        jn.dyt,
        {},
        {
            "linen": lambda: jnn.DyT(),
            "nnx": lambda: jnnx.DyT(C, rngs=nnx.Rngs(0)),
            "eqx": lambda: jeqx.DyT(C),
        },
    ),
    "Dropout": _drop("Dropout", jn.dropout),
    "OriginalDropout": _drop("OriginalDropout", jn.original_dropout),
    "SpatialDropout": _drop("SpatialDropout", jn.spatial_dropout, spatial=True),
    "GaussianDropout": _drop("GaussianDropout", jn.gaussian_dropout),
    "AlphaDropout": _drop("AlphaDropout", jn.alpha_dropout),
    "DropConnect": Row(
        "dropconnect",
        jn.dropconnect,
        {},
        {
            "linen": lambda: jnn.DropConnectDense(rate=RATE, features=3),
            "nnx": lambda: jnnx.DropConnectLinear(C, 3, rate=RATE, rngs=nnx.Rngs(0, dropout=1)),
            "eqx": lambda: jeqx.DropConnectLinear(C, 3, p=RATE, key=K),
        },
    ),
}

# the classes a family names differently from the row (the row's key is the linen/Equinox name otherwise)
NAMES = {
    ("DropConnect", "linen"): "DropConnectDense",
    ("DropConnect", "nnx"): "DropConnectLinear",
    ("DropConnect", "eqx"): "DropConnectLinear",
}

# layers no row of TABLE covers, with the reason; checked by test_table_covers_every_layer
EXCEPTIONS: dict[tuple[str, str], str] = {
    **{
        (name, fam): "a kernel reparametrization (its pure function is checked against the layer in test_nn's, "
        "test_nnx's and test_eqx's own tests, with the family's own wrapped layer as the reference)"
        for name in ("StandardizedConv", "WeightNorm", "SpectralNorm")
        for fam in FAMILIES
    },
    ("FoldedBatchNorm", "nnx"): "not a norm: the identity fold_batch_norm leaves where a batch norm was folded",
}


def _layer_classes(module) -> set[str]:
    """The public layer classes a family module defines (its own, not imported ones)."""
    fam = next(f for f, m in FAMILIES.items() if m is module)
    return {
        name
        for name, obj in vars(module).items()
        if inspect.isclass(obj)
        and issubclass(obj, BASES[fam])
        and obj.__module__ == module.__name__
        and not name.startswith("_")
    }


def test_table_covers_every_layer():
    for fam, module in FAMILIES.items():
        classes = _layer_classes(module)
        if hasattr(module, "__all__"):
            assert classes <= set(module.__all__), f"{fam}: public layers missing from __all__"
        covered = {NAMES.get((row, fam), row) for row, r in TABLE.items() if r.make.get(fam) is not None}
        excepted = {name for (name, f) in EXCEPTIONS if f == fam}
        missing = classes - covered - excepted
        assert not missing, f"{fam}: layers with no conformance row and no listed exception: {sorted(missing)}"
        stale = (covered | excepted) - classes
        assert not stale, f"{fam}: rows or exceptions name classes the module does not have: {sorted(stale)}"


# --------------------------------------------------------------------------------------------------------------------
# one protocol per family: (y_train, running statistics or None, y_eval) on (x, γ, β, key)


class _LinenKey(linen.Module):
    @linen.compact
    def __call__(self):
        return self.make_rng("dropout")


def _linen_key(key):
    """The key a top-level linen layer's first ``make_rng('dropout')`` gets from ``rngs={'dropout': key}``."""
    return _LinenKey().apply({}, rngs={"dropout": key})


def _linen_params(variables, row):
    p = dict(variables.get("params", {}))
    if "scale" in p:
        p["scale"] = GAMMA
    if "bias" in p and row.kind != "dropconnect":
        p["bias"] = BETA
    if "alpha" in p:
        p["alpha"] = jnp.asarray(ALPHA)
    return {**variables, "params": p}


def _run_linen(row, layer, x):
    variables = _linen_params(layer.init(K, x, train=False), row)
    rngs = {"dropout": KEY}
    y, state = layer.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    stats = state.get("batch_stats")
    y_eval = layer.apply({**variables, **state}, x, train=False)
    return y, (dict(stats) if stats else None), y_eval, _linen_key(KEY), variables["params"].get("kernel")


def _run_nnx(row, layer, x):
    for name, value in (("scale", GAMMA), ("bias", BETA)):
        if getattr(layer, name, None) is not None and row.kind != "dropconnect":
            getattr(layer, name)[...] = value
    if hasattr(layer, "alpha"):
        layer.alpha[...] = jnp.asarray(ALPHA)
    if row.kind in ("dropout", "dropconnect"):
        y = layer(x, rngs=KEY)
        return y, None, layer(x, deterministic=True), KEY, getattr(layer, "kernel", None)
    y = layer(x, rngs=KEY) if row.noise else layer(x)
    stats = {k: getattr(layer, k)[...] for k in ("mean", "var", "count")} if row.kind == "batch" else None
    y_eval = layer(x, use_running_average=True, **({"deterministic": True} if row.noise else {}))
    return y, stats, y_eval, KEY, None


def _cf(x):  # channels last -> channels first, per example
    return jnp.moveaxis(x, -1, 1)


def _cl(x):
    return jnp.moveaxis(x, 1, -1)


def _run_eqx(row, built, x):
    if row.kind == "batch":
        layer, state = built
        layer = eqx.tree_at(lambda m: (m.weight, m.bias), layer, (GAMMA, BETA))
        train = jax.vmap(
            lambda e, s, k: layer(e, s, key=k), axis_name="batch", in_axes=(0, None, None), out_axes=(0, None)
        )
        y, state = train(x, state, KEY)
        ev = jax.vmap(
            lambda e, s: layer(e, s, inference=True), axis_name="batch", in_axes=(0, None), out_axes=(0, None)
        )
        return y, dict(state.get(layer.state_index)), ev(x, state)[0], KEY, None
    if row.kind == "example":
        layer = built
        if getattr(layer, "weight", None) is not None:
            layer = eqx.tree_at(lambda m: m.weight, layer, GAMMA)
        if getattr(layer, "bias", None) is not None:
            layer = eqx.tree_at(lambda m: m.bias, layer, BETA)
        if hasattr(layer, "alpha"):
            layer = eqx.tree_at(lambda m: m.alpha, layer, jnp.asarray(ALPHA))
        y = _cl(jax.vmap(layer)(_cf(x)))
        return y, None, y, KEY, None
    if row.kind == "dropconnect":
        return built(x[0], key=KEY), None, built(x[0], inference=True), KEY, built.linear.weight
    if x.ndim > 2:  # spatial dropout sees one example C×spatial…: compare example 0
        return (_cl(built(_cf(x)[0], key=KEY)[None]), None, _cl(built(_cf(x)[0], inference=True)[None]), KEY, None)
    return built(x, key=KEY), None, built(x, inference=True), KEY, None


RUN = {"linen": _run_linen, "nnx": _run_nnx, "eqx": _run_eqx}


def _close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=what, **TOL)


CASES = [
    pytest.param(name, fam, id=f"{name}-{fam}")
    for name, row in TABLE.items()
    for fam in FAMILIES
    if row.make.get(fam) is not None
]


@pytest.mark.parametrize("name,fam", CASES)
def test_layer_matches_its_pure_function(name, fam):
    row = TABLE[name]
    y, stats, y_eval, key, kernel = RUN[fam](row, row.make[fam](), row.x)
    x = row.x
    if row.kind == "batch":
        st0 = jn.init_batch_stats(C)
        extra = {"key": key} if row.noise else {}
        y_ref, st_ref = row.pure(x, GAMMA, BETA, st0, train=True, **row.pure_kw, **extra)
        _close(y, y_ref, f"{name}/{fam}: training output")
        for k in ("mean", "var", "count"):
            _close(stats[k], st_ref[k], f"{name}/{fam}: running {k} after a training step")
        assert int(np.asarray(stats["count"])) == 1
        e_ref, _ = row.pure(x, GAMMA, BETA, st_ref, train=False, **row.pure_kw)
        _close(y_eval, e_ref, f"{name}/{fam}: eval output (running statistics)")
        assert not np.allclose(np.asarray(y_eval), np.asarray(y), atol=1e-3), "eval must not use batch statistics"
    elif row.kind == "example":
        args = (ALPHA, GAMMA, BETA) if row.pure is jn.dyt else (GAMMA,) + ((BETA,) if row.bias else ())
        y_ref = row.pure(x, *args, **row.pure_kw)
        _close(y, y_ref, f"{name}/{fam}: output")
        _close(y_eval, y_ref, f"{name}/{fam}: eval output (per-example: the same map)")
    elif row.kind == "dropconnect":
        xe = x[0] if fam == "eqx" else x
        w = jn.dropconnect(kernel, RATE, key=key, train=True)
        if fam == "eqx":  # out×in weight, one example
            b = row.make[fam]().linear.bias
            _close(y, w @ xe + b, f"{name}/{fam}: training output")
            _close(y_eval, kernel @ xe + b, f"{name}/{fam}: eval output (no drop)")
        else:
            _close(y, xe @ w, f"{name}/{fam}: training output")  # bias zeros at init
            _close(y_eval, xe @ kernel, f"{name}/{fam}: eval output (no drop)")
        assert not np.allclose(np.asarray(y), np.asarray(y_eval))
    else:  # dropout
        xe = x[:1] if (fam == "eqx" and x.ndim > 2) else x
        _close(y, row.pure(xe, RATE, key=key, train=True), f"{name}/{fam}: training output (same key)")
        _close(y_eval, row.pure(xe, RATE, train=False), f"{name}/{fam}: eval output")
        assert not np.allclose(np.asarray(y), np.asarray(y_eval)), f"{name}/{fam}: training must drop something"
        if row.pure is not jn.original_dropout:
            _close(y_eval, xe, f"{name}/{fam}: eval is the identity")
