"""The trainer reads its batches through the Grain pipeline: the position is saved with every checkpoint and checked
on resumption, and worker processes change the speed only, never a batch."""

import json
import os
import shutil

import pytest
from test_train import load_config

from jaxnorm.lab.train import checkpoint, loop
from jaxnorm.lab.train.metrics import read_metrics


def _losses(wd):
    return [r["loss"] for r in read_metrics(str(wd)) if r["split"] == "train"]


def test_the_input_position_is_saved_with_each_checkpoint_and_checked_on_resume(tmp_path):
    wd = tmp_path / "run"
    loop.train_and_evaluate(
        load_config(num_steps=10, schedule_steps=12, log_every=1, checkpoint_every=5, augment=False), str(wd)
    )
    for step in (5, 10):
        with open(os.path.join(wd, "checkpoints", str(step), checkpoint.EXTRA)) as f:
            state = json.load(f)["input_pipeline"]
        assert state["step"] == step and state["batch_size"] == 32 and state["seed"] == 0
    # a saved position that belongs to another stream of batches is refused, with both values
    path = os.path.join(wd, "checkpoints", "10", checkpoint.EXTRA)
    with open(path) as f:
        extra = json.load(f)
    extra["input_pipeline"]["seed"] = 7
    with open(path, "w") as f:
        json.dump(extra, f)
    with pytest.raises(ValueError, match="seed=7 but this pipeline has seed=0"):
        loop.train_and_evaluate(load_config(num_steps=12, schedule_steps=12, log_every=1, checkpoint_every=5), str(wd))


def test_a_resumed_run_and_one_with_a_worker_process_see_the_same_batches(tmp_path):
    ref = _losses_of(tmp_path / "ref", num_steps=8)
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    resumed = _losses_of(tmp_path / "resumed", num_steps=8, restore_step=4)  # steps 5-8 again, from the step-4 position
    workers = _losses_of(tmp_path / "workers", num_steps=8, data_workers=1)
    assert resumed == ref  # bit for bit: batch t is a pure function of (seed, t)
    assert workers == ref


def _losses_of(wd, **kw):
    loop.train_and_evaluate(load_config(log_every=1, checkpoint_every=4, **kw), str(wd))
    return _losses(wd)


def test_more_workers_than_cores_warns_and_negative_workers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="data_workers must be an int ≥ 0, got -1"):
        loop.build(load_config(data_workers=-1))
    too_many = (os.cpu_count() or 1) + 1
    with pytest.warns(UserWarning, match=rf"workers={too_many}.*{os.cpu_count()}"):
        exp = loop.build(load_config(data_workers=too_many))
        loop.input_pipeline(exp, 0).close()
