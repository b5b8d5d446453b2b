"""Loading a dataset by name, and the deterministic batch pipeline over its splits.

``ds = load('mnist1d')`` gives ``ds.train`` / ``ds.test`` splits (and ``ds.validation`` when a
``validation_split`` is asked for), normalized per channel with the *train* statistics
(uint8 images are scaled to [0, 1] first). Batches are dicts ``{'x': float32, 'y': int32, 'mask': bool}``. The batch
of global step ``s`` is a pure function of ``(seed, s)``: epoch ``e`` visits the examples in the order
``np.random.default_rng([seed, e]).permutation(n)``, and augmentation draws from
``np.random.default_rng([seed, s, 1])``; so a run resumes bit-exactly at any step with :func:`batch_at` or
``batches(..., start_step=s)`` without replaying earlier batches. Placing a batch on devices is the trainer's job
(:meth:`jaxnorm.lab.train.parallel.DataParallel.put_batch`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxnorm._checks import check_positive_int
from jaxnorm.lab.data.builders import bundled_key
from jaxnorm.lab.data.preparation import default_data_dir, prepare
from jaxnorm.lab.data.splits import Dataset, DatasetInfo, Split, channel_stats, read_examples, standardize
from jaxnorm.lab.data.synthetic import GENERATED

_AUGMENT_STREAM = 1  # third word of the augmentation seed; keeps it apart from the permutation seed [seed, epoch]

Batch = dict  # {'x': float32 (B, ...), 'y': int32 (B,), 'mask': bool (B,)}


def _check_split(info: tfds.core.DatasetInfo, name: str, split: str, arg: str | None = None, hint: str = "") -> None:
    """Raises if ``split`` ('train', 'test', 'train[:90%]', ...) does not name a split of the dataset: one line
    with the argument that named it (``arg``), tfds's reason, the splits the dataset has and ``hint``."""
    try:
        info.splits[split]
    except (KeyError, ValueError) as e:
        reason = " ".join(str(e).split()).rstrip(".")  # tfds's parse errors span lines
        if "Should be one of" not in reason:  # tfds lists the splits only for an unknown name
            reason += f" (the splits: {list(info.splits)}; slices such as 'train[:80%]' are allowed)"
        raise ValueError(
            f"{name}: {f'{arg}={split!r}: ' if arg else ''}{reason}{f'; {hint}' if hint else ''}"
        ) from None


def _example_ranges(info: tfds.core.DatasetInfo, split: str) -> list[tuple[str, int, int]]:
    """The stored examples a split or slice reads, as ``(shard file, start, stop)`` ranges: where two splits
    named differently ('train', 'train[80%:]') can still share examples."""
    out = []
    for fi in info.splits[split].file_instructions:
        take = fi.take if fi.take >= 0 else fi.examples_in_shard - fi.skip  # take -1: to the end of the shard
        out.append((os.path.basename(fi.filename), fi.skip, fi.skip + take))
    return out


def shared_examples(info: tfds.core.DatasetInfo, a: str, b: str) -> int:
    """How many stored examples the splits (or slices) ``a`` and ``b`` both read; 0 when they are disjoint."""
    return sum(
        max(0, min(stop_a, stop_b) - max(start_a, start_b))
        for file_a, start_a, stop_a in _example_ranges(info, a)
        for file_b, start_b, stop_b in _example_ranges(info, b)
        if file_a == file_b
    )


def _validation_hint(info: tfds.core.DatasetInfo, test_split: str) -> str:
    """How to configure a held-out validation split for this dataset."""
    if "validation" in info.splits and test_split != "validation":
        return "use validation_split='validation'"
    return "hold one out of train, e.g. train_split='train[:80%]' with validation_split='train[80%:]'"


def _check_validation_split(
    info: tfds.core.DatasetInfo, name: str, validation_split: str, train_split: str, test_split: str
) -> None:
    """Raises unless ``validation_split`` names a split disjoint from the training and the test split: trained on,
    it would not measure generalization; equal to the test split, choosing on it is choosing on the test set."""
    _check_split(info, name, validation_split, "validation_split", _validation_hint(info, test_split))
    n = info.splits[validation_split].num_examples
    for arg, other in (("train_split", train_split), ("the test split", test_split)):
        shared = shared_examples(info, validation_split, other)
        if not shared:
            continue
        relation = (
            f"is the same split as {arg} {other!r}"
            if shared == n == info.splits[other].num_examples
            else f"shares {shared} of its {n} examples with {arg} {other!r}"
        )
        raise ValueError(
            f"{name}: validation_split={validation_split!r} {relation}; a validation split must be "
            f"disjoint from both: {_validation_hint(info, test_split)}"
        )


def _supervised_keys(info: tfds.core.DatasetInfo, name: str) -> tuple[str, str]:
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f"{name}: jaxnorm.lab.data handles classification datasets with (input, label) supervised_keys, such as "
            f"mnist or cifar10; this one has supervised_keys={keys!r}."
        )
    return keys[0], keys[1]


def _choose_test_split(info: tfds.core.DatasetInfo, name: str, test_split: str | None) -> str:
    if test_split is None:
        for candidate in ("test", "validation"):
            if candidate in info.splits:
                return candidate
        raise ValueError(
            f"{name}: no test or validation split (available splits: {sorted(info.splits)}); pass test_split=."
        )
    _check_split(info, name, test_split)
    return test_split


def data_source(
    name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> Sequence[dict[str, Any]]:
    """The tfds random-access data source of one split (``len(src)``, ``src[i]`` -> dict of numpy values)."""
    builder = prepare(name, data_dir, download=download)
    _check_split(builder.info, name, split)
    return builder.as_data_source(split=split)


# Materialized splits, kept per process: a sweep's runs (jaxnorm.lab.sweep, in one process) read the same splits,
# and tfds decodes each example on its own (measured: 14.6 of the 40.8 s of the wu_he and ioffe smoke sweeps' 11
# runs went to it). Keyed by the prepared version's directory, the split and the stamp of its files, so a dataset
# prepared again reads anew; the arrays are read-only, so no caller can change what the next one gets.
_READ_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_READ_CACHE_BYTES = 512 * 2**20  # the oldest entries go first beyond this


def _prepared_stamp(builder) -> tuple:
    """(name, size, mtime) of the files of a prepared dataset version: any rewrite changes it."""
    d = str(builder.data_dir)
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(d) if e.is_file()))
    except OSError:
        return ()


def _read_cached(key: tuple, read) -> tuple[np.ndarray, np.ndarray]:
    if key in _READ_CACHE:
        _READ_CACHE[key] = _READ_CACHE.pop(key)  # most recent last
        return _READ_CACHE[key]
    x, y = read()
    for a in (x, y):
        a.flags.writeable = False
    _READ_CACHE[key] = (x, y)
    while len(_READ_CACHE) > 1 and sum(a.nbytes + b.nbytes for a, b in _READ_CACHE.values()) > _READ_CACHE_BYTES:
        _READ_CACHE.pop(next(iter(_READ_CACHE)))
    return x, y


def load(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = False,
    normalize: bool | tuple[Any, Any] = True,
    materialize: bool | None = None,
    train_split: str = "train",
    test_split: str | None = None,
    validation_split: str | None = None,
) -> Dataset:
    """Loads a dataset by name: bundled ('mnist1d', 'mnist1d_10k', 'digits'), generated ('linear_regression', see
    :func:`~jaxnorm.lab.data.synthetic.linear_regression`), or any prepared tfds classification dataset.

    Args:
      name: 'mnist1d', 'mnist1d_10k', 'digits', or a tfds name ('mnist', 'fashion_mnist', 'cifar10',
        'imagenet2012', ...).
      data_dir: where datasets live; default $JAXNORM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      download: let tfds download and prepare a missing tfds dataset (needs internet; bundled sets never need it).
      normalize: True: per-channel mean/std of the train split (after scaling uint8 to [0, 1]); False: only the
        uint8 scaling; or an explicit ``(mean, std)`` pair (e.g. for imagenet, to skip a pass over the train set).
      materialize: read each split into numpy arrays once (through the tfds data source). Default: True for the
        bundled sets, False for tfds datasets, whose batches are then read from the data source on demand.
      train_split, test_split: tfds split names, slices allowed ('train[:90%]'); test_split defaults to 'test',
        else 'validation'.
      validation_split: a held-out split to choose hyperparameters on ('validation' for mnist1d_10k,
        'train[80%:]' with train_split='train[:80%]' for digits); None or '' = none. It must share no example
        with the train or the test split. Normalized with the train statistics, like the test split.

    Returns:
      A :class:`Dataset`. Its splits give normalized float32 inputs and int32 labels; ``validation`` is None
      without a validation split.
    """
    if name in GENERATED:
        if validation_split or train_split != "train":
            raise ValueError(
                f"{name} is generated in memory with one split (its test split is the training set): "
                f"leave train_split at 'train' and validation_split empty (got {train_split!r}, "
                f"{validation_split!r})"
            )
        return GENERATED[name]()
    data_dir = default_data_dir(data_dir)
    builder = prepare(name, data_dir, download=download)
    info = builder.info
    input_key, label_key = _supervised_keys(info, name)
    _check_split(info, name, train_split, "train_split")
    test_split = _choose_test_split(info, name, test_split)
    if validation_split:
        _check_validation_split(info, name, validation_split, train_split, test_split)
    if materialize is None:
        materialize = bundled_key(name) is not None
    train_src, test_src, *val_src = builder.as_data_source(
        split=[train_split, test_split, *([validation_split] if validation_split else [])]
    )
    val_src = val_src[0] if val_src else None

    if materialize:
        # the prepared files are stamped once per load, not once per split
        prepared = (os.path.realpath(str(builder.data_dir)), _prepared_stamp(builder), input_key, label_key)

        def read_all(src, split_name, split):
            return _read_cached(
                (*prepared, split),
                lambda: read_examples(src, np.arange(len(src)), input_key, label_key, f"{name}/{split_name}"),
            )

        raw_train = read_all(train_src, "train", train_split)
        raw_test = read_all(test_src, "test", test_split)
        raw_val = read_all(val_src, "validation", validation_split) if val_src is not None else None
        stats_data: Any = raw_train[0]
    else:  # the train statistics from chunks of 1024 examples
        n = len(train_src)
        stats_data = (
            read_examples(train_src, np.arange(s, min(s + 1024, n)), input_key, label_key, f"{name}/train")[0]
            for s in range(0, n, 1024)
        )

    if normalize is True:
        mean, std = channel_stats(stats_data)
    elif normalize is False:
        num_channels = info.features[input_key].shape[-1]
        mean, std = np.zeros(num_channels, np.float32), np.ones(num_channels, np.float32)
    else:
        mean, std = (np.asarray(v, np.float32) for v in normalize)

    def make_split(split_name, src, raw):
        common = dict(name=f"{name}/{split_name}", num_examples=len(src), mean=mean, std=std)
        if materialize:
            return Split(x=standardize(raw[0], mean, std), y=raw[1], **common)
        return Split(source=src, input_key=input_key, label_key=label_key, **common)

    dataset_info = DatasetInfo(
        name=name,
        tfds_name=builder.name,
        data_dir=data_dir,
        input_shape=tuple(info.features[input_key].shape),
        num_classes=int(info.features[label_key].num_classes),
        num_train=len(train_src),
        num_test=len(test_src),
        train_split=train_split,
        test_split=test_split,
        num_validation=len(val_src) if val_src is not None else 0,
        validation_split=validation_split or "",
    )
    return Dataset(
        info=dataset_info,
        train=make_split(train_split, train_src, raw_train if materialize else None),
        test=make_split(test_split, test_src, raw_test if materialize else None),
        mean=mean,
        std=std,
        validation=(
            make_split(validation_split, val_src, raw_val if materialize else None) if val_src is not None else None
        ),
    )


def checked_batch_size(caller: str, batch_size: Any, num_examples: int, split: str) -> int:
    """``batch_size`` as an int; ValueError unless it is positive and at most the split's size."""
    batch_size = check_positive_int(caller, "batch_size", batch_size)
    if batch_size > num_examples:
        raise ValueError(
            f"batch_size={batch_size} is larger than {split} ({num_examples} examples); "
            f"use batch_size <= {num_examples}."
        )
    return batch_size


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch: floor(n / B) when dropping the remainder, else ceil(n / B)."""
    check_positive_int("num_batches", "batch_size", batch_size)
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


@functools.lru_cache(maxsize=4)
def _cached_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the examples: ``default_rng([seed, epoch]).permutation(n)``."""
    seed = check_positive_int("epoch_permutation", "seed", seed, 0)
    epoch = check_positive_int("epoch_permutation", "epoch", epoch, 0)
    return _cached_permutation(int(num_examples), seed, epoch)


def batch_indices(
    num_examples: int, step: int, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_remainder: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Example indices and validity mask, both of length ``batch_size``, of global step ``step``.

    Step ``s`` is batch ``s % k`` of epoch ``s // k`` with ``k = num_batches(n, B, drop_remainder)``. With
    ``drop_remainder=False`` the last batch of an epoch is short; it is padded with index 0 and mask False.
    """
    step = check_positive_int("batch_indices", "step", step, 0)
    per_epoch = num_batches(num_examples, batch_size, drop_remainder)
    if per_epoch == 0:
        checked_batch_size("batch_indices", batch_size, num_examples, "the split")  # raises: B > n
    epoch, i = divmod(step, per_epoch)
    order = epoch_permutation(num_examples, seed, epoch) if shuffle else np.arange(num_examples)
    idx = order[i * batch_size : (i + 1) * batch_size]
    valid = len(idx)
    mask = np.arange(batch_size) < valid
    idx = np.concatenate([idx, np.zeros(batch_size - valid, idx.dtype)])
    return idx, mask


CROP_PADDING = 4  # the CIFAR recipe's zero padding before the random crop


def augmentation_rng(seed: int, step: int) -> np.random.Generator:
    """The generator the augmentation of step ``step`` draws from: ``default_rng([seed, step, 1])``."""
    return np.random.default_rng([seed, step, _AUGMENT_STREAM])


def crop_flip_draws(rng: np.random.Generator, batch_size: int, padding: int = CROP_PADDING):
    """The random draws of :func:`random_crop_flip` for a batch of ``batch_size``, in its order: crop offsets
    (B, 2) uniform in [0, 2·padding], then flips (B,) with p = 1/2."""
    offsets = rng.integers(0, 2 * padding + 1, size=(batch_size, 2))
    flips = rng.random(batch_size) < 0.5
    return offsets, flips


def crop_flip(x: np.ndarray, offsets: np.ndarray, flips: np.ndarray, padding: int = CROP_PADDING) -> np.ndarray:
    """Zero-pad each NHWC image by ``padding``, cut the (H, W) window at its offset and flip it where ``flips``."""
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = offsets[:, :1] + np.arange(h)  # (B, H)
    cols = offsets[:, 1:] + np.arange(w)  # (B, W)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, padding: int = CROP_PADDING) -> np.ndarray:
    """Random crop after zero padding, then random horizontal flip (p=1/2), per example of an NHWC batch.

    Each image is padded with ``padding`` zeros on every side and an (H, W) window is cut at a uniform offset in
    [0, 2 * padding]^2 (the CIFAR recipe of He et al. 2016). Applied to normalized inputs, zero is the train mean.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip needs an image batch (B, H, W, C); got shape {x.shape}.")
    padding = check_positive_int("random_crop_flip", "padding", padding, 0)
    return crop_flip(x, *crop_flip_draws(rng, x.shape[0], padding), padding)


def read_batch(split: Split, idx: np.ndarray, mask: np.ndarray) -> Batch:
    """Reads the valid examples; padded slots get x = 0, y = 0, mask False."""
    x, y = split.take(idx[mask])
    if not mask.all():
        pad = len(mask) - len(y)
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
    return {"x": x, "y": y, "mask": mask.copy()}


def batch_at(
    split: Split,
    step: int,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    augment: bool = False,
) -> Batch:
    """The training batch of global step ``step``: a pure function of (seed, step) and the options.

    Args:
      split: e.g. ``load('digits').train``.
      step: global step >= 0; epochs follow each other without a gap.
      batch_size: global batch size (over all devices).
      seed: epoch e uses ``np.random.default_rng([seed, e]).permutation(n)``.
      shuffle: False visits examples in stored order every epoch.
      drop_remainder: True drops each epoch's last partial batch; False pads it and marks padding in 'mask'.
      augment: random crop (4-pixel zero padding) + horizontal flip from ``default_rng([seed, step, 1])``; NHWC only.

    Returns:
      {'x': float32 (B, ...), 'y': int32 (B,), 'mask': bool (B,)}.
    """
    batch_size = checked_batch_size("batch_at", batch_size, len(split), f"the split {split.name}")
    seed = check_positive_int("batch_at", "seed", seed, 0)
    idx, mask = batch_indices(len(split), step, batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder)
    batch = read_batch(split, idx, mask)
    if augment:
        batch["x"] = random_crop_flip(batch["x"], augmentation_rng(seed, step))
    return batch


def batches(
    split: Split,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    augment: bool = False,
    start_step: int = 0,
    num_steps: int | None = None,
) -> Iterator[Batch]:
    """Training batches for steps start_step, start_step + 1, ... (forever, or ``num_steps`` of them).

    Yields exactly ``batch_at(split, step, ...)``; resuming at ``start_step`` replays nothing.
    """
    start_step = check_positive_int("batches", "start_step", start_step, 0)
    checked_batch_size("batches", batch_size, len(split), f"the split {split.name}")
    if num_steps is not None:
        check_positive_int("batches", "num_steps", num_steps, 0)
    step = start_step
    while num_steps is None or step < start_step + num_steps:
        yield batch_at(
            split, step, batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder, augment=augment
        )
        step += 1


def eval_batches(split: Split, batch_size: int) -> Iterator[Batch]:
    """Every example of ``split`` exactly once, in stored order; the last batch is padded and masked.

    ``batch_size`` may exceed the split (one padded batch). Weight each example's metric by ``batch['mask']``.
    """
    batch_size = check_positive_int("eval_batches", "batch_size", batch_size)
    n = len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        yield read_batch(split, np.where(mask, idx, 0), mask)
