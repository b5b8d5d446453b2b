"""Held-out splits: the bundled mnist1d_10k (4000 train / 1000 validation / 10 000 test), validation splits carved
out of train by slice, the eval rows of ``validation_split`` and ``eval_train``, their errors, and the sweep summary's
names for them (issue 18: choose on validation, report the deterministic network's train accuracy)."""

import json
import random
import socket

import numpy as np
import optax
import pytest
import tensorflow_datasets as tfds

from jaxnorm.lab import data, sweep
from jaxnorm.lab.data import builders
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop
from jaxnorm.lab.train.metrics import read_metrics

SIZES = {"train": 4000, "validation": 1000, "test": 10_000}


def _no_network(*args, **kwargs):
    raise AssertionError(f"tried to reach the network: {args}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """mnist1d_10k (with its validation split) and digits, prepared from scratch in a fresh data_dir with sockets
    and mnist1d's downloading loader disabled; whether numpy's and python's global RNGs came out unchanged."""
    import mnist1d.data

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    np_before = np.random.get_state()[1].copy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(mnist1d.data, "get_dataset", _no_network)  # the loader that downloads a pickle
        ds = data.load("mnist1d_10k", data_dir, validation_split="validation")
        rng_same = np.array_equal(np_before, np.random.get_state()[1])
        data.prepare("digits", data_dir)
    # (tfds draws from python's `random` to name its temporary directories, so only numpy's is compared after it)
    return {"data_dir": data_dir, "ds": ds, "rng_unchanged": rng_same}


def _raw(data_dir, split):
    """The stored (unnormalized) signals and labels of a split of jaxnorm_mnist1d_10k, in order."""
    src = tfds.data_source("jaxnorm_mnist1d_10k", split=split, data_dir=data_dir, download=False)
    examples = [src[i] for i in range(len(src))]
    return np.stack([e["signal"] for e in examples]), np.array([e["label"] for e in examples])


def small_config(data_dir, **overrides):
    """A run of seconds: a one-hidden-layer MLP with batch norm on one device."""
    c = config_lib.base_config()
    c.dataset = "digits"
    c.data_dir = data_dir
    c.model = "mlp"
    c.model_kwargs.hidden = (64,)
    c.batch_size = 32
    c.learning_rate = 0.1
    c.num_steps = 20
    c.eval_every = c.checkpoint_every = 10
    c.log_every = 5
    c.eval_batch_size = 200
    c.parallel = "none"  # the 4 fake test devices would only add compile time
    c.progress = False
    for k, v in overrides.items():
        c[k] = v
    return c


def _evals(workdir):
    return [r for r in read_metrics(workdir) if r["split"] == "eval"]


# ---- mnist1d_10k -----------------------------------------------------------------------------------------------------


def test_mnist1d_10k_sizes_features_and_offline_build(built):
    ds = built["ds"]
    assert (len(ds.train), len(ds.validation), len(ds.test)) == (4000, 1000, 10_000)
    info = ds.info
    assert (info.num_train, info.num_validation, info.num_test) == (4000, 1000, 10_000)
    assert (info.tfds_name, info.input_shape, info.num_classes) == ("jaxnorm_mnist1d_10k", (40, 1), 10)
    assert (info.train_split, info.validation_split, info.test_split) == ("train", "validation", "test")
    assert ds.validation.x.dtype == np.float32 and ds.validation.x.shape == (1000, 40, 1)
    assert built["rng_unchanged"]  # mnist1d reseeds numpy's global RNG; the builder restores it
    assert "mnist1d_10k" in data.BUNDLED and data.load("mnist1d_10k", built["data_dir"]).validation is None


def test_mnist1d_10k_splits_are_disjoint_and_balanced(built):
    seen = {}
    for split, n in SIZES.items():
        x, y = _raw(built["data_dir"], split)
        assert x.shape == (n, 40, 1) and x.dtype == np.float32
        rows = {row.tobytes() for row in x}
        assert len(rows) == n, f"{split} repeats a signal"
        for other, other_rows in seen.items():
            assert not rows & other_rows, f"{split} and {other} share a signal"
        seen[split] = rows
        counts = np.bincount(y, minlength=10)
        assert len(counts) == 10 and (np.abs(counts - n / 10) < 0.3 * n / 10).all(), (split, counts)


def test_mnist1d_10k_is_the_index_ranges_of_one_generation(built):
    """Generated again (4 s), the 15000 examples are the same, each split is its index range, and numpy's and
    python's global RNGs (which mnist1d reseeds) are as they were."""
    np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
    again = builders._split_mnist1d_10k()
    assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
    for split, (start, stop) in builders.MNIST1D_10K_SPLITS.items():
        x, y = _raw(built["data_dir"], split)
        assert stop - start == SIZES[split]
        np.testing.assert_array_equal(x[..., 0], again[split][0].astype(np.float32))  # stored as float32
        np.testing.assert_array_equal(y, again[split][1])


def test_held_out_splits_are_normalized_with_the_train_statistics(built):
    ds = built["ds"]
    train_x, _ = _raw(built["data_dir"], "train")
    mean, std = data.channel_stats(train_x)
    np.testing.assert_array_equal(ds.mean, mean)
    for split in ("validation", "test"):
        x, y = _raw(built["data_dir"], split)
        held_out = getattr(ds, split)
        np.testing.assert_allclose(held_out.x, (x - mean) / std, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(held_out.y, y)


# ---- validation carved out of train ----------------------------------------------------------------------------------


def test_digits_validation_slice_of_train(built):
    dd = built["data_dir"]
    ds = data.load("digits", dd, train_split="train[:80%]", validation_split="train[80%:]")
    assert (ds.info.num_train, ds.info.num_validation, ds.info.num_test) == (1150, 287, 360)
    full = data.load("digits", dd, normalize=False)
    whole = np.concatenate([ds.train.x, ds.validation.x]) * ds.std + ds.mean  # back to the stored values
    np.testing.assert_allclose(whole, full.train.x, atol=1e-6)  # the two slices partition train, in order
    np.testing.assert_array_equal(np.concatenate([ds.train.y, ds.validation.y]), full.train.y)
    mean, _ = data.channel_stats(full.train.x[:1150])  # the statistics of the 80% trained on, not of all train
    np.testing.assert_allclose(ds.mean, mean, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (
            {"validation_split": "validation"},
            r"^digits: validation_split='validation': Unknown split 'validation'. Should be one of \['train', 'test'\]; "
            r"hold one out of train, e.g. train_split='train\[:80%\]' with validation_split='train\[80%:\]'$",
        ),
        (
            {"validation_split": "train"},
            r"^digits: validation_split='train' is the same split as train_split 'train'; a validation split must be "
            r"disjoint from both",
        ),
        (
            {"train_split": "train[:85%]", "validation_split": "train[80%:]"},
            r"validation_split='train\[80%:\]' shares 71 of its 287 examples with train_split 'train\[:85%\]'",
        ),
        ({"validation_split": "test"}, r"validation_split='test' is the same split as the test split 'test'"),
        (
            {"validation_split": "train[80%:"},
            r"validation_split='train\[80%:': Error parsing split.*\(the splits: \['train', 'test'\]",
        ),
        ({"train_split": "trian"}, r"train_split='trian': Unknown split 'trian'. Should be one of \['train', 'test'\]"),
    ],
)
def test_load_refuses_missing_and_overlapping_splits(built, kwargs, match):
    with pytest.raises(ValueError, match=match) as e:
        data.load("digits", built["data_dir"], **kwargs)
    assert "\n" not in str(e.value)


def test_generated_datasets_have_no_validation_split():
    with pytest.raises(ValueError, match=r"linear_regression is generated in memory .* validation_split empty"):
        data.load("linear_regression", validation_split="train[80%:]")


# ---- the training loop -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"validation_split": "validation"}, r"validation_split='validation': Unknown split 'validation'"),
        ({"validation_split": "train"}, r"config.validation_split='train' is train_split itself"),
        ({"validation_split": "train[80%:]"}, r"shares 287 of its 287 examples with train_split 'train'"),
        ({"train_split": "nosuch"}, r"train_split='nosuch': Unknown split 'nosuch'"),
        ({"train_split": ""}, r"config.train_split must name a split"),
        (
            {"dataset": "mnist1d_10k", "validation_split": "test"},
            r"validation_split='test' is the same split as the test split 'test'.*use validation_split='validation'",
        ),
    ],
)
def test_bad_splits_fail_before_the_workdir_is_created(built, tmp_path, overrides, match):
    wd = tmp_path / "wd"
    with pytest.raises(ValueError, match=match) as e:
        loop.train_and_evaluate(small_config(built["data_dir"], **overrides), str(wd))
    assert "\n" not in str(e.value) and not wd.exists()


def test_cli_error_is_one_line(built, tmp_path, capsys):
    wd = tmp_path / "wd"
    assert loop.main(small_config(built["data_dir"], validation_split="validation"), str(wd)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: digits: validation_split=") and err.count("\n") == 1 and not wd.exists()


def test_validation_and_deterministic_train_accuracy_in_the_eval_rows(built, tmp_path):
    """With dropout 0.5 the eval rows carry val_* and train_eval_* (and their population_ versions); the train
    accuracy of the deterministic network equals an independent count over the training split, and is well above the
    training-mode minibatch accuracy the train rows log."""
    dd, wd = built["data_dir"], str(tmp_path / "wd")
    c = small_config(
        dd,
        num_steps=60,
        eval_every=30,
        checkpoint_every=30,
        log_every=10,
        dropout="dropout",
        dropout_rate=0.5,
        train_split="train[:80%]",
        validation_split="train[80%:]",
        eval_train=True,
        eval_population_stats=True,
        population_batches=3,
    )
    final = loop.train_and_evaluate(c, wd)
    keys = ["loss", "accuracy", "val_loss", "val_accuracy", "train_eval_loss", "train_eval_accuracy"]
    evals = _evals(wd)
    assert [r["step"] for r in evals] == [30, 60]
    for row in evals:
        assert list(row) == ["step", "split", *keys, *(f"population_{k}" for k in keys)]
    assert final == {k: v for k, v in evals[-1].items() if k not in ("step", "split")}

    exp, state = loop.restore(wd)  # the final checkpoint
    ds = data.load("digits", dd, train_split="train[:80%]", validation_split="train[80%:]")
    for split, prefix in ((ds.train, "train_eval_"), (ds.validation, "val_"), (ds.test, "")):
        logits = np.asarray(exp.eval_model.apply(state.variables(), split.x, train=False))  # one batch, eval mode
        assert final[f"{prefix}accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == split.y), abs=1e-12)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, split.y).mean()
        assert final[f"{prefix}loss"] == pytest.approx(float(ce), rel=1e-5)

    minibatch = [r for r in read_metrics(wd) if r["split"] == "train"][-1]["accuracy"]
    assert final["train_eval_accuracy"] > minibatch + 0.05, (final["train_eval_accuracy"], minibatch)


def test_the_options_change_no_earlier_number_and_no_earlier_key(built, tmp_path):
    """The default run writes the eval keys it always did; the same run with a validation split and eval_train
    trains identically and reports the same test numbers (the extra evaluations only add keys)."""
    dd = built["data_dir"]
    base = dict(dataset="mnist1d_10k", eval_population_stats=True, population_batches=2)
    runs = {}
    for name, extra in (("default", {}), ("with", {"validation_split": "validation", "eval_train": True})):
        wd = str(tmp_path / name)
        loop.train_and_evaluate(small_config(dd, **base, **extra), wd)
        rows = read_metrics(wd)
        for r in rows:
            r.pop("steps_per_sec", None)  # wall time
        runs[name] = rows
    default_evals = [r for r in runs["default"] if r["split"] == "eval"]
    assert [list(r) for r in default_evals] == [
        ["step", "split", "loss", "accuracy", "population_loss", "population_accuracy"]
    ] * 2
    assert [r for r in runs["default"] if r["split"] == "train"] == [r for r in runs["with"] if r["split"] == "train"]
    for old, new in zip(default_evals, (r for r in runs["with"] if r["split"] == "eval")):
        assert {k: new[k] for k in old} == old
        assert {"val_accuracy", "train_eval_accuracy", "population_val_accuracy"} <= set(new)


def test_runs_recorded_before_the_split_keys_still_match(built):
    c = small_config(built["data_dir"])
    old = json.loads(c.to_json())
    for key in ("train_split", "validation_split", "eval_train"):
        del old[key]  # a config.json written before these keys existed
    assert config_lib.upgrade(old)["validation_split"] == ""
    assert config_lib.result_affecting(old) == json.loads(json.dumps(config_lib.result_affecting(c)))
    for key, value in (("validation_split", "train[80%:]"), ("eval_train", True), ("train_split", "train[:80%]")):
        assert config_lib.result_affecting(small_config(built["data_dir"], **{key: value}))[key] == value


# ---- the sweep summary ----------------------------------------------------------------------------------------------


def _summary(tmp_path, eval_row, train_row):
    wd = tmp_path / "run"
    wd.mkdir()
    with open(wd / "metrics.jsonl", "w") as f:
        for row in ({"step": 10, "split": "train", **train_row}, {"step": 10, "split": "eval", **eval_row}):
            f.write(json.dumps(row) + "\n")
    return sweep.summarize_run(str(wd), {"status": "finished", "wall_s": 1.0})


def test_summary_keeps_split_names_and_uses_the_deterministic_gap(tmp_path):
    row = _summary(
        tmp_path,
        {
            "loss": 0.5,
            "accuracy": 0.8,
            "val_loss": 0.4,
            "val_accuracy": 0.85,
            "train_eval_loss": 0.1,
            "train_eval_accuracy": 0.97,
            "population_accuracy": 0.81,
            "population_val_accuracy": 0.84,
            "population_train_eval_accuracy": 0.96,
        },
        {"loss": 0.6, "accuracy": 0.75},
    )
    assert row["test_accuracy"] == 0.8 and row["test_loss"] == 0.5 and row["test_error"] == pytest.approx(0.2)
    assert (row["val_accuracy"], row["val_loss"], row["train_eval_accuracy"], row["train_eval_loss"]) == (
        0.85,
        0.4,
        0.97,
        0.1,
    )
    assert (row["test_population_accuracy"], row["population_val_accuracy"], row["population_train_eval_accuracy"]) == (
        0.81,
        0.84,
        0.96,
    )
    assert not any(k.startswith(("test_val", "test_train_eval", "test_population_val")) for k in row)
    assert row["train_accuracy"] == 0.75
    assert row["gap"] == pytest.approx(0.97 - 0.8) and row["gap_minibatch"] == pytest.approx(0.75 - 0.8)


def test_summary_without_eval_train_keeps_the_old_gap(tmp_path):
    row = _summary(tmp_path, {"loss": 0.5, "accuracy": 0.8}, {"loss": 0.6, "accuracy": 0.75})
    assert row["gap"] == pytest.approx(0.75 - 0.8) and "gap_minibatch" not in row
    assert sorted(row) == [
        "gap",
        "status",
        "test_accuracy",
        "test_error",
        "test_loss",
        "train_accuracy",
        "train_loss",
        "wall_s",
    ]
