"""The lab: everything that turns the library into experiments — training runs, data, models, sweeps, reports, plots.

``jaxnorm.lab`` is installed by the ``[train]`` extra (``pip install 'jaxnorm[train]'``); the library proper
(``jaxnorm``, ``jaxnorm.nn``, ``jaxnorm.nnx``, ``jaxnorm.eqx``, ``jaxnorm.probes``, ``jaxnorm.stats``) never imports
it. The packages, each importing only those above it:

=================  ===================================================================================================
``data``           bundled offline datasets as tfds builders, any prepared tfds dataset, the Grain input pipeline
``models``         Flax CNNs, MLPs, ResNets and autoencoders that take a norm and a dropout choice from the config
``train``          config, optimizer, jitted steps, data-parallel placement, the stage driver, checkpoints, metrics
``rng``            the named random streams: every key a pure function of (seed, stream, step)
``plots``          figures from a run's metrics and checkpoints
``sweep``          grids of runs over configs and seeds
``report``         the results report rendered from ``experiments/``
=================  ===================================================================================================
"""

import importlib.util

# The [train] extra's import names (pyproject.toml is the one list of their distributions and floors).
_REQUIRED = (
    "absl",
    "array_record",
    "grain",
    "matplotlib",
    "ml_collections",
    "mnist1d",
    "orbax.checkpoint",
    "sklearn",
    "tensorboardX",
    "tensorflow_datasets",
)


def _missing(names=_REQUIRED):
    out = []
    for name in names:
        try:
            if importlib.util.find_spec(name) is None:
                out.append(name)
        except ModuleNotFoundError:  # find_spec('a.b') imports 'a'
            out.append(name)
    return out


if _missing():
    raise ImportError(
        f"jaxnorm.lab (training, data, sweeps, reports, plots) needs the [train] extra; missing: "
        f"{', '.join(_missing())}. Install it with: pip install 'jaxnorm[train]' "
        f"(from a clone: pip install -e '.[train]')"
    )
