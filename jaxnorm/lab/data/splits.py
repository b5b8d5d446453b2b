"""A dataset in memory: its metadata, its splits (materialized arrays or a lazy tfds data source) and the
per-channel normalization applied to both."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


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
    train_split: str = "train"
    test_split: str = "test"
    task: str = "classification"  # or 'regression': y is a float vector of num_classes outputs
    num_validation: int = 0  # 0: no validation split was loaded
    validation_split: str = ""  # '' when none


def _to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1]; anything else -> float32 as it is."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32, copy=False)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """float32 ``(x - mean) / std``, after scaling uint8 to [0, 1]."""
    return ((_to_float(x) - mean) / std).astype(np.float32, copy=False)


def channel_stats(chunks: np.ndarray | Iterable[np.ndarray], min_std: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
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
        raise ValueError("channel_stats: no data (an empty split?)")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    std = np.where(std < min_std, 1.0, std)
    return mean.astype(np.float32), std.astype(np.float32)


def read_examples(
    source: Sequence[dict[str, Any]], indices: np.ndarray, input_key: str, label_key: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (x, y int32) of ``indices`` from a tfds data source, stacked."""
    keys = [int(i) for i in indices]
    examples = source.__getitems__(keys) if hasattr(source, "__getitems__") else [source[k] for k in keys]
    xs = [np.asarray(e[input_key]) for e in examples]
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise ValueError(
            f"{where}: examples have different shapes {sorted(shapes)[:4]}; batching needs one fixed shape. "
            f"Resize the images first (e.g. prepare a resized variant of the dataset)."
        )
    y = np.asarray([e[label_key] for e in examples], dtype=np.int32)
    if not xs:
        return np.zeros((0,), np.float32), y
    return np.stack(xs), y


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
    input_key: str = ""
    label_key: str = ""
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, name: str = "arrays") -> Split:
        """A materialized split of your own arrays, used as they are (cast to float32 / int32, not normalized)."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
        if len(x) != len(y):
            raise ValueError(f"Split.from_arrays: x has {len(x)} examples but y has {len(y)}.")
        return cls(name=name, num_examples=len(y), x=x, y=y)

    def __len__(self) -> int:
        return self.num_examples

    def take(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 normalized, y int32) of the examples at ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        if self.x is not None:
            return self.x[indices], self.y[indices]
        x, y = read_examples(self.source, indices, self.input_key, self.label_key, self.name)
        return standardize(x, self.mean, self.std), y


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: metadata, the train, test and (optional) validation splits, and the train statistics used
    to normalize all of them (held-out splits never contribute to the statistics)."""

    info: DatasetInfo
    train: Split
    test: Split
    mean: np.ndarray  # per channel, float32
    std: np.ndarray
    validation: Split | None = None  # for choosing hyperparameters without looking at the test split
