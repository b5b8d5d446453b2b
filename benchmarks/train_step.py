"""Train-step time and compile time: jaxnorm's SimpleCNN vs the same network in plain flax.linen with nn.BatchNorm,
and vs PyTorch eager when torch is installed (``pip install torch``; ``--no-torch`` skips it).

SimpleCNN: 4 conv layers 32-32-64-64 (3×3, BN before ReLU, 2×2 max pool after the second), global average pool,
dense head; SGD with momentum 0.9; input 28×28×1, batch 128. Both JAX steps are the same function (jaxnorm's
``make_train_step``), so the only difference is the model. The PyTorch peer is the same network in NCHW
(``nn.BatchNorm2d(momentum=0.1)`` = Flax's 0.9), one step = zero_grad, forward, cross-entropy, backward,
``SGD(momentum=0.9)`` step, on ``torch.get_num_threads()`` threads (printed). Prints one JSON line per figure.

    python benchmarks/train_step.py [--repeats 50] [--batch 128] [--no-torch]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxnorm import xla_cpu
from jaxnorm.lab import models
from jaxnorm.lab.train import steps


class PlainFlaxCNN(nn.Module):
    """The reference: the same architecture written directly with flax.linen (momentum 0.9 as jaxnorm's default)."""

    channels: tuple = (32, 32, 64, 64)

    @nn.compact
    def __call__(self, x, train: bool):
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), padding="SAME", use_bias=False, kernel_init=nn.initializers.he_normal())(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            if i == 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        return nn.Dense(10)(x.mean((1, 2)))


def time_step(model, batch, repeats: int) -> dict:
    tx = optax.sgd(0.1, momentum=0.9)
    state = steps.create_state(model, tx, batch["x"], 0)
    step = jax.jit(steps.make_train_step(model, tx, optax.constant_schedule(0.1), 0))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(3):  # warm-up
        state, m = compiled(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = compiled(state, batch)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    return {"step_ms": 1e3 * statistics.median(times), "compile_s": compile_s, "loss": float(m["loss"])}


def time_torch_step(batch_size: int, repeats: int) -> dict:
    """The PyTorch eager peer: median wall time of one SGD-momentum step of the same SimpleCNN."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    layers: list = []
    cin = 1
    for i, c in enumerate((32, 32, 64, 64)):
        layers += [torch.nn.Conv2d(cin, c, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)]
        layers.append(torch.nn.ReLU())
        if i == 1:
            layers.append(torch.nn.MaxPool2d(2, 2, ceil_mode=True))  # 28 -> 14, as Flax's SAME pool
        cin = c
    model = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(batch_size, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch_size))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):  # warm-up
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    return {
        "step_ms": 1e3 * statistics.median(times),
        "loss": float(loss),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager peer")
    args = p.parse_args()
    # the setting a user's 2-D CNN run gets from train.py, before the backend starts (JAXNORM_XLA_CPU=off: XLA's
    # defaults; benchmarks/xla_flags.py compares the settings)
    xla_cpu.apply(2)
    key = jax.random.key(0)
    batch = {
        "x": jax.random.normal(key, (args.batch, 28, 28, 1)),
        "y": jax.random.randint(key, (args.batch,), 0, 10),
        "mask": jnp.ones((args.batch,), bool),
    }
    ours = models.build_model("simple_cnn", channels=(32, 32, 64, 64), norm="batch", momentum=0.9)
    results = {"jaxnorm": time_step(ours, batch, args.repeats), "flax": time_step(PlainFlaxCNN(), batch, args.repeats)}
    has_torch = importlib.util.find_spec("torch") is not None
    if has_torch and not args.no_torch:
        results["torch_eager"] = time_torch_step(args.batch, args.repeats)
    base = {
        "bench": "train_step",
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "batch": args.batch,
        "input": "28x28x1",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    for name, r in results.items():
        print(json.dumps({**base, "impl": name, **r}))
    print(
        json.dumps(
            {
                **base,
                "figure": "ratio",
                "step_ratio": results["jaxnorm"]["step_ms"] / results["flax"]["step_ms"],
                "compile_ratio": results["jaxnorm"]["compile_s"] / results["flax"]["compile_s"],
                **(
                    {"step_ratio_vs_torch_eager": results["jaxnorm"]["step_ms"] / results["torch_eager"]["step_ms"]}
                    if "torch_eager" in results
                    else {"torch_eager": "not installed (pip install torch)" if not has_torch else "skipped"}
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
