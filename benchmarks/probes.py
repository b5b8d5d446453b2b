"""Benchmark: the landscape probes next to their floors, in one process.

Prints one JSON line per measurement::

    python benchmarks/probes.py                      # simple_cnn (32, 32, 64, 64), batch norm, 128×28×28×1, K = 8
    python benchmarks/probes.py --small              # channels (8, 16), batch 32, 16×16: quick
    python benchmarks/probes.py --repeats 7 --chunks none,1,4
    python benchmarks/probes.py --only dataset,surface,per_layer --num-batches 8 --surface-chunks none,1,21

* ``santurkar``: :func:`jaxnorm.probes.santurkar_probe` with K step sizes (K + 1 value-and-gradient evaluations in
  one compiled call; ``chunk=None`` vmaps all K, ``chunk=1`` runs them one at a time, as straight-line code on CPU
  or in a ``lax.scan`` loop with ``1:loop``) vs the floor: K separate
  calls of one jitted ``value_and_grad`` of the same loss (the time a user pays probing by hand, minus the ``g``
  the probe also needs). Target ≤ 1.2× the floor. The line also says whether the probe retraced when called again
  with new parameters and step sizes (it must not).
* ``hvp``: one Hessian-vector product (forward-over-reverse, :func:`jaxnorm.probes.hvp`) and one power-iteration step
  (from :func:`jaxnorm.probes.hessian_top_eigenvalues`: its time over ``--power-iters`` steps + the final Rayleigh
  quotient, per product; ``loop='host'``, one compiled call per step, and ``loop='device'``, one ``while_loop``) vs
  one jitted gradient. Expected ≈ 2–3×. On XLA:CPU the device loop is slow for convolutions (jax-ml/jax#12868).
* ``dataset``: the data-set average Hessian-vector product, :func:`jaxnorm.probes.hvp` on
  ``jp.dataset(batches)`` of ``--num-batches`` B batches shaped like the batch (other random draws), one jitted
  call vs the floor: B calls of the jitted single-batch ``hvp``, one per batch. Target ≤ 1.05× the floor. A second
  line times one single-batch HVP vs one jitted gradient (target ≤ 2.2×).
* ``surface``: a 21×21 filter-normalized 2-D loss surface, :func:`jaxnorm.probes.loss_slice_2d` (``steps=21,
  span=1``, directions from ``jax.random.key(2)``) with each plan of ``--surface-chunks`` (``none``, its default:
  one vmap of all 441 points; ``1``: one point at a time, in a ``lax.scan`` loop as 441 > 32 groups; ``c``: groups
  of c, straight-line code on CPU up to 32 groups) vs the floor: the same directions and 441 losses
  ``L(w + a·d₁ + b·d₂)`` in one jitted ``vmap`` over the ``(441, 2)`` coordinates. Target ≤ 1.1× the floor. Runs
  on the first ``--surface-batch`` examples of the batch (default 4, 32 with ``--small``: 441 forward passes a
  call, and XLA:CPU runs the vmap of convolutions with per-point kernels about 10× slower than 441 single passes).
* ``per_layer``: :func:`jaxnorm.probes.curvature_per_layer` (per layer of :func:`jaxnorm.probes.layer_names`, one
  top eigenvalue of its diagonal block: ``--power-iters`` power-iteration steps + the final Rayleigh quotient, block
  products; the layers' traces from one Hutchinson run of ``--trace-samples`` whole-model products) vs the
  whole-model pair with the same settings: :func:`jaxnorm.probes.hessian_top_eigenvalues` +
  :func:`jaxnorm.probes.hessian_trace` (all with their default ``tol`` and ``loop``; power iteration may stop
  early, so the product counts are upper bounds). Target ≤ 1.2× the pair; the line also gives the number of layers,
  the products each does and the mean time per product, and the sum of the layers' traces next to the model's.
* ``costs``: every probe's run and compile cost in gradient steps (the unit: one jitted ``value_and_grad`` of the
  same loss; compile = first call less a steady call), each as the probe step runs it by default: one HVP, a block
  of ``--block`` HVPs in one ``vmap`` (per vector), the Santurkar probe, the top eigenvalue by power iteration and
  by subspace iteration, Hutchinson's trace one product at a time and as one block, sharpness cold (20 products) and
  warm-started every ``--track-every`` SGD steps (its mean products per call), the per-layer table, an 11×11
  surface and ICS.
* ``sharpness_tol``: the tracked sharpness's residual tolerance against its cost: for each ``--tols`` value,
  ``--tracked`` warm-started calls ``--track-every`` SGD steps apart, their mean products and time per call (in
  gradient steps) and the largest relative error of λ_max against a cold run converged to 1e-6 (not in the
  default ``--only``).

The loss is :func:`jaxnorm.probes.model_loss_fn` (train mode: batch statistics, a fixed dropout key). Each function
is compiled first (compile time reported), warmed up, then timed as the median wall time of ``--repeats`` calls
ending in ``jax.block_until_ready`` (``surface`` and ``per_layer``, seconds a call, take their first call as the
warm-up); probe and floor alternate round by round so load drift hits both alike.
Benchmarks never assert: they print figures. On a shared CPU the ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

import jaxnorm.probes as jp
from jaxnorm.lab.models import build_model
from jaxnorm.probes import _common as _pc


def _block(x):
    return jax.block_until_ready(x)


def _time_rounds(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median wall time (ms) of each zero-argument fn, interleaved round by round."""
    for f in fns.values():
        for _ in range(warmup):
            _block(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            _block(f())
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def _plan(spec: str) -> dict:
    if spec == "device":  # the one-program plan with its default chunk ('auto')
        return {"loop": "device"}
    if spec.startswith("host"):  # host, host:G — loop='host' with G evaluations per compiled call
        _, _, group = spec.partition(":")
        return {"loop": "host", "group": int(group or 1)}
    c, _, loop = spec.partition(":")
    chunk = {"none": None, "auto": "auto"}[c] if c in ("none", "auto") else int(c)
    return {"chunk": chunk, **({"unroll": False} if loop == "loop" else {})}


def _with_plan(fn, plan: dict):
    """``fn`` with a plan of ``_plan``: ``chunk`` is an argument, ``loop``/``group``/``unroll`` the probes' private
    execution knobs (the public functions choose them automatically)."""
    knobs = {k: v for k, v in plan.items() if k in _pc.KNOBS}
    return functools.partial(_pc.planned(fn, **knobs), **{k: v for k, v in plan.items() if k not in _pc.KNOBS})


def _timed_first_call(f):
    t0 = time.perf_counter()
    _block(f())
    return time.perf_counter() - t0


def _first_calls(fns: dict) -> tuple[dict, dict]:
    """Each fn's first call: its time (s; compilation included) and its result."""
    compile_s, outs = {}, {}
    for k, f in fns.items():
        compile_s[k] = _timed_first_call(lambda k=k, f=f: outs.setdefault(k, f()))
    return compile_s, outs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--channels", default=None, help="comma-separated conv widths (default 32,32,64,64)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="image side (default 28)")
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--k", type=int, default=8, help="number of step sizes")
    ap.add_argument(
        "--chunks",
        default="auto,device,none,host:3",
        help="probe evaluation plans to time: auto (the default: loop='host' eagerly on CPU), device (one "
        "program, chunk='auto'), none (one vmap), an int c (groups of c, "
        "straight-line on CPU), c:loop (groups of c in a lax.scan loop), host[:G] (loop='host', G "
        "evaluations per compiled call)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--power-iters", type=int, default=4)
    ap.add_argument("--power-loops", default="host,device", help="hessian_top_eigenvalues loop modes to time")
    ap.add_argument("--num-batches", type=int, default=4, help="batches in the data set of the dataset bench")
    ap.add_argument(
        "--surface-batch",
        type=int,
        default=None,
        help="examples per loss of the surface bench (default 4, 32 with --small; at most --batch): 441 "
        "forward passes per call, and on XLA:CPU their vmap (the floor) is slow for convolutions",
    )
    ap.add_argument(
        "--surface-chunks",
        default="none,1",
        help="loss_slice_2d evaluation plans to time, as --chunks (none: its default, one vmap)",
    )
    ap.add_argument("--trace-samples", type=int, default=4, help="Hutchinson samples of the per_layer bench")
    ap.add_argument("--block", type=int, default=8, help="vectors per block of the costs bench (hvp batched)")
    ap.add_argument("--track-every", type=int, default=5, help="SGD steps between tracked sharpness calls (costs)")
    ap.add_argument("--tol", type=float, default=3e-2, help="the tracked sharpness's residual tolerance (costs)")
    ap.add_argument("--tols", default="3e-3,1e-2,3e-2,1e-1", help="residual tolerances of the sharpness_tol bench")
    ap.add_argument("--tracked", type=int, default=12, help="tracked calls of the sharpness_tol bench")
    ap.add_argument("--only", default="santurkar,hvp,dataset,surface,per_layer,costs")
    args = ap.parse_args(argv)

    channels = tuple(int(c) for c in (args.channels or ("8,16" if args.small else "32,32,64,64")).split(","))
    batch_size = args.batch or (32 if args.small else 128)
    size = args.size or (16 if args.small else 28)
    model = build_model("simple_cnn", channels=channels, norm=args.norm, num_classes=10)
    kx, ky, kp, kd = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (batch_size, size, size, 1), jnp.float32)
    y = jax.random.randint(ky, (batch_size,), 0, 10)
    batch = {"x": x, "y": y}
    variables = model.init(kp, x, train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    model_loss = jp.model_loss_fn(model, batch_stats, kd)
    traces = []

    def loss_fn(p, b):  # runs only while a program using it is traced
        traces.append(1)
        return model_loss(p, b)

    lr = 0.1
    common = {
        "model": "simple_cnn",
        "channels": list(channels),
        "norm": args.norm,
        "batch": batch_size,
        "input": [size, size, 1],
        "params": otu.tree_size(params),
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    only = set(args.only.split(","))

    vg = jax.jit(jax.value_and_grad(loss_fn))
    grad_fn = jax.jit(jax.grad(loss_fn))

    if "santurkar" in only:
        etas = jp.eta_grid(lr, num=args.k)
        g = grad_fn(params, batch)
        shifted = [jax.tree.map(lambda w, d, e=e: w - e * d, params, g) for e in np.asarray(etas)]
        _block(shifted)

        def floor():
            return [vg(p, batch) for p in shifted]

        fns = {"floor": floor}
        compile_s = {"floor": _timed_first_call(lambda: vg(params, batch))}
        plans = {f"probe_chunk_{c}": _plan(c) for c in args.chunks.split(",")}
        for name, plan in plans.items():
            fns[name] = lambda plan=plan: _with_plan(jp.santurkar_probe, plan)(loss_fn, params, batch, etas=etas)
            compile_s[name] = _timed_first_call(fns[name])
        # no recompilation: new parameters and step sizes of the same shapes reuse the compiled probe
        traces_before = len(traces)
        p2 = jax.tree.map(lambda w: w * 1.01, params)
        for plan in plans.values():
            _block(_with_plan(jp.santurkar_probe, plan)(loss_fn, p2, batch, etas=etas * 0.5))
        retraced = len(traces) != traces_before
        ms = _time_rounds(fns, args.repeats)
        for name in fns:
            if name == "floor":
                continue
            print(
                json.dumps(
                    {
                        "bench": "santurkar",
                        "impl": name,
                        "plan": plans[name],
                        "k": args.k,
                        "ms": round(ms[name], 2),
                        "floor_ms": round(ms["floor"], 2),
                        "ratio_vs_floor": round(ms[name] / ms["floor"], 3),
                        "target": 1.2,
                        "floor": f"{args.k} separate jitted value_and_grad calls",
                        "evaluations": f"{args.k}+1 value_and_grad",
                        "compile_s": round(compile_s[name], 2),
                        "floor_compile_s": round(compile_s["floor"], 2),
                        # first call minus one steady call: compiling alone (floor: one value_and_grad)
                        "compile_only_ratio": round(
                            (compile_s[name] - ms[name] / 1e3) / (compile_s["floor"] - ms["floor"] / 1e3 / args.k), 2
                        ),
                        "retraced_on_new_values": retraced,
                        "repeats": args.repeats,
                        **common,
                    }
                ),
                flush=True,
            )

    v = jax.tree.map(lambda w: jnp.ones_like(w) / np.sqrt(w.size), params)
    hvp_j = jax.jit(lambda p, b, v: jp.hvp(loss_fn, p, b, v))

    if "hvp" in only:
        iters = args.power_iters

        def power(loop):
            return lambda: _pc.planned(jp.hessian_top_eigenvalues, loop=loop)(
                loss_fn, params, batch, k=1, key=jax.random.key(1), num_iters=iters, tol=0.0
            )[0]

        loops = [lp for lp in args.power_loops.split(",") if lp]
        fns = {
            "grad": lambda: grad_fn(params, batch),
            "hvp": lambda: hvp_j(params, batch, v),
            **{f"power_{lp}": power(lp) for lp in loops},
        }
        compile_s = {k: _timed_first_call(f) for k, f in fns.items()}
        ms = _time_rounds(fns, args.repeats)
        print(
            json.dumps(
                {
                    "bench": "hvp",
                    "impl": "hvp (jvp of grad)",
                    "ms": round(ms["hvp"], 2),
                    "grad_ms": round(ms["grad"], 2),
                    "ratio_vs_grad": round(ms["hvp"] / ms["grad"], 3),
                    "expected": "2-3x",
                    "compile_s": round(compile_s["hvp"], 2),
                    "repeats": args.repeats,
                    **common,
                }
            ),
            flush=True,
        )
        for loop in loops:
            # power iteration: `iters` steps + 1 final Rayleigh-quotient HVP
            per_step = ms[f"power_{loop}"] / (iters + 1)
            print(
                json.dumps(
                    {
                        "bench": "hvp",
                        "impl": f"power_iteration_step (loop={loop!r})",
                        "ms": round(per_step, 2),
                        "grad_ms": round(ms["grad"], 2),
                        "ratio_vs_grad": round(per_step / ms["grad"], 3),
                        "expected": "2-3x",
                        "power_iters": iters,
                        "power_total_ms": round(ms[f"power_{loop}"], 2),
                        "compile_s": round(compile_s[f"power_{loop}"], 2),
                        "repeats": args.repeats,
                        **common,
                    }
                ),
                flush=True,
            )

    if "dataset" in only:
        nb = args.num_batches
        batches = []
        for kb in jax.random.split(jax.random.key(3), nb):
            kbx, kby = jax.random.split(kb)
            batches.append(
                {"x": jax.random.normal(kbx, x.shape, x.dtype), "y": jax.random.randint(kby, y.shape, 0, 10)}
            )
        _block(batches)
        ds = jp.dataset(batches)  # stacked on the host, as a user builds it
        hvp_ds = jax.jit(lambda p, d, v: jp.hvp(loss_fn, p, d, v))

        def floor():
            return [hvp_j(params, b, v) for b in batches]

        fns = {
            "dataset_hvp": lambda: hvp_ds(params, ds, v),
            "floor": floor,
            "grad": lambda: grad_fn(params, batch),
            "hvp": lambda: hvp_j(params, batch, v),
        }
        compile_s, outs = _first_calls(fns)
        ref = jax.tree.map(lambda *hs: sum(hs) / nb, *outs["floor"])
        diff = max(
            float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(outs["dataset_hvp"]), jax.tree.leaves(ref))
        )
        scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(ref))
        ms = _time_rounds(fns, args.repeats)
        print(
            json.dumps(
                {
                    "bench": "dataset",
                    "impl": f"hvp on jp.dataset of {nb} batches (one jitted call)",
                    "ms": round(ms["dataset_hvp"], 2),
                    "floor_ms": round(ms["floor"], 2),
                    "ratio_vs_floor": round(ms["dataset_hvp"] / ms["floor"], 3),
                    "target": 1.05,
                    "floor": f"{nb} calls of the jitted single-batch hvp",
                    "num_batches": nb,
                    "dataset_arrays": type(jax.tree.leaves(ds.stacked)[0]).__name__,
                    "max_abs_diff_vs_floor_mean": diff,
                    "max_abs_floor_mean": scale,
                    "compile_s": round(compile_s["dataset_hvp"], 2),
                    "floor_compile_s": round(compile_s["floor"], 2),
                    "repeats": args.repeats,
                    **common,
                }
            ),
            flush=True,
        )
        print(
            json.dumps(
                {
                    "bench": "dataset",
                    "impl": "hvp (jvp of grad), one batch",
                    "ms": round(ms["hvp"], 2),
                    "grad_ms": round(ms["grad"], 2),
                    "ratio_vs_grad": round(ms["hvp"] / ms["grad"], 3),
                    "target": 2.2,
                    "compile_s": round(compile_s["hvp"], 2),
                    "repeats": args.repeats,
                    **common,
                }
            ),
            flush=True,
        )

    if "surface" in only:
        steps, span, skey = 21, 1.0, jax.random.key(2)
        sb = min(args.surface_batch or (32 if args.small else 4), batch_size)
        sbatch = {"x": x[:sb], "y": y[:sb]}
        grid = jnp.linspace(-span, span, steps, dtype=jnp.float32)
        coords = jnp.stack(jnp.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)

        @jax.jit
        def surface_floor(p, b, d1, d2, coords):
            def at(c):
                return loss_fn(jax.tree.map(lambda w, u, t: w + c[0] * u + c[1] * t, p, d1, d2), b)

            return jax.vmap(at)(coords)

        def floor():
            k1, k2 = jax.random.split(skey)  # the directions loss_slice_2d draws
            d1, d2 = jp.filter_normalized_direction(k1, params), jp.filter_normalized_direction(k2, params)
            return surface_floor(params, sbatch, d1, d2, coords).reshape(steps, steps)

        plans = {f"probe_chunk_{c}": _plan(c) for c in args.surface_chunks.split(",") if c}
        fns = {"floor": floor}
        for name, plan in plans.items():
            fns[name] = lambda plan=plan: _with_plan(jp.loss_slice_2d, plan)(
                loss_fn, params, sbatch, key=skey, steps=steps, span=span
            )["losses"]
        compile_s, outs = _first_calls(fns)
        diffs = {name: float(jnp.max(jnp.abs(outs[name] - outs["floor"]))) for name in plans}
        ms = _time_rounds(fns, args.repeats, warmup=0)  # the first calls were the warm-up (seconds each)
        n_pts = steps * steps
        for name, plan in plans.items():
            chunk = plan["chunk"]
            chunk = (1 if jax.default_backend() == "cpu" else None) if chunk == "auto" else chunk
            if chunk is None or chunk >= n_pts:
                how = f"one vmap of {n_pts}"
            else:
                groups = n_pts // chunk
                unrolled = plan.get("unroll", jax.default_backend() == "cpu" and groups <= _pc.MAX_UNROLL)
                how = (
                    f"{groups} groups of {chunk}"
                    + (f" + a vmap of {n_pts % chunk}" if n_pts % chunk else "")
                    + (", straight-line" if unrolled else ", lax.scan loop")
                )
            print(
                json.dumps(
                    {
                        "bench": "surface",
                        "impl": name,
                        "plan": plan,
                        "evaluation": how,
                        "grid": [steps, steps],
                        "ms": round(ms[name], 2),
                        "floor_ms": round(ms["floor"], 2),
                        "ratio_vs_floor": round(ms[name] / ms["floor"], 3),
                        "target": 1.1,
                        "floor": f"{n_pts} losses in one jitted vmap",
                        "max_abs_diff_vs_floor": diffs[name],
                        "compile_s": round(compile_s[name], 2),
                        "floor_compile_s": round(compile_s["floor"], 2),
                        "repeats": args.repeats,
                        **common,
                        "batch": sb,
                    }
                ),
                flush=True,
            )

    if "per_layer" in only:
        iters, samples, pkey = args.power_iters, args.trace_samples, jax.random.key(4)
        k_eig, k_trace = jax.random.split(pkey)  # the keys curvature_per_layer uses for every layer
        names = jp.layer_names(params)

        def per_layer():
            t = jp.curvature_per_layer(loss_fn, params, batch, key=pkey, num_iters=iters, num_samples=samples)
            return [(r["top_eigenvalue"], r["trace"]) for r in t.values()]

        def full():
            vals, _ = jp.hessian_top_eigenvalues(loss_fn, params, batch, key=k_eig, num_iters=iters)
            tr = jp.hessian_trace(loss_fn, params, batch, key=k_trace, num_samples=samples)
            return vals[0], tr["trace"]

        fns = {"per_layer": per_layer, "full": full}
        compile_s, outs = _first_calls(fns)
        table, (lam, tr) = outs["per_layer"], outs["full"]
        traces_before = len(traces)
        ms = _time_rounds(fns, args.repeats, warmup=0)  # the first calls were the warm-up (every step compiled)
        retraced = len(traces) != traces_before  # the timed calls must reuse the compiled steps
        per_full = iters + 1 + samples  # at most: power iteration may stop early
        per_all = len(names) * (iters + 1) + samples  # block products for the eigenvalues, one trace run
        print(
            json.dumps(
                {
                    "bench": "per_layer",
                    "impl": "curvature_per_layer",
                    "ms": round(ms["per_layer"], 2),
                    "full_ms": round(ms["full"], 2),
                    "ratio_vs_full": round(ms["per_layer"] / ms["full"], 3),
                    "target": 1.2,
                    "full": "hessian_top_eigenvalues + hessian_trace of the whole model",
                    "num_layers": len(names),
                    "layers": names,
                    "power_iters": iters,
                    "trace_samples": samples,
                    "products_at_most": per_all,
                    "full_products_at_most": per_full,
                    "products": f"{len(names)} x ({iters}+1) block + {samples} whole-model",
                    "ms_per_product": round(ms["per_layer"] / per_all, 2),
                    "full_ms_per_product": round(ms["full"] / per_full, 2),
                    "per_product_ratio": round((ms["per_layer"] / per_all) / (ms["full"] / per_full), 3),
                    "max_layer_top_eigenvalue": max((float(r[0]) for r in table), key=abs),
                    "full_top_eigenvalue": float(lam),
                    "sum_layer_traces": float(sum(float(r[1]) for r in table)),
                    "full_trace": float(tr),
                    "retraced_when_timed": retraced,
                    "compile_s": round(compile_s["per_layer"], 2),
                    "full_compile_s": round(compile_s["full"], 2),
                    "repeats": args.repeats,
                    **common,
                }
            ),
            flush=True,
        )

    if "costs" in only:
        _costs(args, loss_fn, params, batch, common)
    if "sharpness_tol" in only:
        _sharpness_tolerances(args, loss_fn, params, batch, vg, common)


def _sharpness_tolerances(args, loss_fn, params, batch, vg, common):
    """The tracked sharpness's trade-off: for each ``--tols`` value, ``--tracked`` calls ``--track-every`` SGD steps
    apart, warm-started: the mean products and wall time per call (in gradient steps) against the largest relative
    error of λ_max, the reference a cold Lanczos run to a residual of 1e-6·|λ| (at most 100 products)."""
    lr, key = 0.1, jax.random.key(5)
    states, p = [], params
    for _ in range(args.tracked):
        for _ in range(args.track_every):
            p = jax.tree.map(lambda w, g: w - lr * g, p, vg(p, batch)[1])
        states.append(p)
    _block(states)
    unit_ms = _time_rounds({"grad": lambda: vg(params, batch)}, args.repeats)["grad"]
    ref = [jp.sharpness(loss_fn, s, batch, lr=lr, key=key, num_iters=100, tol=1e-6)["lambda_max"] for s in states]
    for tol in (float(t) for t in args.tols.split(",")):
        v0, products, errors, ms = None, [], [], []
        for i, s in enumerate(states):
            t0 = time.perf_counter()
            res = jp.sharpness(loss_fn, s, batch, lr=lr, v0=v0, key=key, num_iters=20, tol=tol)
            _block(res["eigenvector"])
            if i:  # the first call is cold
                ms.append((time.perf_counter() - t0) * 1e3)
                products.append(res["num_products"])
                errors.append(abs(res["lambda_max"] - ref[i]) / abs(ref[i]))
            v0 = res["eigenvector"]
        row = {
            "bench": "sharpness_tol",
            "tol": tol,
            "products_per_call": round(float(np.mean(products)), 2),
            "grad_steps_per_call": round(float(np.mean(ms)) / unit_ms, 2),
            "max_rel_error": float(f"{max(errors):.2g}"),
            "mean_rel_error": float(f"{np.mean(errors):.2g}"),
            "tracked_calls": len(products),
            "track_every": args.track_every,
            "lambda_max_range": [round(min(ref), 3), round(max(ref), 3)],
            "unit_ms": round(unit_ms, 2),
            **common,
        }
        print(json.dumps(row), flush=True)


def _costs(args, loss_fn, params, batch, common):
    """Every probe's run and compile cost in gradient steps of the same model (the unit: one jitted
    ``value_and_grad``), each probe as ``make_probe_fn`` runs it by default. One JSON line per probe."""

    def fresh():  # a new loss function per probe: no probe reuses another's compiled programs
        return lambda p, b: loss_fn(p, b)

    vg = jax.jit(jax.value_and_grad(fresh()))  # the unit, compiled here (not shared with the other benches)
    unit_first = _timed_first_call(lambda: vg(params, batch))

    key, lr = jax.random.key(5), 0.1
    k = args.block
    vecs = jax.tree.map(lambda w: jax.random.normal(key, (k,) + w.shape, w.dtype), params)
    one = jax.tree.map(lambda w: w[0], vecs)

    def grad_step(p):  # SGD: the steps the tracked sharpness follows
        return jax.tree.map(lambda w, g: w - lr * g, p, vg(p, batch)[1])

    # the tracked run: SGD states --track-every steps apart (computed first: only the sharpness calls are timed)
    states = [params]
    for _ in range(args.repeats + 2):
        p = states[-1]
        for _ in range(args.track_every):
            p = grad_step(p)
        states.append(p)
    _block(states)
    tracked: dict = {"v0": None, "calls": 0, "products": []}
    warm_loss = fresh()

    def sharpness_warm():  # the next state's λ_max, warm-started from the last call's eigenvector
        p = states[tracked["calls"] % len(states)]
        res = jp.sharpness(warm_loss, p, batch, lr=lr, v0=tracked["v0"], key=key, num_iters=20, tol=args.tol)
        tracked["calls"] += 1
        tracked["v0"] = res["eigenvector"]
        tracked["products"].append(int(res["num_products"]))
        return res["lambda_max"]

    probes = {
        "grad (value_and_grad)": (lambda: vg(params, batch), 1),
        "hvp": (lambda f=fresh(): jp.hvp(f, params, batch, one), 1),
        f"hvp batched K={k} (per vector)": (lambda f=fresh(): jp.hvp(f, params, batch, vecs, batched=True), k),
        "santurkar (K=8, default plan)": (lambda f=fresh(): jp.santurkar_probe(f, params, batch, lr=lr), 1),
        "top_eigenvalues (power, k=1, 20 iters)": (
            lambda f=fresh(): jp.hessian_top_eigenvalues(f, params, batch, key=key, num_iters=20)[0],
            1,
        ),
        "top_eigenvalues (subspace, k=1, block 3, 10 iters)": (
            lambda f=fresh(): jp.hessian_top_eigenvalues(f, params, batch, key=key, num_iters=10, method="subspace")[0],
            1,
        ),
        "hessian_trace (10 samples, chunk 1)": (
            lambda f=fresh(): jp.hessian_trace(f, params, batch, key=key, num_samples=10)["trace"],
            1,
        ),
        "hessian_trace (10 samples, one block)": (
            lambda f=fresh(): jp.hessian_trace(f, params, batch, key=key, num_samples=10, chunk=None)["trace"],
            1,
        ),
        "sharpness (cold, 20 products)": (
            lambda f=fresh(): jp.sharpness(f, params, batch, lr=lr, key=key, num_iters=20, tol=0.0)["lambda_max"],
            1,
        ),
        f"sharpness (warm, every {args.track_every} steps)": (sharpness_warm, 1),
        "curvature_per_layer (10 iters, 10 samples)": (
            lambda f=fresh(): jp.curvature_per_layer(f, params, batch, key=key, num_iters=10, num_samples=10),
            1,
        ),
        "loss_slice_2d (11x11)": (lambda f=fresh(): jp.loss_slice_2d(f, params, batch, key=key, steps=11)["losses"], 1),
        "ics (every layer)": (lambda f=fresh(): jp.internal_covariate_shift(f, params, batch, lr=lr), 1),
    }
    first = {name: _timed_first_call(f) for name, (f, _) in probes.items()}
    first["grad (value_and_grad)"] = unit_first
    ms = _time_rounds({name: f for name, (f, _) in probes.items()}, args.repeats)
    unit_ms = ms["grad (value_and_grad)"]
    unit_compile = unit_first - unit_ms / 1e3
    for name, (_, per) in probes.items():
        compile_s = max(first[name] - ms[name] / 1e3, 0.0)  # the first call less a steady one: compiling
        row = {
            "bench": "costs",
            "probe": name,
            "ms": round(ms[name] / per, 2),
            "grad_steps": round(ms[name] / per / unit_ms, 2),
            "compile_s": round(compile_s, 2),
            "compile_grad_steps": round(compile_s / unit_compile, 2),
            "unit": "one jitted value_and_grad of the same loss",
            "unit_ms": round(unit_ms, 2),
            "unit_compile_s": round(unit_compile, 2),
            "repeats": args.repeats,
            **common,
        }
        if name.startswith("sharpness (warm"):
            row["products_per_call"] = round(float(np.mean(tracked["products"][1:])), 2)
            row["tracked_calls"] = len(tracked["products"])
        if per > 1:
            row["per"] = f"vector of {per}"
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
