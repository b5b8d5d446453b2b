"""Benchmark: the Flax NNX and Equinox layers next to the pure functions they wrap, in one process.

Prints one JSON line per measurement::

    python benchmarks/layers.py                # x = 128×32×32×64 float32 (Equinox: the same array as N×C×H×W)
    python benchmarks/layers.py --small        # 16×16×16×32, quick
    python benchmarks/layers.py --repeats 30 --only nnx

Each case is fwd+bwd: ``jax.jit(jax.value_and_grad(loss, argnums=(params, x), has_aux=True))`` with
``loss = sum(y·ct)`` for a fixed random cotangent ``ct``; the batch-statistics layers return their new running
statistics as the aux output, so the statistics update is part of every timed program.

* ``nnx``: the layer is ``nnx.split`` into graphdef/params/rest and merged inside the jitted function (how
  ``nnx.jit`` runs it), against the pure function called on the same parameters (``ratio_vs_pure``, target ≤ 1.05);
  ``jn.nnx.BatchNorm`` also against ``flax.nnx.BatchNorm`` (``ratio_vs_flax``, target ≤ 1.0).
* ``eqx``: the layer called per example under ``jax.vmap(..., axis_name='batch')`` on N×C×H×W (Equinox's
  channels-first layout), against the pure function called the same way, per example under the same vmap
  (``ratio_vs_pure``, the wrapper's cost; target ≤ 1.05), and against the pure function on the whole batch with
  ``axis=1`` (``ratio_vs_pure_whole_batch``: what Equinox's per-example convention costs on this backend);
  ``jn.eqx.BatchNorm`` also against ``eqx.nn.BatchNorm(mode='batch')`` for context.

Outputs and gradients of both sides are compared before timing (``max_diff``; ``agree`` false beyond a tolerance).
Each function is compiled first (compile time reported), warmed up, then timed as the median wall time of
``--repeats`` calls ending in ``jax.block_until_ready``, the sides alternating round by round so load drift hits
both alike. Benchmarks never assert: they print figures; on a shared CPU the ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from norms import _compile, _maxdiff, _time_alternating

import jaxnorm as jn

TARGET_VS_PURE = 1.05
TARGET_VS_FLAX = 1.0


def _vg(loss):
    return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)


# --------------------------------------------------------------------------------------------------------------------
# Flax NNX


def _nnx_side(layer, ct, stat_type=nnx.BatchStat):
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)

    def loss(params, x, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)  # fresh Variables at this trace level
        y = m(x)
        return jnp.sum(y * ct), nnx.state(m, stat_type)

    return _vg(loss), params, rest


def _pure_side(fn, ct):
    def loss(params, x, stats):
        y, new = fn(params, x, stats)
        return jnp.sum(y * ct), new

    return _vg(loss)


def nnx_cases(c: int, key):
    """(name, jaxnorm layer, pure fn(params, x, stats) -> (y, stats), pure params, stats, flax layer or None)."""
    rngs = nnx.Rngs(0)
    g = min(32, c)
    bn = {"mean": jnp.zeros(c), "var": jnp.ones(c), "count": jnp.zeros((), jnp.int32)}
    affine = {"scale": jnp.ones(c), "bias": jnp.zeros(c)}
    yield (
        "BatchNorm",
        jn.nnx.BatchNorm(c, rngs=rngs),
        lambda p, x, s: jn.batch_norm(x, p["scale"], p["bias"], s, train=True),
        affine,
        bn,
        nnx.BatchNorm(c, rngs=rngs),
    )
    yield (
        "LayerNorm",
        jn.nnx.LayerNorm(c, rngs=rngs),
        lambda p, x, s: (jn.layer_norm(x, p["scale"], p["bias"]), s),
        affine,
        {},
        None,
    )
    yield (
        "GroupNorm",
        jn.nnx.GroupNorm(c, g, rngs=rngs),
        lambda p, x, s: (jn.group_norm(x, p["scale"], p["bias"], num_groups=g), s),
        affine,
        {},
        None,
    )
    yield (
        "InstanceNorm",
        jn.nnx.InstanceNorm(c, rngs=rngs),
        lambda p, x, s: (jn.instance_norm(x, p["scale"], p["bias"]), s),
        affine,
        {},
        None,
    )
    yield (
        "RMSNorm",
        jn.nnx.RMSNorm(c, rngs=rngs),
        lambda p, x, s: (jn.rms_norm(x, p["scale"]), s),
        {"scale": jnp.ones(c)},
        {},
        None,
    )
    # a dropout layer draws its key from its forked stream: the pure side gets the key that stream draws first
    drop = jn.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    k = nnx.clone(drop).rngs()
    yield ("Dropout", drop, lambda p, x, s: (jn.dropout(x, 0.5, key=k), s), {}, {}, None)


def run_nnx(x, ct, repeats, base):
    out = []
    for name, layer, pure, pparams, stats, flax_layer in nnx_cases(x.shape[-1], None):
        stat_type = nnx.BatchStat if stats else nnx.RngState
        f_jn, params, rest = _nnx_side(layer, ct, stat_type)
        f_pure = _pure_side(pure, ct)
        c_jn, t_jn = _compile(f_jn, params, x, rest)
        c_pure, t_pure = _compile(f_pure, pparams, x, stats)
        (l_jn, _), (gp_jn, gx_jn) = c_jn(params, x, rest)
        (l_pure, _), (gp_pure, gx_pure) = c_pure(pparams, x, stats)
        diff = max(
            _maxdiff(gx_jn, gx_pure, True),
            _maxdiff(jnp.asarray(l_jn), jnp.asarray(l_pure), True),
            _maxdiff(jax.tree.leaves(gp_jn.to_pure_dict()) if gp_jn else [], jax.tree.leaves(gp_pure), True),
        )
        sides = [(c_jn, (params, x, rest)), (c_pure, (pparams, x, stats))]
        if flax_layer is not None:
            f_fx, fparams, frest = _nnx_side(flax_layer, ct)
            c_fx, t_fx = _compile(f_fx, fparams, x, frest)
            sides.append((c_fx, (fparams, x, frest)))
        times = _time_alternating(sides, repeats)
        line = dict(
            base,
            library="nnx",
            layer=name,
            jaxnorm_ms=times[0][0],
            pure_ms=times[1][0],
            ratio_vs_pure=times[0][0] / times[1][0],
            target_vs_pure=TARGET_VS_PURE,
            compile_s=t_jn,
            pure_compile_s=t_pure,
            max_diff=diff,
            agree=bool(diff < 1e-4),
        )
        if flax_layer is not None:
            line.update(
                flax_ms=times[2][0],
                ratio_vs_flax=times[0][0] / times[2][0],
                target_vs_flax=TARGET_VS_FLAX,
                flax_compile_s=t_fx,
            )
        print(json.dumps(line), flush=True)
        out.append(line)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Equinox


def eqx_cases(c: int, spatial):
    import equinox as eqx

    g = min(32, c)
    bn = jn.init_batch_stats(c)
    affine = {"weight": jnp.ones(c), "bias": jnp.zeros(c)}
    full = {"weight": jnp.ones((c,) + spatial), "bias": jnp.zeros((c,) + spatial)}
    yield (
        "BatchNorm",
        eqx.nn.make_with_state(jn.eqx.BatchNorm)(c, "batch"),
        lambda p, x, s, **kw: jn.batch_norm(x, p["weight"], p["bias"], s, train=True, axis=1, **kw),
        affine,
        bn,
        eqx.nn.make_with_state(eqx.nn.BatchNorm)(c, "batch", mode="batch"),
    )
    yield (
        "LayerNorm",
        (jn.eqx.LayerNorm((c,) + spatial), None),
        lambda p, x, s: (jn.layer_norm(x, p["weight"], p["bias"]), s),
        full,
        {},
        None,
    )
    yield (
        "GroupNorm",
        (jn.eqx.GroupNorm(g, c), None),
        lambda p, x, s: (jn.group_norm(x, p["weight"], p["bias"], num_groups=g, axis=1), s),
        affine,
        {},
        None,
    )
    yield ("Dropout", (jn.eqx.Dropout(0.5), None), None, {}, {}, None)


def _eqx_side(model_state, ct, key=None):
    import equinox as eqx

    model, state = model_state
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(params, x, state):
        m = eqx.combine(params, static)
        if state is None:
            if key is None:
                y = jax.vmap(m, axis_name="batch")(x)
            else:
                y = jax.vmap(lambda xi, ki: m(xi, key=ki), axis_name="batch")(x, jax.random.split(key, x.shape[0]))
            return jnp.sum(y * ct), None
        y, new = jax.vmap(m, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)
        return jnp.sum(y * ct), new

    return _vg(loss), params, state


def _per_example(pure, bn: bool):
    """The pure function called the way an Equinox layer calls it: per example (a batch of one) under
    ``jax.vmap(axis_name='batch')``, batch norm reducing over the vmapped axis."""
    if bn:

        def f(p, x, s):
            return jax.vmap(
                lambda xi: (lambda y, st: (y[0], st))(*pure(p, xi[None], s, axis_name="batch")),
                axis_name="batch",
                out_axes=(0, None),
            )(x)
    else:

        def f(p, x, s):
            return jax.vmap(lambda xi: pure(p, xi[None], s)[0][0], axis_name="batch")(x), s

    return f


def run_eqx(x, ct, repeats, base):
    out = []
    key = jax.random.key(1)
    for name, model_state, pure, pparams, stats, eqx_ref in eqx_cases(x.shape[1], tuple(x.shape[2:])):
        k = key if name == "Dropout" else None
        if pure is None:  # dropout: the same per-example keys, vmapped pure function (the only form there is)
            keys = jax.random.split(key, x.shape[0])

            def pure(p, x, s):
                return jax.vmap(lambda xi, ki: jn.dropout(xi, 0.5, key=ki))(x, keys), s

            per_example = pure
        else:
            per_example = _per_example(pure, name == "BatchNorm")
        f_jn, params, state = _eqx_side(model_state, ct, k)
        f_pure, f_vm = _pure_side(pure, ct), _pure_side(per_example, ct)
        c_jn, t_jn = _compile(f_jn, params, x, state)
        c_pure, t_pure = _compile(f_pure, pparams, x, stats)
        c_vm, _ = _compile(f_vm, pparams, x, stats)
        (l_jn, _), (gp_jn, gx_jn) = c_jn(params, x, state)
        (l_pure, _), (gp_pure, gx_pure) = c_pure(pparams, x, stats)
        diff = max(_maxdiff(gx_jn, gx_pure, True), _maxdiff(jnp.asarray(l_jn), jnp.asarray(l_pure), True))
        sides = [(c_jn, (params, x, state)), (c_vm, (pparams, x, stats)), (c_pure, (pparams, x, stats))]
        if eqx_ref is not None:
            f_ref, rparams, rstate = _eqx_side(eqx_ref, ct)
            c_ref, t_ref = _compile(f_ref, rparams, x, rstate)
            sides.append((c_ref, (rparams, x, rstate)))
        times = _time_alternating(sides, repeats)
        line = dict(
            base,
            library="eqx",
            layer=name,
            jaxnorm_ms=times[0][0],
            pure_ms=times[1][0],
            ratio_vs_pure=times[0][0] / times[1][0],
            target_vs_pure=TARGET_VS_PURE,
            pure_whole_batch_ms=times[2][0],
            ratio_vs_pure_whole_batch=times[0][0] / times[2][0],
            compile_s=t_jn,
            pure_compile_s=t_pure,
            max_diff=diff,
            agree=bool(diff < 1e-4),
        )
        if eqx_ref is not None:
            line.update(equinox_ms=times[3][0], ratio_vs_equinox=times[0][0] / times[3][0], equinox_compile_s=t_ref)
        print(json.dumps(line), flush=True)
        out.append(line)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="16×16×16×32 instead of 128×32×32×64")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--only", default="nnx,eqx", help="comma-separated libraries: nnx, eqx")
    args = ap.parse_args(argv)
    shape = (16, 16, 16, 32) if args.small else (128, 32, 32, 64)
    kx, kc = jax.random.split(jax.random.key(0))
    x = 2.0 * jax.random.normal(kx, shape, jnp.float32) + 1.0
    ct = jax.random.normal(kc, shape, jnp.float32)
    base = dict(
        shape=list(shape),
        dtype="float32",
        backend=jax.default_backend(),
        device=jax.devices()[0].device_kind,
        machine=platform.machine(),
        repeats=args.repeats,
    )
    only = set(args.only.split(","))
    lines = []
    if "nnx" in only:
        lines += run_nnx(x, ct, args.repeats, base)
    if "eqx" in only:
        lines += run_eqx(jnp.moveaxis(x, -1, 1), jnp.moveaxis(ct, -1, 1), args.repeats, base)
    met = [l for l in lines if l["ratio_vs_pure"] <= TARGET_VS_PURE and l.get("ratio_vs_flax", 0) <= TARGET_VS_FLAX]
    print(
        json.dumps(
            dict(
                base,
                summary=True,
                cases=len(lines),
                targets_met=len(met),
                missed=[f"{l['library']}.{l['layer']}" for l in lines if l not in met],
                all_agree=all(l["agree"] for l in lines),
            )
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
