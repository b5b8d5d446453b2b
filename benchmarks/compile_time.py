"""XLA:CPU compile time under flag settings: what the test suite, a sweep of short runs and a notebook wait for.

A run of a few steps, a test, a notebook cell with a new shape: each compiles more than it runs, so the seconds go
to XLA's compiler. This measures how the settings below change that, on this CPU. Every setting runs in a fresh
process (XLA reads its flags once) with the persistent compilation cache off, and times ``jit(f).lower(x).compile()``
of three kinds of program, each at several distinct shapes (a new shape is a new compile):

- ``one_op``: ``sum(x * x, axis=0)`` at 40 shapes, what an eager ``jnp`` call or a tiny jitted helper costs;
- ``batch_norm_grad``: the gradient of ``sum(batch_norm(x)^2)`` at 10 shapes, a jitted transform in a test;
- ``simple_cnn_step``: the SimpleCNN train step (4 convs with BN, SGD momentum), at 2 widths;

then the SimpleCNN step's run time (batch 128, 28x28x1, median after warm-up), because a setting that compiles
faster may run slower. Prints one JSON line per (setting, program): milliseconds per compile, and ``step_ms``.

    python benchmarks/compile_time.py [--settings default,o0,emitters_off,o0_emitters_off] [--repeats 20]

``tests/conftest.py`` uses ``o0_emitters_off`` for the suite (measured there, in its comment).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from xla_flags import run_child, with_flags  # benchmarks/xla_flags.py: one setting in a fresh process

SETTINGS: dict[str, str] = {
    "default": "",
    "o0": "--xla_backend_optimization_level=0",
    "emitters_off": "--xla_cpu_use_fusion_emitters=false",
    "o0_emitters_off": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
}
SETTING_FLAGS = ("--xla_backend_optimization_level", "--xla_cpu_use_fusion_emitters")


def _compile_ms(f, *args) -> float:
    import jax

    t0 = time.perf_counter()
    jax.jit(f).lower(*args).compile()
    return 1e3 * (time.perf_counter() - t0)


def measure(repeats: int) -> dict[str, float]:
    """Mean compile milliseconds per program kind and the SimpleCNN step's median run time, in this process."""
    import jax
    import jax.numpy as jnp

    import jaxnorm as jn
    from benchmarks.train_step import time_step
    from jaxnorm.lab import models

    jax.config.update("jax_enable_compilation_cache", False)
    out = {
        "one_op": statistics.mean(_compile_ms(lambda a: jnp.sum(a * a, axis=0), jnp.ones((n, 7))) for n in range(3, 43))
    }

    def bn_grad(x):
        c = x.shape[-1]

        def loss(x):
            return jnp.sum(jn.batch_norm(x, jnp.ones(c), jnp.zeros(c), jn.init_batch_stats(c), train=True)[0] ** 2)

        return jax.grad(loss)(x)

    out["batch_norm_grad"] = statistics.mean(_compile_ms(bn_grad, jnp.ones((n, 5, 5, 8))) for n in range(3, 13))
    key = jax.random.key(0)
    batch = {
        "x": jax.random.normal(key, (128, 28, 28, 1)),
        "y": jax.random.randint(key, (128,), 0, 10),
        "mask": jnp.ones((128,), bool),
    }
    compiles = []
    for width in (16, 32):
        cnn = models.build_model(
            "simple_cnn", channels=(width, width, 2 * width, 2 * width), norm="batch", momentum=0.9
        )
        timed = time_step(cnn, batch, repeats)
        compiles.append(1e3 * timed["compile_s"])
    out["simple_cnn_step"] = statistics.mean(compiles)
    out["simple_cnn_step_ms"] = timed["step_ms"]  # the (32, 32, 64, 64) network, benchmarks/train_step.py's
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed SimpleCNN steps (median reported)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repeats)))
        return 0
    names = args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    for name in names:
        flags = with_flags(os.environ.get("XLA_FLAGS", ""), SETTINGS[name], SETTING_FLAGS)
        result = run_child("benchmarks.compile_time", flags, args.repeats)
        if isinstance(result, str):
            print(json.dumps({"bench": "compile_time", "setting": name, "error": result}))
            continue
        for program, ms in result.items():
            line = {"bench": "compile_time", "setting": name, "flags": SETTINGS[name], "program": program}
            line["step_ms" if program.endswith("_ms") else "compile_ms"] = round(ms, 2)
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
