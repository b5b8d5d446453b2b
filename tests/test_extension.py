"""Extending a finished run: a new ``num_steps`` that would change the learning rate of the steps already taken is
refused with one line naming the jump and both ways forward; pinning ``schedule_steps`` to the old horizon continues
the run, says so, and gives exactly the run trained with that config from the start."""

import hashlib
import os

import numpy as np
import pytest
from test_train import final_state, load_config

from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop, optim
from jaxnorm.lab.train.metrics import read_metrics

N = 12


def _cfg(**kw):
    base = dict(num_steps=N, log_every=1, checkpoint_every=6, eval_every=1000, progress=False)
    return load_config(**{**base, **kw})


def _snapshot(path):
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            if f != ".lock":
                with open(os.path.join(root, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    wd = tmp_path_factory.mktemp("ext") / "run"
    loop.train_and_evaluate(_cfg(), str(wd))
    return wd


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_new_horizon_is_refused_with_the_jump_and_the_ways_forward(tmp_path, schedule):
    wd = tmp_path / "run"
    loop.train_and_evaluate(_cfg(schedule=schedule), str(wd))
    before = _snapshot(wd)
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        loop.train_and_evaluate(_cfg(schedule=schedule, num_steps=N + 8), str(wd))
    msg = str(e.value)
    old_lr = float(optim.learning_rate_schedule(_cfg(schedule=schedule))(N - 1))
    new_lr = float(optim.learning_rate_schedule(_cfg(schedule=schedule, num_steps=N + 8))(N - 1))
    assert old_lr != new_lr
    assert f"holds {N} steps of a {schedule} schedule over {N} steps; num_steps={N + 8}" in msg
    assert f"(step {N - 1}: {old_lr:.3g} -> {new_lr:.3g})" in msg
    assert "new --workdir" in msg and "--config.resume=False" in msg and f"--config.schedule_steps={N}" in msg
    assert "\n" not in msg
    assert _snapshot(wd) == before  # the refused command touched nothing


def test_an_unfinished_run_cannot_change_its_horizon_either(tmp_path):
    wd = tmp_path / "run"
    loop.train_and_evaluate(_cfg(num_steps=6), str(wd))  # as if stopped at its checkpoint of step 6 of 6
    with pytest.raises(ckpt_lib.CheckpointError, match=r"holds 6 steps of a cosine schedule over 6 steps"):
        loop.train_and_evaluate(_cfg(), str(wd))


def test_pinned_horizon_extends_and_equals_the_same_config_run_from_the_start(finished, tmp_path, capsys):
    """Extending the finished 12-step run to 20 with schedule_steps=12: the first 12 rows are untouched, the next 8 run
    at the schedule's final learning rate (0 for cosine), and the state equals a 20-step run with schedule_steps=12
    trained in one go."""
    rows_before = [r for r in read_metrics(finished) if r["split"] == "train"]
    loop.train_and_evaluate(_cfg(num_steps=N + 8, schedule_steps=N), str(finished))
    out = capsys.readouterr().out
    assert f"num_steps {N} -> {N + 8} after {N} steps taken: the cosine schedule stays over {N} steps" in out
    rows = [r for r in read_metrics(finished) if r["split"] == "train"]
    assert rows[:N] == rows_before
    assert [r["step"] for r in rows] == list(range(1, N + 9))
    assert [r["learning_rate"] for r in rows[N:]] == [0.0] * 8
    assert rows[N - 1]["learning_rate"] > 0  # the logged LR of step N−1 is the schedule's value before the end

    ref = tmp_path / "ref"
    loop.train_and_evaluate(_cfg(num_steps=N + 8, schedule_steps=N), str(ref))
    (sa, a), (sb, b) = final_state(finished), final_state(ref)
    assert sa == sb == N + 8
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_constant_schedule_extends_and_says_so(tmp_path, capsys):
    wd = tmp_path / "run"
    loop.train_and_evaluate(_cfg(schedule="constant"), str(wd))
    loop.train_and_evaluate(_cfg(schedule="constant", num_steps=N + 4), str(wd))
    assert f"num_steps {N} -> {N + 4} after {N} steps taken: the learning rate stays" in capsys.readouterr().out
    assert final_state(wd)[0] == N + 4


def test_schedule_steps_sets_the_horizon():
    c = _cfg(num_steps=100, schedule_steps=40, warmup_steps=0)
    lr = optim.learning_rate_schedule(c)
    ref = optim.learning_rate_schedule(_cfg(num_steps=40, warmup_steps=0))
    for t in (0, 10, 39, 40):
        assert float(lr(t)) == float(ref(t))
    assert float(lr(70)) == float(ref(40)) == 0.0
    step = optim.learning_rate_schedule(_cfg(num_steps=100, schedule_steps=40, schedule="step", warmup_steps=0))
    lr0 = float(step(0))  # decay_boundaries (0.5, 0.75) of the horizon: steps 20 and 30, not 50 and 75
    assert [float(step(t)) for t in (19, 20, 29, 30, 70)] == pytest.approx(
        [lr0, lr0 / 10, lr0 / 10, lr0 / 100, lr0 / 100]
    )
    with pytest.raises(ValueError, match=r"schedule_steps must be an int ≥ 0, got -1"):
        config_lib.validate(_cfg(schedule_steps=-1))
