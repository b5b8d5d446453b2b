"""The project's named random streams, in one table: every random draw of a run comes from a stream of
:data:`STREAM_IDS`, derived from the run's ``seed`` alone, so a resumed run draws what an uninterrupted one would.

``params`` (initialization), ``dropout`` (step t: ``fold_in(stream, t)``), ``probes`` (step t likewise),
``pretrain_noise`` (masking noise of pretraining step p likewise) are JAX keys ``jax.random.key(seed + id)``;
``pretrain_data`` is the integer seed ``seed + id`` of the pretraining batch order (:func:`jaxnorm.lab.data.batch_at`);
``synthetic_data`` is ``np.random.default_rng([seed, id])``. These are the derivations the recorded runs
(``docs/results.md``) and their checkpoints were made with, so they reproduce bit for bit; ``seed + id`` overlaps
between nearby seeds (seed 0's dropout stream is seed 1's parameter stream), so sweeps that need independent streams
use seeds at least ``max(id) + 1`` apart. The supervised batch order and augmentation are derived in
:func:`jaxnorm.lab.data.batch_at` (``default_rng([seed, epoch])``, ``default_rng([seed, step, 1])``).
"""

from __future__ import annotations

import jax
import numpy as np

#: The fixed id of each named stream.
STREAM_IDS = {"params": 0, "dropout": 1, "probes": 2, "pretrain_data": 3, "pretrain_noise": 4, "synthetic_data": 7}


def _stream_id(name: str) -> int:
    if name not in STREAM_IDS:
        raise ValueError(
            f"unknown random stream {name!r}; the streams are {', '.join(map(repr, STREAM_IDS))} "
            "(jaxnorm.lab.rng.STREAM_IDS)"
        )
    return STREAM_IDS[name]


def stream_seed(seed: int, name: str) -> int:
    """The integer seed of stream ``name`` (for numpy-driven pipelines such as :func:`jaxnorm.lab.data.batch_at`)."""
    return int(seed) + _stream_id(name)


def rng_stream(seed: int, name: str) -> jax.Array:
    """The JAX PRNG key of stream ``name`` of a run with ``seed``; fold in the step for per-step keys."""
    return jax.random.key(stream_seed(seed, name))


def numpy_stream(seed: int, name: str) -> np.random.Generator:
    """A numpy generator of stream ``name``: ``np.random.default_rng([seed, id])``."""
    return np.random.default_rng([int(seed), _stream_id(name)])
