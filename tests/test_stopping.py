"""Stopping a run whose steps take real time: at most two steps are in flight on the device, so SIGTERM and a first
Ctrl-C stop within two steps with a checkpoint of every step that ran, and a second Ctrl-C ends the process at once,
naming the last checkpoint, even while the main thread waits on the device or writes a checkpoint.

Steps are made slow with real work (a chain of matrix products), not a host callback: a program with a host
callback runs synchronously on XLA:CPU, which would hide the dispatch queue. A thread logs each step as its result
becomes ready; the tests count steps and assert nothing about wall-clock time (the timeouts only catch a hang).
"""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import ROOT, final_state

from jaxnorm.lab.train import stage
from jaxnorm.lab.train.metrics import read_metrics


def _toy_stage(total):
    return stage.Stage(
        name="training",
        step_label="step",
        split="train",
        total=total,
        checkpoint_dir="DIR",
        log_at=lambda d: d % 1000 == 0,
        checkpoint_at=lambda d: d % 1000 == 0,
        summarize=lambda rows: {"loss": float(np.mean([r["loss"] for r in rows]))},
        hint="",
    )


class _Writer:
    def write(self, step, split, values):
        pass


def heavy(seed, n=512, depth=8):
    """A few hundred ms of matrix products on 2 cores, seeded by a traced value (nothing to constant-fold)."""
    a = jax.random.normal(jax.random.fold_in(jax.random.key(0), seed), (n, n)) / jnp.sqrt(n)
    for _ in range(depth):
        a = jnp.tanh(a @ a) * 1.5
    return jnp.sum(a)


@jax.jit
def _slow_step(state, s):
    return state + 1, {"loss": jnp.float32(1.0) + 0.0 * heavy(s)}


def _wait_until(cond, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_request_runs_at_most_two_more_steps_then_saves(signum):
    outputs, saved, sent = [], [], {}
    _slow_step(jnp.int32(0), 0)  # compiled before the clock of the run starts

    def step_fn(state, s):
        state, m = _slow_step(state, s)
        outputs.append(m["loss"])
        return state, m

    def finished():
        return sum(1 for o in list(outputs) if o.is_ready())

    def send():
        _wait_until(lambda: finished() >= 3, "three finished steps")
        sent["finished"] = finished()
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=send)
    sender.start()
    exc = stage.Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(exc, match=r"at step \d+; checkpoint saved in DIR"):
        stage.run_stage(
            _toy_stage(60), jnp.int32(0), 0, step_fn, lambda st, d: saved.append((int(st), d)), writer=_Writer()
        )
    sender.join()
    (state, done) = saved[-1]
    assert len(saved) == 1 and state == done == len(outputs)  # the checkpoint holds every step that ran
    assert done - sent["finished"] <= 2, (sent, done)  # steps run after the signal
    assert done < 60


def test_the_previous_signal_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before[2])
    stage.run_stage(_toy_stage(3), jnp.int32(0), 0, _slow_step, lambda st, d: None, writer=_Writer())
    after = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(after[2])
    assert after == before


_SECOND_CTRL_C = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp
    from jaxnorm.lab.train import stage

    LOG, MODE = sys.argv[1], sys.argv[2]

    def host(s):
        with open(LOG, "a") as f:
            f.write(f"start {int(s)}\\n")
        time.sleep(600 if MODE == "device" and int(s) == 2 else 0.2)
        with open(LOG, "a") as f:
            f.write(f"end {int(s)}\\n")

    @jax.jit
    def step(state, s):
        jax.debug.callback(host, s)
        return state + 1, {"loss": jnp.float32(1.0) + 0.0 * state}

    def save(state, done):
        with open(LOG, "a") as f:
            f.write(f"saving {done}\\n")
        if MODE == "save" and done > 2:
            time.sleep(600)
        with open(LOG, "a") as f:
            f.write(f"saved {done}\\n")

    st = stage.Stage(name="training", step_label="step", split="train", total=1000, checkpoint_dir="DIR",
                     log_at=lambda d: False, checkpoint_at=lambda d: d == 2, summarize=lambda rows: {"loss": 1.0},
                     hint="")

    class W:
        def write(self, *a):
            pass

    try:
        stage.run_stage(st, jnp.int32(0), 0, lambda s, t: step(s, t), save, writer=W())
    except KeyboardInterrupt as e:
        print(e)
        sys.exit(130)
    """
)


@pytest.mark.parametrize("mode", ["device", "save"])
def test_a_second_ctrl_c_ends_the_process_at_once_naming_the_last_checkpoint(tmp_path, mode):
    """``device``: the second Ctrl-C comes while the main thread waits on a 600 s step; ``save``: while a checkpoint
    takes 600 s to write. Either way the process ends before that work finishes (the events say so: no end of step 2,
    no saved step 3); the 240 s wait only guards against a hang."""
    log = tmp_path / "log"
    p = subprocess.Popen(
        [sys.executable, "-c", _SECOND_CTRL_C, str(log), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )

    def lines():
        return log.read_text().splitlines() if log.exists() else []

    try:
        _wait_until(lambda: "start 2" in lines() or p.poll() is not None, "step 2", timeout=240)
        p.send_signal(signal.SIGINT)
        if mode == "save":
            _wait_until(lambda: "saving 3" in lines() or p.poll() is not None, "the save at the stop", timeout=240)
        else:
            time.sleep(0.5)  # let the main thread reach its wait on the device
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=240)  # a hang guard: the step or save would take 600 s
    finally:
        p.kill()
    assert p.returncode == 130, (out, err[-2000:])
    assert "interrupted again: stopped at once without saving, at step " in out, out
    assert "the last checkpoint is step 2 in DIR. Rerun the same command to resume." in out, out
    if mode == "device":
        assert "end 2" not in lines() and "saving 3" not in lines(), lines()
    else:
        assert "saved 3" not in lines(), lines()


_SLOW_RUN = textwrap.dedent(
    """
    import queue, sys, threading
    import jax
    from test_stopping import heavy
    from test_train import load_config
    from jaxnorm.lab.train import loop, parallel, steps

    LOG, WORKDIR = sys.argv[1], sys.argv[2]
    make, compile_ = steps.make_train_step, parallel.DataParallel.compile
    dispatched = queue.Queue()

    def slow_train_step(*args, **kwargs):  # the step, with a few hundred ms of real work in its metrics
        train_step = make(*args, **kwargs)

        def slow(state, *rest):
            new, metrics = train_step(state, *rest)
            return new, {**metrics, "loss": metrics["loss"] + 0.0 * heavy(state.step)}

        return slow

    def logged_compile(self, fn):  # every dispatched step's metrics go to the logger thread
        compiled = compile_(self, fn)

        def call(*args):
            out = compiled(*args)
            dispatched.put(out[1]["loss"])
            return out

        return call

    def log_finished():
        n = 0
        while True:
            jax.block_until_ready(dispatched.get())
            n += 1
            with open(LOG, "a") as f:
                f.write(f"{n}\\n")

    steps.make_train_step = slow_train_step
    parallel.DataParallel.compile = logged_compile
    threading.Thread(target=log_finished, daemon=True).start()
    config = load_config(num_steps=100000, log_every=1000, checkpoint_every=1000, eval_every=1000, progress=False)
    sys.exit(loop.main(config, WORKDIR))
    """
)


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_run_with_slow_steps_stops_within_two_steps_with_a_checkpoint(tmp_path, signum, code):
    """The whole run (``loop.main``, its prefetch and probes hooks), its steps slowed to 0.5 s: before the bound, the
    loop queued every step up to the next boundary (1000 here) and ran them all before saving. Which steps ran is
    the checkpoint's step; which had finished when the signal was sent, the subprocess's logger thread says."""
    log, wd = tmp_path / "steps", tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, "-c", _SLOW_RUN, str(log), str(wd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=os.path.join(ROOT, "tests"),
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.path.join(ROOT, "tests")},
    )

    def finished():
        return len(log.read_text().split()) if log.exists() else 0

    try:
        _wait_until(lambda: finished() >= 4 or p.poll() is not None, "four finished steps", timeout=240)
        at_signal = finished()
        p.send_signal(signum)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == code, (out, err[-3000:])
    stopped, _ = final_state(wd)
    assert stopped - at_signal <= 2, (at_signal, stopped)  # steps run after the signal
    assert f"at step {stopped}; checkpoint saved in " in out
    assert [r["step"] for r in read_metrics(wd) if r["split"] == "train"][-1] == stopped
