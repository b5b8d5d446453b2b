"""Metrics to ``WORKDIR/metrics.jsonl`` and TensorBoard event files (tensorboardX, no TensorFlow), and a progress
line with rate and ETA."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np


class MetricWriter:
    """One JSON object per line: ``{"step": s, "split": "train"|"eval"|..., name: value, ...}``."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._file = open(self.path, "a")

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        for k, v in values.items():
            v = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
            row[k] = v
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in the order they were written."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {str(workdir)!r} a jaxnorm run directory (python train.py "
                                "--workdir ...)?")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
    """``(steps, values)`` of the scalar ``key`` in the rows of ``split``."""
    pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


class Progress:
    """``step k/n  loss …  12.3 steps/s  ETA 0:41`` on stderr: redrawn in place on a terminal, one line per
    report otherwise (CI logs)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start) / dt if dt > 0 else 0.0

    def update(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        r = self.rate(step)
        eta = (self.total - step) / r if r > 0 else float("nan")
        eta_s = time.strftime("%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = f"step {step}/{self.total}  {info}  {r:.1f} steps/s  ETA {eta_s}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
