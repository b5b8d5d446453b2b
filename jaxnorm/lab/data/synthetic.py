"""Datasets generated in memory from a seed, offline (no tfds): ``load(name)`` for a name in :data:`GENERATED`."""

from __future__ import annotations

import numpy as np

from jaxnorm.lab import rng as rng_lib
from jaxnorm.lab.data.splits import Dataset, DatasetInfo, Split


def linear_regression(num_examples: int = 1000, dim: int = 10, seed: int = 0) -> Dataset:
    """Santurkar et al.'s deep-linear-network problem (their §3 and App. A): ``x ~ N(0, I_dim)``, target ``y = A·x``
    with a fixed random ``A`` (entries N(0, 1/dim)), drawn from the run's ``'synthetic_data'`` stream
    (:func:`jaxnorm.lab.rng.numpy_stream`). Full-batch training fits it, so the test split is the training set
    itself."""
    rng = rng_lib.numpy_stream(seed, "synthetic_data")
    a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = rng.normal(size=(num_examples, dim)).astype(np.float32)
    y = (x @ a.T).astype(np.float32)
    split = Split(name="linear_regression/train", num_examples=num_examples, x=x, y=y)
    info = DatasetInfo(
        name="linear_regression",
        tfds_name="",
        data_dir="",
        input_shape=(dim,),
        num_classes=dim,
        num_train=num_examples,
        num_test=num_examples,
        test_split="train",
        task="regression",
    )
    return Dataset(info=info, train=split, test=split, mean=np.zeros(dim, np.float32), std=np.ones(dim, np.float32))


GENERATED = {"linear_regression": linear_regression}
