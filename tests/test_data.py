"""Tests for jaxnorm.lab.data: bundled tfds builders (offline, array_record), tfds errors, the deterministic pipeline."""

import io
import os
import socket

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from jaxnorm.lab import data
from jaxnorm.lab.data import builders
from jaxnorm.lab.train import parallel


class FakeCifar(builders.OfflineBuilder):
    """A tiny cifar10 look-alike: 32x32x3 uint8 PNG images ('image', 'label'), written without TensorFlow."""

    name = "jaxnorm_test_fake_cifar"
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 40), "test": self._generate_examples(1, 12)}

    def _generate_examples(self, seed, n):
        for i, image in enumerate(fake_images(seed, n)):
            buffer = io.BytesIO()
            PIL.Image.fromarray(image).save(buffer, format="PNG")  # tfds would need TensorFlow to encode arrays
            yield i, {"image": buffer.getvalue(), "label": i % 10}


def fake_images(seed, n):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def _digits_reference():
    """scikit-learn's digits as float32 (N, 8, 8, 1) in [0, 1], split 80/20 stratified by label, random_state=0."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(images, digits.target, test_size=0.2, stratify=digits.target, random_state=0)


def _no_network(*args, **kwargs):
    raise AssertionError(f"jaxnorm.lab.data tried to open a network connection: {args}")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds both bundled datasets from scratch, with sockets disabled, and records what the build left behind."""
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    rng_before = np.random.get_state()[1].copy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        loaded = {name: data.load(name, data_dir) for name in data.BUNDLED}
    # (tfds itself draws from python's `random` to name temporary directories, so only numpy's is checked here.)
    return {
        "data_dir": data_dir,
        "loaded": loaded,
        "rng_unchanged": np.array_equal(rng_before, np.random.get_state()[1]),
    }


def _fake_split(n=10, shape=(3,), name="fake/train"):
    """A materialized split whose x encodes the example index, so orders are easy to read back."""
    x = np.broadcast_to(np.arange(n, dtype=np.float32).reshape((n,) + (1,) * len(shape)), (n,) + shape).copy()
    return data.Split.from_arrays(x, np.arange(n) % 10, name=name)


# ---------------------------------------------------------------------------------------------------------------
# Bundled builders
# ---------------------------------------------------------------------------------------------------------------


def test_build_is_offline_and_leaves_numpy_global_rng_alone(built):
    assert built["rng_unchanged"]  # mnist1d reseeds numpy's global RNG; the builder restores it


@pytest.mark.parametrize(
    "name,tfds_name,shape,sizes",
    [
        ("mnist1d", "jaxnorm_mnist1d", (40, 1), (4000, 1000)),
        ("digits", "jaxnorm_digits", (8, 8, 1), (1437, 360)),
    ],
)
def test_bundled_read_back_with_tfds_data_source(built, name, tfds_name, shape, sizes):
    data_dir = built["data_dir"]
    version_dir = os.path.join(data_dir, tfds_name, "1.0.0")
    files = os.listdir(version_dir)
    assert any(f.startswith(f"{tfds_name}-train.array_record") for f in files), files
    assert any(f.startswith(f"{tfds_name}-test.array_record") for f in files), files

    input_key = "signal" if name == "mnist1d" else "image"
    for split, size in zip(("train", "test"), sizes):
        src = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
        assert len(src) == size
        example = src[0]
        assert example[input_key].shape == shape and example[input_key].dtype == np.float32
        labels = np.array([e["label"] for e in src.__getitems__(range(size))])
        assert labels.min() == 0 and labels.max() == 9 and len(np.unique(labels)) == 10

    info = built["loaded"][name].info
    assert (info.name, info.tfds_name, info.input_shape, info.num_classes) == (name, tfds_name, shape, 10)
    assert (info.num_train, info.num_test) == sizes and info.data_dir == data_dir


def test_mnist1d_matches_make_dataset_in_order(built):
    import mnist1d.data

    ref = mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    ds = built["loaded"]["mnist1d"]
    src = tfds.data_source("jaxnorm_mnist1d", split="test", data_dir=built["data_dir"], download=False)
    np.testing.assert_array_equal(src[123]["signal"][:, 0], ref["x_test"][123].astype(np.float32))
    np.testing.assert_array_equal(ds.train.y, ref["y"])
    np.testing.assert_array_equal(ds.test.y, ref["y_test"])


def test_digits_split_is_fixed_and_stratified(built):
    from sklearn.datasets import load_digits

    ds = built["loaded"]["digits"]
    y_all = load_digits().target
    assert ds.info.num_train + ds.info.num_test == len(y_all) == 1797
    test_counts, all_counts = np.bincount(ds.test.y, minlength=10), np.bincount(y_all, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1)  # stratified: 20% of every class
    x_train, _, y_train, _ = _digits_reference()
    src = data.data_source("digits", "train", built["data_dir"])
    np.testing.assert_array_equal(src[5]["image"], x_train[5])
    np.testing.assert_array_equal(ds.train.y, y_train)
    assert 0.0 <= x_train.min() and x_train.max() == 1.0


def test_second_load_does_not_rebuild(built, monkeypatch):
    data_dir = built["data_dir"]
    mtimes = {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(data_dir) for p in fs}

    def boom(self, dl_manager):
        raise AssertionError(f"{self.name} was regenerated")

    for builder_cls in data.BUILDERS.values():
        monkeypatch.setattr(builder_cls, "_split_generators", boom)
    for name in data.BUNDLED:
        ds = data.load(name, data_dir)
        np.testing.assert_array_equal(ds.train.x, built["loaded"][name].train.x)
    assert mtimes == {p: os.stat(os.path.join(r, p)).st_mtime_ns for r, _, fs in os.walk(data_dir) for p in fs}


def test_data_dir_from_environment(built, monkeypatch):
    monkeypatch.setenv("JAXNORM_DATA_DIR", built["data_dir"])
    assert data.default_data_dir() == built["data_dir"]
    assert data.default_data_dir("/elsewhere") == "/elsewhere"
    assert data.load("digits").info.data_dir == built["data_dir"]
    monkeypatch.delenv("JAXNORM_DATA_DIR")
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    assert data.default_data_dir() == os.path.expanduser("~/tensorflow_datasets")


def test_normalization_uses_train_statistics(built):
    for name, ds in built["loaded"].items():
        assert ds.train.x.dtype == np.float32 and ds.train.y.dtype == np.int32
        assert ds.mean.shape == ds.std.shape == (1,)
        np.testing.assert_allclose(ds.train.x.mean(axis=(0, 1) if name == "mnist1d" else (0, 1, 2)), 0, atol=1e-5)
        np.testing.assert_allclose(ds.train.x.std(axis=(0, 1) if name == "mnist1d" else (0, 1, 2)), 1, atol=1e-4)
    digits = built["loaded"]["digits"]
    x_train, x_test, _, _ = _digits_reference()
    np.testing.assert_allclose(digits.mean, [x_train.mean()], rtol=1e-6)
    np.testing.assert_allclose(digits.test.x, (x_test - x_train.mean()) / x_train.std(), rtol=1e-5, atol=1e-5)


def test_channel_stats_scales_uint8_and_streams_chunks():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(50, 4, 4, 3), dtype=np.uint8)
    mean, std = data.channel_stats(x)
    np.testing.assert_allclose(mean, (x / 255.0).mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, (x / 255.0).std(axis=(0, 1, 2)), rtol=1e-5)
    mean2, std2 = data.channel_stats(iter([x[:7], x[7:]]))
    np.testing.assert_allclose(mean2, mean, rtol=1e-6)
    np.testing.assert_allclose(std2, std, rtol=1e-6)
    assert data.channel_stats(np.ones((5, 2), np.float32))[1].tolist() == [1.0, 1.0]  # constant channel: std 1


def test_lazy_split_reads_through_the_data_source(built):
    eager = built["loaded"]["digits"]
    lazy = data.load("digits", built["data_dir"], materialize=False)
    assert lazy.train.x is None and lazy.train.source is not None
    np.testing.assert_allclose(lazy.mean, eager.mean, rtol=1e-6)
    for step in (0, 11, 12):
        a = data.batch_at(eager.train, step, 128, seed=5, drop_remainder=False)
        b = data.batch_at(lazy.train, step, 128, seed=5, drop_remainder=False)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6)
    raw = data.load("digits", built["data_dir"], normalize=False)
    x_train = _digits_reference()[0]
    np.testing.assert_array_equal(raw.train.x, x_train)


# ---------------------------------------------------------------------------------------------------------------
# Other tfds datasets: errors without a network
# ---------------------------------------------------------------------------------------------------------------


def test_tfds_dataset_not_prepared(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match=r"'cifar10'.*not ready in data_dir=") as info:
        data.load("cifar10", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "download_and_prepare" in message and "file_format='array_record'" in message
    assert "download=True" in message
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / "cifar10").exists()  # nothing was downloaded or created


def test_prepared_tfds_image_dataset_is_read_like_cifar10(tmp_path):
    """The path cifar10 takes once prepared: tfds.builder by name, PNG decoding without TF, uint8 scaled to [0, 1]."""
    with pytest.raises(data.DatasetNotPreparedError, match="jaxnorm_test_fake_cifar"):
        data.load("jaxnorm_test_fake_cifar", tmp_path)
    FakeCifar(data_dir=str(tmp_path)).download_and_prepare(file_format="array_record")
    ds = data.load("jaxnorm_test_fake_cifar", tmp_path)
    assert ds.train.x is None  # tfds datasets are read lazily by default
    assert ds.info.input_shape == (32, 32, 3) and (ds.info.num_train, ds.info.num_test) == (40, 12)
    images = fake_images(0, 40) / 255.0
    np.testing.assert_allclose(ds.mean, images.mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ds.std, images.std(axis=(0, 1, 2)), rtol=1e-5)
    # tfds stores examples in its own (hashed) order, as it does for cifar10; PNG round-trips exactly.
    stored = [e["image"] for e in tfds.data_source("jaxnorm_test_fake_cifar", split="train", data_dir=tmp_path)]
    assert sorted(x.tobytes() for x in stored) == sorted(x.tobytes() for x in fake_images(0, 40))
    batch = data.batch_at(ds.train, 0, 8, seed=0, shuffle=False)
    np.testing.assert_allclose(batch["x"], (np.stack(stored[:8]) / 255.0 - ds.mean) / ds.std, rtol=1e-5, atol=1e-5)
    augmented = data.batch_at(ds.train, 3, 8, seed=0, augment=True)
    assert augmented["x"].shape == (8, 32, 32, 3) and augmented["x"].dtype == np.float32
    eager = data.load("jaxnorm_test_fake_cifar", tmp_path, materialize=True)
    np.testing.assert_allclose(
        eager.test.x, np.concatenate([b["x"] for b in data.eval_batches(ds.test, 12)]), rtol=1e-6
    )


def test_manual_download_datasets_say_so(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match="imagenet2012.*by hand"):
        data.load("imagenet2012", tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(data.UnknownDatasetError, match=r"Unknown dataset 'not_a_dataset'.*mnist1d, digits.*catalog"):
        data.load("not_a_dataset")
    with pytest.raises(ValueError, match="Did you mean 'cifar10'"):
        data.prepare("cifar1")


# ---------------------------------------------------------------------------------------------------------------
# Deterministic batching
# ---------------------------------------------------------------------------------------------------------------


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    p = data.epoch_permutation(100, seed=3, epoch=2)
    np.testing.assert_array_equal(p, np.random.default_rng([3, 2]).permutation(100))
    np.testing.assert_array_equal(p, data.epoch_permutation(100, 3, 2))
    assert not np.array_equal(p, data.epoch_permutation(100, 3, 3))
    assert not np.array_equal(p, data.epoch_permutation(100, 4, 2))


def test_every_example_once_per_epoch_and_orders_differ_between_epochs():
    split = _fake_split(n=100)
    per_epoch = data.num_batches(100, 10)
    seen = [
        np.concatenate([data.batch_at(split, e * per_epoch + i, 10, seed=1)["x"][:, 0] for i in range(per_epoch)])
        for e in range(2)
    ]
    for order in seen:
        assert sorted(order.astype(int).tolist()) == list(range(100))
    assert not np.array_equal(seen[0], seen[1])
    again = np.concatenate([data.batch_at(split, i, 10, seed=1)["x"][:, 0] for i in range(per_epoch)])
    np.testing.assert_array_equal(again, seen[0])
    unshuffled = data.batch_at(split, 3, 10, shuffle=False)["x"][:, 0]
    np.testing.assert_array_equal(unshuffled, np.arange(30, 40))


def test_batch_at_equals_the_iterator_and_resume(built):
    split = built["loaded"]["digits"].train  # 1437 examples: 11 full batches of 128 and a partial one
    kwargs = dict(seed=7, drop_remainder=False)
    stream = list(data.batches(split, 128, num_steps=30, **kwargs))  # crosses two epoch boundaries
    for step in (0, 5, 11, 12, 29):
        for k in ("x", "y", "mask"):
            np.testing.assert_array_equal(stream[step][k], data.batch_at(split, step, 128, **kwargs)[k])
    resumed = list(data.batches(split, 128, start_step=20, num_steps=10, **kwargs))
    for a, b in zip(resumed, stream[20:]):
        np.testing.assert_array_equal(a["x"], b["x"])
    b = stream[0]
    assert b["x"].dtype == np.float32 and b["y"].dtype == np.int32 and b["mask"].dtype == bool
    assert b["x"].shape == (128, 8, 8, 1) and b["y"].shape == b["mask"].shape == (128,)


def test_drop_remainder():
    split = _fake_split(n=25)
    assert data.num_batches(25, 10, drop_remainder=True) == 2
    assert data.num_batches(25, 10, drop_remainder=False) == 3
    dropped = [data.batch_at(split, s, 10, seed=0) for s in range(2)]
    assert all(b["mask"].all() for b in dropped)
    padded = [data.batch_at(split, s, 10, seed=0, drop_remainder=False) for s in range(3)]
    assert sum(int(b["mask"].sum()) for b in padded) == 25
    last = padded[2]
    assert last["mask"].tolist() == [True] * 5 + [False] * 5
    assert not last["x"][5:].any() and not last["y"][5:].any()
    valid = np.concatenate([b["x"][b["mask"]][:, 0] for b in padded])
    assert sorted(valid.astype(int).tolist()) == list(range(25))
    np.testing.assert_array_equal(
        data.batch_at(split, 3, 10, drop_remainder=False)["x"], data.batch_at(split, 3, 10, drop_remainder=False)["x"]
    )


def test_eval_batches_cover_the_test_set_once_with_masks(built):
    test = built["loaded"]["mnist1d"].test  # 1000 examples
    evals = list(data.eval_batches(test, 300))
    assert len(evals) == 4 and [int(b["mask"].sum()) for b in evals] == [300, 300, 300, 100]
    x = np.concatenate([b["x"][b["mask"]] for b in evals])
    np.testing.assert_array_equal(x, test.x)
    pmap = parallel.DataParallel.create("pmap")  # tests/conftest.py fakes 4 CPU devices
    sharded = [pmap.put_batch(b) for b in data.eval_batches(test, 1200)]  # one padded batch larger than the split
    assert sharded[0]["x"].shape == (4, 300, 40, 1) and int(sharded[0]["mask"].sum()) == 1000


def test_batches_split_evenly_over_devices():
    """The trainer places a batch with DataParallel.put_batch: an even share per device, values unchanged."""
    split = _fake_split(n=40, shape=(4, 4, 3))
    flat = data.batch_at(split, 2, 16, seed=3)
    pmap = parallel.DataParallel.create("pmap")
    assert pmap.num_devices == 4  # tests/conftest.py fakes 4 CPU devices
    sharded = pmap.put_batch(flat)
    assert sharded["x"].shape == (4, 4, 4, 4, 3) and sharded["y"].shape == sharded["mask"].shape == (4, 4)
    np.testing.assert_array_equal(sharded["x"].reshape(flat["x"].shape), flat["x"])
    placed = parallel.DataParallel.create("sharding").put_batch(flat)
    for k, v in placed.items():
        assert [s.data.shape[0] for s in v.addressable_shards] == [4] * 4
        np.testing.assert_array_equal(np.asarray(v), flat[k])
    with pytest.raises(ValueError, match=r"batch_size=10 is not divisible by the 4 devices.*such as 8 or 12"):
        pmap.put_batch(data.batch_at(split, 0, 10))
    with pytest.raises(ValueError, match="batch_size=10 is not divisible by the 4 devices"):
        parallel.DataParallel.create("sharding").put_batch(next(data.batches(split, 10)))


def test_augmentation_shapes_and_determinism():
    rng = np.random.default_rng(0)
    n = 64
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    split = data.Split.from_arrays(x, np.zeros(n), name="fake32/train")
    a = data.batch_at(split, 3, 16, seed=1, augment=True)
    assert a["x"].shape == (16, 32, 32, 3) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], data.batch_at(split, 3, 16, seed=1, augment=True)["x"])
    plain = data.batch_at(split, 3, 16, seed=1)
    assert not np.array_equal(a["x"], plain["x"])
    # Another step visiting the same examples (same epoch order, n = 4 batches) gets other crops.
    b = data.batch_at(split, 7, 16, seed=2, augment=True)
    assert not np.array_equal(b["x"], data.batch_at(split, 7, 16, seed=3, augment=True)["x"])

    # Every output is a (possibly flipped) 32x32 window of the zero-padded input.
    out = data.random_crop_flip(x[:8], np.random.default_rng(0), padding=4)
    padded = np.pad(x[:8], ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(8):
        windows = [
            w
            for dy in range(9)
            for dx in range(9)
            for w in (padded[i, dy : dy + 32, dx : dx + 32], padded[i, dy : dy + 32, dx : dx + 32][:, ::-1])
        ]
        assert any(np.array_equal(out[i], w) for w in windows)
    no_crop = data.random_crop_flip(x[:16], np.random.default_rng(0), padding=0)  # flips only
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(no_crop, x[:16])]
    kept = [np.array_equal(o, xi) for o, xi in zip(no_crop, x[:16])]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    with pytest.raises(ValueError, match=r"needs an image batch \(B, H, W, C\); got shape \(4, 3\)"):
        data.batch_at(_fake_split(n=10), 0, 4, augment=True)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def test_batch_size_errors(built):
    split = built["loaded"]["mnist1d"].train
    with pytest.raises(
        ValueError,
        match=r"batch_size=5000 is larger than the split mnist1d/train \(4000 examples\)"
        r"; use batch_size <= 4000",
    ):
        data.batch_at(split, 0, 5000)
    with pytest.raises(ValueError, match=r"batch_size=5000 is larger"):
        next(data.batches(split, 5000, drop_remainder=False))
    with pytest.raises(ValueError, match="batch_at: batch_size must be an int ≥ 1, got 0"):
        data.batch_at(split, 0, 0)
    with pytest.raises(ValueError, match="eval_batches: batch_size must be an int ≥ 1, got -8"):
        next(data.eval_batches(split, -8))
    with pytest.raises(ValueError, match="batch_size must be an int ≥ 1, got 32.0"):
        data.batch_at(split, 0, 32.0)
    with pytest.raises(ValueError, match="x has 3 examples but y has 2"):
        data.Split.from_arrays(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="step must be an int ≥ 0, got -1"):
        data.batch_at(split, -1, 32)
    with pytest.raises(ValueError, match="seed must be an int ≥ 0, got -3"):
        data.batch_at(split, 0, 32, seed=-3)


def test_splits_by_name_and_slice(built):
    with pytest.raises(ValueError, match=r"digits: Unknown split 'validation'.*\['train', 'test'\]"):
        data.load("digits", built["data_dir"], test_split="validation")
    ds = data.load("digits", built["data_dir"], train_split="train[:90%]", test_split="train[90%:]")
    assert (ds.info.num_train, ds.info.num_test) == (1293, 144) == (len(ds.train), len(ds.test))


def test_builders_module_can_be_imported_twice(monkeypatch):
    """tfds refuses a second registration of a name; a second copy of the builders' module must still import."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("jaxnorm_data_copy", builders.__file__)
    copy = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "jaxnorm_data_copy", copy)
    spec.loader.exec_module(copy)
    assert copy.DigitsBuilder.name == "jaxnorm_digits"


def test_a_process_reads_a_materialized_split_once_read_only_and_again_after_the_files_change(built):
    """Runs in one process (a sweep) share the decoded splits instead of decoding every example again; no caller
    can change what the next one gets, and a dataset prepared again is read again."""
    from jaxnorm.lab.data import pipeline

    first = data.load("digits", built["data_dir"])
    again = data.load("digits", built["data_dir"], validation_split="train[80%:]", train_split="train[:80%]")
    second = data.load("digits", built["data_dir"])
    assert second.train.y is first.train.y and second.test.y is first.test.y  # the same arrays: read once
    assert again.train.num_examples == 1437 * 4 // 5 + 1 and again.train.y is not first.train.y  # another split
    np.testing.assert_array_equal(second.train.x, first.train.x)
    with pytest.raises(ValueError, match="read-only"):
        second.train.y[0] = 9
    version_dir = os.path.join(built["data_dir"], "jaxnorm_digits", "1.0.0")
    info = os.path.join(version_dir, "dataset_info.json")
    st = os.stat(info)
    os.utime(info, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if prepared again
    try:
        third = data.load("digits", built["data_dir"])
        assert third.train.y is not first.train.y
        np.testing.assert_array_equal(third.train.y, first.train.y)
    finally:
        os.utime(info, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert len(pipeline._READ_CACHE) >= 2
