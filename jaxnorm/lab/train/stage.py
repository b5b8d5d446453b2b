"""One driver for every training stage (the supervised run, layer-wise pretraining): steps ``state, metrics =
step_fn(state, s)``, the cadence of log rows, evaluations and checkpoints, the finite-loss check before anything is
written after a step, and Ctrl-C (the last finished step is saved; the message says how to resume). The caller closes
files, through a ``contextlib.ExitStack``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

# the preemption sync point wants step ids that only grow, across stages (pretraining, then training)
_SYNC_IDS = itertools.count()


class NonFiniteLossError(FloatingPointError):
    """The loss of a training or pretraining step became NaN or Inf."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (preemption, ``kill``): the stage saved at a step boundary and stopped; exit status 143."""


@contextlib.contextmanager
def _stop_signals(sigterm: bool):
    """``{'signal': None}``, set to SIGINT or SIGTERM when one arrives during the ``with`` block: the stage stops at
    the next step boundary, never inside JAX's callbacks, where a KeyboardInterrupt can be swallowed. A second Ctrl-C
    interrupts at once. Main thread only; SIGTERM only when ``sigterm`` (JAX's preemption service owns it in
    multi-process runs)."""
    flag = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if signum == signal.SIGINT and flag["signal"] == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    signums = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    previous = {n: signal.signal(n, handler) for n in signums}
    try:
        yield flag
    finally:
        for n, h in previous.items():
            signal.signal(n, h)


@dataclasses.dataclass(frozen=True)
class Stage:
    """What differs between stages.

    ``log_at(done)``/``checkpoint_at(done)``/``eval_at(done)`` say what happens after ``done`` steps (the last step
    always logs, checkpoints and evaluates when the stage has an evaluation); ``summarize(metrics)`` turns the
    metrics of the steps since the last row into one row of ``split``; ``hint`` says how to avoid a NaN loss.
    """

    name: str  # 'training' | 'pretraining', in messages
    step_label: str  # 'step' | 'pretraining step'
    split: str  # the metrics split of the log rows
    total: int
    checkpoint_dir: str
    log_at: Callable[[int], bool]
    checkpoint_at: Callable[[int], bool]
    summarize: Callable[[list[dict]], dict]
    hint: str
    eval_at: Callable[[int], bool] = lambda done: False
    detail: Callable[[dict], str] = lambda m: ""  # context of a NaN loss, e.g. the learning rate


def _preempted() -> bool:
    try:
        return multihost_utils.reached_preemption_sync_point(next(_SYNC_IDS))
    except RuntimeError:  # the preemption service is off (jax_enable_preemption_service=False)
        return False


def check_finite(stage: Stage, pending: list) -> None:
    """:class:`NonFiniteLossError` at the first of the ``(step, metrics)`` whose loss is not finite."""
    for step, m in pending:
        loss = float(jax.device_get(m["loss"]))
        if not np.isfinite(loss):
            raise NonFiniteLossError(
                f"the {stage.name} loss is {loss} at {stage.step_label} {step}{stage.detail(m)}; no checkpoint was "
                f"written after it. {stage.hint}"
            )


def run_stage(
    stage: Stage,
    state: Any,
    start: int,
    step_fn: Callable,
    save_fn: Callable,
    *,
    writer,
    progress=None,
    evaluate: Callable | None = None,
) -> tuple[Any, dict | None]:
    """Run steps ``start … stage.total − 1`` and return ``(state, last evaluation or None)``.

    ``save_fn(state, done)`` writes a checkpoint after ``done`` steps; ``evaluate(state) -> dict`` is written as an
    ``'eval'`` row. Each log row also has ``steps_per_sec`` over its steps (evaluation time excluded)."""
    pending: list = []
    last_eval = None
    done = start
    t_window = time.perf_counter()

    def write_row():
        nonlocal pending, t_window
        row = stage.summarize([metrics for _, metrics in pending])
        now = time.perf_counter()
        row["steps_per_sec"] = len(pending) / (now - t_window)
        writer.write(done, stage.split, row)
        if progress is not None:
            progress.update(done, f"loss {row['loss']:.4f}")
        pending, t_window = [], now

    multi = jax.process_count() > 1
    try:
        # several processes: JAX's preemption service owns SIGTERM and agrees on the step at which all stop
        with _stop_signals(sigterm=not multi) as stop:
            for s in range(start, stage.total):
                if stop["signal"] == signal.SIGINT:
                    raise KeyboardInterrupt
                if stop["signal"] == signal.SIGTERM or (multi and _preempted()):
                    raise Terminated
                state, m = step_fn(state, s)
                pending.append((s, m))
                done = s + 1
                last = done == stage.total
                log, ckpt = stage.log_at(done) or last, stage.checkpoint_at(done) or last
                ev = evaluate is not None and (stage.eval_at(done) or last)
                if log or ckpt or ev:
                    check_finite(stage, pending)
                if log:
                    write_row()
                if ev:
                    last_eval = evaluate(state)
                    writer.write(done, "eval", last_eval)
                    t_window = time.perf_counter()
                if ckpt:
                    save_fn(state, done)
            if stop["signal"] is not None:  # arrived during the last step: the run is complete and saved
                raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else Terminated
    except KeyboardInterrupt as e:
        check_finite(stage, pending)
        if pending:  # the steps since the last row get their row: the checkpoint below includes them
            write_row()
        save_fn(state, done)
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        raise type(e)(
            f"{how} at {stage.step_label} {done}; checkpoint saved in {stage.checkpoint_dir}. Rerun the "
            "same command to resume."
        ) from None
    return state, last_eval
