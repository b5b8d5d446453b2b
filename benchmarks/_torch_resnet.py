"""PyTorch side of ``benchmarks/suite.py``: a torchvision-style ResNet for CIFAR and its timed training step.

Run by the suite in a subprocess (so that its CUDA context, allocator and threads do not share a process with JAX's)::

    python benchmarks/_torch_resnet.py --spec spec.json      # prints one JSON line per case

The network mirrors ``jaxnorm.lab.models.ResNet`` with ``stem='cifar'``: a 3×3 stride-1 stem conv → norm → ReLU (no
max pool), basic blocks (3×3 → norm → ReLU → 3×3 → norm, plus the shortcut: identity, or 1×1 conv with the stride →
norm when the shape changes; ReLU after the addition), the first block of stages 2–4 with stride 2, global average pool,
a dense head. Convs have no bias before batch norm and a bias before group norm (jaxnorm's rule: only a norm that
subtracts a per-channel mean absorbs the bias), so the parameter counts equal jaxnorm's; modules carry jaxnorm's
names (``stem_conv``, ``stage1_block1.conv1``, ``proj_norm``, ``head``), so a jaxnorm parameter tree can be copied in.

Convolutions pad symmetrically (``padding=1``, as torchvision); JAX's ``'SAME'`` pads a stride-2 3×3 conv of an
even-sized input by (0, 1). ``tf_same_padding=True`` reproduces 'SAME' (asymmetric ``F.pad`` before such convs):
the suite uses it only for the check that the network computes jaxnorm's loss from jaxnorm's parameters; the timed
network is the plain torchvision-style one (same parameters and FLOPs).

The step: ``zero_grad(set_to_none=True)``, forward (under ``torch.autocast(dtype=torch.bfloat16)`` for bf16; the
parameters stay float32, as jaxnorm's), mean cross-entropy on float32 logits, backward, ``SGD(lr=0.1,
momentum=0.9)``; ``channels_last`` inputs and weights and ``cudnn.benchmark`` on CUDA (on CPU the default layout:
torch's channels_last GroupNorm is ~20× slower there). Eager and ``torch.compile``
(the model compiled, default mode; the optimizer step eager). Images/s is the batch over the median wall time of the
timed steps (each ending in ``torch.cuda.synchronize()`` on CUDA), after warm-up; the first step's wall time (for
``torch.compile``: its compilation) is ``first_call_s``; the peak memory is ``torch.cuda.max_memory_allocated()``
since the case's start (CUDA only, else null).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as tnn
import torch.nn.functional as F


def _norm(kind: str, c: int, num_groups: int) -> tnn.Module:
    if kind == "batch":
        return tnn.BatchNorm2d(c, eps=1e-5, momentum=0.01)  # = Flax's / jaxnorm's momentum 0.99
    if kind == "group":
        return tnn.GroupNorm(min(num_groups, c), c, eps=1e-5)
    raise ValueError(f"_torch_resnet: norm must be 'batch' or 'group', got {kind!r}")


class Conv(tnn.Module):
    """A k×k conv, padding (k−1)/2 on each side, or JAX's 'SAME' with ``tf_same``. It holds its weight directly
    (``conv.weight``), like ``nn.Conv2d``."""

    def __init__(self, cin, cout, k, stride, bias, tf_same=False):
        super().__init__()
        self.k, self.stride, self.tf_same = k, stride, tf_same
        self.weight = tnn.Parameter(torch.empty(cout, cin, k, k))
        self.bias = tnn.Parameter(torch.zeros(cout)) if bias else None
        tnn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")  # torchvision's (and jaxnorm's)

    def forward(self, x):
        if self.tf_same:
            h = x.shape[-1]
            out = -(-h // self.stride)
            total = max((out - 1) * self.stride + self.k - h, 0)
            lo = total // 2
            x = F.pad(x, (lo, total - lo, lo, total - lo))
            return F.conv2d(x, self.weight, self.bias, self.stride, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.k // 2)


class BasicBlock(tnn.Module):
    def __init__(self, cin, cout, stride, norm, num_groups, tf_same):
        super().__init__()
        bias = norm != "batch"
        self.conv1 = Conv(cin, cout, 3, stride, bias, tf_same)
        self.norm1 = _norm(norm, cout, num_groups)
        self.conv2 = Conv(cout, cout, 3, 1, bias, tf_same)
        self.norm2 = _norm(norm, cout, num_groups)
        self.proj_conv = self.proj_norm = None
        if stride != 1 or cin != cout:
            self.proj_conv = Conv(cin, cout, 1, stride, bias, tf_same)
            self.proj_norm = _norm(norm, cout, num_groups)

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        s = x if self.proj_conv is None else self.proj_norm(self.proj_conv(x))
        return F.relu(h + s)


class ResNet(tnn.Module):
    """CIFAR ResNet with basic blocks; ``stage_sizes=(2, 2, 2, 2)``, ``channels=(64, 128, 256, 512)``: ResNet-18."""

    def __init__(
        self,
        stage_sizes=(2, 2, 2, 2),
        channels=(64, 128, 256, 512),
        num_classes=10,
        norm="batch",
        num_groups=32,
        in_channels=3,
        tf_same_padding=False,
    ):
        super().__init__()
        c0 = channels[0]
        self.stem_conv = Conv(in_channels, c0, 3, 1, norm != "batch", tf_same_padding)
        self.stem_norm = _norm(norm, c0, num_groups)
        cin = c0
        self.blocks = []
        for s, (n, c) in enumerate(zip(stage_sizes, channels)):
            for b in range(n):
                name = f"stage{s + 1}_block{b + 1}"
                setattr(self, name, BasicBlock(cin, c, 2 if s > 0 and b == 0 else 1, norm, num_groups, tf_same_padding))
                self.blocks.append(name)
                cin = c
        self.head = tnn.Linear(cin, num_classes)

    def forward(self, x):
        h = F.relu(self.stem_norm(self.stem_conv(x)))
        for name in self.blocks:
            h = getattr(self, name)(h)
        return self.head(h.mean((2, 3)))


def param_count(model: tnn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_jax_params(model: tnn.Module, flat: dict[str, np.ndarray]) -> None:
    """Copy a flattened jaxnorm/Flax parameter tree (``'stage1_block1/conv1/kernel'`` → array) into ``model``:
    conv kernels HWIO → OIHW, dense kernels (in, out) → (out, in), norm ``scale`` → ``weight``."""
    own = dict(model.named_parameters())
    seen = set()
    for key, v in flat.items():
        *path, leaf = key.split("/")
        name = ".".join(path) + "." + {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
        v = np.asarray(v, np.float32)
        if leaf == "kernel":
            v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T
        p = own[name]
        if tuple(p.shape) != v.shape:
            raise ValueError(f"load_jax_params: {key} has shape {v.shape}, torch {name} has {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.ascontiguousarray(v)))
        seen.add(name)
    missing = sorted(set(own) - seen)
    if missing:
        raise ValueError(f"load_jax_params: torch parameters not in the JAX tree: {missing}")


# --------------------------------------------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _check_loss(spec, case, device) -> dict:
    """Train-mode loss of the 'SAME'-padded twin loaded with jaxnorm's parameters, in float32 (TF32 off), against
    jaxnorm's loss on the same batch."""
    ref = np.load(case["check_npz"])
    flat = {k[len("param:") :]: ref[k] for k in ref.files if k.startswith("param:")}
    model = ResNet(
        spec["stage_sizes"],
        spec["channels"],
        spec["num_classes"],
        case["norm"],
        spec["num_groups"],
        tf_same_padding=True,
    )
    load_jax_params(model, flat)
    model = model.to(device).train()
    x = torch.from_numpy(np.ascontiguousarray(ref["x"].transpose(0, 3, 1, 2))).to(device)
    y = torch.from_numpy(ref["y"].astype(np.int64)).to(device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x).float(), y))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    jax_loss = float(ref["loss"])
    rel = abs(loss - jax_loss) / max(abs(jax_loss), 1e-30)
    tol = 1e-5 if device.type == "cpu" else 1e-4
    return {
        "check_loss_torch": loss,
        "check_loss_jaxnorm": jax_loss,
        "check_loss_rel_diff": rel,
        "check_tol": tol,
        "loss_agree": bool(rel <= tol),
        "check": "train-mode loss from jaxnorm's parameters, 'SAME'-padded twin, float32 (TF32 off)",
    }


def run_case(spec, case, device) -> dict:
    torch.manual_seed(0)
    bf16 = case["dtype"] == "bfloat16"
    model = ResNet(spec["stage_sizes"], spec["channels"], spec["num_classes"], case["norm"], spec["num_groups"])
    n_params = param_count(model)
    # channels_last on CUDA (cuDNN's fast layout); on CPU torch's GroupNorm is ~20× slower in channels_last
    # (1 s vs 0.05 s a step for the --small ResNet), so the CPU run keeps the default layout
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(device).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fwd = torch.compile(model) if case["impl"] == "torch_compile" else model
    b, hw = spec["batch"], spec["image_size"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, hw, hw, generator=g).to(device).contiguous(memory_format=fmt)
    y = torch.randint(0, spec["num_classes"], (b,), generator=g).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            out = fwd(x)
        loss = F.cross_entropy(out.float(), y)
        loss.backward()
        opt.step()
        return loss

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = step()
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    times = []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    rec = {
        "step_ms": 1e3 * med,
        "step_min_ms": 1e3 * min(times),
        "images_per_s": b / med,
        "first_call_s": first,
        "compile_s": max(first - med, 0.0) if case["impl"] == "torch_compile" else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "param_count": n_params,
        "first_loss": float(loss),
        "repeats": spec["repeats"],
        "memory_format": "channels_last" if fmt is torch.channels_last else "contiguous",
        "autocast": "bfloat16" if bf16 else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None,
    }
    if not np.isfinite(rec["first_loss"]):
        rec["error"] = "non-finite loss"
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", required=True, help="JSON file written by benchmarks/suite.py")
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    base = {
        "torch": torch.__version__,
        "torch_device": str(device),
        "torch_device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
    # first guesses of a case's duration (then the last like case's): ResNet-18's torch.compile takes about a minute
    last = {"torch_eager": 10.0, "torch_compile": 60.0} if device.type == "cuda" else {}
    for case in spec["cases"]:
        rec = {"case": case["id"], **base}
        if case["impl"] == "torch_compile" and device.type == "cpu" and not spec["compile_on_cpu"]:
            rec |= {
                "skipped": True,
                "reason": "torch.compile skipped on CPU (inductor's C++ build takes minutes on a "
                "small CPU); pass --torch-compile on to run it",
            }
        else:
            est = last.get(case["impl"], 0.0)
            left = spec["deadline"] - time.time()
            if left <= est:
                rec |= {
                    "skipped": True,
                    "reason": f"time budget: {max(left, 0):.0f} s left, a {case['impl']} case "
                    f"is expected to take {est:.0f} s",
                }
            else:
                t0 = time.perf_counter()
                try:
                    if case.get("check_npz"):
                        rec |= _check_loss(spec, case, device)
                    rec |= run_case(spec, case, device)
                except Exception as e:  # one failing case (e.g. an inductor error) must not lose the others
                    rec |= {"error": f"{type(e).__name__}: {str(e)[:500]}"}
                last[case["impl"]] = time.perf_counter() - t0
                rec["case_s"] = last[case["impl"]]
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
