"""Training throughput with the bounded dispatch queue (at most ``stage.MAX_IN_FLIGHT`` = 2 steps ahead of the
device) against an unbounded queue (JAX's async dispatch left alone until the next log/checkpoint boundary).

The whole training loop (``loop.train_and_evaluate``: input pipeline, prefetch to device, the jitted step) on two
configs: the default run (a 1-D CNN on MNIST-1D) and a heavy step (the smoke 2-D CNN, wider and on a larger batch).
Runs alternate between the two settings; the figure is the median over runs of the steps/s of each run's log rows
after the first (the first holds compilation). Prints one JSON line per figure.

    python benchmarks/dispatch.py [--runs 3] [--steps 200]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile

from jaxnorm.lab.train import loop, stage
from jaxnorm.lab.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, **overrides):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for k, v in overrides.items():
        if "." in k:
            group, key = k.split(".")
            c[group][key] = v
        else:
            c[k] = v
    return c


def steps_per_sec(config, in_flight: int) -> float:
    stage.MAX_IN_FLIGHT = in_flight
    with tempfile.TemporaryDirectory() as wd:
        loop.train_and_evaluate(config, wd)
        rows = [r for r in read_metrics(wd) if r["split"] == "train"]
    return statistics.median(r["steps_per_sec"] for r in rows[1:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--steps", type=int, default=200)
    args = p.parse_args(argv)
    n, every = args.steps, max(args.steps // 5, 1)
    common = dict(num_steps=n, log_every=every, checkpoint_every=10**6, eval_every=10**6, progress=False)
    configs = {
        "default": _config("default", **common),
        "heavy": _config("smoke", batch_size=512, **common, **{"model_kwargs.channels": (128, 128)}),
    }
    for name, config in configs.items():
        got: dict[str, list[float]] = {"bounded": [], "unbounded": []}
        for _ in range(args.runs):
            got["bounded"].append(steps_per_sec(config, 2))
            got["unbounded"].append(steps_per_sec(config, 10**9))
        med = {k: statistics.median(v) for k, v in got.items()}
        for k, v in med.items():
            print(json.dumps({"figure": f"{name}_steps_per_sec_{k}", "value": round(v, 3), "runs": got[k]}))
        print(
            json.dumps(
                {"figure": f"{name}_bounded_over_unbounded", "value": round(med["bounded"] / med["unbounded"], 3)}
            )
        )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
