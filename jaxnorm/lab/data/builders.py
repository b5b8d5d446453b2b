"""The bundled datasets and the synthetic image sets as tfds builders: generated locally, offline, never downloaded.

``mnist1d``  tfds name ``jaxnorm_mnist1d``: MNIST-1D (Greydanus 2020, "Scaling down deep learning"),
             ``mnist1d.data.make_dataset(get_dataset_args())`` (seed 42), 4000 train / 1000 test signals stored as
             float32 ``(40, 1)`` (length 40, one channel: NLC for a 1D CNN), labels 0..9.
``mnist1d_10k``
             tfds name ``jaxnorm_mnist1d_10k``: MNIST-1D generated the same way with ``num_samples=15000`` (seed 42, all
             15000 shuffled examples), split by index into 4000 train [0, 4000), 1000 validation [4000, 5000) and
             10 000 test [5000, 15000): a validation split to select hyperparameters on, and a test set large enough
             that its binomial noise floor (SE of an accuracy near 0.9: 0.3 points) is below the effects measured
             (1.0 points with the 1000 test examples of ``mnist1d``). Same features as ``mnist1d``.
``digits``   tfds name ``jaxnorm_digits``: scikit-learn ``load_digits()`` (the UCI optical handwritten digits, 1797
             8x8 images, values 0..16), stored as float32 ``(8, 8, 1)`` in [0, 1] (value / 16), split 1437 train /
             360 test by ``train_test_split(test_size=0.2, stratify=y, random_state=0)``.

The synthetic image sets (:data:`SYNTHETIC_IMAGES`; prepared offline like the bundled sets, but not listed in
:data:`BUNDLED`, which names the small real datasets of the default and test runs):

``synthetic_images_32``, ``synthetic_images_64``
             tfds names ``jaxnorm_synthetic_images_32`` / ``jaxnorm_synthetic_images_64``: generated RGB images
             (32, 32, 3) / (64, 64, 3) stored as uint8 PNG (decoded like any tfds image dataset), 10 classes, for
             benchmarking the input pipeline and the models at image-net-like shapes offline
             (:class:`SyntheticImagesBuilder`). Config ``small`` (the default, prepared in seconds): 10 000 train /
             2 000 test (32) and 2 500 / 500 (64); config ``full``: 50 000 / 10 000 for both (the CIFAR sizes),
             ``load('jaxnorm_synthetic_images_32/full', download=True)`` generates it (offline: nothing is
             downloaded).

The tfds names carry a ``jaxnorm_`` prefix because tfds keeps one global registry of builder names: the prefix keeps
us clear of any present or future tfds dataset (and of user code) called ``digits`` or ``mnist1d``. Defining a
builder class registers it, so ``tfds.data_source('jaxnorm_digits', data_dir=...)`` works once this module is
imported.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import random
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered


def _make_mnist1d(**args) -> dict[str, np.ndarray]:
    """Generates MNIST-1D locally with ``make_dataset`` (never ``get_dataset``, which downloads), from
    ``get_dataset_args()`` with the fields in ``args`` replaced; restores the global RNGs that mnist1d reseeds."""
    import mnist1d.data  # pylint: disable=g-import-not-at-top

    dataset_args = mnist1d.data.get_dataset_args()
    for key, value in args.items():
        if not hasattr(dataset_args, key):
            raise TypeError(f"_make_mnist1d: mnist1d has no dataset argument {key!r}")
        setattr(dataset_args, key, value)
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        return mnist1d.data.make_dataset(dataset_args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


#: the index ranges [start, stop) of the shuffled 15000 examples that form each split of mnist1d_10k
MNIST1D_10K_SPLITS: Mapping[str, tuple[int, int]] = {
    "train": (0, 4000),
    "validation": (4000, 5000),
    "test": (5000, 15000),
}


def _split_mnist1d_10k() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-1D with 15000 examples (seed 42), cut by index into the splits of :data:`MNIST1D_10K_SPLITS`.

    ``train_split=1.0`` keeps every example in ``x`` (make_dataset cuts at ``int(n * train_split)``); the splits are
    then contiguous ranges of one shuffled array, so they are disjoint and each is a uniform random sample.
    """
    num_samples = max(stop for _, stop in MNIST1D_10K_SPLITS.values())
    data = _make_mnist1d(num_samples=num_samples, train_split=1.0)
    x, y = np.concatenate([data["x"], data["x_test"]]), np.concatenate([data["y"], data["y_test"]])
    if len(y) != num_samples:  # make_dataset draws num_samples // 10 per class: 15000 is a multiple of 10
        raise AssertionError(f"mnist1d.make_dataset gave {len(y)} examples, not {num_samples}")
    return {split: (x[start:stop], y[start:stop]) for split, (start, stop) in MNIST1D_10K_SPLITS.items()}


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
            skip_registration = cls.__dict__.get("name") in getattr(registered, "_DATASET_REGISTRY", {})
        super().__init_subclass__(skip_registration=skip_registration, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> tfds.core.Path:
        # tfds's own lookup of the source file imports `importlib_resources`, a package tfds 4.9.10 declares only
        # for Python < 3.9; the plain file path is what that lookup returns anyway. tfds looks for a checksums file
        # beside it and, finding none, expects no downloads.
        return tfds.core.Path(inspect.getfile(cls))

    def _log_download_bytes(self) -> None:
        """Nothing: tfds's "Downloading and preparing dataset Unknown size ..." notice is wrong for a dataset generated
        here (:func:`jaxnorm.lab.data.prepare` says ``preparing NAME (generated offline) in DATA_DIR ...``)."""

    def _log_download_done(self) -> None:
        """Nothing: tfds's "Dataset ... downloaded and prepared to ..." notice is wrong for a generated dataset."""


class Mnist1dBuilder(OfflineBuilder):
    """MNIST-1D (Greydanus 2020), generated offline: 4000 train / 1000 test float32 signals (40, 1), 10 classes."""

    name = "jaxnorm_mnist1d"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d.data.make_dataset(mnist1d.data.get_dataset_args()), seed 42."}
    DESCRIPTION = "MNIST-1D: 1D signals of length 40 built from digit templates (generated offline)."

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "signal": tfds.features.Tensor(shape=(40, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("signal", "label"),
            homepage="https://github.com/greydanus/mnist1d",
            citation="Greydanus, S. (2020). Scaling down deep learning. arXiv:2011.14439.",
            disable_shuffling=True,  # keep the generator's order: record i of a split is example i of mnist1d
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        data = _make_mnist1d()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, signals, labels):
        for i, (signal, label) in enumerate(zip(signals, labels)):
            yield i, {"signal": np.asarray(signal, np.float32)[:, None], "label": int(label)}


class Mnist1d10kBuilder(Mnist1dBuilder):
    """MNIST-1D with 15000 examples, generated offline: 4000 train / 1000 validation / 10 000 test float32 signals
    (40, 1), 10 classes (see :func:`_split_mnist1d_10k`)."""

    name = "jaxnorm_mnist1d_10k"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "mnist1d.data.make_dataset(get_dataset_args() with num_samples=15000, "
        "train_split=1.0), seed 42; train [0, 4000), validation [4000, 5000), "
        "test [5000, 15000)."
    }
    DESCRIPTION = (
        "MNIST-1D (generated offline) with 15000 examples: 4000 train, 1000 validation and 10 000 test "
        "signals of length 40, contiguous index ranges of one shuffled draw."
    )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(x, y) for split, (x, y) in _split_mnist1d_10k().items()}


class DigitsBuilder(OfflineBuilder):
    """scikit-learn's 8x8 digits: 1437 train / 360 test float32 images (8, 8, 1) in [0, 1], 10 classes."""

    name = "jaxnorm_digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "load_digits() / 16; train_test_split(test_size=0.2, stratify=y, random_state=0)."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="UCI optical handwritten digits as bundled with scikit-learn (8x8, 16 grey levels).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        x_train, x_test, y_train, y_test = _split_digits()
        return {"train": self._generate_examples(x_train, y_train), "test": self._generate_examples(x_test, y_test)}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}


@dataclasses.dataclass
class SyntheticImagesConfig(tfds.core.BuilderConfig):
    """How many images each split of a :class:`SyntheticImagesBuilder` holds, and the generator's seed."""

    num_train: int = 0
    num_test: int = 0
    seed: int = 0


_SYNTHETIC_CHUNK = 1000  # images drawn per generator; image i of a split comes from chunk i // 1000


def synthetic_images(
    num_examples: int, size: int, *, seed: int = 0, split: int = 0, num_classes: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic class-dependent RGB images: uint8 ``(n, size, size, 3)`` and int64 labels in [0, num_classes).

    Image i of a split is drawn from ``np.random.default_rng([seed, split, i // 1000])`` (so a larger split begins
    with the images of a smaller one). Class ``c`` paints three cues for a classifier on raw pixels:

    * a background of the class's colour (hue ``c / K`` on the colour wheel, jittered per image with std 0.06, so
      neighbouring classes overlap) and a bright gaussian blob (std ``0.08 size``) at the class's position on a circle
      around the centre (angle ``2 pi c / K``, radius ``size / 4``, jittered by up to ``size / 10`` per axis):
      *mean* cues, which a linear model sees (a nearest-class-mean classifier scores about 0.64 with 10 classes);
    * a grating of the class's orientation ``pi c / K`` (jittered by ``pi / 4K``) and ``3 + c % 3`` cycles per
      image, at a random phase: a *texture* cue, which averages out per class and needs a nonlinear (conv) model;
    * colour jitter, amplitude jitter and gaussian pixel noise (std 0.08 of the range) everywhere.

    Labels are balanced in every chunk of 1000 (100 of each class for K = 10), in a random order.
    """
    chunks = [
        _synthetic_chunk(
            start // _SYNTHETIC_CHUNK, min(_SYNTHETIC_CHUNK, num_examples - start), size, seed, split, num_classes
        )
        for start in range(0, num_examples, _SYNTHETIC_CHUNK)
    ]
    if not chunks:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def _synthetic_chunk(chunk: int, n: int, size: int, seed: int, split: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` images of chunk ``chunk`` (images ``1000 chunk ...``) of :func:`synthetic_images`."""
    rng = np.random.default_rng([seed, split, chunk])
    grid = (np.arange(size, dtype=np.float64) + 0.5) / size - 0.5  # pixel centres in (-1/2, 1/2)
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    n_all = _SYNTHETIC_CHUNK  # always draw the whole chunk, so image i does not depend on the split's size
    y = rng.permutation(np.arange(n_all) % k)
    hue = (y / k + rng.normal(0, 0.06, n_all)) % 1.0
    # hue -> a colour on the wheel around grey (0.5 +- 0.25 per channel), one per image: (n, 1, 1, 3)
    colour = 0.5 + 0.25 * np.cos(2 * np.pi * (hue[:, None] - np.array([0.0, 1 / 3, 2 / 3])))[:, None, None, :]
    angle = 2 * np.pi * y / k
    cy = 0.25 * np.sin(angle) + rng.uniform(-0.1, 0.1, n_all)
    cx = 0.25 * np.cos(angle) + rng.uniform(-0.1, 0.1, n_all)
    blob = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 0.08**2))
    theta = np.pi * y / k + rng.uniform(-np.pi / (4 * k), np.pi / (4 * k), n_all)
    cycles = 3 + y % 3
    phase = rng.uniform(0, 2 * np.pi, n_all)
    along = xx * np.cos(theta)[:, None, None] + yy * np.sin(theta)[:, None, None]
    grating = np.cos(2 * np.pi * cycles[:, None, None] * along + phase[:, None, None])
    amplitude = rng.uniform(0.1, 0.25, n_all)[:, None, None, None]
    image = colour + amplitude * grating[..., None] + 0.3 * blob[..., None]
    image = image + rng.normal(0, 0.08, image.shape)
    image = image[:n]
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), y[:n].astype(np.int64)


class SyntheticImagesBuilder(OfflineBuilder, skip_registration=True):
    """Base of the generated image datasets (see :func:`synthetic_images`); a subclass sets ``IMAGE_SIZE``.

    Stored as tfds ``Image`` features (PNG, encoded with PIL: no TensorFlow), so reading a batch decodes images as
    reading cifar10 or imagenet does.
    """

    IMAGE_SIZE = 0
    NUM_CLASSES = 10
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "jaxnorm.lab.data.builders.synthetic_images: blob + grating + colour per class, seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        s = self.IMAGE_SIZE
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Synthetic {s}x{s} RGB images of {self.NUM_CLASSES} classes (a class-positioned blob, a "
            f"class-oriented grating, a class colour, noise), generated offline for benchmarks.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(s, s, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=self.NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # record i of a split is image i of synthetic_images(...)
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        c = self.builder_config
        return {
            "train": self._generate_examples(c.num_train, c.seed, 0),
            "test": self._generate_examples(c.num_test, c.seed, 1),
        }

    def _generate_examples(self, num_examples, seed, split):
        import PIL.Image  # pylint: disable=g-import-not-at-top

        for start in range(0, num_examples, _SYNTHETIC_CHUNK):  # one chunk in memory at a time (full 64: 600 MB)
            images, labels = _synthetic_chunk(
                start // _SYNTHETIC_CHUNK,
                min(_SYNTHETIC_CHUNK, num_examples - start),
                self.IMAGE_SIZE,
                seed,
                split,
                self.NUM_CLASSES,
            )
            for j, (image, label) in enumerate(zip(images, labels)):
                buffer = io.BytesIO()
                PIL.Image.fromarray(image).save(buffer, format="PNG")
                yield start + j, {"image": buffer.getvalue(), "label": int(label)}


def _synthetic_configs(small_train: int, small_test: int) -> list[SyntheticImagesConfig]:
    return [
        SyntheticImagesConfig(
            name="small",
            num_train=small_train,
            num_test=small_test,
            description=f"{small_train} train / {small_test} test images (prepared in seconds).",
        ),
        SyntheticImagesConfig(
            name="full",
            num_train=50_000,
            num_test=10_000,
            description="50 000 train / 10 000 test images (the CIFAR sizes).",
        ),
    ]


class SyntheticImages32Builder(SyntheticImagesBuilder):
    """Synthetic 32x32x3 images, 10 classes: ``small`` 10 000 / 2 000 (default), ``full`` 50 000 / 10 000."""

    name = "jaxnorm_synthetic_images_32"
    IMAGE_SIZE = 32
    BUILDER_CONFIGS = _synthetic_configs(10_000, 2_000)


class SyntheticImages64Builder(SyntheticImagesBuilder):
    """Synthetic 64x64x3 images, 10 classes: ``small`` 2 500 / 500 (default), ``full`` 50 000 / 10 000."""

    name = "jaxnorm_synthetic_images_64"
    IMAGE_SIZE = 64
    BUILDER_CONFIGS = _synthetic_configs(2_500, 500)


BUILDERS: Mapping[str, type[tfds.core.GeneratorBasedBuilder]] = {
    "mnist1d": Mnist1dBuilder,
    "mnist1d_10k": Mnist1d10kBuilder,
    "digits": DigitsBuilder,
    "synthetic_images_32": SyntheticImages32Builder,
    "synthetic_images_64": SyntheticImages64Builder,
}
#: the small real datasets shipped with the package (the default and test runs use them)
BUNDLED: tuple[str, ...] = ("mnist1d", "digits", "mnist1d_10k")
#: generated image sets at image shapes, for benchmarks (prepared offline through BUILDERS like the bundled ones)
SYNTHETIC_IMAGES: tuple[str, ...] = ("synthetic_images_32", "synthetic_images_64")


def bundled_key(name: str) -> str | None:
    """'digits' or 'jaxnorm_digits' -> 'digits'; None for a name that is not bundled."""
    for key, builder_cls in BUILDERS.items():
        if name in (key, builder_cls.name):
            return key
    return None
