"""Benchmark: the landscape probes next to their floors, in one process.

Prints one JSON line per measurement::

    python benchmarks/probes.py                      # simple_cnn (32, 32, 64, 64), batch norm, 128×28×28×1, K = 8
    python benchmarks/probes.py --small              # channels (8, 16), batch 32, 16×16: quick
    python benchmarks/probes.py --repeats 7 --chunks none,1,4

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

The loss is :func:`jaxnorm.probes.model_loss_fn` (train mode: batch statistics, a fixed dropout key). Each function
is compiled first (compile time reported), warmed up, then timed as the median wall time of ``--repeats`` calls
ending in ``jax.block_until_ready``; probe and floor alternate round by round so load drift hits both alike.
Benchmarks never assert: they print figures. On a shared CPU the ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
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
from jaxnorm.models import build_model


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
    c, _, loop = spec.partition(":")
    chunk = {"none": None, "auto": "auto"}[c] if c in ("none", "auto") else int(c)
    return {"chunk": chunk, **({"unroll": False} if loop == "loop" else {})}


def _timed_first_call(f):
    t0 = time.perf_counter()
    _block(f())
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--channels", default=None, help="comma-separated conv widths (default 32,32,64,64)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--size", type=int, default=None, help="image side (default 28)")
    ap.add_argument("--norm", default="batch")
    ap.add_argument("--k", type=int, default=8, help="number of step sizes")
    ap.add_argument("--chunks", default="auto,none,1:loop",
                    help="probe evaluation plans to time: auto (the default), none (one vmap), an int c (groups of c, "
                         "straight-line on CPU), c:loop (groups of c in a lax.scan loop)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--power-iters", type=int, default=4)
    ap.add_argument("--power-loops", default="host,device", help="hessian_top_eigenvalues loop modes to time")
    ap.add_argument("--only", default="santurkar,hvp")
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
    common = {"model": "simple_cnn", "channels": list(channels), "norm": args.norm, "batch": batch_size,
              "input": [size, size, 1], "params": otu.tree_size(params),
              "backend": jax.default_backend(), "cpu_count": os.cpu_count(), "host": platform.node(),
              "load_avg_1m": round(os.getloadavg()[0], 2)}
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
            fns[name] = (lambda plan=plan: jp.santurkar_probe(loss_fn, params, batch, etas=etas, **plan))
            compile_s[name] = _timed_first_call(fns[name])
        # no recompilation: new parameters and step sizes of the same shapes reuse the compiled probe
        traces_before = len(traces)
        p2 = jax.tree.map(lambda w: w * 1.01, params)
        for plan in plans.values():
            _block(jp.santurkar_probe(loss_fn, p2, batch, etas=etas * 0.5, **plan))
        retraced = len(traces) != traces_before
        ms = _time_rounds(fns, args.repeats)
        for name in fns:
            if name == "floor":
                continue
            print(json.dumps({"bench": "santurkar", "impl": name, "plan": plans[name], "k": args.k,
                              "ms": round(ms[name], 2),
                              "floor_ms": round(ms["floor"], 2), "ratio_vs_floor": round(ms[name] / ms["floor"], 3),
                              "target": 1.2, "floor": f"{args.k} separate jitted value_and_grad calls",
                              "evaluations": f"{args.k}+1 value_and_grad", "compile_s": round(compile_s[name], 2),
                              "floor_compile_s": round(compile_s["floor"], 2), "retraced_on_new_values": retraced,
                              "repeats": args.repeats, **common}), flush=True)

    if "hvp" in only:
        v = jax.tree.map(lambda w: jnp.ones_like(w) / np.sqrt(w.size), params)
        hvp_j = jax.jit(lambda p, b, v: jp.hvp(loss_fn, p, b, v))
        iters = args.power_iters

        def power(loop):
            return lambda: jp.hessian_top_eigenvalues(loss_fn, params, batch, k=1, key=jax.random.key(1),
                                                      num_iters=iters, tol=0.0, loop=loop)[0]

        loops = [lp for lp in args.power_loops.split(",") if lp]
        fns = {"grad": lambda: grad_fn(params, batch), "hvp": lambda: hvp_j(params, batch, v),
               **{f"power_{lp}": power(lp) for lp in loops}}
        compile_s = {k: _timed_first_call(f) for k, f in fns.items()}
        ms = _time_rounds(fns, args.repeats)
        print(json.dumps({"bench": "hvp", "impl": "hvp (jvp of grad)", "ms": round(ms["hvp"], 2),
                          "grad_ms": round(ms["grad"], 2), "ratio_vs_grad": round(ms["hvp"] / ms["grad"], 3),
                          "expected": "2-3x", "compile_s": round(compile_s["hvp"], 2), "repeats": args.repeats,
                          **common}), flush=True)
        for loop in loops:
            # power iteration: `iters` steps + 1 final Rayleigh-quotient HVP
            per_step = ms[f"power_{loop}"] / (iters + 1)
            print(json.dumps({"bench": "hvp", "impl": f"power_iteration_step (loop={loop!r})", "ms": round(per_step, 2),
                              "grad_ms": round(ms["grad"], 2), "ratio_vs_grad": round(per_step / ms["grad"], 3),
                              "expected": "2-3x", "power_iters": iters,
                              "power_total_ms": round(ms[f"power_{loop}"], 2),
                              "compile_s": round(compile_s[f"power_{loop}"], 2), "repeats": args.repeats, **common}),
                  flush=True)


if __name__ == "__main__":
    main()
