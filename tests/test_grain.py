"""Tests for jaxnorm.lab.data.grain_pipeline (the Grain input pipeline) and the synthetic image builders."""

import json
import os
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxnorm.lab import data
from jaxnorm.lab.data import builders, grain_pipeline

B = 100  # digits: 1437 train examples = 14 full batches + 37, so 31 steps cover more than two epochs


def _no_network(*args, **kwargs):
    raise AssertionError(f"jaxnorm.lab.data tried to open a network connection: {args}")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(data_dir):
    return data.load("digits", data_dir)


@pytest.fixture(scope="module")
def synthetic(data_dir):
    """synthetic_images_32 prepared from scratch in a tmp data_dir with sockets disabled; read lazily (tfds source)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        ds = data.load("synthetic_images_32", data_dir, materialize=False)
    return ds


def _assert_batches_equal(got, want, where):
    assert set(got) == set(want) == {"x", "y", "mask"}, where
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, (where, k, got[k].shape)
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{where} {k}")


def _local(batch, p, count):
    size = len(batch["y"]) // count
    return {k: v[p * size : (p + 1) * size] for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# The stream is batch_at's, bit for bit
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "drop_remainder,augment,shuffle",
    [
        (True, False, True),
        (False, False, True),
        (False, True, True),
        (True, True, False),
    ],
)
def test_matches_batch_at_over_epochs(digits, drop_remainder, augment, shuffle):
    kw = dict(seed=7, drop_remainder=drop_remainder, augment=augment, shuffle=shuffle)
    per_epoch = data.num_batches(len(digits.train), B, drop_remainder)
    num_steps = 2 * per_epoch + 3
    with data.train_batches(digits.train, B, num_steps=num_steps, process_index=0, process_count=1, **kw) as it:
        got = list(it)
        assert it.step == num_steps
    assert len(got) == num_steps
    for t, batch in enumerate(got):
        _assert_batches_equal(batch, data.batch_at(digits.train, t, B, **kw), f"step {t}")
    if not drop_remainder:  # the padded last batch of each epoch: 37 valid rows, then x = 0, y = 0, mask False
        last = got[per_epoch - 1]
        assert last["mask"].sum() == len(digits.train) % B and not last["mask"][-1]
        if not augment:
            assert not last["x"][~last["mask"]].any()


def test_start_step_and_prefetch_do_not_change_batches(digits):
    for prefetch in (0, 5):
        with data.train_batches(
            digits.train, B, seed=1, start_step=40, num_steps=4, prefetch=prefetch, process_index=0, process_count=1
        ) as it:
            for t, batch in zip(range(40, 44), it):
                _assert_batches_equal(batch, data.batch_at(digits.train, t, B, seed=1), f"step {t}")


def test_index_addressable(digits):
    it = data.train_batches(digits.train, B, seed=2, augment=True, process_index=1, process_count=2)
    want = _local(data.batch_at(digits.train, 123, B, seed=2, augment=True), 1, 2)
    _assert_batches_equal(it.batch_at(123), want, "batch_at(123)")
    _assert_batches_equal(it.dataset[123], want, "dataset[123]")
    assert it.step == 0  # reading by index does not move the stream


@pytest.mark.parametrize("count", [2, 4])
def test_process_slices_concatenate_to_the_global_batch(digits, count):
    kw = dict(seed=3, drop_remainder=False, augment=True)
    per_epoch = data.num_batches(len(digits.train), B, False)
    steps = [0, per_epoch - 1, per_epoch]  # with 4 processes, the padded batch leaves processes 2 and 3 no example
    slices = []
    for p in range(count):
        it = data.train_batches(digits.train, B, process_index=p, process_count=count, **kw)
        assert it.local_batch_size == B // count
        slices.append([it.batch_at(t) for t in steps])
    for i, t in enumerate(steps):
        joined = {k: np.concatenate([s[i][k] for s in slices]) for k in ("x", "y", "mask")}
        _assert_batches_equal(joined, data.batch_at(digits.train, t, B, **kw), f"step {t}, {count} processes")


def test_tfds_source_split_and_an_all_padding_slice(synthetic):
    """A lazy split (decoded from the tfds data source): the same batches; a slice with no example keeps its shape."""
    split = synthetic.train
    bs = 256  # 10000 = 39 * 256 + 16: the padded step 39 has 16 examples, all in process 0's half
    kw = dict(seed=0, drop_remainder=False, augment=True)
    it = data.train_batches(split, bs, process_index=1, process_count=2, **kw)
    got = it.batch_at(39)
    assert got["x"].shape == (128, 32, 32, 3) and got["x"].dtype == np.float32 and not got["mask"].any()
    _assert_batches_equal(got, _local(data.batch_at(split, 39, bs, **kw), 1, 2), "step 39, process 1")


# ---------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------


def test_workers_give_the_same_batches(synthetic, digits):
    """Worker processes (spawned: the split, a tfds data source, is pickled into them) change nothing: over an
    epoch boundary with padding and augmentation, on one process's slice; and on a materialized split."""
    split, bs = synthetic.train, 256
    kw = dict(seed=5, drop_remainder=False, augment=True)
    with data.train_batches(
        split, bs, start_step=37, num_steps=5, workers=2, process_index=1, process_count=2, **kw
    ) as it:
        got = list(it)
    assert len(got) == 5
    for t, batch in zip(range(37, 42), got):
        _assert_batches_equal(batch, _local(data.batch_at(split, t, bs, **kw), 1, 2), f"workers=2, step {t}")

    with data.train_batches(digits.train, B, seed=5, num_steps=16, workers=1, process_index=0, process_count=1) as it:
        first = [next(it) for _ in range(3)]
        state = it.get_state()
        it.set_state({**state, "step": 14})  # restarts the worker at step 14: an epoch boundary
        rest = list(it)
    for t, batch in zip([0, 1, 2, 14, 15], first + rest):
        _assert_batches_equal(batch, data.batch_at(digits.train, t, B, seed=5), f"workers=1, step {t}")


# ---------------------------------------------------------------------------------------------------------------
# Checkpointing the position
# ---------------------------------------------------------------------------------------------------------------


def test_resume_from_saved_state_mid_epoch(digits):
    kw = dict(seed=11, drop_remainder=False, augment=True)
    with data.train_batches(digits.train, B, num_steps=25, process_index=0, process_count=1, **kw) as it:
        uninterrupted = list(it)

    with data.train_batches(digits.train, B, process_index=0, process_count=1, **kw) as it:
        head = [next(it) for _ in range(9)]  # mid-epoch (15 batches per epoch)
        saved = json.loads(json.dumps(it.get_state()))  # what a checkpoint stores, through JSON
    assert saved["step"] == 9 and saved["seed"] == 11 and saved["batch_size"] == B and saved["workers"] == 0
    assert saved["kind"] == grain_pipeline.STATE_KIND and saved["split"] == digits.train.name

    resumed = data.train_batches(digits.train, B, process_index=0, process_count=1, prefetch=0, **kw)
    resumed.set_state(saved)
    tail = [next(resumed) for _ in range(16)]
    resumed.close()
    from_state = data.GrainBatches.from_state(digits.train, saved, num_steps=16, process_index=0, process_count=1)
    assert from_state.step == 9 and from_state.options == resumed.options
    tail2 = list(from_state)
    for t, (a, b, c) in enumerate(zip(uninterrupted, head + tail, head + tail2)):
        _assert_batches_equal(b, a, f"set_state, step {t}")
        _assert_batches_equal(c, a, f"from_state, step {t}")


@pytest.mark.parametrize(
    "key,value,pattern",
    [
        ("batch_size", 50, r"batch_size=50 but this pipeline has batch_size=100"),
        ("seed", 4, r"seed=4 but this pipeline has seed=0"),
        ("augment", True, r"augment=True but this pipeline has augment=False"),
        ("split", "mnist1d/train", r"split='mnist1d/train' but this pipeline has split='digits/train'"),
    ],
)
def test_mismatched_state_is_refused(digits, key, value, pattern):
    it = data.train_batches(digits.train, B, process_index=0, process_count=1)
    state = {**it.get_state(), key: value}
    with pytest.raises(ValueError, match=pattern):
        it.set_state(state)
    assert it.step == 0


def test_from_state_refuses_another_split(digits):
    state = data.train_batches(digits.train, B, process_index=0, process_count=1).get_state()
    other = data.Split.from_arrays(np.zeros((1437, 8, 8, 1)), np.arange(1437) % 10, name="other/train")
    with pytest.raises(ValueError, match=r"split='digits/train' but this pipeline has split='other/train'"):
        data.GrainBatches.from_state(other, state, process_index=0, process_count=1)


def test_state_of_another_kind_or_incomplete_is_refused(digits):
    it = data.train_batches(digits.train, B, process_index=0, process_count=1)
    with pytest.raises(ValueError, match="not a saved GrainBatches state"):
        it.set_state({"step": 3})
    state = it.get_state()
    del state["shuffle"]
    with pytest.raises(ValueError, match=r"lacks \['shuffle'\]"):
        it.set_state(state)


def test_process_layout_and_workers_may_change_on_resume(digits):
    """The saved position is global: a run saved on 1 process resumes on 2 with the same global batches."""
    one = data.train_batches(digits.train, B, seed=2, start_step=5, process_index=0, process_count=1)
    state = one.get_state()
    halves = [data.train_batches(digits.train, B, seed=2, process_index=p, process_count=2, prefetch=0) for p in (0, 1)]
    for h in halves:
        h.set_state({**state, "workers": 3})
    a, b = next(halves[0]), next(halves[1])
    joined = {k: np.concatenate([a[k], b[k]]) for k in a}
    _assert_batches_equal(joined, next(one), "step 5 on two processes")
    for it in halves + [one]:
        it.close()


# ---------------------------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------------------------


def test_argument_errors(digits):
    split = digits.train
    with pytest.raises(
        ValueError,
        match=r"^train_batches: batch_size=100 is not divisible by process_count=3; "
        r"use a multiple of 3 such as 99 or 102$",
    ):
        data.train_batches(split, 100, process_index=0, process_count=3)
    with pytest.raises(ValueError, match=r"workers must be an int >= 0.*got -1"):
        data.train_batches(split, B, workers=-1, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"process_index=2 is not below process_count=2"):
        data.train_batches(split, B, process_index=2, process_count=2)
    with pytest.raises(ValueError, match=r"batch_size=2000 is larger than the split digits/train \(1437 examples\)"):
        data.train_batches(split, 2000, process_index=0, process_count=1)
    with pytest.raises(ValueError, match=r"prefetch must be an int ≥ 0"):
        data.train_batches(split, B, prefetch=-1, process_index=0, process_count=1)
    signals = data.Split.from_arrays(np.zeros((10, 40, 1)), np.arange(10), name="signals")
    with pytest.raises(ValueError, match=r"augment=True .* needs image examples .* shape \(40, 1\)"):
        data.train_batches(signals, 5, augment=True, process_index=0, process_count=1)
    with pytest.raises(TypeError, match="must be a jaxnorm.lab.data.Split"):
        data.train_batches(np.zeros((10, 3)), 5)


def test_more_workers_than_cores_warns(digits):
    cores = os.cpu_count()
    with pytest.warns(UserWarning, match=rf"workers={cores + 1} is more than the {cores} CPU cores"):
        it = data.train_batches(digits.train, B, workers=cores + 1, process_index=0, process_count=1)
    assert it.workers == cores + 1  # a warning, not an error; nothing started until the first batch
    it.close()


def test_process_defaults_come_from_jax(digits):
    import jax

    it = data.train_batches(digits.train, B)
    assert (it.process_index, it.process_count) == (jax.process_index(), jax.process_count())


# ---------------------------------------------------------------------------------------------------------------
# The synthetic image datasets
# ---------------------------------------------------------------------------------------------------------------


def test_synthetic_builder_prepares_offline_with_right_shapes(synthetic, data_dir):
    info = synthetic.info
    assert (info.name, info.tfds_name, info.input_shape, info.num_classes) == (
        "synthetic_images_32",
        "jaxnorm_synthetic_images_32",
        (32, 32, 3),
        10,
    )
    assert (info.num_train, info.num_test) == (10_000, 2_000) and info.data_dir == data_dir
    assert data.SYNTHETIC_IMAGES == ("synthetic_images_32", "synthetic_images_64")
    assert set(data.SYNTHETIC_IMAGES) <= set(data.BUILDERS) and not set(data.SYNTHETIC_IMAGES) & set(data.BUNDLED)
    src = tfds.data_source("jaxnorm_synthetic_images_32", split="test", data_dir=data_dir, download=False)
    example = src[0]
    assert example["image"].shape == (32, 32, 3) and example["image"].dtype == np.uint8
    x, y = synthetic.test.take(np.arange(8))
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
    b64 = builders.SyntheticImages64Builder(data_dir=data_dir)
    assert b64.info.features["image"].shape == (64, 64, 3) and b64.info.features["label"].num_classes == 10
    assert b64.builder_config.num_train == 2_500
    x64, y64 = data.synthetic_images(1000, 64)
    assert x64.shape == (1000, 64, 64, 3) and x64.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y64), np.full(10, 100))  # balanced in every chunk of 1000


def test_synthetic_images_are_deterministic_and_stored_losslessly(synthetic, data_dir):
    x, y = data.synthetic_images(1200, 32, split=1)
    x2, y2 = data.synthetic_images(1200, 32, split=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    head, _ = data.synthetic_images(1100, 32, split=1)
    np.testing.assert_array_equal(head, x[:1100])  # image i does not depend on the split's size
    assert not np.array_equal(data.synthetic_images(10, 32, seed=1)[0], data.synthetic_images(10, 32)[0])
    src = tfds.data_source("jaxnorm_synthetic_images_32", split="test", data_dir=data_dir, download=False)
    stored = src.__getitems__(list(range(1200)))
    np.testing.assert_array_equal(np.stack([e["image"] for e in stored]), x)  # PNG is lossless
    np.testing.assert_array_equal([e["label"] for e in stored], y)


def test_synthetic_images_are_learnable_by_nearest_class_mean(synthetic, data_dir):
    # `synthetic` prepares the data set in data_dir: this test reads it directly (in any order, or alone)
    src_train = tfds.data_source("jaxnorm_synthetic_images_32", split="train", data_dir=data_dir, download=False)
    src_test = tfds.data_source("jaxnorm_synthetic_images_32", split="test", data_dir=data_dir, download=False)

    def read(src, n):
        examples = src.__getitems__(list(range(n)))
        return (
            np.stack([e["image"] for e in examples]).reshape(n, -1).astype(np.float32) / 255,
            np.array([e["label"] for e in examples]),
        )

    x, y = read(src_train, 5000)
    xt, yt = read(src_test, 2000)
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    dist = (xt**2).sum(1)[:, None] - 2 * xt @ means.T + (means**2).sum(1)[None]
    accuracy = (dist.argmin(1) == yt).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.1 (about 0.64 measured); the gratings need a conv net on top


def test_full_config_is_not_prepared_and_says_how(data_dir):
    with pytest.raises(
        data.DatasetNotPreparedError, match=r"'jaxnorm_synthetic_images_32/full'.*not ready in data_dir="
    ) as info:
        data.load("jaxnorm_synthetic_images_32/full", data_dir)
    assert "download=True" in str(info.value)
