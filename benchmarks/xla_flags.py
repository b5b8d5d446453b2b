"""The XLA:CPU fusion study: which YNNPACK / XNNPACK library fusions help or hurt jaxnorm's programs on this CPU.

XLA's CPU backend can hand fused dots, elementwise ops and reductions to the YNNPACK and XNNPACK libraries
(``--xla_cpu_experimental_ynn_fusion_type`` and ``--xla_cpu_experimental_xnn_fusion_type``: a comma list of
``dot``, ``eltwise``, ``reduce``, empty for none, or ``+x``/``-x`` items that edit the default list). Whether that
pays depends on the CPU, so this measures it: every setting runs in a fresh process (XLA reads its flags once), which
times

- the SimpleCNN train step (4 convs 32-32-64-64 with BN, batch 128, 28x28x1, SGD momentum), jaxnorm and plain Flax;
- a ResNet-18 x0.25 train step (CIFAR stem, batch 64, 32x32x3);
- batch, layer, group (8 groups) and instance norm, forward and backward (gradient of sum(y^2) w.r.t. x),
  128x32x32x64 float32.

Prints one JSON line per (setting, program) with the median milliseconds, then one line per program naming the
fastest setting and its speed-up over the default. ``jaxnorm.xla_cpu`` holds the setting jaxnorm uses by default.

    python benchmarks/xla_flags.py [--repeats 20] [--settings default,ynn_off,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# name -> the flags that setting adds to XLA_FLAGS (on top of the user's, with their ynn/xnn fusion flags removed)
SETTINGS: dict[str, str] = {
    "default": "",
    "ynn_off": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "ynn_eltwise": "--xla_cpu_experimental_ynn_fusion_type=eltwise",
    "ynn_reduce": "--xla_cpu_experimental_ynn_fusion_type=reduce",
    "ynn_reduce_eltwise": "--xla_cpu_experimental_ynn_fusion_type=reduce,eltwise",
    "ynn_all": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "ynn_minus_dot": "--xla_cpu_experimental_ynn_fusion_type=-dot",
    "ynn_minus_eltwise": "--xla_cpu_experimental_ynn_fusion_type=-eltwise",
    "ynn_minus_reduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "xnn_off": "--xla_cpu_experimental_xnn_fusion_type=",
    "ynn_off_xnn_off": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_xnn_fusion_type=",
    # XLA's older elemental emitters for the fusions it keeps (the test suite's setting: it compiles faster,
    # benchmarks/compile_time.py), alone and with jaxnorm's 2-D CNN list
    "emitters_off": "--xla_cpu_use_fusion_emitters=false",
    "ynn_reduce_eltwise_emitters_off": "--xla_cpu_experimental_ynn_fusion_type=reduce,eltwise "
    "--xla_cpu_use_fusion_emitters=false",
}
FUSION_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type",
    "--xla_cpu_experimental_xnn_fusion_type",
    "--xla_cpu_use_fusion_emitters",
)


def measure(repeats: int) -> dict[str, float]:
    """Median ms of every program, in this process (its XLA_FLAGS already set)."""
    import jax
    import jax.numpy as jnp

    import jaxnorm as jn
    from benchmarks.norms import _compile, _time_alternating
    from benchmarks.train_step import PlainFlaxCNN, time_step
    from jaxnorm.lab import models

    key = jax.random.key(0)

    def step_ms(model, x, n):
        batch = {"x": x, "y": jax.random.randint(key, (x.shape[0],), 0, 10), "mask": jnp.ones((x.shape[0],), bool)}
        return time_step(model, batch, n)["step_ms"]

    x = jax.random.normal(key, (128, 28, 28, 1))
    cnn = models.build_model("simple_cnn", channels=(32, 32, 64, 64), norm="batch", momentum=0.9)
    out = {"simple_cnn_step": step_ms(cnn, x, repeats), "simple_cnn_step_flax": step_ms(PlainFlaxCNN(), x, repeats)}
    resnet = models.build_model("resnet", depth=18, width=0.25, norm="batch", num_classes=10)
    out["resnet18_quarter_step"] = step_ms(resnet, jax.random.normal(key, (64, 32, 32, 3)), max(repeats // 2, 5))
    x = jax.random.normal(key, (128, 32, 32, 64)) * 3 + 1
    scale, bias = jnp.ones(64), jnp.zeros(64)
    norms = {
        "batch_norm": lambda x: jn.batch_norm(x, scale, bias, jn.init_batch_stats(64), train=True)[0],
        "layer_norm": lambda x: jn.layer_norm(x, scale, bias),
        "group_norm": lambda x: jn.group_norm(x, scale, bias, num_groups=8),
        "instance_norm": lambda x: jn.instance_norm(x, scale, bias),
    }
    for name, f in norms.items():
        compiled, _ = _compile(jax.value_and_grad(lambda x, f=f: jnp.sum(f(x) ** 2)), x)
        ((out[name], _),) = _time_alternating([(compiled, (x,))], repeats)
    return out


def with_flags(user_flags: str, add: str, owned: tuple[str, ...]) -> str:
    """The user's XLA_FLAGS without the flags a study sets (``owned``), plus ``add``."""
    kept = [f for f in user_flags.split() if not f.startswith(owned)]
    return " ".join(kept + add.split())


def run_child(module: str, flags: str, repeats: int) -> dict | str:
    """``python -m module --child --repeats N`` in a fresh process (XLA reads its flags once) with ``XLA_FLAGS`` set
    to ``flags`` and jaxnorm's own setting off: the figures of its last JSON line, or the tail of its error."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS=flags, JAXNORM_XLA_CPU="off")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    run = subprocess.run(
        [sys.executable, "-m", module, "--child", "--repeats", str(repeats)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    return run.stderr.strip()[-500:] if run.returncode else json.loads(run.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per program (median reported)")
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
    table: dict[str, dict[str, float]] = {}
    for name in names:
        flags = with_flags(os.environ.get("XLA_FLAGS", ""), SETTINGS[name], FUSION_FLAGS)
        result = run_child("benchmarks.xla_flags", flags, args.repeats)
        if isinstance(result, str):
            print(json.dumps({"bench": "xla_flags", "setting": name, "error": result}))
            continue
        table[name] = result
        for program, ms in table[name].items():
            print(
                json.dumps(
                    {
                        "bench": "xla_flags",
                        "setting": name,
                        "flags": SETTINGS[name],
                        "program": program,
                        "ms": round(ms, 3),
                    }
                ),
                flush=True,
            )
    if "default" in table:
        for program in table["default"]:
            best = min(table, key=lambda n: table[n][program])
            print(
                json.dumps(
                    {
                        "bench": "xla_flags",
                        "figure": "best",
                        "program": program,
                        "setting": best,
                        "speedup_vs_default": round(table["default"][program] / table[best][program], 3),
                    }
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
