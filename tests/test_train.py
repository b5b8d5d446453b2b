"""The training loop end to end: train.py as a user runs it, resume, Ctrl-C, and every bad input."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import loop, steps
from jaxnorm.lab.train.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name="smoke", **overrides):
    spec = importlib.util.spec_from_file_location(f"cfg_{name}", os.path.join(ROOT, "configs", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    for k, v in overrides.items():
        c[k] = v
    return c


def run_cli(workdir, *flags, wait=True):
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--config",
        os.path.join(ROOT, "configs", "smoke.py"),
        "--workdir",
        str(workdir),
        *flags,
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def final_state(workdir):
    """Params and batch stats of the latest checkpoint, as numpy leaves keyed by path."""
    import jax
    import orbax.checkpoint as ocp

    d = os.path.join(workdir, "checkpoints")
    step = max(int(s) for s in os.listdir(d) if s.isdigit())
    path = os.path.join(d, str(step), "default")
    with ocp.StandardCheckpointer() as c:  # into host arrays: a sharded checkpoint of another topology reads too
        meta = c.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        target = jax.tree.map(
            lambda m: np.zeros(m.shape, m.dtype),
            dict(meta),
            is_leaf=lambda m: hasattr(m, "shape") and hasattr(m, "dtype"),
        )
        tree = c.restore(path, target)
    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}/{k}", v)
        else:
            flat[prefix] = np.asarray(node)

    walk("", {"params": tree["params"], "batch_stats": tree["batch_stats"]})
    return step, flat


def test_smoke_run_through_train_py(tmp_path):
    wd = tmp_path / "run"
    r = run_cli(wd, "--config.num_steps=30", "--config.learning_rate=0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "final eval" in r.stdout
    rows = read_metrics(wd)
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    assert {"loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "steps_per_sec"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"]
    assert evals and 0.0 <= evals[-1]["accuracy"] <= 1.0
    assert sorted(os.listdir(wd / "checkpoints")) == ["10", "20", "30"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tensorboard"))
    assert json.load(open(wd / "config.json"))["num_steps"] == 30


def test_ctrl_c_saves_and_resume_is_bit_identical(tmp_path):
    flags = [
        "--config.num_steps=120",
        "--config.log_every=1",
        "--config.checkpoint_every=1000",
        "--config.eval_every=1000",
        "--config.dropout=dropout",
        "--config.dropout_rate=0.2",
    ]
    loop.train_and_evaluate(
        load_config(
            num_steps=120, log_every=1, checkpoint_every=1000, eval_every=1000, dropout="dropout", dropout_rate=0.2
        ),
        str(tmp_path / "ref"),
    )

    wd = tmp_path / "interrupted"
    p = run_cli(wd, *flags, wait=False)
    metrics = wd / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "Rerun the same command to resume" in out
    stopped, _ = final_state(wd)
    assert 0 < stopped < 120

    resumed = run_cli(wd, *flags)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from step {stopped}" in resumed.stdout
    step_a, a = final_state(tmp_path / "ref")
    step_b, b = final_state(wd)
    assert step_a == step_b == 120 and a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------------------------------------------------
# bad input: a clear error, and nothing written that could be mistaken for results


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"model": "resnet7"}, r"resnet7.*resnet18"),
        ({"norm": "batchnorm"}, r"batchnorm.*group"),
        ({"dataset": "nosuchset"}, r"nosuchset.*mnist1d"),
        (
            {"optimizer": "lamb"},
            r"unknown optimizer 'lamb'; valid optimizers: 'sgd', 'momentum', 'nesterov', 'adam', 'adamw'",
        ),
        ({"batch_size": 5000}, r"batch_size=5000 is larger than the digits training set \(1437 examples\)"),
    ],
)
def test_bad_names_and_sizes_fail_before_writing(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        loop.train_and_evaluate(load_config(**overrides), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_unknown_config_key_lists_valid_keys(tmp_path):
    c = load_config()
    c.unlock()
    c.batchsize = 3
    with pytest.raises(ValueError, match=r"unknown config keys \['batchsize'\].*did you mean 'batch_size'.*Valid keys"):
        loop.train_and_evaluate(c, str(tmp_path / "wd"))
    r = run_cli(tmp_path / "cli", "--config.batchsize=3")
    assert r.returncode != 0 and "batchsize" in r.stderr
    assert not (tmp_path / "cli").exists()


def test_unprepared_tfds_dataset_offline(tmp_path):
    with pytest.raises(Exception, match=r"cifar10.*not prepared|cifar10.*prepare"):
        loop.train_and_evaluate(load_config(dataset="cifar10", data_dir=str(tmp_path / "data")), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_workdir_with_different_config_is_refused(tmp_path):
    wd = str(tmp_path / "wd")
    loop.train_and_evaluate(load_config(num_steps=10), wd)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"different config \(norm: 'batch' -> 'group'\).*resume=False"):
        loop.train_and_evaluate(load_config(num_steps=10, norm="group"), wd)
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["10"]
    # resume=False starts over and keeps the old run aside
    loop.train_and_evaluate(load_config(num_steps=10, norm="group", resume=False), wd)
    aside = [d for d in os.listdir(wd) if d.startswith("previous-")]
    assert len(aside) == 1 and os.path.exists(os.path.join(wd, aside[0], "checkpoints", "10"))
    assert json.load(open(os.path.join(wd, "config.json")))["norm"] == "group"


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    wd = str(tmp_path / "wd")
    c = load_config(
        norm="none",
        learning_rate=1e9,
        schedule="constant",
        num_steps=40,
        checkpoint_every=1,
        log_every=1,
        weight_decay=0.0,
    )
    with pytest.raises(loop.NonFiniteLossError, match=r"the training loss is (nan|inf) at step \d+"):
        loop.train_and_evaluate(c, wd)
    steps = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")))
    assert steps  # the good ones stay
    bad = int(next(r for r in read_metrics(wd)[::-1] if r["split"] == "train")["step"])
    assert max(steps) <= bad


def test_truncated_checkpoint_is_moved_aside_and_the_run_resumes_from_the_earlier_one(tmp_path, capsys):
    wd = str(tmp_path / "wd")
    loop.train_and_evaluate(load_config(num_steps=20, schedule_steps=30), wd)
    for root, _, files in os.walk(os.path.join(wd, "checkpoints", "20")):
        for f in files:
            open(os.path.join(root, f), "w").close()  # truncate every file to 0 bytes
    result = loop.train_and_evaluate(load_config(num_steps=30, schedule_steps=30), wd)
    out = capsys.readouterr().out
    assert "checkpoint step 20 in" in out and "is corrupt" in out and "resuming from step 10" in out
    assert os.path.isdir(os.path.join(wd, "checkpoints", "corrupt-20"))
    assert 0.0 <= result["accuracy"] <= 1.0
    steps = [(r["step"], r["split"]) for r in read_metrics(wd)]
    assert len(steps) == len(set(steps))  # the replayed steps 11-20 were not logged twice
    with pytest.raises(ckpt_lib.CheckpointError, match=r"no checkpoint for step 7 .*available: \[10, 20, 30\]"):
        loop.train_and_evaluate(load_config(num_steps=30, schedule_steps=30, restore_step=7), wd)


def test_eval_with_recomputed_population_statistics(tmp_path):
    import jax

    wd = str(tmp_path / "wd")
    result = loop.train_and_evaluate(load_config(num_steps=10, eval_population_stats=True, population_batches=3), wd)
    assert 0.0 <= result["population_accuracy"] <= 1.0 and np.isfinite(result["population_loss"])
    row = [r for r in read_metrics(wd) if r["split"] == "eval"][-1]
    assert "population_accuracy" in row and "accuracy" in row
    # the statistics really were recomputed: after 10 steps at momentum 0.9 the running averages still lean on their
    # initial values, so the population evaluation differs from the running one
    assert row["population_loss"] != row["loss"]
    # and they are the population statistics of the 3 training batches, computed here another way: the same network
    # with momentum 0 keeps each batch's own moments; E[x] = mean of the batch means, Var = mean of m/(m-1)·σ²_B
    exp, state = loop.restore(wd)
    pop = loop.population_variables(exp, state.variables())["batch_stats"]
    fresh = exp.eval_model.clone(momentum=0.0)
    rngs = {"dropout": steps.dropout_key(exp.config.seed, 0)}
    per_batch = []
    for i in range(exp.config.population_batches):
        x = loop._train_batch(exp, i)["x"]
        _, new = fresh.apply(state.variables(), x, train=True, mutable=["batch_stats"], rngs=rngs)
        per_batch.append(new["batch_stats"])
    mean = jax.tree.map(lambda *t: np.mean(np.stack(t), 0), *per_batch)
    for path, got in jax.tree_util.tree_leaves_with_path(pop):
        name = jax.tree_util.keystr(path)
        want = dict(jax.tree_util.tree_leaves_with_path(mean))[path]
        if name.endswith("['mean']"):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
        elif name.endswith("['var']"):  # the unbiased correction m/(m-1) is ≥ 1 and close to 1: Var ≥ E[σ²_B]
            assert np.all(np.asarray(got) >= np.asarray(want) * (1 - 1e-5)), name
            np.testing.assert_allclose(got, want, rtol=2e-2, err_msg=name)
    assert not all(
        np.allclose(a, b) for a, b in zip(jax.tree.leaves(pop), jax.tree.leaves(state.batch_stats), strict=True)
    )
