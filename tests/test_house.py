"""One owner per concept: the stage driver shared by training and pretraining, named random streams, config keys
read back from earlier runs, and the shared losses and checks."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from test_pretrain import small
from test_train import load_config

from jaxnorm import _checks, losses
from jaxnorm.lab import rng
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop, stage
from jaxnorm.lab.train.checkpoint import check_workdir

# ---- the stage driver ----------------------------------------------------------------------------------------------


def test_a_nan_during_pretraining_is_one_clear_line_and_no_checkpoint_after_it(tmp_path, capsys):
    c = small()
    c.pretrain.learning_rate = 1e30
    wd = tmp_path / "wd"
    with pytest.raises(
        loop.NonFiniteLossError,
        match=r"the pretraining loss is (nan|inf) at pretraining step \d+ "
        r"\(layer dense_\d\); no checkpoint was written after it",
    ):
        loop.train_and_evaluate(c, str(wd))
    assert loop.NonFiniteLossError is stage.NonFiniteLossError  # one class for both stages
    assert not os.listdir(wd / "checkpoints")  # fine-tuning never started
    assert loop.main(c, str(tmp_path / "cli")) == 1  # main catches it: a sweep goes on
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the pretraining loss is")


def _toy_stage(total, **kw):
    return stage.Stage(
        name="training",
        step_label="step",
        split="train",
        total=total,
        checkpoint_dir="DIR",
        log_at=lambda d: d % 2 == 0,
        checkpoint_at=lambda d: d % 3 == 0,
        summarize=lambda rows: {"loss": float(np.mean([r["loss"] for r in rows]))},
        hint="Fix it.",
        **kw,
    )


class _Writer:
    def __init__(self):
        self.rows = []

    def write(self, step, split, values):
        self.rows.append((step, split, dict(values)))


def test_run_stage_cadence_resume_and_interrupt():
    writer, saved = _Writer(), []

    def step_fn(state, s):
        return state + 1, {"loss": jnp.asarray(float(s))}

    state, ev = stage.run_stage(
        _toy_stage(7, eval_at=lambda d: d == 4),
        0,
        0,
        step_fn,
        lambda st, d: saved.append((st, d)),
        writer=writer,
        evaluate=lambda st: {"e": st},
    )
    assert state == 7 and ev == {"e": 7}
    assert [(s, sp) for s, sp, _ in writer.rows if sp == "train"] == [
        (2, "train"),
        (4, "train"),
        (6, "train"),
        (7, "train"),
    ]
    assert [r[2]["loss"] for r in writer.rows if r[1] == "train"] == [0.5, 2.5, 4.5, 6.0]  # means since last row
    assert [(s, v) for s, sp, v in writer.rows if sp == "eval"] == [(4, {"e": 4}), (7, {"e": 7})]
    assert saved == [(3, 3), (6, 6), (7, 7)]  # every 3 and the last

    def interrupting(state, s):
        if s == 5:
            raise KeyboardInterrupt
        return step_fn(state, s)

    saved.clear()
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at step 5; checkpoint saved in DIR\. Rerun"):
        stage.run_stage(_toy_stage(7), 2, 2, interrupting, lambda st, d: saved.append((st, d)), writer=_Writer())
    assert saved[-1] == (5, 5)  # the state after the last finished step


def test_run_stage_checks_the_loss_before_it_saves():
    saved = []

    def step_fn(state, s):
        return state + 1, {"loss": jnp.asarray(np.nan if s == 1 else 1.0)}

    with pytest.raises(stage.NonFiniteLossError, match=r"the training loss is nan at step 1; .* Fix it\."):
        stage.run_stage(_toy_stage(6), 0, 0, step_fn, lambda st, d: saved.append(d), writer=_Writer())
    assert saved == []  # step 2 logs: the check fires there, before the checkpoint of step 3


# ---- named random streams ------------------------------------------------------------------------------------------


def test_random_streams_are_the_recorded_derivations():
    def same(a, b):
        return np.array_equal(jax.random.key_data(a), jax.random.key_data(b))

    for seed in (0, 3):
        assert same(rng.rng_stream(seed, "params"), jax.random.key(seed))
        assert same(rng.rng_stream(seed, "dropout"), jax.random.key(seed + 1))
        assert same(rng.rng_stream(seed, "probes"), jax.random.key(seed + 2))
        assert rng.stream_seed(seed, "pretrain_data") == seed + 3
        assert same(rng.rng_stream(seed, "pretrain_noise"), jax.random.key(seed + 4))
        np.testing.assert_array_equal(
            rng.numpy_stream(seed, "synthetic_data").random(4), np.random.default_rng([seed, 7]).random(4)
        )
    with pytest.raises(ValueError, match=r"unknown random stream 'dropuot'; the streams are 'params', 'dropout'") as e:
        rng.rng_stream(0, "dropuot")
    assert str(e.value).endswith("'synthetic_data' (jaxnorm.lab.rng.STREAM_IDS)")  # where the table is


# ---- config keys -------------------------------------------------------------------------------------------------


def test_norm_options_are_model_fields_with_one_default():
    c = config_lib.base_config()
    assert "norm_momentum" not in c and "num_groups" not in c
    assert "num_groups" not in loop.model_kwargs(c, 10)  # absent: the model's own default applies
    assert loop.model_kwargs(c, 10)["momentum"] == config_lib.BN_MOMENTUM == 0.9  # stated once, in base_config
    c.model_kwargs.momentum = None
    assert "momentum" not in loop.model_kwargs(c, 10)  # None: the layer's own default (0.99)
    c.model_kwargs.momentum = 0.5
    c.model_kwargs.num_groups = 8
    kw = loop.model_kwargs(c, 10)
    assert kw["momentum"] == 0.5 and kw["num_groups"] == 8 and c.momentum == 0.9  # c.momentum: the optimizer's
    assert load_config("default").model_kwargs.momentum == 0.9  # the shipped configs inherit it


def test_a_config_json_of_an_earlier_run_still_resumes(tmp_path):
    """A run recorded when the norm options were top-level keys: it matches the same config written today, so it
    resumes instead of being refused, and restore() reads it."""
    c = load_config(num_steps=4, eval_every=4, checkpoint_every=4, log_every=2)
    wd = tmp_path / "old"
    loop.train_and_evaluate(c, str(wd))
    with open(wd / "config.json") as f:
        d = json.load(f)
    momentum = d["model_kwargs"].pop("momentum")
    d["norm_momentum"], d["num_groups"] = momentum, 0
    with open(wd / "config.json", "w") as f:
        json.dump(d, f)
    assert config_lib.result_affecting(d) == json.loads(json.dumps(config_lib.result_affecting(c)))
    assert check_workdir(str(wd), c) is True
    exp, state = loop.restore(str(wd))
    assert exp.config.model_kwargs.momentum == momentum and int(state.step) == 4
    assert config_lib.upgrade({"num_groups": 8, "norm_momentum": None})["model_kwargs"] == {"num_groups": 8}
    other = ml_collections.ConfigDict(c.to_dict())
    other.model_kwargs.momentum = 0.5
    assert config_lib.result_affecting(d) != json.loads(json.dumps(config_lib.result_affecting(other)))


# ---- shared losses and checks --------------------------------------------------------------------------------------


def test_per_example_losses_against_references():
    rs = np.random.default_rng(0)
    logits, y = rs.normal(size=(5, 4)).astype(np.float32), np.array([0, 3, 1, 1, 2])
    ref = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[np.arange(5), y]
    np.testing.assert_allclose(losses.per_example_loss(logits, y, "cross_entropy"), ref, rtol=1e-5)
    out, target = rs.normal(size=(5, 2, 3)), rs.normal(size=(5, 2, 3))
    np.testing.assert_allclose(
        losses.per_example_loss(out, target, "mse"), ((out - target) ** 2).sum((1, 2)), rtol=1e-5
    )
    assert int(losses.correct_count(logits, y, np.array([True, True, True, False, False]))) == int(
        np.sum((logits.argmax(-1) == y)[:3])
    )
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; valid losses: 'cross_entropy', 'mse'"):
        losses.per_example_loss(logits, y, "hinge")


def test_shared_checks():
    assert _checks.check_choice("norm", "batch", ("batch", "layer")) == "batch"
    with pytest.raises(ValueError, match=r"unknown norm 'bn'; valid norms: 'batch', 'layer'"):
        _checks.check_choice("norm", "bn", ("batch", "layer"))
    assert _checks.check_positive_int("f", "n", np.int64(3)) == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(ValueError, match=r"f: n must be an int ≥ 1, got"):
            _checks.check_positive_int("f", "n", bad)
    with pytest.raises(ValueError, match=r"the sparsity weight beta must be >= 0, got -1"):
        _checks.check_beta(-1.0)
    assert _checks.is_concrete({"a": jnp.ones(2)})
    seen = []
    jax.jit(lambda x: seen.append(_checks.is_concrete(x)) or x)(1.0)
    assert seen == [False]  # a tracer is not concrete


def test_max_norm_is_an_optax_transformation():
    import jaxnorm as jn

    tx = jn.max_norm(1.0)
    assert isinstance(tx, optax.GradientTransformation)
    params = {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 5.0)}
    chained = optax.chain(optax.sgd(0.0), tx)
    updates, _ = chained.update(jax.tree.map(jnp.zeros_like, params), chained.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(jnp.linalg.norm(new["kernel"], axis=0), 1.0, rtol=1e-6)  # each unit's fan-in
    np.testing.assert_array_equal(new["bias"], params["bias"])  # biases are not constrained
