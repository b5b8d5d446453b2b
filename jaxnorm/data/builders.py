"""The bundled datasets as tfds builders: generated locally, offline, never downloaded.

``mnist1d``  tfds name ``jaxnorm_mnist1d``: MNIST-1D (Greydanus 2020, "Scaling down deep learning"),
             ``mnist1d.data.make_dataset(get_dataset_args())`` (seed 42), 4000 train / 1000 test signals stored as
             float32 ``(40, 1)`` (length 40, one channel: NLC for a 1D CNN), labels 0..9.
``digits``   tfds name ``jaxnorm_digits``: scikit-learn ``load_digits()`` (the UCI optical handwritten digits, 1797
             8x8 images, values 0..16), stored as float32 ``(8, 8, 1)`` in [0, 1] (value / 16), split 1437 train /
             360 test by ``train_test_split(test_size=0.2, stratify=y, random_state=0)``.

The tfds names carry a ``jaxnorm_`` prefix because tfds keeps one global registry of builder names: the prefix keeps
us clear of any present or future tfds dataset (and of user code) called ``digits`` or ``mnist1d``. Defining a
builder class registers it, so ``tfds.data_source('jaxnorm_digits', data_dir=...)`` works once this module is
imported.
"""
from __future__ import annotations

import inspect
import random
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered


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


class OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of builders whose examples are generated locally; nothing is downloaded or checksummed.

    A subclass is registered under its ``name`` unless tfds's registry already holds that name: tfds raises on a
    second registration, so a second import of a module defining builders (a reload, a copy) registers nothing new
    and ``tfds.data_source(name)`` keeps resolving to the first (identical) class.
    """

    def __init_subclass__(cls, skip_registration: bool | None = None, **kwargs):
        if skip_registration is None:
            skip_registration = cls.__dict__.get('name') in getattr(registered, '_DATASET_REGISTRY', {})
        super().__init_subclass__(skip_registration=skip_registration, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> tfds.core.Path:
        # tfds's own lookup of the source file imports `importlib_resources`, a package tfds 4.9.10 declares only
        # for Python < 3.9; the plain file path is what that lookup returns anyway. tfds looks for a checksums file
        # beside it and, finding none, expects no downloads.
        return tfds.core.Path(inspect.getfile(cls))


class Mnist1dBuilder(OfflineBuilder):
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


class DigitsBuilder(OfflineBuilder):
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


def bundled_key(name: str) -> str | None:
    """'digits' or 'jaxnorm_digits' -> 'digits'; None for a name that is not bundled."""
    for key, builder_cls in BUILDERS.items():
        if name in (key, builder_cls.name):
            return key
    return None
