"""Datasets: bundled offline sets as tfds builders, any tfds dataset by name, and a deterministic numpy pipeline.

Everything here is numpy; nothing imports TensorFlow or JAX, and nothing touches the network unless a caller asks
``load(..., download=True)`` for a tfds dataset that is not prepared.

Storage
    Datasets live in a tfds ``data_dir``: the ``data_dir`` argument, else ``$JAXNORM_DATA_DIR``, else
    ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``. Each is stored in the ``array_record`` format
    (``<data_dir>/<tfds name>/<version>/*.array_record-*``) and read back with random access through
    ``builder.as_data_source()`` (the machinery behind ``tfds.data_source``), which needs no TensorFlow.

Bundled datasets (generated locally, offline, built once into ``data_dir`` and reused afterwards)
    ``mnist1d``  tfds name ``jaxnorm_mnist1d``: ``mnist1d.data.make_dataset(get_dataset_args())`` (seed 42),
                 4000 train / 1000 test signals stored as float32 ``(40, 1)`` (length 40, one channel: NLC for a 1D
                 CNN), labels 0..9.
    ``digits``   tfds name ``jaxnorm_digits``: scikit-learn ``load_digits()`` (1797 8x8 images, values 0..16), stored
                 as float32 ``(8, 8, 1)`` in [0, 1] (value / 16), split 1437 train / 360 test by
                 ``train_test_split(test_size=0.2, stratify=y, random_state=0)``.
    The tfds names carry a ``jaxnorm_`` prefix because tfds keeps one global registry of builder names: the prefix
    keeps us clear of any present or future tfds dataset (and of user code) called ``digits`` or ``mnist1d``.
    The user-facing names stay ``mnist1d`` and ``digits``; ``tfds.data_source('jaxnorm_digits', data_dir=...)``
    also works once this module is imported.

Any other tfds dataset (``mnist``, ``fashion_mnist``, ``cifar10``, ``imagenet2012``, ...)
    is read from ``data_dir`` if it is prepared there in ``array_record`` format; otherwise
    :class:`DatasetNotPreparedError` says how to prepare it (no download unless ``download=True``). Images are
    decoded by tfds with PIL/OpenCV (no TensorFlow). Preparing an image dataset, however, does need TensorFlow
    (tfds encodes images with ``tf.image``), so prepare those on a machine that has it and copy the directory.

Pipeline
    ``ds = load('mnist1d')`` gives ``ds.train`` / ``ds.test`` splits, normalized per channel with the *train*
    statistics (uint8 images are scaled to [0, 1] first). Batches are dicts ``{'x': float32, 'y': int32,
    'mask': bool}``. The batch of global step ``s`` is a pure function of ``(seed, s)``: epoch ``e`` visits the
    examples in the order ``np.random.default_rng([seed, e]).permutation(n)``, and augmentation draws from
    ``np.random.default_rng([seed, s, 1])``; so a run resumes bit-exactly at any step with :func:`batch_at` or
    ``batches(..., start_step=s)`` without replaying earlier batches.

    >>> ds = load('digits')
    >>> for batch in batches(ds.train, 128, seed=0, num_steps=100): ...
    >>> for batch in eval_batches(ds.test, 256): ...      # every test example exactly once, padded + masked
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import os
import random
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    'BUILDERS',
    'BUNDLED',
    'Batch',
    'Dataset',
    'DatasetInfo',
    'DatasetNotPreparedError',
    'DigitsBuilder',
    'Mnist1dBuilder',
    'Split',
    'UnknownDatasetError',
    'batch_at',
    'batch_indices',
    'batches',
    'channel_stats',
    'data_source',
    'default_data_dir',
    'epoch_permutation',
    'eval_batches',
    'load',
    'num_batches',
    'prepare',
    'random_crop_flip',
    'shard_batch',
]

DATA_DIR_ENV = 'JAXNORM_DATA_DIR'
DEFAULT_DATA_DIR = '~/tensorflow_datasets'
TFDS_CATALOG_URL = 'https://www.tensorflow.org/datasets/catalog/overview'
_AUGMENT_STREAM = 1  # third word of the augmentation seed; keeps it apart from the permutation seed [seed, epoch]

Batch = dict  # {'x': float32 (B, ...), 'y': int32 (B,), 'mask': bool (B,)}, or with a leading (D,) device axis


class DatasetNotPreparedError(RuntimeError):
    """A tfds dataset is not prepared (in ``array_record`` format) in the data_dir that was searched."""


class UnknownDatasetError(ValueError):
    """Neither a bundled dataset nor a dataset in tfds's registry."""


# ----------------------------------------------------------------------------------------------------------------
# Bundled datasets as tfds builders
# ----------------------------------------------------------------------------------------------------------------


def _already_registered(tfds_name: str) -> bool:
    """True if tfds's global registry already holds ``tfds_name`` (e.g. this module was reloaded).

    tfds raises on a second registration of a name, so a reload of this module registers nothing new and
    ``tfds.data_source(tfds_name)`` keeps resolving to the first (identical) class.
    """
    from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top

    return tfds_name in getattr(registered, '_DATASET_REGISTRY', {})


def _make_mnist1d() -> dict[str, np.ndarray]:
    """Generates MNIST-1D locally (never downloads); restores the global RNGs that mnist1d reseeds."""
    import mnist1d.data  # pylint: disable=g-import-not-at-top

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _split_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn digits as float32 (N, 8, 8, 1) in [0, 1], split 80/20 stratified by label, random_state=0."""
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    return train_test_split(images, digits.target, test_size=0.2, stratify=digits.target, random_state=0)


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the bundled builders: examples are generated locally; nothing is downloaded or checksummed."""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> tfds.core.Path:
        # tfds's own lookup of the source file imports `importlib_resources`, a package tfds 4.9.10 declares only
        # for Python < 3.9; the plain file path is what that lookup returns anyway. tfds looks for a checksums file
        # beside it and, finding none, expects no downloads.
        return tfds.core.Path(inspect.getfile(cls))


class Mnist1dBuilder(_OfflineBuilder, skip_registration=_already_registered('jaxnorm_mnist1d')):
    """MNIST-1D (Greydanus 2020), generated offline: 4000 train / 1000 test float32 signals (40, 1), 10 classes."""

    name = 'jaxnorm_mnist1d'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'mnist1d.data.make_dataset(mnist1d.data.get_dataset_args()), seed 42.'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='MNIST-1D: 1D signals of length 40 built from digit templates (generated offline).',
            features=tfds.features.FeaturesDict({
                'signal': tfds.features.Tensor(shape=(40, 1), dtype=np.float32),
                'label': tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=('signal', 'label'),
            homepage='https://github.com/greydanus/mnist1d',
            citation='Greydanus, S. (2020). Scaling down deep learning. arXiv:2011.14439.',
            disable_shuffling=True,  # keep the generator's order: record i of a split is example i of mnist1d
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        data = _make_mnist1d()
        return {
            'train': self._generate_examples(data['x'], data['y']),
            'test': self._generate_examples(data['x_test'], data['y_test']),
        }

    def _generate_examples(self, signals, labels):
        for i, (signal, label) in enumerate(zip(signals, labels)):
            yield i, {'signal': np.asarray(signal, np.float32)[:, None], 'label': int(label)}


class DigitsBuilder(_OfflineBuilder, skip_registration=_already_registered('jaxnorm_digits')):
    """scikit-learn's 8x8 digits: 1437 train / 360 test float32 images (8, 8, 1) in [0, 1], 10 classes."""

    name = 'jaxnorm_digits'
    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'load_digits() / 16; train_test_split(test_size=0.2, stratify=y, random_state=0).'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description='UCI optical handwritten digits as bundled with scikit-learn (8x8, 16 grey levels).',
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                'label': tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        x_train, x_test, y_train, y_test = _split_digits()
        return {'train': self._generate_examples(x_train, y_train), 'test': self._generate_examples(x_test, y_test)}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {'image': image, 'label': int(label)}


BUILDERS: Mapping[str, type[tfds.core.GeneratorBasedBuilder]] = {
    'mnist1d': Mnist1dBuilder,
    'digits': DigitsBuilder,
}
BUNDLED: tuple[str, ...] = tuple(BUILDERS)


# ----------------------------------------------------------------------------------------------------------------
# Finding and preparing datasets
# ----------------------------------------------------------------------------------------------------------------


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The data_dir to use: the argument, else $JAXNORM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or os.environ.get('TFDS_DATA_DIR') or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def _bundled_key(name: str) -> str | None:
    """'digits' or 'jaxnorm_digits' -> 'digits'; None for a name that is not bundled."""
    for key, builder_cls in BUILDERS.items():
        if name in (key, builder_cls.name):
            return key
    return None


def _unknown_dataset_error(name: str) -> UnknownDatasetError:
    known = list(BUNDLED) + list(GENERATED) + list(tfds.list_builders(with_community_datasets=False))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f' Did you mean {", ".join(repr(c) for c in close)}?' if close else ''
    return UnknownDatasetError(
        f'Unknown dataset {name!r}.{hint} Bundled (offline) datasets: {", ".join(BUNDLED + tuple(GENERATED))}; '
        f'any other name must be '
        f'a tensorflow-datasets builder (see the catalog at {TFDS_CATALOG_URL}).'
    )


def _prepare_command(tfds_name: str, data_dir: str) -> str:
    return (
        f'python -c "import tensorflow_datasets as tfds; tfds.builder({tfds_name!r}, data_dir={data_dir!r})'
        f'.download_and_prepare(file_format=\'array_record\')"'
    )


def _not_prepared_error(name: str, builder: tfds.core.DatasetBuilder, data_dir: str, reason: str
                        ) -> DatasetNotPreparedError:
    """The error for a tfds dataset ``name`` (as the user spelled it, config included) missing from ``data_dir``."""
    manual = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
    manual_note = (
        f'\n  {name} also needs files downloaded by hand into <data_dir>/downloads/manual first:\n'
        f'    {" ".join(str(manual).split())}'
        if manual else ''
    )
    return DatasetNotPreparedError(
        f'Dataset {name!r} (version {builder.version}) is not ready in data_dir={data_dir!r}: {reason}.\n'
        f'jaxnorm reads tfds datasets offline and does not download them unless asked. To prepare it, either\n'
        f'  * on a machine with internet access (and TensorFlow, which tfds uses to encode images) run\n'
        f'      {_prepare_command(name, data_dir)}\n'
        f'    and copy {os.path.join(data_dir, builder.name)} to the same place here (or point ${DATA_DIR_ENV} or '
        f'data_dir= at the copy); or\n'
        f'  * call jaxnorm.data.load({name!r}, data_dir={data_dir!r}, download=True) here.{manual_note}'
    )


def _has_random_access_format(builder: tfds.core.DatasetBuilder) -> bool:
    formats = builder.info.available_file_formats()
    return bool(formats & set(tfds.core.FileFormat.with_random_access()))


def prepare(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
            ) -> tfds.core.DatasetBuilder:
    """Returns the tfds builder of ``name``, prepared in ``data_dir`` in array_record format.

    Bundled datasets are generated offline on first use and reused afterwards (the generator is not run again).
    Other tfds datasets must already be prepared there; with ``download=True`` tfds downloads and prepares them.

    Raises:
      UnknownDatasetError: ``name`` is neither bundled nor a tfds builder.
      DatasetNotPreparedError: a tfds dataset is not prepared in ``data_dir`` (or only in a format without random
        access, such as tfrecord) and ``download`` is False.
    """
    data_dir = default_data_dir(data_dir)
    key = _bundled_key(name)
    if key is not None:
        builder = BUILDERS[key](data_dir=data_dir)
        if not builder.is_prepared():
            try:
                builder.download_and_prepare(
                    file_format='array_record',
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                )
            except OSError:
                # Another process (another host on a shared disk) may have finished the same build first.
                builder = BUILDERS[key](data_dir=data_dir)
                if not builder.is_prepared():
                    raise
        return builder

    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset_error(name) from None
    if not builder.is_prepared():
        if not download:
            raise _not_prepared_error(name, builder, data_dir, f'nothing found at {builder.data_dir}')
        try:
            builder.download_and_prepare(file_format='array_record')
        except ModuleNotFoundError as e:
            if e.name != 'importlib_resources':
                raise
            raise ModuleNotFoundError(
                f'tfds needs the package importlib_resources to download and prepare {name!r} (tfds 4.9.10 declares '
                f'it only for Python < 3.9); install it with `pip install importlib_resources`.', name=e.name,
            ) from e
    if not _has_random_access_format(builder):
        formats = sorted(str(f.value) for f in builder.info.available_file_formats())
        raise _not_prepared_error(
            name, builder, data_dir,
            f'it is prepared at {builder.data_dir} only as {formats}, which has no random access; delete that '
            f'directory (or use another data_dir) and prepare it with file_format=\'array_record\'',
        )
    return builder


def data_source(name: str, split: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
                ) -> Sequence[dict[str, Any]]:
    """The tfds random-access data source of one split (``len(src)``, ``src[i]`` -> dict of numpy values)."""
    builder = prepare(name, data_dir, download=download)
    _check_split(builder.info, name, split)
    return builder.as_data_source(split=split)


# ----------------------------------------------------------------------------------------------------------------
# Metadata, splits, normalization
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset."""

    name: str  # the name given to load()
    tfds_name: str  # the name in tfds's registry (jaxnorm_* for bundled sets)
    data_dir: str
    input_shape: tuple[int | None, ...]  # one example, channels last: (40, 1), (8, 8, 1), (32, 32, 3), ...
    num_classes: int
    num_train: int
    num_test: int
    train_split: str = 'train'
    test_split: str = 'test'
    task: str = 'classification'  # or 'regression': y is a float vector of num_classes outputs


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; anything else -> float32 as it is."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def _normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((_to_float(x) - mean) / std).astype(np.float32, copy=False)


def channel_stats(chunks: np.ndarray | Iterable[np.ndarray], min_std: float = 1e-6
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (last axis) mean and std over all other axes, accumulated in float64 over one array or chunks.

    uint8 data is scaled to [0, 1] first. A channel with std below ``min_std`` (constant) gets std 1.
    """
    if isinstance(chunks, np.ndarray):
        chunks = (chunks,)
    total = total_sq = None
    count = 0
    for chunk in chunks:
        x = _to_float(chunk).astype(np.float64)
        x = x.reshape(-1, x.shape[-1])
        s, sq = x.sum(axis=0), np.square(x).sum(axis=0)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
        count += x.shape[0]
    if not count:
        raise ValueError('channel_stats: no data (an empty split?)')
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.where(std < min_std, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """One split: examples addressed by index, returned normalized.

    Either materialized (``x``: float32, already normalized; ``y``: int32) or lazy (``source``: a tfds data source;
    each ``take`` decodes and normalizes the requested examples with ``mean``/``std``).
    """

    name: str  # 'digits/train', for messages
    num_examples: int
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    source: Sequence[dict[str, Any]] | None = None
    input_key: str = ''
    label_key: str = ''
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, name: str = 'arrays') -> Split:
        """A materialized split of your own arrays, used as they are (cast to float32 / int32, not normalized)."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
        if len(x) != len(y):
            raise ValueError(f'Split.from_arrays: x has {len(x)} examples but y has {len(y)}.')
        return cls(name=name, num_examples=len(y), x=x, y=y)

    def __len__(self) -> int:
        return self.num_examples

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 normalized, y int32) of the examples at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.x is not None:
            return self.x[indices], self.y[indices]
        x, y = _read_examples(self.source, indices, self.input_key, self.label_key, self.name)
        return _normalize(x, self.mean, self.std), y


def _read_examples(source: Sequence[dict[str, Any]], indices: np.ndarray, input_key: str, label_key: str,
                   where: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw (x, y int32) of ``indices`` from a tfds data source, stacked."""
    keys = [int(i) for i in indices]
    examples = source.__getitems__(keys) if hasattr(source, '__getitems__') else [source[k] for k in keys]
    xs = [np.asarray(e[input_key]) for e in examples]
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ValueError(
            f'{where}: examples have different shapes {sorted(shapes)[:4]}; batching needs one fixed shape. '
            f'Resize the images first (e.g. prepare a resized variant of the dataset).'
        )
    y = np.asarray([e[label_key] for e in examples], dtype=np.int32)
    if not xs:
        return np.zeros((0,), np.float32), y
    return np.stack(xs), y


def _chunked(n: int, size: int = 1024) -> Iterator[np.ndarray]:
    for start in range(0, n, size):
        yield np.arange(start, min(start + size, n))


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: metadata, the train and test splits, and the train statistics used to normalize both."""

    info: DatasetInfo
    train: Split
    test: Split
    mean: np.ndarray  # per channel, float32
    std: np.ndarray


def _check_split(info: tfds.core.DatasetInfo, name: str, split: str) -> None:
    """Raises if ``split`` ('train', 'test', 'train[:90%]', ...) does not name a split of the dataset."""
    try:
        info.splits[split]
    except (KeyError, ValueError) as e:
        raise ValueError(f'{name}: {e}') from None


def _supervised_keys(info: tfds.core.DatasetInfo, name: str) -> tuple[str, str]:
    keys = info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise ValueError(
            f'{name}: jaxnorm.data handles classification datasets with (input, label) supervised_keys, such as '
            f'mnist or cifar10; this one has supervised_keys={keys!r}.'
        )
    return keys[0], keys[1]


def _choose_test_split(info: tfds.core.DatasetInfo, name: str, test_split: str | None) -> str:
    if test_split is None:
        for candidate in ('test', 'validation'):
            if candidate in info.splits:
                return candidate
        raise ValueError(
            f'{name}: no test or validation split (available splits: {sorted(info.splits)}); pass test_split=.'
        )
    _check_split(info, name, test_split)
    return test_split


def linear_regression(num_examples: int = 1000, dim: int = 10, seed: int = 0) -> Dataset:
    """Santurkar et al.'s deep-linear-network problem (their §3 and App. A): ``x ~ N(0, I_dim)``, target ``y = A·x``
    with a fixed random ``A`` (entries N(0, 1/dim)); generated in memory, offline. Full-batch training fits it, so the
    test split is the training set itself."""
    rng = np.random.default_rng([seed, 7])
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = rng.normal(size=(num_examples, dim)).astype(np.float32)
    y = (x @ a.T).astype(np.float32)
    split = Split(name='linear_regression/train', num_examples=num_examples, x=x, y=y)
    info = DatasetInfo(name='linear_regression', tfds_name='', data_dir='', input_shape=(dim,), num_classes=dim,
                       num_train=num_examples, num_test=num_examples, test_split='train', task='regression')
    return Dataset(info=info, train=split, test=split, mean=np.zeros(dim, np.float32), std=np.ones(dim, np.float32))


GENERATED = {'linear_regression': linear_regression}


def load(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False,
         normalize: bool | tuple[Any, Any] = True, materialize: bool | None = None,
         train_split: str = 'train', test_split: str | None = None) -> Dataset:
    """Loads a dataset by name: bundled ('mnist1d', 'digits'), generated ('linear_regression', see
    :func:`linear_regression`), or any prepared tfds classification dataset.

    Args:
      name: 'mnist1d', 'digits', or a tfds name ('mnist', 'fashion_mnist', 'cifar10', 'imagenet2012', ...).
      data_dir: where datasets live; default $JAXNORM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.
      download: let tfds download and prepare a missing tfds dataset (needs internet; bundled sets never need it).
      normalize: True: per-channel mean/std of the train split (after scaling uint8 to [0, 1]); False: only the
        uint8 scaling; or an explicit ``(mean, std)`` pair (e.g. for imagenet, to skip a pass over the train set).
      materialize: read each split into numpy arrays once (through the tfds data source). Default: True for the
        bundled sets, False for tfds datasets, whose batches are then read from the data source on demand.
      train_split, test_split: tfds split names, slices allowed ('train[:90%]'); test_split defaults to 'test',
        else 'validation'.

    Returns:
      A :class:`Dataset`. Its splits give normalized float32 inputs and int32 labels.
    """
    if name in GENERATED:
        return GENERATED[name]()
    data_dir = default_data_dir(data_dir)
    builder = prepare(name, data_dir, download=download)
    info = builder.info
    input_key, label_key = _supervised_keys(info, name)
    _check_split(info, name, train_split)
    test_split = _choose_test_split(info, name, test_split)
    if materialize is None:
        materialize = _bundled_key(name) is not None
    train_src, test_src = builder.as_data_source(split=[train_split, test_split])

    if materialize:
        raw_train = _read_examples(train_src, np.arange(len(train_src)), input_key, label_key, f'{name}/train')
        raw_test = _read_examples(test_src, np.arange(len(test_src)), input_key, label_key, f'{name}/test')
        stats_data: Any = raw_train[0]
    else:
        stats_data = (
            _read_examples(train_src, idx, input_key, label_key, f'{name}/train')[0]
            for idx in _chunked(len(train_src))
        )

    if normalize is True:
        mean, std = channel_stats(stats_data)
    elif normalize is False:
        num_channels = info.features[input_key].shape[-1]
        mean, std = np.zeros(num_channels, np.float32), np.ones(num_channels, np.float32)
    else:
        mean, std = (np.asarray(v, np.float32) for v in normalize)

    def make_split(split_name, src, raw):
        common = dict(name=f'{name}/{split_name}', num_examples=len(src), mean=mean, std=std)
        if materialize:
            return Split(x=_normalize(raw[0], mean, std), y=raw[1], **common)
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
    )
    return Dataset(
        info=dataset_info,
        train=make_split(train_split, train_src, raw_train if materialize else None),
        test=make_split(test_split, test_src, raw_test if materialize else None),
        mean=mean,
        std=std,
    )


# ----------------------------------------------------------------------------------------------------------------
# Deterministic batching
# ----------------------------------------------------------------------------------------------------------------


def _check_int(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'{what} must be an integer, got {value!r} ({type(value).__name__}).')
    if value < minimum:
        raise ValueError(f'{what} must be >= {minimum}, got {value}.')
    return int(value)


def _check_batch_size(batch_size: Any, num_examples: int, where: str) -> int:
    batch_size = _check_int('batch_size', batch_size, 1)
    if batch_size > num_examples:
        raise ValueError(
            f'batch_size={batch_size} is larger than {where} ({num_examples} examples); '
            f'use batch_size <= {num_examples}.'
        )
    return batch_size


def _check_devices(batch_size: int, num_devices: int | None) -> None:
    if num_devices is None:
        return
    num_devices = _check_int('num_devices', num_devices, 1)
    if batch_size % num_devices:
        lower = batch_size - batch_size % num_devices
        raise ValueError(
            f'batch_size={batch_size} is not divisible by num_devices={num_devices}; use a multiple of '
            f'{num_devices} such as {max(lower, num_devices)} or {lower + num_devices}.'
        )


def num_batches(num_examples: int, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches per epoch: floor(n / B) when dropping the remainder, else ceil(n / B)."""
    _check_int('batch_size', batch_size, 1)
    return num_examples // batch_size if drop_remainder else -(-num_examples // batch_size)


@functools.lru_cache(maxsize=4)
def _cached_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    perm = np.random.default_rng([seed, epoch]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch ``epoch`` visits the examples: ``default_rng([seed, epoch]).permutation(n)``."""
    _check_int('seed', seed, 0)
    _check_int('epoch', epoch, 0)
    return _cached_permutation(int(num_examples), int(seed), int(epoch))


def batch_indices(num_examples: int, step: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                  drop_remainder: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Example indices and validity mask, both of length ``batch_size``, of global step ``step``.

    Step ``s`` is batch ``s % k`` of epoch ``s // k`` with ``k = num_batches(n, B, drop_remainder)``. With
    ``drop_remainder=False`` the last batch of an epoch is short; it is padded with index 0 and mask False.
    """
    step = _check_int('step', step, 0)
    per_epoch = num_batches(num_examples, batch_size, drop_remainder)
    if per_epoch == 0:
        raise ValueError(
            f'batch_size={batch_size} is larger than the split ({num_examples} examples); '
            f'use batch_size <= {num_examples}.'
        )
    epoch, i = divmod(step, per_epoch)
    order = epoch_permutation(num_examples, seed, epoch) if shuffle else np.arange(num_examples)
    idx = order[i * batch_size:(i + 1) * batch_size]
    valid = len(idx)
    mask = np.arange(batch_size) < valid
    idx = np.concatenate([idx, np.zeros(batch_size - valid, idx.dtype)])
    return idx, mask


def random_crop_flip(x: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """Random crop after zero padding, then random horizontal flip (p=1/2), per example of an NHWC batch.

    Each image is padded with ``padding`` zeros on every side and an (H, W) window is cut at a uniform offset in
    [0, 2 * padding]^2 (the CIFAR recipe of He et al. 2016). Applied to normalized inputs, zero is the train mean.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f'random_crop_flip needs an image batch (B, H, W, C); got shape {x.shape}.')
    padding = _check_int('padding', padding, 0)
    b, h, w, _ = x.shape
    offsets = rng.integers(0, 2 * padding + 1, size=(b, 2))
    flips = rng.random(b) < 0.5
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = offsets[:, :1] + np.arange(h)  # (B, H)
    cols = offsets[:, 1:] + np.arange(w)  # (B, W)
    cols = np.where(flips[:, None], cols[:, ::-1], cols)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def shard_batch(batch: Mapping[str, np.ndarray], num_devices: int) -> Batch:
    """Reshapes every array (B, ...) -> (D, B / D, ...) for a data-parallel (pmap) step."""
    batch_size = len(next(iter(batch.values())))
    _check_devices(batch_size, num_devices)
    return {k: v.reshape((num_devices, batch_size // num_devices) + v.shape[1:]) for k, v in batch.items()}


def _make_batch(split: Split, idx: np.ndarray, mask: np.ndarray) -> Batch:
    """Reads the valid examples; padded slots get x = 0, y = 0, mask False."""
    x, y = split.take(idx[mask])
    if not mask.all():
        pad = len(mask) - len(y)
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros((pad,) + y.shape[1:], y.dtype)])
    return {'x': x, 'y': y, 'mask': mask.copy()}


def batch_at(split: Split, step: int, batch_size: int, *, seed: int = 0, shuffle: bool = True,
             drop_remainder: bool = True, augment: bool = False, num_devices: int | None = None) -> Batch:
    """The training batch of global step ``step``: a pure function of (seed, step) and the options.

    Args:
      split: e.g. ``load('digits').train``.
      step: global step >= 0; epochs follow each other without a gap.
      batch_size: global batch size (over all devices).
      seed: epoch e uses ``np.random.default_rng([seed, e]).permutation(n)``.
      shuffle: False visits examples in stored order every epoch.
      drop_remainder: True drops each epoch's last partial batch; False pads it and marks padding in 'mask'.
      augment: random crop (4-pixel zero padding) + horizontal flip from ``default_rng([seed, step, 1])``; NHWC only.
      num_devices: reshape every array to (num_devices, batch_size / num_devices, ...).

    Returns:
      {'x': float32 (B, ...), 'y': int32 (B,), 'mask': bool (B,)}, or with a leading (D,) axis.
    """
    batch_size = _check_batch_size(batch_size, len(split), f'the split {split.name}')
    _check_devices(batch_size, num_devices)
    seed = _check_int('seed', seed, 0)
    idx, mask = batch_indices(len(split), step, batch_size, seed=seed, shuffle=shuffle,
                              drop_remainder=drop_remainder)
    batch = _make_batch(split, idx, mask)
    if augment:
        rng = np.random.default_rng([seed, step, _AUGMENT_STREAM])
        batch['x'] = random_crop_flip(batch['x'], rng)
    return shard_batch(batch, num_devices) if num_devices is not None else batch


def batches(split: Split, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_remainder: bool = True,
            augment: bool = False, num_devices: int | None = None, start_step: int = 0,
            num_steps: int | None = None) -> Iterator[Batch]:
    """Training batches for steps start_step, start_step + 1, ... (forever, or ``num_steps`` of them).

    Yields exactly ``batch_at(split, step, ...)``; resuming at ``start_step`` replays nothing.
    """
    start_step = _check_int('start_step', start_step, 0)
    _check_batch_size(batch_size, len(split), f'the split {split.name}')
    _check_devices(batch_size, num_devices)
    if num_steps is not None:
        _check_int('num_steps', num_steps, 0)
    step = start_step
    while num_steps is None or step < start_step + num_steps:
        yield batch_at(split, step, batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder,
                       augment=augment, num_devices=num_devices)
        step += 1


def eval_batches(split: Split, batch_size: int, *, num_devices: int | None = None) -> Iterator[Batch]:
    """Every example of ``split`` exactly once, in stored order; the last batch is padded and masked.

    ``batch_size`` may exceed the split (one padded batch). Weight each example's metric by ``batch['mask']``.
    """
    batch_size = _check_int('batch_size', batch_size, 1)
    _check_devices(batch_size, num_devices)
    n = len(split)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = idx < n
        batch = _make_batch(split, np.where(mask, idx, 0), mask)
        yield shard_batch(batch, num_devices) if num_devices is not None else batch
