"""Train-step time of every data-parallel mode for the same CNN, and a weak-scaling table.

* modes: plain jit on one device vs global-view jit (replicated state, and FSDP-sharded with ``shard_params``) vs
  jit+shard_map vs pmap, on the same global batch. Goals: global ≤ 1.0× the shard_map step, FSDP ≤ 1.2× the
  replicated global step.
* ``--weak-scaling 1,2,4,8``: the global-view step at an equal per-device batch on 1, 2, 4, 8 devices (one
  subprocess per device count, since the fake device count is fixed at start-up), overhead per step vs 1 device.

On CPU the devices are faked (``--xla_force_host_platform_device_count``) and share the machine's cores, so the
figures are each mode's overhead, not a speed-up. On a GPU machine the real devices are used.

    python benchmarks/parallel.py [--devices 4] [--batch 128] [--repeats 30]
    python benchmarks/parallel.py --weak-scaling 1,2,4,8 --per-device-batch 32
"""

import argparse
import os
import subprocess
import sys

_args = argparse.ArgumentParser()
_args.add_argument("--devices", type=int, default=4)
_args.add_argument("--batch", type=int, default=128)
_args.add_argument("--repeats", type=int, default=30)
_args.add_argument("--modes", default="none,global,global_fsdp,shard_map,pmap")
_args.add_argument("--weak-scaling", default="", help="comma-separated device counts, e.g. 1,2,4,8")
_args.add_argument("--per-device-batch", type=int, default=32)
ARGS = _args.parse_args()
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"
    )

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxnorm.lab import models  # noqa: E402
from jaxnorm.lab.train import parallel, steps  # noqa: E402

CHANNELS = (32, 32, 64, 64)


def bench(mode: str, batch: dict) -> dict:
    fsdp = mode == "global_fsdp"
    dp = parallel.DataParallel.create("global" if fsdp else mode, shard_params=fsdp, min_shard_size=1024)
    kw = {"axis_name": dp.axis_name} if dp.axis_name else {}
    model = models.build_model("simple_cnn", channels=CHANNELS, norm="batch", **kw)
    init_model = models.build_model("simple_cnn", channels=CHANNELS, norm="batch")
    tx = optax.sgd(0.1, momentum=0.9)
    state = dp.put_state(steps.create_state(init_model, tx, batch["x"][:2], 0))
    step = dp.compile(steps.make_train_step(model, tx, optax.constant_schedule(0.1), 0, axis_name=dp.axis_name))
    dbatch = dp.put_batch(batch)
    t0 = time.perf_counter()
    state, m = step(state, dbatch)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    for _ in range(3):
        state, m = step(state, dbatch)
    jax.block_until_ready(state)
    times = []
    for _ in range(ARGS.repeats):
        t0 = time.perf_counter()
        state, m = step(state, dbatch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    return {
        "step_ms": 1e3 * statistics.median(times),
        "first_call_s": compile_s,
        "loss": float(m["loss"]),
        "devices": dp.num_devices,
    }


def _batch(b: int) -> dict:
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(b, 28, 28, 1)).astype(np.float32),
        "y": rng.integers(0, 10, b).astype(np.int32),
        "mask": np.ones(b, bool),
    }


def weak_scaling(counts: list[int]) -> None:
    """One subprocess per device count (the fake device count is fixed when XLA starts)."""
    rows = []
    for n in counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--devices",
                str(n),
                "--batch",
                str(n * ARGS.per_device_batch),
                "--repeats",
                str(ARGS.repeats),
                "--modes",
                "none" if n == 1 else "global",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base_ms = rows[0]["step_ms"]
    for r in rows:
        print(
            json.dumps(
                {
                    "bench": "weak_scaling",
                    "backend": r["backend"],
                    "devices": r["devices"],
                    "per_device_batch": ARGS.per_device_batch,
                    "batch": r["batch"],
                    "step_ms": r["step_ms"],
                    "overhead_vs_1_device": r["step_ms"] / base_ms,
                    # on fake CPU devices the work grows with n on the same cores: the per-example cost is
                    # the comparable figure there
                    "ms_per_example_ratio": (r["step_ms"] / r["batch"]) / (base_ms / rows[0]["batch"]),
                }
            )
        )
    sys.stdout.flush()


def main():
    if ARGS.weak_scaling:
        weak_scaling([int(n) for n in ARGS.weak_scaling.split(",")])
        return
    batch = _batch(ARGS.batch)
    res = {mode: bench(mode, batch) for mode in ARGS.modes.split(",")}
    base = {"bench": "parallel", "backend": jax.default_backend(), "device": str(jax.devices()[0]), "batch": ARGS.batch}
    ref = res.get("none", next(iter(res.values())))["step_ms"]
    for mode, r in res.items():
        line = {**base, "mode": mode, **r, "ratio_vs_jit": r["step_ms"] / ref}
        if mode == "global" and "shard_map" in res:
            line["ratio_vs_shard_map"] = r["step_ms"] / res["shard_map"]["step_ms"]  # goal <= 1.0
        if mode == "global_fsdp" and "global" in res:
            line["ratio_vs_replicated"] = r["step_ms"] / res["global"]["step_ms"]  # goal <= 1.2
        print(json.dumps(line))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
