"""jaxnorm: normalization and dropout for JAX/Flax.

The library: pure transforms with explicit statistics and PRNG keys (``jaxnorm.batch_norm``, ``jaxnorm.dropout``,
...), layers over them for every JAX style (``jaxnorm.nn`` for Flax linen, ``jaxnorm.nnx`` for Flax NNX,
``jaxnorm.eqx`` for Equinox, the ``[equinox]`` extra), optimization-landscape probes over a ``loss_fn``
(``jaxnorm.probes``) and the statistics of seed-paired comparisons (``jaxnorm.stats``).

The lab, ``jaxnorm.lab`` (training runs, data, models, sweeps, reports, plots), comes with the ``[train]`` extra and
is never imported by ``import jaxnorm``.
"""

import importlib

from jaxnorm import nn
from jaxnorm.dropouts import (
    alpha_dropout,
    dropconnect,
    dropout,
    gaussian_dropout,
    max_norm,
    max_norm_project,
    original_dropout,
    spatial_dropout,
)
from jaxnorm.norms import (
    CONVENTIONS,
    batch_moments,
    batch_norm,
    batch_renorm,
    dyt,
    fold_batch_norm,
    fold_batch_norm_params,
    group_norm,
    init_batch_stats,
    init_spectral_state,
    instance_norm,
    layer_norm,
    lp_batch_norm,
    noisy_batch_norm,
    population_stats,
    rms_norm,
    spectral_normalize,
    update_running_stats,
    weight_norm,
    weight_standardize,
)

__version__ = "0.2.0"


def __getattr__(name):
    # the other front-ends load on first use: Equinox is optional, and linen users need not import flax.nnx
    if name in ("nnx", "eqx", "probes", "stats"):
        return importlib.import_module(f"jaxnorm.{name}")
    raise AttributeError(f"module 'jaxnorm' has no attribute {name!r}")


__all__ = [
    "CONVENTIONS",
    "alpha_dropout",
    "batch_moments",
    "batch_norm",
    "batch_renorm",
    "dropconnect",
    "dropout",
    "dyt",
    "fold_batch_norm",
    "fold_batch_norm_params",
    "gaussian_dropout",
    "group_norm",
    "init_batch_stats",
    "init_spectral_state",
    "instance_norm",
    "layer_norm",
    "lp_batch_norm",
    "max_norm",
    "max_norm_project",
    "nn",
    "nnx",
    "noisy_batch_norm",
    "original_dropout",
    "population_stats",
    "rms_norm",
    "spatial_dropout",
    "spectral_normalize",
    "update_running_stats",
    "weight_norm",
    "weight_standardize",
]
