"""Datasets: bundled offline sets as tfds builders, any tfds dataset by name, generated sets, and a deterministic
numpy pipeline.

Everything here is numpy (nothing imports TensorFlow), and nothing touches the network unless a caller asks
``load(..., download=True)`` for a tfds dataset that is not prepared. The modules, each importing only those above it:

``builders``     the bundled datasets ``mnist1d``, ``mnist1d_10k`` (4000 train / 1000 validation / 10 000 test)
                 and ``digits`` as tfds builders (``jaxnorm_mnist1d``, ``jaxnorm_mnist1d_10k``, ``jaxnorm_digits``),
                 and the synthetic image sets ``synthetic_images_32`` / ``synthetic_images_64``
                 (32x32x3 / 64x64x3, 10 classes, for benchmarks at image shapes), all generated locally.
``splits``       :class:`Dataset`, :class:`DatasetInfo`, :class:`Split` (materialized or lazy) and normalization.
``synthetic``    datasets generated in memory from a seed (``linear_regression``).
``preparation``  finding and preparing tfds datasets in a ``data_dir``; :class:`DatasetNotPreparedError`.
``pipeline``     :func:`load` by name, and the batches: :func:`batch_at`, :func:`batches`, :func:`eval_batches`.
``grain_pipeline`` :func:`train_batches`: the same training batches through Grain, each process reading its own
                 slice, with worker processes, read-ahead and a saved position (:class:`GrainBatches`).

Storage
    Datasets live in a tfds ``data_dir``: the ``data_dir`` argument, else ``$JAXNORM_DATA_DIR``, else
    ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``. Each is stored in the ``array_record`` format
    (``<data_dir>/<tfds name>/<version>/*.array_record-*``) and read back with random access through
    ``builder.as_data_source()`` (the machinery behind ``tfds.data_source``), which needs no TensorFlow.

Any other tfds dataset (``mnist``, ``fashion_mnist``, ``cifar10``, ``imagenet2012``, ...)
    is read from ``data_dir`` if it is prepared there in ``array_record`` format; otherwise
    :class:`DatasetNotPreparedError` says how to prepare it (no download unless ``download=True``). Images are
    decoded by tfds with PIL/OpenCV (no TensorFlow). Preparing an image dataset, however, does need TensorFlow
    (tfds encodes images with ``tf.image``), so prepare those on a machine that has it and copy the directory.

    >>> import tempfile
    >>> data_dir = tempfile.mkdtemp()                      # prepared here offline (default: see Storage)
    >>> ds = load('digits', data_dir, train_split='train[:80%]', validation_split='train[80%:]')  # doctest: +ELLIPSIS
    preparing digits (generated offline) in ...
    >>> len(ds.train), len(ds.validation) > 0
    (1150, True)
    >>> batch = next(batches(ds.train, 128, seed=0, num_steps=100))
    >>> batch['x'].shape, batch['y'].shape
    ((128, 8, 8, 1), (128,))
    >>> n = sum(int(b['mask'].sum()) for b in eval_batches(ds.test, 256))   # every test example once, padded
    >>> n == len(ds.test)
    True
    >>> it = train_batches(ds.train, 128, seed=0)            # Grain: this process's slice of batch_at(ds.train, t, 128)
    >>> _ = next(it); saved = it.get_state()               # saved with the checkpoint; it.set_state(saved) resumes
    >>> it.close()
"""

from jaxnorm.lab.data.builders import (
    BUILDERS,
    BUNDLED,
    SYNTHETIC_IMAGES,
    DigitsBuilder,
    Mnist1d10kBuilder,
    Mnist1dBuilder,
    SyntheticImages32Builder,
    SyntheticImages64Builder,
    synthetic_images,
)
from jaxnorm.lab.data.grain_pipeline import GrainBatches, train_batches
from jaxnorm.lab.data.pipeline import (
    Batch,
    batch_at,
    batch_indices,
    batches,
    data_source,
    epoch_permutation,
    eval_batches,
    load,
    num_batches,
    random_crop_flip,
)
from jaxnorm.lab.data.preparation import DatasetNotPreparedError, UnknownDatasetError, default_data_dir, prepare
from jaxnorm.lab.data.splits import Dataset, DatasetInfo, Split, channel_stats
from jaxnorm.lab.data.synthetic import GENERATED, linear_regression

__all__ = [
    "BUILDERS",
    "BUNDLED",
    "Batch",
    "Dataset",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "DigitsBuilder",
    "GENERATED",
    "GrainBatches",
    "Mnist1d10kBuilder",
    "Mnist1dBuilder",
    "SYNTHETIC_IMAGES",
    "Split",
    "SyntheticImages32Builder",
    "SyntheticImages64Builder",
    "UnknownDatasetError",
    "batch_at",
    "batch_indices",
    "batches",
    "channel_stats",
    "data_source",
    "default_data_dir",
    "epoch_permutation",
    "eval_batches",
    "linear_regression",
    "load",
    "num_batches",
    "prepare",
    "random_crop_flip",
    "synthetic_images",
    "train_batches",
]
