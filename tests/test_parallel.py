"""Data parallelism on 4 fake CPU devices: global-view jit (replicated or FSDP-sharded state), jit+shard_map and
pmap steps equal a single-device step on the global batch; whole runs agree across modes and resume on another
device count; two processes on loopback match one process and fail fast when one dies."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
from test_train import ROOT, final_state, load_config

from jaxnorm.lab import models
from jaxnorm.lab.train import loop, parallel, steps
from jaxnorm.lab.train.metrics import read_metrics

B, D = 16, 4


@pytest.fixture(scope="module")
def setup():
    assert jax.device_count() >= D, "tests/conftest.py fakes 4 CPU devices"
    rng = np.random.default_rng(0)
    batch = {
        "x": rng.normal(size=(B, 8, 8, 1)).astype(np.float32) * 2 + 1,
        "y": rng.integers(0, 10, size=B).astype(np.int32),
        "mask": np.ones(B, bool),
    }
    tx = optax.sgd(0.1, momentum=0.9)
    return batch, tx


def _model(**kw):
    return models.build_model("simple_cnn", channels=(4, 8), norm="batch", momentum=0.9, **kw)


def _one_step(dp, model, tx, batch, sync_bn=True):
    state = steps.create_state(_model(), tx, batch["x"], 0)
    step = dp.compile(
        steps.make_train_step(model, tx, optax.constant_schedule(0.1), 0, axis_name=dp.axis_name, sync_bn=sync_bn)
    )
    new, metrics = step(dp.put_state(state), dp.put_batch(batch))
    return jax.tree.map(np.asarray, dp.get_state(new)), jax.tree.map(np.asarray, metrics)


def _assert_trees_close(a, b, tol=1e-5):
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert len(la) == len(lb)
    for (pa, va), (_, vb) in zip(la, lb):
        np.testing.assert_allclose(va, vb, atol=tol, rtol=tol, err_msg=jax.tree_util.keystr(pa))


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
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


@pytest.mark.parametrize("mode", ["pmap", "shard_map"])
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


def test_mode_names_auto_and_the_modes_that_cannot_be_combined():
    assert parallel.resolve_mode("auto") == "global"
    assert parallel.resolve_mode("auto", sync_bn=False) == "shard_map"  # per-device statistics need per-device code
    assert parallel.resolve_mode("sharding") == "shard_map"  # the name before global view, in old config.json
    with pytest.raises(ValueError, match="sync_bn=False .* use parallel='shard_map' or 'pmap'"):
        parallel.resolve_mode("global", sync_bn=False)
    with pytest.raises(ValueError, match="shard_params=True shards the state over the mesh of parallel='global'"):
        parallel.DataParallel.create("pmap", shard_params=True)
    assert parallel.DataParallel.create("global").axis_name is None  # global view: no collectives in the step


def test_pmap_says_once_that_it_is_in_maintenance(capsys):
    parallel._PMAP_NOTE.clear()
    parallel.DataParallel.create("pmap")
    parallel.DataParallel.create("pmap")
    assert capsys.readouterr().err.count("jax.pmap is in maintenance mode upstream") == 1


def _dropout_model(**kw):
    return _model(dropout="dropout", dropout_rate=0.5, **kw)


def _steps(dp, model, tx, batch, n=3):
    state = steps.create_state(_dropout_model(), tx, batch["x"], 0)
    step = dp.compile(steps.make_train_step(model, tx, optax.constant_schedule(0.1), 0, axis_name=dp.axis_name))
    placed = dp.put_state(state)
    for _ in range(n):
        placed, metrics = step(placed, dp.put_batch(batch))
    return placed, jax.tree.map(np.asarray, dp.get_state(placed)), jax.tree.map(np.asarray, metrics)


@pytest.mark.parametrize("shard_params", [False, True])
def test_global_view_step_equals_one_device_to_rounding_with_dropout_and_bn(setup, shard_params):
    """The global-view step is the single-device step: batch norm over the global batch without axis_name, one
    dropout key for the global batch. Three steps on 4 devices equal three on one device to float32 rounding
    (XLA sums the statistics per device first, so not bit for bit), with the state replicated or FSDP-sharded."""
    batch, tx = setup
    _, ref, ref_m = _steps(parallel.DataParallel.create("none"), _dropout_model(), tx, batch)
    dp = parallel.DataParallel.create("global", shard_params=shard_params, min_shard_size=16)
    placed, got, got_m = _steps(dp, _dropout_model(), tx, batch)
    _assert_trees_close(got.params, ref.params, tol=2e-6)
    _assert_trees_close(got.opt_state, ref.opt_state, tol=2e-6)
    _assert_trees_close(got.batch_stats, ref.batch_stats, tol=2e-6)
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-6)
    specs = {jax.tree_util.keystr(p): v.sharding.spec for p, v in jax.tree_util.tree_leaves_with_path(placed.params)}
    if shard_params:  # every leaf of >= 16 elements along its largest divisible axis; the state keeps it
        assert specs["['conv_1']['kernel']"] == P(None, None, None, "batch")  # 3×3×4×8: the 8 output channels
        assert specs["['head']['kernel']"] == P("batch")  # 8×10: 8 is divisible by 4, 10 is not
        assert specs["['head']['bias']"] == P()  # 10 elements: replicated
        mom = jax.tree_util.tree_leaves_with_path(placed.opt_state)
        assert any(v.sharding.spec == P(None, None, None, "batch") for _, v in mom)  # the momentum buffers too
    else:
        assert set(specs.values()) == {P()}
    # dropout really was on and drew the same masks: without dropout the step differs
    _, plain, _ = _steps(parallel.DataParallel.create("none"), _model(), tx, batch)
    assert not np.allclose(plain.params["head"]["kernel"], ref.params["head"]["kernel"], atol=1e-4)


def test_fsdp_partition_of_a_leaf_and_the_error_for_a_shape_it_cannot_use():
    assert parallel.fsdp_spec((3, 3, 16, 64), 4) == P(None, None, None, "batch")  # the largest divisible axis
    assert parallel.fsdp_spec((128, 10), 4, min_size=1024) == P("batch")
    assert parallel.fsdp_spec((64,), 4) == P()  # below the size threshold: replicated
    assert parallel.fsdp_spec((96, 96), 4) == P("batch")  # equal sizes: the first
    with pytest.raises(ValueError, match=r"\['w'\] of shape \(99, 101\) has no axis divisible by the 4 devices"):
        parallel.fsdp_spec((99, 101), 4, where="['w']")


def test_fsdp_run_checkpoints_gathered_and_resumes_replicated_and_on_one_device(tmp_path):
    def train(wd, **kw):
        loop.train_and_evaluate(load_config(log_every=1, checkpoint_every=5, schedule_steps=15, **kw), str(wd))
        return [r["loss"] for r in read_metrics(str(wd)) if r["split"] == "train"]

    ref = train(tmp_path / "ref", parallel="none", num_steps=10)
    fsdp = train(tmp_path / "fsdp", parallel="global", shard_params=True, shard_params_min_size=16, num_steps=10)
    np.testing.assert_allclose(fsdp, ref, rtol=1e-5)
    shutil.copytree(tmp_path / "ref", tmp_path / "ref15")
    ref15 = train(tmp_path / "ref15", parallel="none", num_steps=15)  # the schedule spans 15 steps from the start
    for mode in ("none", "global"):  # the sharded run's checkpoint resumes on one device and replicated
        shutil.copytree(tmp_path / "fsdp", tmp_path / mode)
        got = train(tmp_path / mode, parallel=mode, num_steps=15)
        assert [r["step"] for r in read_metrics(str(tmp_path / mode)) if r["split"] == "train"] == list(range(1, 16))
        np.testing.assert_allclose(got, ref15, rtol=1e-5)


def test_ten_steps_same_losses_in_every_mode_and_resume_on_other_device_count(tmp_path):
    losses = {}
    for mode in ("none", "global", "pmap", "shard_map"):
        wd = str(tmp_path / mode)
        loop.train_and_evaluate(
            load_config(parallel=mode, num_steps=10, schedule_steps=15, log_every=1, checkpoint_every=5), wd
        )
        losses[mode] = [r["loss"] for r in read_metrics(wd) if r["split"] == "train"]
        assert len(losses[mode]) == 10
    np.testing.assert_allclose(losses["pmap"], losses["none"], atol=1e-4)
    np.testing.assert_allclose(losses["shard_map"], losses["none"], atol=1e-4)
    np.testing.assert_allclose(losses["global"], losses["none"], rtol=1e-5)
    # the checkpoint holds the unreplicated state: a pmap run resumes on one device
    wd = str(tmp_path / "pmap")
    result = loop.train_and_evaluate(
        load_config(parallel="none", num_steps=15, schedule_steps=15, log_every=1, checkpoint_every=5), wd
    )
    assert np.isfinite(result["loss"])
    assert [r["step"] for r in read_metrics(wd) if r["split"] == "train"][-5:] == [11, 12, 13, 14, 15]


# ---------------------------------------------------------------------------------------------------------------------
# two processes on loopback (jax.distributed, gloo CPU collectives)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags_with_devices(n: int) -> str:
    """The suite's XLA_FLAGS (tests/conftest.py) with the fake device count set to ``n``."""
    keep = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    return " ".join([*keep, f"--xla_force_host_platform_device_count={n}"])


def _launch(workdir, pid, port, *flags, devices=2, mode="shard_map"):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": _flags_with_devices(devices)}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        os.path.join(ROOT, "configs", "smoke.py"),
        "--workdir",
        str(workdir),
        f"--config.parallel={mode}",
        f"--config.coordinator_address=127.0.0.1:{port}",
        "--config.num_processes=2",
        f"--config.process_id={pid}",
        "--config.heartbeat_timeout=10",
        *flags,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_with_sharded_state_match_one_process_and_fall_back_together(tmp_path):
    """Two processes × 2 devices, the state sharded over all 4 (each process writes its shards and its manifest
    part) match one process on 4 devices with a replicated state. Then a shard only process 1 holds is corrupted:
    process 1 finds it, both fall back to the earlier step together and train it again to the same state."""
    flags = ["--config.num_steps=6", "--config.checkpoint_every=3", "--config.eval_every=6"]
    sharded = ["--config.shard_params=True", "--config.shard_params_min_size=16"]

    def two_processes(*extra):
        port = _free_port()
        procs = [_launch(tmp_path / "multi", pid, port, *flags, *sharded, *extra, mode="global") for pid in (0, 1)]
        outs = [p.communicate(timeout=240) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
        return outs

    two_processes()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": _flags_with_devices(4)}
    single = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config",
            os.path.join(ROOT, "configs", "smoke.py"),
            "--workdir",
            str(tmp_path / "single"),
            "--config.parallel=global",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    step_a, a = final_state(tmp_path / "multi")
    step_b, b = final_state(tmp_path / "single")
    assert step_a == step_b == 6
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=1e-5, err_msg=k)
    step_dir = tmp_path / "multi" / "checkpoints" / "6"
    parts = [json.loads((step_dir / f"jaxnorm_manifest.{k}-of-2.json").read_text()) for k in (0, 1)]
    path, entry = next((p, v) for p, v in parts[1]["leaves"].items() if v["shards"])  # a shard process 1 wrote
    entry["shards"][0]["sha256"] = "0" * 64
    (step_dir / "jaxnorm_manifest.1-of-2.json").write_text(json.dumps(parts[1]))
    outs = two_processes("--config.num_steps=6")
    assert "is corrupt (checksum mismatch in" in outs[1][0] and "resuming from step 3" in outs[1][0], outs[1][0]
    assert "is corrupt (process 1 found it corrupt)" in outs[0][0] and "resuming from step 3" in outs[0][0], outs[0][0]
    assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3", "6", "corrupt-6"]
    step_c, c = final_state(tmp_path / "multi")  # steps 4-6 trained again from step 3: the same state
    assert step_c == 6
    for k in a:
        np.testing.assert_array_equal(c[k], a[k], err_msg=k)


def _wait_for_training(procs, metrics, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-3000:]
        time.sleep(0.1)
    assert metrics.exists(), "training never started"


# whichever notices first speaks, each naming the survivor first: jaxnorm's heartbeat watchdog ("peer process K"),
# a failed collective ("a peer process") or JAX's distributed service ("a peer process or the coordinator")
PEER_LOST = r"error: process {} of 2: .*peer process.* stopped responding"


def test_killed_process_makes_the_other_fail_fast(tmp_path):
    port = _free_port()
    flags = [
        "--config.num_steps=100000",
        "--config.log_every=1",
        "--config.checkpoint_every=100000",
        "--config.eval_every=100000",
    ]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[1].send_signal(signal.SIGKILL)
    try:
        _, err = procs[0].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung for 120 s after its peer died")
    assert re.match(PEER_LOST.format(0), err.strip().splitlines()[-1]), err[-3000:]
    assert len([x for x in err.strip().splitlines() if x.strip()]) == 1, err[-3000:]
    assert procs[0].returncode == 1, (procs[0].returncode, err[-3000:])  # an exit, not an abort (134)


def test_killed_coordinator_makes_the_other_exit_with_one_line(tmp_path):
    port = _free_port()
    flags = [
        "--config.num_steps=100000",
        "--config.log_every=1",
        "--config.checkpoint_every=100000",
        "--config.eval_every=100000",
    ]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[0].send_signal(signal.SIGKILL)
    try:
        _, err = procs[1].communicate(timeout=120)
    except subprocess.TimeoutExpired:
        procs[1].kill()
        pytest.fail("process 1 hung for 120 s after the coordinator died")
    assert procs[1].returncode == 1, (procs[1].returncode, err[-3000:])
    assert re.match(
        PEER_LOST.format(1),
        err.strip().splitlines()[-1],
    ), err[-3000:]
    assert len([x for x in err.strip().splitlines() if x.strip()]) == 1, err[-3000:]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_one_process_stops_both_at_the_same_saved_step(tmp_path, signum):
    """SIGTERM (a scheduler preempting one host) or Ctrl-C (passed on to JAX's preemption service as a SIGTERM)
    to process 1: both processes stop at the same step, and that step is saved."""
    port = _free_port()
    flags = [
        "--config.num_steps=100000",
        "--config.log_every=1",
        "--config.checkpoint_every=100000",
        "--config.eval_every=100000",
    ]
    procs = [_launch(tmp_path / "run", pid, port, *flags) for pid in (0, 1)]
    _wait_for_training(procs, tmp_path / "run" / "metrics.jsonl")
    procs[1].send_signal(signum)
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"{signal.Signals(signum).name} did not stop the run within 240 s (a hang)")
    codes = [p.returncode for p in procs]
    assert codes == [143, 143 if signum == signal.SIGTERM else 130], (codes, outs[0][1][-2000:], outs[1][1][-2000:])
    how = [r"terminated \(SIGTERM\)", r"terminated \(SIGTERM\)" if signum == signal.SIGTERM else "interrupted"]
    steps = [re.search(rf"{h} at step (\d+); checkpoint saved", out).group(1) for h, (out, _) in zip(how, outs)]
    assert steps[0] == steps[1]
    stopped, _ = final_state(tmp_path / "run")
    assert stopped == int(steps[0])


def test_a_peer_that_never_starts_is_an_initialization_timeout(tmp_path):
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        os.path.join(ROOT, "configs", "smoke.py"),
        "--workdir",
        str(tmp_path / "run"),
        f"--config.coordinator_address=127.0.0.1:{port}",
        "--config.num_processes=2",
        "--config.process_id=0",
        "--config.heartbeat_timeout=1",  # no training here: only the 3 × 1 s initialization wait
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and lines[-1].startswith("error: process 0 of 2: not every process connected"), r.stderr[
        -3000:
    ]
    assert "initialization timeout (3 s = 3 × heartbeat_timeout)" in lines[-1]
    assert not (tmp_path / "run").exists()
