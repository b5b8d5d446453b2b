"""Benchmark: fwd+bwd time of each jaxnorm norm next to its ``flax.linen`` counterpart, in one process.

Prints one JSON line per measurement::

    python benchmarks/norms.py                 # 128×32×32×64 float32 (plus one bf16 batch-norm line)
    python benchmarks/norms.py --small         # 16×16×16×32, quick
    python benchmarks/norms.py --repeats 30 --only batch_norm,group_norm
    python benchmarks/norms.py --norms-file /tmp/norms.py   # time a candidate copy of jaxnorm/norms.py

fwd+bwd is timed with two cotangent patterns (``--cotangent``, default both): ``fixed`` is
``jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))`` with ``loss = sum(y·ct)`` for a fixed random cotangent
``ct``, gradients w.r.t. x, scale and bias (RMS norm: x and scale); ``sumsq`` is the gradient of ``sum(y²)`` w.r.t.
x only, where the cotangent is a function of the output (XLA may then fuse or materialize differently). The
batch-statistics norms also return their new running statistics (``has_aux``), so the statistics update is part
of the timed program.

Each function is compiled first (compile time reported separately), warmed up, then timed as the median wall
time of ``--repeats`` calls ending in ``jax.block_until_ready``; the jaxnorm and Flax calls alternate so drift
hits both sides alike. The "memory floor" is the time of ``jax.jit(lambda x: x * 2 + 1)`` on ``x``, doubled: two
read+write passes over ``x``, roughly what any fwd+bwd of a normalization must at least pay. The floor and
jaxnorm's batch norm are timed again inside every pair's rounds (``floor_ms``, ``jaxnorm_bn_ms``), so
``ratio_vs_floor`` and ``ratio_vs_jaxnorm_bn`` compare calls made side by side, robust to load drifting during the
run (medians; ``*_min_ms`` are the fastest calls).

Before timing, the outputs ``y`` and the gradients of both sides are compared (max abs difference in the JSON
line, ``agree`` false beyond a tolerance), so a fast-but-wrong result is visible. Batch renorm and ℓp batch norm
have no Flax counterpart: they are timed next to Flax's BatchNorm and checked against a plain-jnp reference.

Targets: every jaxnorm norm ≤ 1.0× its Flax counterpart and ≤ 1.3× the memory floor; goal ≤ 0.8×
Flax and group/layer/instance norm ≤ 1.15× jaxnorm batch norm, for both cotangent patterns. A ``summary`` line per
pattern says which are met.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-5
NUM_GROUPS = 32
TARGET_VS_FLAX = 1.0
GOAL_VS_FLAX = 0.8
TARGET_VS_BN = 1.15
TARGET_VS_FLOOR = 1.3
PATTERNS = ("fixed", "sumsq")


def _load_norms(path: str | None):
    if path is None:
        from jaxnorm import norms

        return norms
    spec = importlib.util.spec_from_file_location("_bench_norms_candidate", os.path.abspath(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------------------------
# timing


def _compile(fn, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _once(compiled, args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - t0


def _time_alternating(fns_args, repeats: int, warmup: int = 2) -> list[tuple[float, float]]:
    """(median, min) wall time (ms) of each (compiled, args), calls interleaved round by round."""
    for c, a in fns_args:
        for _ in range(warmup):
            jax.block_until_ready(c(*a))
    times = [[] for _ in fns_args]
    order = np.random.default_rng(0)
    for _ in range(repeats):
        # a fresh random order each round: no side always runs first, or always right after the same other side
        # (a rotation still puts the same predecessor before each side, whose cache and memory state it inherits)
        for i in order.permutation(len(fns_args)):
            c, a = fns_args[i]
            times[i].append(_once(c, a))
    return [(1e3 * statistics.median(t), 1e3 * min(t)) for t in times]


def _maxdiff(a, b, relative: bool = False) -> float:
    """Max abs difference over the leaves (``relative``: each leaf's divided by its reference's max abs value)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb), (len(la), len(lb))
    out = 0.0
    for u, v in zip(la, lb):
        u, v = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
        d = float(jnp.max(jnp.abs(u - v)))
        if relative:
            d /= max(float(jnp.max(jnp.abs(v))), 1e-30)
        out = max(out, d)
    return out


# --------------------------------------------------------------------------------------------------------------------
# the pairs: each side is fwd(x, scale, bias, state) -> (y, new_state or None)


def _flax_side(module, has_stats: bool, has_bias: bool = True):
    def fwd(x, scale, bias, state):
        params = {"scale": scale} | ({"bias": bias} if has_bias else {})
        if has_stats:
            y, upd = module.apply({"params": params, "batch_stats": state}, x, mutable=["batch_stats"])
            return y, upd["batch_stats"]
        return module.apply({"params": params}, x), None

    return fwd


def _renorm_reference(x, scale, bias, stats, r_max=3.0, d_max=5.0):
    xf = x.astype(jnp.float32)
    red = tuple(range(x.ndim - 1))
    mu, var = jnp.mean(xf, red), jnp.var(xf, red)
    sb, s = jnp.sqrt(var + EPS), jnp.sqrt(stats["var"] + EPS)
    r = jax.lax.stop_gradient(jnp.clip(sb / s, 1 / r_max, r_max))
    d = jax.lax.stop_gradient(jnp.clip((mu - stats["mean"]) / s, -d_max, d_max))
    return (((xf - mu) / sb * r + d) * scale + bias).astype(x.dtype)


def _lp2_reference(x, scale, bias, stats):
    xf = x.astype(jnp.float32)
    red = tuple(range(x.ndim - 1))
    mu, s2 = jnp.mean(xf, red), jnp.mean(xf * xf, red)
    return ((xf - mu) / jnp.sqrt(s2 + EPS) * scale + bias).astype(x.dtype)


def make_pairs(jn, c: int, only: set[str] | None):
    """(name, dtype, jaxnorm fwd, flax fwd, check fwd or None (=flax), has_stats, has_bias, flax label)."""
    bn_flax = _flax_side(nn.BatchNorm(use_running_average=False, epsilon=EPS), True)
    pairs = [
        (
            "batch_norm",
            "float32",
            lambda x, s, b, st: jn.batch_norm(x, s, b, st, train=True, epsilon=EPS),
            bn_flax,
            None,
            True,
            True,
            "nn.BatchNorm",
        ),
        (
            "layer_norm",
            "float32",
            lambda x, s, b, st: (jn.layer_norm(x, s, b, epsilon=EPS, axes=(1, 2, 3)), None),
            _flax_side(nn.LayerNorm(epsilon=EPS, reduction_axes=(1, 2, 3), feature_axes=-1), False),
            None,
            False,
            True,
            "nn.LayerNorm",
        ),
        (
            "instance_norm",
            "float32",
            lambda x, s, b, st: (jn.instance_norm(x, s, b, epsilon=EPS), None),
            _flax_side(nn.InstanceNorm(epsilon=EPS), False),
            None,
            False,
            True,
            "nn.InstanceNorm",
        ),
        (
            "group_norm",
            "float32",
            lambda x, s, b, st: (jn.group_norm(x, s, b, num_groups=NUM_GROUPS, epsilon=EPS), None),
            _flax_side(nn.GroupNorm(num_groups=NUM_GROUPS, epsilon=EPS), False),
            None,
            False,
            True,
            "nn.GroupNorm",
        ),
        (
            "rms_norm",
            "float32",
            lambda x, s, b, st: (jn.rms_norm(x, s, epsilon=EPS, axes=(1, 2, 3)), None),
            _flax_side(nn.RMSNorm(epsilon=EPS, reduction_axes=(1, 2, 3), feature_axes=-1), False, has_bias=False),
            None,
            False,
            False,
            "nn.RMSNorm",
        ),
        (
            "batch_renorm",
            "float32",
            lambda x, s, b, st: jn.batch_renorm(x, s, b, st, train=True, epsilon=EPS),
            bn_flax,
            lambda x, s, b, st: (_renorm_reference(x, s, b, st), None),
            True,
            True,
            "nn.BatchNorm (no Flax renorm)",
        ),
        (
            "lp_batch_norm_p2",
            "float32",
            lambda x, s, b, st: jn.lp_batch_norm(x, s, b, st, train=True, p=2, epsilon=EPS),
            bn_flax,
            lambda x, s, b, st: (_lp2_reference(x, s, b, st), None),
            True,
            True,
            "nn.BatchNorm (no Flax lp norm)",
        ),
        (
            "batch_norm",
            "bfloat16",
            lambda x, s, b, st: jn.batch_norm(x, s, b, st, train=True, epsilon=EPS),
            _flax_side(nn.BatchNorm(use_running_average=False, epsilon=EPS, dtype=jnp.bfloat16), True),
            None,
            True,
            True,
            "nn.BatchNorm(dtype=bf16)",
        ),
    ]
    if only:
        pairs = [p for p in pairs if p[0] in only or f"{p[0]}:{p[1]}" in only]
    return pairs


def fwd_bwd(fwd, has_stats: bool, has_bias: bool, pattern: str = "fixed"):
    """value_and_grad of sum(y·ct) w.r.t. (x, scale[, bias]) ('fixed') or of sum(y²) w.r.t. x ('sumsq'); the new
    statistics ride along as aux."""

    def loss(x, scale, bias, state, ct):
        y, new_state = fwd(x, scale, bias, state)
        y = y.astype(jnp.float32)
        return (jnp.sum(y * ct) if pattern == "fixed" else jnp.sum(y * y)), new_state

    argnums = ((0, 1, 2) if has_bias else (0, 1)) if pattern == "fixed" else 0
    return jax.value_and_grad(loss, argnums=argnums, has_aux=True)


# --------------------------------------------------------------------------------------------------------------------


def make_inputs(jn, shape, seed: int = 0):
    """``(xs, ct, scale, bias, jn_stats, flax_stats)``: x ~ 2·N(0, 1) + 0.5 in float32 and bfloat16, a fixed cotangent
    and per-channel parameters; the same figures for every script that times the norms."""
    c = shape[-1]
    kx, ks, kb, kc = jax.random.split(jax.random.key(seed), 4)
    x32 = jax.random.normal(kx, shape, jnp.float32) * 2.0 + 0.5
    xs = {"float32": x32, "bfloat16": x32.astype(jnp.bfloat16)}
    ct = jax.random.normal(kc, shape, jnp.float32)
    scale = 1.0 + 0.1 * jax.random.normal(ks, (c,), jnp.float32)
    bias = 0.1 * jax.random.normal(kb, (c,), jnp.float32)
    return xs, ct, scale, bias, jn.init_batch_stats(c), {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))}


def memory_floor(x):
    """``((compiled, args), compile_s)`` of the memory floor's program: one read+write pass over ``x`` (timed and
    doubled: two passes, what any fwd+bwd of a normalization must at least pay)."""
    compiled, t_comp = _compile(lambda v: v * 2 + 1, x)
    return (compiled, (x,)), t_comp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="16×16×16×32 instead of 128×32×32×64")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per function (median reported)")
    ap.add_argument("--only", default=None, help="comma-separated names (e.g. batch_norm,group_norm)")
    ap.add_argument("--norms-file", default=None, help="time a candidate copy of jaxnorm/norms.py instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cotangent",
        choices=PATTERNS + ("both",),
        default="both",
        help="fixed: sum(y·ct) w.r.t. x, scale, bias; sumsq: sum(y²) w.r.t. x only",
    )
    args = ap.parse_args(argv)

    jn = _load_norms(args.norms_file)
    shape = (16, 16, 16, 32) if args.small else (128, 32, 32, 64)
    c = shape[-1]
    backend, device = jax.default_backend(), str(jax.devices()[0])
    base = {"bench": "norms", "backend": backend, "device": device}
    if args.norms_file:
        base["norms_file"] = args.norms_file

    xs, ct, scale, bias, jn_stats, flax_stats = make_inputs(jn, shape, args.seed)
    floor_fns = {}
    for dt, x in xs.items():
        floor_fns[dt], t_comp = memory_floor(x)
        ((ms, _),) = _time_alternating([floor_fns[dt]], max(args.repeats, 10))
        print(
            json.dumps(
                base
                | {
                    "name": "memory_floor",
                    "dtype": dt,
                    "shape": list(shape),
                    "floor_ms": round(2 * ms, 4),
                    "single_pass_ms": round(ms, 4),
                    "compile_s": round(t_comp, 3),
                    "what": "2 x time(jit(lambda x: x*2+1))",
                }
            ),
            flush=True,
        )

    only = set(args.only.split(",")) if args.only else None
    pairs = make_pairs(jn, c, only)
    patterns = PATTERNS if args.cotangent == "both" else (args.cotangent,)
    all_agree = True
    for pattern in patterns:
        results = run_pattern(
            jn, pairs, pattern, xs, scale, bias, ct, jn_stats, flax_stats, floor_fns, base, shape, args.repeats
        )
        all_agree &= summarize(results, base, shape, pattern)
    return 0 if all_agree else 1


def run_pattern(jn, pairs, pattern, xs, scale, bias, ct, jn_stats, flax_stats, floor_fns, base, shape, repeats):
    c = shape[-1]
    # jaxnorm's batch norm (the reference for ratio_vs_jaxnorm_bn) and the floor are timed again in every pair's
    # rounds, interleaved with the pair, so the ratios hold even when the machine's load drifts during the run
    bn_fns = {}
    for p in make_pairs(jn, c, {"batch_norm"}):
        if p[1] not in {q[1] for q in pairs}:
            continue
        bn_fns[p[1]] = (
            _compile(fwd_bwd(p[2], True, True, pattern), xs[p[1]], scale, bias, jn_stats, ct)[0],
            (xs[p[1]], scale, bias, jn_stats, ct),
        )
    results = []
    for name, dt, jfwd, ffwd, check, has_stats, has_bias, flax_label in pairs:
        x = xs[dt]
        rec = base | {"name": name, "dtype": dt, "cotangent": pattern, "shape": list(shape), "flax": flax_label}
        jstate, fstate = (jn_stats, flax_stats) if has_stats else (None, None)

        # correctness first (cheap: one forward and one fwd+bwd each, reusing the compiled programs below)
        ref = check or ffwd
        rstate = (jn_stats if check is not None else flax_stats) if has_stats else None
        y_j, _ = jax.jit(jfwd)(x, scale, bias, jstate)
        y_r, _ = jax.jit(ref)(x, scale, bias, rstate)
        rec["max_abs_diff_y"] = _maxdiff(y_j, y_r)

        jfb, ffb = fwd_bwd(jfwd, has_stats, has_bias, pattern), fwd_bwd(ffwd, has_stats, has_bias, pattern)
        jc, jt = _compile(jfb, x, scale, bias, jstate, ct)
        fc, ft = _compile(ffb, x, scale, bias, fstate, ct)
        (jl, jaux), jg = jc(x, scale, bias, jstate, ct)
        if check is None:
            (fl, faux), fg = fc(x, scale, bias, fstate, ct)
        else:  # gradients of the plain-jnp reference
            rfb = jax.jit(fwd_bwd(check, has_stats, has_bias, pattern))
            (fl, faux), fg = rfb(x, scale, bias, jstate, ct)
        rec["max_abs_diff_grads"] = _maxdiff(jg, fg)
        if pattern == "fixed":
            rec["max_rel_diff_grads"] = _maxdiff(jg, fg, relative=True)
        else:  # ∂Σy²/∂x of a normalized y is ~0 (it vanishes but for ε): relative to the cotangent 2y instead
            rec["max_rel_diff_grads"] = _maxdiff(jg, fg) / max(
                2 * float(jnp.max(jnp.abs(y_r.astype(jnp.float32)))), 1e-30
            )
        rec["rel_diff_loss"] = abs(float(jl) - float(fl)) / max(abs(float(fl)), 1e-30)
        if has_stats and check is None:
            rec["max_abs_diff_stats"] = _maxdiff({k: jaux[k] for k in ("mean", "var")}, faux)
        tol = 2e-2 if dt == "bfloat16" else 1e-3
        rec["agree"] = bool(rec["max_abs_diff_y"] < tol and rec["max_rel_diff_grads"] < tol)
        rec["check_vs"] = "flax" if check is None else "plain-jnp reference"

        fns = [(jc, (x, scale, bias, jstate, ct)), (fc, (x, scale, bias, fstate, ct)), floor_fns[dt]]
        if name != "batch_norm":
            fns.append(bn_fns[dt])
        timed = _time_alternating(fns, repeats)
        (jms, jmin), (fms, fmin), (hms, _) = timed[:3]
        floor = 2 * hms
        bn_ms = timed[3][0] if name != "batch_norm" else jms
        rec |= {
            "jaxnorm_ms": round(jms, 4),
            "flax_ms": round(fms, 4),
            "ratio_vs_flax": round(jms / fms, 3),
            "ratio_vs_floor": round(jms / floor, 3),
            "ratio_vs_jaxnorm_bn": round(jms / bn_ms, 3),
            "flax_ratio_vs_floor": round(fms / floor, 3),
            "floor_ms": round(floor, 4),
            "jaxnorm_bn_ms": round(bn_ms, 4),
            "jaxnorm_min_ms": round(jmin, 4),
            "flax_min_ms": round(fmin, 4),
            "jaxnorm_compile_s": round(jt, 3),
            "flax_compile_s": round(ft, 3),
            "repeats": repeats,
        }
        results.append(rec)
        print(json.dumps(rec), flush=True)
    return results


def summarize(results, base, shape, pattern) -> bool:
    paired = [r for r in results if r["check_vs"] == "flax"]
    key = lambda r: f"{r['name']}:{r['dtype']}"  # noqa: E731
    summary = base | {
        "name": "summary",
        "cotangent": pattern,
        "shape": list(shape),
        "all_agree": all(r["agree"] for r in results),
        "le_1.0x_flax": {key(r): r["ratio_vs_flax"] <= TARGET_VS_FLAX for r in paired},
        "le_1.3x_floor": {key(r): r["ratio_vs_floor"] <= TARGET_VS_FLOOR for r in results},
        "goal_le_0.8x_flax": {key(r): r["ratio_vs_flax"] <= GOAL_VS_FLAX for r in paired},
        "goal_gn_ln_in_le_1.15x_bn": {
            r["name"]: r["ratio_vs_jaxnorm_bn"] <= TARGET_VS_BN
            for r in results
            if r["name"] in ("group_norm", "layer_norm", "instance_norm")
        },
    }
    print(json.dumps(summary), flush=True)
    return summary["all_agree"]


if __name__ == "__main__":
    sys.exit(main())
