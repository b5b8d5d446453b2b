"""One driver for every training stage (the supervised run, layer-wise pretraining): steps ``state, metrics =
step_fn(state, s)``, the cadence of log rows, evaluations and checkpoints, the finite-loss check before anything is
written after a step, and stopping: at most two steps are in flight on the device, so SIGTERM or a first Ctrl-C
saves within two steps (the message says how to resume), and a second Ctrl-C ends the process at once naming the last
checkpoint. The caller closes files, through a ``contextlib.ExitStack``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import sys
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


# Steps dispatched ahead of the device: before step t is dispatched, step t − 2 has finished. JAX's async dispatch
# would otherwise queue every step up to the next log/checkpoint/eval boundary, and a stop request (preemption,
# Ctrl-C) would wait for all of them; two keep the device fed while the host prepares the next step.
MAX_IN_FLIGHT = 2


class Aborted(KeyboardInterrupt):
    """A second Ctrl-C: the process stopped at once, without saving (exit status 130)."""


@contextlib.contextmanager
def _stop_signals(sigterm: bool, where: Callable[[], str], forward_sigint: bool = False):
    """``{'signal': None}``, set to SIGINT or SIGTERM when one arrives during the ``with`` block: the stage stops at
    the next step boundary, never inside JAX's callbacks, where a KeyboardInterrupt can be swallowed.

    A second Ctrl-C ends the process at once (``os._exit(130)``), even while the main thread waits on the device or
    writes a checkpoint, after printing ``where()`` (the step and the last checkpoint): a watcher thread reads the
    signal numbers Python's C-level handler writes to its wakeup fd, so it does not wait for the main thread to
    return to Python. Main thread only; SIGTERM only when ``sigterm`` (JAX's preemption service owns it in
    multi-process runs). ``forward_sigint``: a first Ctrl-C is also sent on as SIGTERM to this process, so that the
    preemption service tells every process and all stop at the same step."""
    flag: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    lock = threading.Lock()

    def record(signum):
        with lock:
            first = flag["signal"] is None
            if first:
                flag["signal"] = signum
        if first and signum == signal.SIGINT and forward_sigint:
            os.kill(os.getpid(), signal.SIGTERM)

    def watch():
        interrupts = 0
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum == signal.SIGINT:
                    interrupts += 1
                    if interrupts >= 2:
                        sys.stdout.write(f"interrupted again: stopped at once without saving, {where()}\n")
                        sys.stdout.flush()
                        os._exit(130)
                if signum in (signal.SIGINT, signal.SIGTERM):
                    record(signum)

    def handler(signum, frame):  # the watcher acts; this only keeps Python's default KeyboardInterrupt away
        record(signum)

    signums = (signal.SIGINT, signal.SIGTERM) if sigterm else (signal.SIGINT,)
    previous = {n: signal.signal(n, handler) for n in signums}
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="jaxnorm-stop-signals", daemon=True)
    watcher.start()
    try:
        yield flag
    finally:
        signal.set_wakeup_fd(previous_fd)
        for n, h in previous.items():
            signal.signal(n, h)
        writer.close()  # the watcher reads EOF and returns
        watcher.join(timeout=1.0)
        reader.close()


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


def _preempted() -> bool | None:
    """Whether every process has been told to stop at this step (a SIGTERM reached one of them); None when JAX's
    preemption service is off (``jax_enable_preemption_service=False``)."""
    try:
        return multihost_utils.reached_preemption_sync_point(next(_SYNC_IDS))
    except RuntimeError:
        return None


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
    in_flight: collections.deque = collections.deque()  # the metrics of dispatched steps, oldest first
    last_eval = None
    done = start
    saved = start if start > 0 else None  # a run resumes from the checkpoint of its start step
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

    def where() -> str:
        last = f"the last checkpoint is {stage.step_label} {saved}" if saved is not None else "no checkpoint yet"
        return f"at {stage.step_label} {done}; {last} in {stage.checkpoint_dir}. Rerun the same command to resume."

    def save(state, step):
        nonlocal saved
        save_fn(state, step)
        saved = step

    multi = jax.process_count() > 1
    preemption = multi  # several processes: JAX's preemption service agrees on the step at which all stop
    # several processes: the preemption service owns SIGTERM, and a Ctrl-C is passed on to it as a SIGTERM
    with _stop_signals(sigterm=not multi, where=where, forward_sigint=multi) as stop:
        try:
            for s in range(start, stage.total):
                while len(in_flight) >= MAX_IN_FLIGHT:  # step s − 2 has finished before step s is dispatched
                    jax.block_until_ready(in_flight.popleft())
                if preemption:
                    agreed = _preempted()
                    preemption = agreed is not None  # None: the service is off; each process stops on its own
                    if agreed:
                        raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else Terminated
                if stop["signal"] is not None and not preemption:
                    raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else Terminated
                state, m = step_fn(state, s)
                in_flight.append(m)
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
                    save(state, done)
            if stop["signal"] is not None:  # arrived during the last steps: the run is complete and saved
                raise KeyboardInterrupt if stop["signal"] == signal.SIGINT else Terminated
        except KeyboardInterrupt as e:
            check_finite(stage, pending)
            if pending:  # the steps since the last row get their row: the checkpoint below includes them
                write_row()
            if saved != done:
                save(state, done)
            how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            raise type(e)(
                f"{how} at {stage.step_label} {done}; checkpoint saved in {stage.checkpoint_dir}. Rerun the "
                "same command to resume."
            ) from None
    return state, last_eval
