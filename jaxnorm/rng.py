"""The project's named random streams, in one table.

Every random draw of a run comes from a stream named here, derived from the run's ``seed`` alone, so a run is a pure
function of its config and a resumed run draws what an uninterrupted one would:

===================  ==========================================  ============================================
name                 what draws from it                          derivation
===================  ==========================================  ============================================
``params``           the model's initialization                  ``jax.random.key(seed)``
``dropout``          dropout masks of train step t               ``fold_in(rng_stream(seed, 'dropout'), t)``
``probes``           the probes' random vectors at step t        ``fold_in(rng_stream(seed, 'probes'), t)``
``pretrain_data``    the batch order of the pretraining stage    ``batch_at(..., seed=stream_seed(seed, …))``
``pretrain_noise``   masking noise of pretraining step p         ``fold_in(rng_stream(seed, …), p)``
``synthetic_data``   generated datasets (linear regression)      ``numpy_stream(seed, 'synthetic_data')``
===================  ==========================================  ============================================

The JAX streams are ``jax.random.key(seed + id)`` and the numpy ones ``np.random.default_rng([seed, id])`` with the
fixed ids of :data:`STREAM_IDS`; these are the derivations the recorded runs (``docs/results.md``) and their
checkpoints were made with, so they reproduce bit for bit. ``seed + id`` overlaps between nearby seeds (seed 0's
dropout stream is seed 1's parameter stream); sweeps over seeds therefore use seeds at least ``max(id) + 1`` apart
when the streams must be independent. The batch order and augmentation of the supervised stage are derived in
:func:`jaxnorm.data.batch_at` (``default_rng([seed, epoch])`` and ``default_rng([seed, step, 1])``).
"""

from __future__ import annotations

import jax
import numpy as np

#: The fixed id of each named stream.
STREAM_IDS = {"params": 0, "dropout": 1, "probes": 2, "pretrain_data": 3, "pretrain_noise": 4, "synthetic_data": 7}


def _stream_id(name: str) -> int:
    if name not in STREAM_IDS:
        raise ValueError(f"unknown random stream {name!r}; the streams are {', '.join(map(repr, STREAM_IDS))} "
                         "(jaxnorm.rng.STREAM_IDS)")
    return STREAM_IDS[name]


def stream_seed(seed: int, name: str) -> int:
    """The integer seed of stream ``name`` (for numpy-driven pipelines such as :func:`jaxnorm.data.batch_at`)."""
    return int(seed) + _stream_id(name)


def rng_stream(seed: int, name: str) -> jax.Array:
    """The JAX PRNG key of stream ``name`` of a run with ``seed``; fold in the step for per-step keys."""
    return jax.random.key(stream_seed(seed, name))


def numpy_stream(seed: int, name: str) -> np.random.Generator:
    """A numpy generator of stream ``name``: ``np.random.default_rng([seed, id])``."""
    return np.random.default_rng([int(seed), _stream_id(name)])
