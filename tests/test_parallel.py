"""Data parallelism on 4 fake CPU devices: pmap and jit+shard_map steps equal a single-device step on the global
batch; whole runs agree across modes; two processes on loopback match one process and fail fast when one dies."""

import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from jaxnorm import models
from jaxnorm.train import loop, parallel, steps
from jaxnorm.train.metrics import read_metrics

from test_train import ROOT, final_state, load_config

B, D = 16, 4


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() >= D, "tests/conftest.py fakes 4 CPU devices"
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(B, 8, 8, 1)).astype(np.float32) * 2 + 1,
             "y": rng.integers(0, 10, size=B).astype(np.int32), "mask": np.ones(B, bool)}
    tx = optax.sgd(0.1, momentum=0.9)
    return batch, tx


def _model(**kw):
    return models.build_model("simple_cnn", channels=(4, 8), norm="batch", momentum=0.9, **kw)


def _one_step(dp, model, tx, batch, sync_bn=True):
    state = steps.create_state(_model(), tx, batch["x"], 0)
    step = dp.compile(steps.make_train_step(model, tx, optax.constant_schedule(0.1), 0, axis_name=dp.axis_name,
                                            sync_bn=sync_bn))
    new, metrics = step(dp.put_state(state), dp.put_batch(batch))
    return jax.tree.map(np.asarray, dp.get_state(new)), jax.tree.map(np.asarray, metrics)


def _assert_trees_close(a, b, tol=1e-5):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert len(la) == len(lb)
    for (pa, va), (_, vb) in zip(la, lb):
        np.testing.assert_allclose(va, vb, atol=tol, rtol=tol, err_msg=jax.tree_util.keystr(pa))


@pytest.mark.parametrize("mode", ["pmap", "sharding"])
def test_parallel_step_equals_single_device_step_on_global_batch(setup, mode):
    batch, tx = setup
    ref, ref_m = _one_step(parallel.DataParallel.create("none"), _model(), tx, batch)
    dp = parallel.DataParallel.create(mode)
    assert dp.num_devices == D
    got, got_m = _one_step(dp, _model(axis_name="batch"), tx, batch)
    _assert_trees_close(got.params, ref.params)
    _assert_trees_close(got.opt_state, ref.opt_state)
    _assert_trees_close(got.batch_stats, ref.batch_stats)
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(got_m["grad_norm"], ref_m["grad_norm"], rtol=1e-5)
    # the statistics really were global: per-device statistics give a different answer
    ghost, _ = _one_step(dp, _model(), tx, batch, sync_bn=False)
    assert not np.allclose(ghost.batch_stats["norm_0"]["var"], ref.batch_stats["norm_0"]["var"], atol=1e-4)


@pytest.mark.parametrize("mode", ["pmap", "sharding"])
def test_unsynced_bn_equals_ghost_batches_with_averaged_running_stats(setup, mode):
    """sync_bn=False: each device normalizes with its own statistics and the running statistics are averaged over
    devices — exactly ghost batch norm with one virtual batch per device on one device."""
    batch, tx = setup
    ghost_model = _model(norm_kwargs={"virtual_batch_size": B // D})
    ref, ref_m = _one_step(parallel.DataParallel.create("none"), ghost_model, tx, batch)
    got, got_m = _one_step(parallel.DataParallel.create(mode), _model(), tx, batch, sync_bn=False)
    _assert_trees_close(got.params, ref.params)
    _assert_trees_close(got.batch_stats, ref.batch_stats)
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-5)


def test_batch_not_divisible_by_devices_names_both_numbers():
    dp = parallel.DataParallel.create("pmap")
    with pytest.raises(ValueError, match=r"batch_size=18 is not divisible by the 4 devices.*such as 16 or 20"):
        dp.put_batch({"x": np.zeros((18, 2)), "y": np.zeros(18, np.int32), "mask": np.ones(18, bool)})
    with pytest.raises(ValueError, match=r"batch_size=30 is not divisible by the 4 devices"):
        loop.build(load_config(parallel="sharding", batch_size=30))
    with pytest.raises(ValueError, match=r"unknown parallel mode 'dp'"):
        parallel.resolve_mode("dp")


def test_auto_mode_picks_sharding_with_several_devices():
    assert parallel.resolve_mode("auto") == "sharding"


def test_ten_steps_same_losses_in_every_mode_and_resume_on_other_device_count(tmp_path):
    losses = {}
    for mode in ("none", "pmap", "sharding"):
        wd = str(tmp_path / mode)
        loop.train_and_evaluate(load_config(parallel=mode, num_steps=10, log_every=1, checkpoint_every=5), wd)
        losses[mode] = [r["loss"] for r in read_metrics(wd) if r["split"] == "train"]
        assert len(losses[mode]) == 10
    np.testing.assert_allclose(losses["pmap"], losses["none"], atol=1e-4)
    np.testing.assert_allclose(losses["sharding"], losses["none"], atol=1e-4)
    # the checkpoint holds the unreplicated state: a pmap run resumes on one device
    wd = str(tmp_path / "pmap")
    result = loop.train_and_evaluate(load_config(parallel="none", num_steps=15, log_every=1, checkpoint_every=5), wd)
    assert np.isfinite(result["loss"])
    assert [r["step"] for r in read_metrics(wd) if r["split"] == "train"][-5:] == [11, 12, 13, 14, 15]


# ---------------------------------------------------------------------------------------------------------------------
# two processes on loopback (jax.distributed, gloo CPU collectives)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(workdir, pid, port, *flags, devices=2):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "smoke.py"),
           "--workdir", str(workdir), "--config.parallel=sharding", f"--config.coordinator_address=127.0.0.1:{port}",
           "--config.num_processes=2", f"--config.process_id={pid}", "--config.heartbeat_timeout=10", *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_match_one_process(tmp_path):
    flags = ["--config.num_steps=6", "--config.checkpoint_every=6", "--config.eval_every=6"]
    port = _free_port()
    procs = [_launch(tmp_path / "multi", pid, port, *flags) for pid in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    single = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "smoke.py"),
         "--workdir", str(tmp_path / "single"), "--config.parallel=sharding", *flags],
        capture_output=True, text=True, env=env, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    step_a, a = final_state(tmp_path / "multi")
    step_b, b = final_state(tmp_path / "single")
    assert step_a == step_b == 6
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)


def _wait_for_training(procs, metrics, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    assert metrics.exists(), "training never started"


def test_killed_process_makes_the_other_fail_fast(tmp_path):
    port = _free_port()
    flags = ["--config.num_steps=100000", "--config.log_every=1", "--config.checkpoint_every=100000",
             "--config.eval_every=100000"]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[1].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = procs[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung for 120 s after its peer died")
    assert re.match(r"error: process 0 of 2.*stopped responding", err.strip().splitlines()[-1]), err[-3000:]
    assert len([x for x in err.strip().splitlines() if x.strip()]) == 1, err[-3000:]
    assert procs[0].returncode == 1, (procs[0].returncode, err[-3000:])  # an exit, not an abort (134)
    assert time.time() - t0 < 10 + 5  # heartbeat_timeout + 5 s


def test_killed_coordinator_makes_the_other_exit_with_one_line(tmp_path):
    port = _free_port()
    flags = ["--config.num_steps=100000", "--config.log_every=1", "--config.checkpoint_every=100000",
             "--config.eval_every=100000"]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[0].send_signal(signal.SIGKILL)
    t0 = time.time()
    try:
        _, err = procs[1].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[1].kill()
        pytest.fail("process 1 hung for 120 s after the coordinator died")
    assert procs[1].returncode == 1, (procs[1].returncode, err[-3000:])
    assert re.match(r"error: process 1 of 2.*stopped responding", err.strip().splitlines()[-1]), err[-3000:]
    assert len([x for x in err.strip().splitlines() if x.strip()]) == 1, err[-3000:]
    assert time.time() - t0 < 10 + 5


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(tmp_path):
    port = _free_port()
    flags = ["--config.num_steps=100000", "--config.log_every=1", "--config.checkpoint_every=100000",
             "--config.eval_every=100000"]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[1].send_signal(signal.SIGTERM)  # as a scheduler preempting one host would
    t0 = time.time()
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=60))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("SIGTERM did not stop the run within 60 s")
    assert time.time() - t0 < 10 + 5
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 143, (p.returncode, err[-3000:])
    steps = [re.search(r"terminated \(SIGTERM\) at step (\d+)", out).group(1) for out, _ in outs]
    assert steps[0] == steps[1]
    stopped, _ = final_state(tmp_path / "run")
    assert stopped == int(steps[0])


def test_a_peer_that_never_starts_is_an_initialization_timeout(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", os.path.join(ROOT, "configs", "smoke.py"),
           "--workdir", str(tmp_path / "run"), f"--config.coordinator_address=127.0.0.1:{port}",
           "--config.num_processes=2", "--config.process_id=0", "--config.heartbeat_timeout=3"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith("error: process 0 of 2: not every process connected"), \
        r.stderr[-3000:]
    assert "initialization timeout (9 s" in lines[-1]
    assert time.time() - t0 < 60
    assert not (tmp_path / "run").exists()
