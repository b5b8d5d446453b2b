"""The benchmark suite: one command, one GPU (or a CPU with ``--small``), one JSON line per figure.

    python benchmarks/suite.py --out results.jsonl                  # the full run (a GPU: under 8 minutes)
    python benchmarks/suite.py --small --out /tmp/small.jsonl       # tiny shapes, CPU, about a minute
    python benchmarks/suite.py --only resnet --time-budget 300      # one section, a tighter budget

Every line goes to stdout and is appended to ``--out`` as one complete line (one ``write`` on an ``O_APPEND``
file), so runs can share a file. Each line has ``suite``, ``section``, ``backend``, ``device``, ``small`` and ``t_s``
(seconds since the start).

Sections (run as: ResNet with batch norm, the norms, ResNet with group norm, so that the figures the goals need come
first and a tight budget drops group norm's ``torch.compile`` cases first):

* ``resnet``: the train step of a CIFAR ResNet-18 (3×3 stem, no max pool; 11.2 M parameters with batch norm),
  32×32×3, batch 256, ``norm='batch'`` and ``'group'`` (32 groups), float32 and bfloat16 (the zoo's ``dtype``:
  bf16 convs/dense, float32 parameters and statistics), SGD with momentum 0.9, lr 0.1:

  - ``jaxnorm``: the trainer's step, built as ``jaxnorm.lab.train.loop`` builds it (``loop.model_kwargs`` →
    ``models.build_model('resnet18', ...)``, ``optim.make_optimizer`` of a base config with ``optimizer='momentum'``,
    ``weight_decay=0``, a constant schedule, ``steps.make_train_step``, ``jax.jit`` as the trainer's single-device
    mode compiles it);
  - ``flax``: the same network written in plain ``flax.linen`` (``nn.Conv``, ``nn.BatchNorm``/``nn.GroupNorm``, the
    same module names, hence the same parameter tree; the script asserts equal trees and counts) through a plain
    jitted Flax step (``flax.training.train_state.TrainState`` + ``batch_stats``, optax cross-entropy,
    ``apply_gradients``) returning the same metrics (loss, accuracy, gradient and parameter norms, learning rate);
  - ``torch_eager`` / ``torch_compile``: a torchvision-style CIFAR ResNet-18 with the same parameter count
    (``benchmarks/_torch_resnet.py``, run in a subprocess), channels_last, ``torch.autocast(bfloat16)`` for bf16,
    on CUDA when available; ``torch.compile`` is skipped on CPU unless ``--torch-compile on``.

  Per implementation: ``images_per_s`` (batch / median step time, each timed step ending in ``block_until_ready``
  or ``torch.cuda.synchronize``, after warm-up; the jaxnorm and Flax steps alternate round by round),
  ``compile_s`` (JAX: trace + lower + compile), ``first_call_s`` (the first step's wall time, compilation included),
  ``peak_memory_bytes`` (JAX: ``memory_stats()['peak_bytes_in_use']``, process-wide since the start since JAX cannot
  reset it, null on CPU; torch: ``max_memory_allocated()`` of the case, null on CPU) and, for JAX, ``step_memory_bytes``
  (XLA's own figure for the compiled step: arguments + outputs + temporaries − aliased).
  Checks before timing: the plain-Flax model on jaxnorm's parameters gives jaxnorm's train-mode loss (float32 at
  ``'highest'`` matmul precision: relative difference ≤ 1e-5; bf16: the first steps' losses within 2e-2), and the
  first steps' gradient norms agree; the torch network (a 'SAME'-padded twin loaded with jaxnorm's parameters) gives
  the same float32 loss (≤ 1e-5 on CPU, 1e-4 on CUDA). A ``resnet_ratios`` line per (norm, dtype) gives jaxnorm's
  images/s over each peer's. ``--small``: two stages of one basic block, width 0.125 (8, 16 channels), batch 16,
  16×16×3, 3 timed steps (compilation dominates a CPU run; four stages would double it for no new code path).

* ``norms``: ``benchmarks/norms.py``'s fwd+bwd cases (batch, layer, instance, group, RMS norm, batch renorm, ℓ2 batch
  norm), each against its ``flax.linen`` counterpart (or a plain-jnp reference) and the memory floor, float32 and
  bfloat16, x = 128×32×32×64 (``--small``: 16×16×16×32), cotangent patterns ``fixed`` and ``sumsq`` (``--small``:
  ``fixed`` only), through that script's own functions (its lines, its ``summary`` lines).

``--time-budget`` (default 480 s): a case whose expected duration (the last like case's) no longer fits is not
started; a line with ``"skipped": true`` and the reason stands in for it. The final ``summary`` line says which goals
are met: on the GPU, ResNet-18 with batch norm ≥ 1.0× PyTorch eager's images/s and within 1.05× of plain Flax's step
time (float32 and bf16), every check agreeing, equal parameter counts, the run under 8 minutes. Benchmarks never
assert on time; the exit status is 1 only when a check disagrees.

``XLA_PYTHON_CLIENT_PREALLOCATE`` is set to ``false`` (unless set already) so that JAX does not take 75% of the GPU
the torch subprocess needs.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before jax is imported: torch shares the GPU

import argparse
import contextlib
import io
import json
import math
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository root: jaxnorm without an install

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import norms as norms_bench  # noqa: E402  (benchmarks/norms.py: the norm cases and the timing helpers)
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import traverse_util  # noqa: E402
from flax.training import train_state  # noqa: E402
from norms import _time_alternating  # noqa: E402

from jaxnorm.lab import models  # noqa: E402
from jaxnorm.lab.train import config as config_lib  # noqa: E402
from jaxnorm.lab.train import loop, optim, steps  # noqa: E402

SUITE = "jaxnorm-bench-suite"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
RESNET_NORMS = ("batch", "group")
NUM_GROUPS = 32
GOAL_VS_TORCH_EAGER = 1.0  # jaxnorm images/s ≥ 1.0 × PyTorch eager's
GOAL_VS_FLAX = 1.05  # jaxnorm step time ≤ 1.05 × plain Flax's
TOTAL_GOAL_S = 480.0
LOSS_TOL = {"float32": 1e-5, "bfloat16": 2e-2}
# first-step metrics at the default precision (TF32 convolutions on recent GPUs): looser than the 'highest' check
STEP_TOL = {("cpu", "float32"): 1e-4, ("gpu", "float32"): 2e-3, ("cpu", "bfloat16"): 5e-2, ("gpu", "bfloat16"): 5e-2}


# --------------------------------------------------------------------------------------------------------------------
# output: complete JSON lines to stdout and to --out


def _clean(v):
    """JSON-safe: numpy scalars to Python, non-finite floats to None (the caller records which)."""
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.generic,)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _non_finite(v, path="") -> list[str]:
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _non_finite(x, f"{path}{k}.")]
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return [path.rstrip(".")]
    return []


class Emitter:
    """Writes each record as one JSON line to stdout and appends it to ``out`` with a single ``os.write`` on an
    ``O_APPEND`` descriptor (complete lines only, safe for several writers)."""

    def __init__(self, out: str | None, base: dict, t0: float):
        self.stdout = sys.stdout
        self.base, self.t0 = base, t0
        self.records: list[dict] = []
        self.fd = None
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            self.fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def emit(self, rec: dict, section: str) -> dict:
        rec = {"suite": SUITE, "section": section, **self.base, **rec, "t_s": round(self.elapsed(), 2)}
        bad = _non_finite(rec)
        if bad:
            rec["non_finite"] = bad
        rec = _clean(rec)
        line = json.dumps(rec, allow_nan=False) + "\n"
        self.stdout.write(line)
        self.stdout.flush()
        if self.fd is not None:
            os.write(self.fd, line.encode())
        self.records.append(rec)
        return rec

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _LineTee(io.TextIOBase):
    """A stdout stand-in for code that prints JSON lines itself (benchmarks/norms.py): each complete line is parsed
    and re-emitted through the Emitter; anything else goes to stderr."""

    def __init__(self, emitter: Emitter, section: str, extra: dict):
        self.em, self.section, self.extra, self.buf = emitter, section, extra, ""

    def writable(self):
        return True

    def write(self, s):
        self.buf += s
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            self._line(line)
        return len(s)

    def _line(self, line):
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except ValueError:
            print(line, file=sys.stderr)
            return
        rec = {**rec, **self.extra}
        if "case" not in rec and {"name", "dtype", "cotangent"} <= set(rec):
            rec["case"] = f"norms:{rec['name']}:{rec['dtype']}:{rec['cotangent']}"
        self.em.emit(rec, self.section)

    def flush(self):
        if self.buf:
            self._line(self.buf)
            self.buf = ""


class Budget:
    """Skips a case whose expected duration (the last like case's, or a first guess) no longer fits."""

    def __init__(self, seconds: float, emitter: Emitter):
        self.seconds, self.em = seconds, emitter
        self.last: dict[str, float] = {}

    def left(self) -> float:
        return self.seconds - self.em.elapsed()

    def fits(self, kind: str, first_guess: float = 0.0) -> tuple[bool, str]:
        est = self.last.get(kind, first_guess)
        left = self.left()
        if left > est:
            return True, ""
        return False, (
            f"time budget: {max(left, 0):.0f} s of --time-budget {self.seconds:.0f} s left, a {kind} case "
            f"is expected to take {est:.0f} s"
        )

    @contextlib.contextmanager
    def timed(self, kind: str):
        t0 = time.perf_counter()
        yield
        self.last[kind] = time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------------------------
# ResNet: shapes, the jaxnorm trainer's step, the plain-Flax twin


def resnet_shapes(small: bool) -> dict:
    if small:
        # two stages of one block: the stem, an identity block, a stride-2 block with its projection shortcut; four
        # stages would double the compile time (≈ 4 s per program on this 2-core CPU) for no new code path
        return {
            "name": "resnet_small",
            "stage_sizes": (1, 1),
            "width": 0.125,
            "batch": 16,
            "image_size": 16,
            "warmup": 1,
            "repeats": 3,
        }
    return {
        "name": "resnet18",
        "stage_sizes": (2, 2, 2, 2),
        "width": 1.0,
        "batch": 256,
        "image_size": 32,
        "warmup": 3,
        "repeats": 20,
    }


def _channels(shapes: dict) -> tuple[int, ...]:
    """Channels per stage, as jaxnorm's ResNet._channels: width × 64·2^s."""
    return tuple(max(1, int(round(64 * 2**s * shapes["width"]))) for s in range(len(shapes["stage_sizes"])))


def trainer_config(norm: str):
    """The base training config, set for this benchmark: ResNet-18, the norm, SGD momentum 0.9 at lr 0.1 (constant,
    no weight decay, so the torch peer's plain ``SGD(lr=0.1, momentum=0.9)`` is the same optimizer)."""
    c = config_lib.base_config()
    c.model, c.norm, c.dropout, c.dropout_rate = "resnet18", norm, "none", 0.0
    c.optimizer, c.learning_rate, c.momentum, c.weight_decay = "momentum", 0.1, 0.9, 0.0
    c.schedule, c.warmup_steps, c.max_norm, c.num_steps = "constant", 0, 0.0, 1000
    return c


def build_jaxnorm(norm: str, dtype: str, shapes: dict):
    """(model, raw train step, jit of it as the trainer compiles it, tx) of the trainer for this case."""
    cfg = trainer_config(norm)
    kw = loop.model_kwargs(cfg, 10)
    kw |= {
        "width": shapes["width"],
        "stage_sizes": tuple(shapes["stage_sizes"]),
        "block": "basic",
        "dtype": DTYPES[dtype],
    }
    model = models.build_model(cfg.model, **kw)
    tx, schedule = optim.make_optimizer(cfg)
    raw = steps.make_train_step(model, tx, schedule, cfg.seed, loss="cross_entropy")
    jitted = jax.jit(raw)  # what the trainer's DataParallel('none') compiles the step to (one device, no mapping)
    return model, jitted, tx, schedule, cfg


class PlainBlock(nn.Module):
    features: int
    strides: int
    norm: Callable
    conv: Callable

    @nn.compact
    def __call__(self, x, train: bool):
        h = self.conv(self.features, (3, 3), self.strides, name="conv1")(x)
        h = nn.relu(self.norm(self.features, train, name="norm1")(h))
        h = self.conv(self.features, (3, 3), 1, name="conv2")(h)
        h = self.norm(self.features, train, name="norm2")(h)
        s = x
        if x.shape[-1] != self.features or self.strides != 1:
            s = self.conv(self.features, (1, 1), self.strides, name="proj_conv")(x)
            s = self.norm(self.features, train, name="proj_norm")(s)
        return nn.relu(h + s)


class PlainResNet(nn.Module):
    """CIFAR ResNet in plain flax.linen: nn.Conv ('SAME', He fan-out init), nn.BatchNorm (momentum 0.99) or
    nn.GroupNorm, basic blocks, global average pool, nn.Dense head, logits float32. Biases as jaxnorm's rule: none on
    a conv that batch norm follows, one before group norm."""

    stage_sizes: tuple = (2, 2, 2, 2)
    channels: tuple = (64, 128, 256, 512)
    norm: str = "batch"
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        dt, bias = self.dtype, self.norm != "batch"
        init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

        def conv(f, k, s, name):
            return nn.Conv(f, k, strides=s, padding="SAME", use_bias=bias, kernel_init=init, dtype=dt, name=name)

        def norm(c, train, name):
            if self.norm == "batch":
                return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5, dtype=dt, name=name)
            return nn.GroupNorm(num_groups=min(NUM_GROUPS, c), epsilon=1e-5, dtype=dt, name=name)

        h = x.astype(dt)
        h = nn.relu(norm(self.channels[0], train, "stem_norm")(conv(self.channels[0], (3, 3), 1, "stem_conv")(h)))
        for s, (n, c) in enumerate(zip(self.stage_sizes, self.channels)):
            for b in range(n):
                h = PlainBlock(c, 2 if s > 0 and b == 0 else 1, norm, conv, name=f"stage{s + 1}_block{b + 1}")(h, train)
        h = h.mean((1, 2))
        return jnp.asarray(nn.Dense(self.num_classes, dtype=dt, name="head")(h), jnp.float32)


class PlainState(train_state.TrainState):
    batch_stats: Any = None


def plain_flax_step(schedule):
    """The plain Flax step (flax examples/imagenet's shape), with the trainer step's metrics."""

    def step(state: PlainState, batch):
        def loss_fn(params):
            variables = {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})}
            logits, upd = state.apply_fn(variables, batch["x"], train=True, mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
            return loss, (logits, upd.get("batch_stats", {}))

        (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        new = state.apply_gradients(grads=grads, batch_stats=new_stats)
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["y"]),
            "learning_rate": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(new.params),
        }
        return new, metrics

    return step


def _count(tree) -> int:
    return int(sum(np.prod(v.shape) for v in jax.tree.leaves(tree)))


def _compile_jitted(jitted, *args):
    """(compiled, seconds to trace + lower + compile) of an already jitted function."""
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _fwd_loss(model):
    def f(variables, x, y):
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(f)


def _rel(a, b) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-30)


def _peak_bytes():
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def _step_bytes(compiled):
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:
        return None


def run_resnet_pair(norm: str, dtype: str, shapes: dict, em: Emitter, check_dir: str | None) -> tuple[dict, bool]:
    """Times jaxnorm's trainer step and the plain-Flax step on one batch; returns ({impl: record}, all agree)."""
    b, hw = shapes["batch"], shapes["image_size"]
    kx, ky = jax.random.split(jax.random.key(0))
    batch = {
        "x": jax.random.normal(kx, (b, hw, hw, 3), jnp.float32),
        "y": jax.random.randint(ky, (b,), 0, 10),
        "mask": jnp.ones((b,), bool),
    }
    jmodel, jstep, tx, schedule, cfg = build_jaxnorm(norm, dtype, shapes)
    # the trainer's create_state, jitted and with the 'rbg' PRNG: un-jitted, every initializer compiles on its own,
    # and threefry's unrolled hash makes the jitted init slow to compile (23 s vs 4 s for the small ResNet on a busy
    # 2-core CPU); the values do not matter here, the step (threefry keys, as the trainer's) is unchanged
    with jax.default_prng_impl("rbg"):
        jstate = jax.jit(lambda x: steps.create_state(jmodel, tx, x, cfg.seed))(batch["x"])

    channels = _channels(shapes)
    fmodel = PlainResNet(tuple(shapes["stage_sizes"]), channels, norm, 10, DTYPES[dtype])
    # Flax's init, abstractly: its parameter tree and count (the values used are jaxnorm's, copied below) and its
    # batch statistics as nn.BatchNorm initializes them (mean 0, var 1)
    fshapes = jax.eval_shape(lambda k, x: fmodel.init(k, x, train=False), jax.random.key(1), batch["x"])
    fvars = {"params": fshapes["params"]}
    if "batch_stats" in fshapes:
        fvars["batch_stats"] = jax.tree_util.tree_map_with_path(
            lambda path, v: (jnp.ones if path[-1].key == "var" else jnp.zeros)(v.shape, v.dtype), fshapes["batch_stats"]
        )
    n_j, n_f = _count(jstate.params), _count(fvars["params"])
    shapes_j = jax.tree.map(lambda v: v.shape, jstate.params)
    shapes_f = jax.tree.map(lambda v: v.shape, fvars["params"])
    assert shapes_j == shapes_f, f"jaxnorm and plain-Flax parameter trees differ:\n{shapes_j}\n{shapes_f}"
    assert n_j == n_f, (n_j, n_f)
    print(
        f"{shapes['name']} norm={norm} dtype={dtype}: {n_j} parameters (jaxnorm) == {n_f} (plain Flax)", file=sys.stderr
    )
    # the plain-Flax state starts from jaxnorm's parameters, so both steps compute the same thing
    fstate = PlainState.create(
        apply_fn=fmodel.apply,
        params=jstate.params,
        tx=optax.sgd(0.1, momentum=0.9),
        batch_stats=fvars.get("batch_stats", {}),
    )
    fstep = jax.jit(plain_flax_step(optax.constant_schedule(0.1)))

    common = {
        "name": shapes["name"],
        "norm": norm,
        "dtype": dtype,
        "batch": b,
        "image": [hw, hw, 3],
        "stage_sizes": list(shapes["stage_sizes"]),
        "channels": list(channels),
        "param_count": n_j,
        "param_count_flax": n_f,
        "param_counts_equal": n_j == n_f,
        "optimizer": "SGD momentum 0.9, lr 0.1",
        "model_dtype_option": "ZooModel.dtype (bf16 convs/dense; float32 params and statistics)",
    }

    # checks: the same train-mode loss from the same parameters ('highest' precision, float32)
    checks = {}
    jvars = jstate.variables()
    fvars_same = {"params": jstate.params, **({"batch_stats": fstate.batch_stats} if fstate.batch_stats else {})}
    if dtype == "float32":
        with jax.default_matmul_precision("highest"):
            lj = float(_fwd_loss(jmodel)(jvars, batch["x"], batch["y"]))
            lf = float(_fwd_loss(fmodel)(fvars_same, batch["x"], batch["y"]))
        checks |= {
            "check_loss_jaxnorm": lj,
            "check_loss_flax": lf,
            "check_loss_rel_diff": _rel(lf, lj),
            "check": "train-mode loss from the same parameters, float32, matmul precision 'highest'",
        }
        if check_dir is not None:  # for the torch twin
            flat = traverse_util.flatten_dict(jax.device_get(jstate.params), sep="/")
            path = os.path.join(check_dir, f"check_{norm}.npz")
            np.savez(
                path,
                x=np.asarray(batch["x"]),
                y=np.asarray(batch["y"]),
                loss=np.float64(lj),
                **{f"param:{k}": np.asarray(v) for k, v in flat.items()},
            )
            checks["check_npz"] = path

    out, agree = {}, True
    jc, jt = _compile_jitted(jstep, jstate, batch)
    fc, ft = _compile_jitted(fstep, fstate, batch)
    times_first = {}
    metrics = {}
    for impl, c, st in (("jaxnorm", jc, jstate), ("flax", fc, fstate)):
        t0 = time.perf_counter()
        _, m = c(st, batch)
        jax.block_until_ready(m)
        times_first[impl] = time.perf_counter() - t0
        metrics[impl] = jax.device_get(m)
    step_loss_rel = _rel(metrics["flax"]["loss"], metrics["jaxnorm"]["loss"])
    gn_rel = _rel(metrics["flax"]["grad_norm"], metrics["jaxnorm"]["grad_norm"])
    backend = "cpu" if jax.default_backend() == "cpu" else "gpu"
    stol = STEP_TOL[(backend, dtype)]
    loss_ok = (checks["check_loss_rel_diff"] if dtype == "float32" else step_loss_rel) <= LOSS_TOL[dtype]
    agree = bool(
        loss_ok
        and step_loss_rel <= stol
        and gn_rel <= stol
        and all(math.isfinite(float(metrics[i]["loss"])) for i in metrics)
    )

    (jms, jmin), (fms, fmin) = _time_alternating(
        [(jc, (jstate, batch)), (fc, (fstate, batch))], shapes["repeats"], warmup=shapes["warmup"]
    )
    peak = _peak_bytes()
    for impl, ms, mn, comp, c in (("jaxnorm", jms, jmin, jt, jc), ("flax", fms, fmin, ft, fc)):
        rec = {
            **common,
            "case": f"resnet:{norm}:{dtype}:{impl}",
            "impl": impl,
            "images_per_s": b / (ms / 1e3),
            "step_ms": ms,
            "step_min_ms": mn,
            "compile_s": comp,
            "first_call_s": comp + times_first[impl],
            "peak_memory_bytes": peak,
            "peak_memory_note": "process-wide peak_bytes_in_use so far (JAX cannot reset it); null on CPU",
            "step_memory_bytes": _step_bytes(c),
            "first_loss": float(metrics[impl]["loss"]),
            "first_grad_norm": float(metrics[impl]["grad_norm"]),
            "repeats": shapes["repeats"],
            "step": (
                "jaxnorm.lab.train.steps.make_train_step (the trainer's), jax.jit"
                if impl == "jaxnorm"
                else "plain Flax TrainState step, jax.jit, same metrics"
            ),
        }
        if impl == "jaxnorm":
            rec |= {"ratio_vs_flax": ms / fms, "images_per_s_ratio_vs_flax": fms / ms}
        rec |= {k: v for k, v in checks.items() if k != "check_npz"}
        rec |= {
            "step_loss_rel_diff": step_loss_rel,
            "step_grad_norm_rel_diff": gn_rel,
            "step_tol": stol,
            "agree": agree,
        }
        out[impl] = em.emit(rec, "resnet")
    out["check_npz"] = checks.get("check_npz")
    return out, agree


# --------------------------------------------------------------------------------------------------------------------
# torch peers (a subprocess)


def torch_available() -> tuple[bool, str]:
    try:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            return False, "torch is not installed"
    except Exception as e:
        return False, f"torch cannot be found: {e}"
    return True, ""


def run_torch(
    norm: str, shapes: dict, em: Emitter, budget: Budget, compile_mode: str, check_npz: str | None, spec_dir: str
) -> list[dict]:
    cases = []
    for dtype in DTYPES:
        for impl in ("torch_eager", "torch_compile"):
            case = {"id": f"resnet:{norm}:{dtype}:{impl}", "norm": norm, "dtype": dtype, "impl": impl}
            if dtype == "float32" and impl == "torch_eager" and check_npz:
                case["check_npz"] = check_npz
            cases.append(case)
    common = {
        "name": shapes["name"],
        "norm": norm,
        "batch": shapes["batch"],
        "image": [shapes["image_size"], shapes["image_size"], 3],
        "stage_sizes": list(shapes["stage_sizes"]),
        "channels": list(_channels(shapes)),
    }
    ok, why = torch_available()
    if ok and budget.left() <= 0:
        ok, why = False, f"time budget: --time-budget {budget.seconds:.0f} s spent"
    if not ok:
        return [
            em.emit(
                {**common, "case": c["id"], "impl": c["impl"], "dtype": c["dtype"], "skipped": True, "reason": why},
                "resnet",
            )
            for c in cases
        ]
    spec = {
        "stage_sizes": list(shapes["stage_sizes"]),
        "channels": list(_channels(shapes)),
        "num_classes": 10,
        "num_groups": NUM_GROUPS,
        "batch": shapes["batch"],
        "image_size": shapes["image_size"],
        "warmup": shapes["warmup"],
        "repeats": shapes["repeats"],
        "deadline": time.time() + budget.left(),
        "compile_on_cpu": compile_mode == "on",
        "cases": cases,
    }
    if compile_mode == "off":
        spec["cases"] = [c for c in cases if c["impl"] != "torch_compile"]
    path = os.path.join(spec_dir, f"torch_spec_{norm}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    seen, records = set(), []
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_torch_resnet.py"), "--spec", path],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )
    grace = 60.0
    killer = threading.Timer(max(budget.left(), 0) + grace, proc.kill)  # a torch.compile that overruns the budget
    killer.start()
    try:
        for line in proc.stdout:
            try:
                r = json.loads(line)
            except ValueError:
                print(line.rstrip(), file=sys.stderr)
                continue
            dt, impl = r["case"].split(":")[2:4]
            rec = {**common, "impl": impl, "dtype": dt, **r}
            seen.add(r["case"])
            records.append(em.emit(rec, "resnet"))
        proc.wait()
    finally:
        killer.cancel()
    stderr.seek(0)
    tail = stderr.read()[-800:]
    for c in cases:
        if c["id"] in seen:
            continue
        why = (
            "torch.compile turned off (--torch-compile off)"
            if compile_mode == "off" and c["impl"] == "torch_compile"
            else f"the torch subprocess ended (exit {proc.returncode}) before this case: {tail}"
        )
        records.append(
            em.emit(
                {**common, "case": c["id"], "impl": c["impl"], "dtype": c["dtype"], "skipped": True, "reason": why},
                "resnet",
            )
        )
    return records


# --------------------------------------------------------------------------------------------------------------------
# norms (benchmarks/norms.py's cases, float32 and bfloat16)


def bf16_pairs(jn, c: int) -> list:
    """norms.py's float32 pairs again in bfloat16 (it has a bf16 case for batch norm only), the Flax side with
    ``dtype=bfloat16`` (its statistics stay float32, as jaxnorm's)."""
    bf, eps = jnp.bfloat16, norms_bench.EPS
    flax_bf16 = {
        "layer_norm": nn.LayerNorm(epsilon=eps, reduction_axes=(1, 2, 3), feature_axes=-1, dtype=bf),
        "instance_norm": nn.InstanceNorm(epsilon=eps, dtype=bf),
        "group_norm": nn.GroupNorm(num_groups=norms_bench.NUM_GROUPS, epsilon=eps, dtype=bf),
        "rms_norm": nn.RMSNorm(epsilon=eps, reduction_axes=(1, 2, 3), feature_axes=-1, dtype=bf),
    }
    bn_bf16 = norms_bench._flax_side(nn.BatchNorm(use_running_average=False, epsilon=eps, dtype=bf), True)
    out = []
    for name, dt, jfwd, _, check, has_stats, has_bias, label in norms_bench.make_pairs(jn, c, None):
        if dt != "float32" or name == "batch_norm":  # norms.py has batch norm in bf16 already
            continue
        if name in flax_bf16:
            ffwd, label = norms_bench._flax_side(flax_bf16[name], has_stats, has_bias), label + "(dtype=bf16)"
        else:  # batch renorm, lp batch norm: timed next to Flax's BN, checked against the plain-jnp reference
            ffwd = bn_bf16
        out.append((name, "bfloat16", jfwd, ffwd, check, has_stats, has_bias, label))
    return out


def run_norms(args, em: Emitter, budget: Budget) -> bool:
    jn = norms_bench._load_norms(None)
    shape = (16, 16, 16, 32) if args.small else (128, 32, 32, 64)
    repeats = args.norm_repeats or (5 if args.small else 20)
    c = shape[-1]
    base = {"bench": "norms", "backend": jax.default_backend(), "device": str(jax.devices()[0])}
    xs, ct, scale, bias, jn_stats, flax_stats = norms_bench.make_inputs(jn, shape)
    floor_fns = {}
    for dt, x in xs.items():  # the memory floor as norms.py measures it: two read+write passes over x
        floor_fns[dt], t_comp = norms_bench.memory_floor(x)
        ((ms, _),) = _time_alternating([floor_fns[dt]], max(repeats, 10))
        em.emit(
            base
            | {
                "name": "memory_floor",
                "case": f"norms:memory_floor:{dt}",
                "dtype": dt,
                "shape": list(shape),
                "floor_ms": 2 * ms,
                "single_pass_ms": ms,
                "compile_s": t_comp,
                "what": "2 x time(jit(lambda x: x*2+1))",
            },
            "norms",
        )

    pairs = norms_bench.make_pairs(jn, c, None) + bf16_pairs(jn, c)
    patterns = ("fixed",) if args.small else norms_bench.PATTERNS
    all_agree = True
    for pattern in patterns:
        results = []
        for dt in DTYPES:
            group = [p for p in pairs if p[1] == dt]
            ok, why = budget.fits("norm group", 0.0)
            if not ok:
                for p in group:
                    em.emit(
                        base
                        | {
                            "name": p[0],
                            "dtype": dt,
                            "cotangent": pattern,
                            "case": f"norms:{p[0]}:{dt}:{pattern}",
                            "skipped": True,
                            "reason": why,
                        },
                        "norms",
                    )
                continue
            tee = _LineTee(em, "norms", {})
            try:
                with budget.timed("norm group"), contextlib.redirect_stdout(tee):
                    res = norms_bench.run_pattern(
                        jn, group, pattern, xs, scale, bias, ct, jn_stats, flax_stats, floor_fns, base, shape, repeats
                    )
            except Exception as e:
                tee.flush()
                err = f"{type(e).__name__}: {str(e)[:800]}"
                done = {r.get("case") for r in em.records}
                for p in group:
                    case = f"norms:{p[0]}:{dt}:{pattern}"
                    if case not in done:
                        em.emit(
                            base | {"name": p[0], "dtype": dt, "cotangent": pattern, "case": case, "error": err},
                            "norms",
                        )
                all_agree = False
                continue
            tee.flush()
            results += res
        if results:
            tee = _LineTee(em, "norms", {"case": f"norms:summary:{pattern}"})
            with contextlib.redirect_stdout(tee):
                all_agree &= norms_bench.summarize(results, base, shape, pattern)
            tee.flush()
    return all_agree


# --------------------------------------------------------------------------------------------------------------------


def run_resnet_norm(norm: str, shapes: dict, em: Emitter, budget: Budget, compile_mode: str, tmp: str) -> bool:
    """jaxnorm vs plain Flax in float32 and bf16, then the torch peers, the parameter-count lines and the ratios."""
    all_agree, jn_count, check_npz = True, None, None
    for dtype in DTYPES:
        ok, why = budget.fits("resnet pair")
        if not ok:
            for impl in ("jaxnorm", "flax"):
                em.emit(
                    {
                        "name": shapes["name"],
                        "case": f"resnet:{norm}:{dtype}:{impl}",
                        "impl": impl,
                        "norm": norm,
                        "dtype": dtype,
                        "skipped": True,
                        "reason": why,
                    },
                    "resnet",
                )
            continue
        try:
            with budget.timed("resnet pair"):
                recs, ok_pair = run_resnet_pair(norm, dtype, shapes, em, tmp)
        except Exception as e:
            err = f"{type(e).__name__}: {str(e)[:800]}"
            print(f"resnet {norm} {dtype}: {err}", file=sys.stderr)
            for impl in ("jaxnorm", "flax"):
                em.emit(
                    {
                        "name": shapes["name"],
                        "case": f"resnet:{norm}:{dtype}:{impl}",
                        "impl": impl,
                        "norm": norm,
                        "dtype": dtype,
                        "error": err,
                    },
                    "resnet",
                )
            all_agree = False
            continue
        all_agree &= ok_pair
        jn_count = recs["jaxnorm"]["param_count"]
        check_npz = check_npz or recs.get("check_npz")
    for r in run_torch(norm, shapes, em, budget, compile_mode, check_npz, tmp):
        if r.get("param_count") is not None and jn_count is not None:
            eq = r["param_count"] == jn_count
            em.emit(
                {
                    "name": "param_count_check",
                    "case": f"{r['case']}:param_count",
                    "norm": norm,
                    "impl": r["impl"],
                    "dtype": r["dtype"],
                    "param_count_torch": r["param_count"],
                    "param_count_jaxnorm": jn_count,
                    "param_counts_equal": eq,
                },
                "resnet",
            )
            all_agree &= eq
        all_agree &= r.get("loss_agree", True)
        if r.get("error"):
            print(f"{r['case']}: {r['error']}", file=sys.stderr)
    for dtype in DTYPES:
        row = {
            i: em_lookup(em, f"resnet:{norm}:{dtype}:{i}") for i in ("jaxnorm", "flax", "torch_eager", "torch_compile")
        }
        j = row["jaxnorm"]
        if j is None:
            continue
        em.emit(
            {
                "name": "resnet_ratios",
                "case": f"resnet:{norm}:{dtype}:ratios",
                "norm": norm,
                "dtype": dtype,
                "jaxnorm_images_per_s": j,
                **{f"jaxnorm_over_{i}_images_per_s": (j / v if v else None) for i, v in row.items() if i != "jaxnorm"},
                "jaxnorm_step_time_over_flax": (row["flax"] / j if row["flax"] else None),
            },
            "resnet",
        )
    return all_agree


def summarize(em: Emitter, args, t_total: float) -> dict:
    recs = [r for r in em.records if r.get("case")]
    by_case = {r["case"]: r for r in recs}

    def ips(norm, dtype, impl):
        r = by_case.get(f"resnet:{norm}:{dtype}:{impl}")
        return None if r is None or r.get("skipped") or r.get("error") else r.get("images_per_s")

    goals, ratios = {}, {}
    for norm in RESNET_NORMS:
        for dtype in DTYPES:
            j, f, te, tc = (ips(norm, dtype, i) for i in ("jaxnorm", "flax", "torch_eager", "torch_compile"))
            key = f"{norm}:{dtype}"
            ratios[key] = {
                "vs_flax_step_time": None if not (j and f) else f / j,
                "vs_torch_eager_images_per_s": None if not (j and te) else j / te,
                "vs_torch_compile_images_per_s": None if not (j and tc) else j / tc,
            }
            if norm == "batch":
                goals[f"resnet18_bn_{dtype}_ge_{GOAL_VS_TORCH_EAGER}x_torch_eager"] = (
                    None if not (j and te) else j / te >= GOAL_VS_TORCH_EAGER
                )
                goals[f"resnet18_bn_{dtype}_within_{GOAL_VS_FLAX}x_flax"] = (
                    None if not (j and f) else f / j <= GOAL_VS_FLAX
                )
    agree_flags = [r["agree"] for r in recs if "agree" in r] + [r["all_agree"] for r in recs if "all_agree" in r]
    agree_flags += [r["loss_agree"] for r in recs if "loss_agree" in r]
    pc = [r["param_counts_equal"] for r in recs if r.get("param_counts_equal") is not None]
    errors = {r["case"]: r["error"] for r in recs if r.get("error")}
    goals["all_checks_agree"] = bool(agree_flags) and all(agree_flags)
    goals["no_errors"] = not errors
    goals["param_counts_equal"] = bool(pc) and all(pc)
    goals[f"under_{int(TOTAL_GOAL_S)}s"] = t_total <= TOTAL_GOAL_S
    norm_sums = [r for r in recs if r.get("bench") == "norms" and r.get("name") == "summary"]
    skipped = [r["case"] for r in recs if r.get("skipped")]
    return {
        "name": "summary",
        "case": "summary",
        "goals": goals,
        "met": [k for k, v in goals.items() if v is True],
        "not_met": [k for k, v in goals.items() if v is False],
        "unknown": [k for k, v in goals.items() if v is None],
        "resnet_ratios": ratios,
        "norms_le_1.0x_flax": {r["cotangent"]: r["le_1.0x_flax"] for r in norm_sums},
        "norms_le_1.3x_floor": {r["cotangent"]: r["le_1.3x_floor"] for r in norm_sums},
        "skipped": skipped,
        "errors": errors,
        "total_s": t_total,
        "time_budget_s": args.time_budget,
        "goals_note": (
            "--small: tiny shapes on this machine; the goals are for the full run on a GPU"
            if args.small
            else "full run"
        ),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny shapes (CPU, about a minute)")
    ap.add_argument("--out", default=None, help="append every JSON line to this file")
    ap.add_argument("--only", default="resnet,norms", help="comma-separated sections: resnet, norms")
    ap.add_argument("--time-budget", type=float, default=TOTAL_GOAL_S, help="seconds; later cases are skipped")
    ap.add_argument(
        "--torch-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: on CUDA only (inductor's CPU build takes minutes on a small CPU)",
    )
    ap.add_argument("--norms", default=",".join(RESNET_NORMS), help="ResNet norms (batch, group)")
    ap.add_argument("--norm-repeats", type=int, default=None, help="timed calls per norm case")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in sections if s not in ("resnet", "norms")]
    if bad:
        ap.error(f"--only: unknown sections {bad}; choose from resnet, norms")
    resnet_norms = [n.strip() for n in args.norms.split(",") if n.strip()]
    if any(n not in RESNET_NORMS for n in resnet_norms):
        ap.error(f"--norms: choose from {', '.join(RESNET_NORMS)}")

    t0 = time.perf_counter()
    dev = jax.devices()[0]
    base = {"backend": jax.default_backend(), "device": str(dev), "device_kind": dev.device_kind, "small": args.small}
    em = Emitter(args.out, base, t0)
    budget = Budget(args.time_budget, em)
    em.emit(
        {
            "name": "environment",
            "case": "environment",
            "jax": jax.__version__,
            "flax": getattr(sys.modules.get("flax"), "__version__", None),
            "python": platform.python_version(),
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "sections": sections,
            "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
            "jax_compilation_cache_dir": jax.config.jax_compilation_cache_dir or None,
            "time_budget_s": args.time_budget,
        },
        "suite",
    )
    # the order: the goals' figures (batch norm) first, then the norm section, group norm last, so that a tight
    # budget drops group norm's torch.compile cases first
    plan = [("resnet", n) for n in resnet_norms if n == "batch" and "resnet" in sections]
    plan += [("norms", None)] if "norms" in sections else []
    plan += [("resnet", n) for n in resnet_norms if n != "batch" and "resnet" in sections]
    all_agree = True
    try:
        with tempfile.TemporaryDirectory(prefix="jaxnorm-suite-") as tmp:
            for section, norm in plan:
                if section == "norms":
                    all_agree &= run_norms(args, em, budget)
                else:
                    all_agree &= run_resnet_norm(norm, resnet_shapes(args.small), em, budget, args.torch_compile, tmp)
        em.emit(summarize(em, args, em.elapsed()), "suite")
    finally:
        em.close()
    return 0 if all_agree else 1


def em_lookup(em: Emitter, case: str):
    """images/s of a case already emitted (None when skipped, failed or absent)."""
    for r in reversed(em.records):
        if r.get("case") == case:
            return None if r.get("skipped") or r.get("error") else r.get("images_per_s")
    return None


if __name__ == "__main__":
    sys.exit(main())
