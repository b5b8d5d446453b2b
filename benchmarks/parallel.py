"""Train-step time of plain jit vs pmap vs jit+shard_map ('sharding') for the same small CNN and global batch.

On CPU the devices are faked (``--xla_force_host_platform_device_count``, default 4) and share the machine's cores,
so the figure is the overhead of each mode, not a speed-up. On a GPU machine it uses the real devices.

    python benchmarks/parallel.py [--devices 4] [--batch 128] [--repeats 30]
"""

import argparse
import os
import sys

_args = argparse.ArgumentParser()
_args.add_argument("--devices", type=int, default=4)
_args.add_argument("--batch", type=int, default=128)
_args.add_argument("--repeats", type=int, default=30)
ARGS = _args.parse_args()
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={ARGS.devices}"

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxnorm import models  # noqa: E402
from jaxnorm.train import parallel, steps  # noqa: E402


def bench(mode: str, batch: dict) -> dict:
    dp = parallel.DataParallel.create(mode)
    kw = {"axis_name": dp.axis_name} if dp.axis_name else {}
    model = models.build_model("simple_cnn", channels=(32, 32, 64, 64), norm="batch", **kw)
    init_model = models.build_model("simple_cnn", channels=(32, 32, 64, 64), norm="batch")
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
    return {"step_ms": 1e3 * statistics.median(times), "first_call_s": compile_s, "loss": float(m["loss"]),
            "devices": dp.num_devices}


def main():
    rng = np.random.default_rng(0)
    b = ARGS.batch
    batch = {"x": rng.normal(size=(b, 28, 28, 1)).astype(np.float32), "y": rng.integers(0, 10, b).astype(np.int32),
             "mask": np.ones(b, bool)}
    res = {mode: bench(mode, batch) for mode in ("none", "pmap", "sharding")}
    base = {"bench": "parallel", "backend": jax.default_backend(), "device": str(jax.devices()[0]), "batch": b}
    for mode, r in res.items():
        print(json.dumps({**base, "mode": mode, **r, "ratio_vs_jit": r["step_ms"] / res["none"]["step_ms"]}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
