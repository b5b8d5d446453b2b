"""Train a jaxnorm model: ``python train.py --config configs/default.py --workdir runs/default``.

Overrides: ``--config.norm=group --config.batch_size=32``; ``--config.size=full`` applies the config's paper-scale
preset (``c.sizes.full``), keys given on the command line still winning. With no flags: the default config (a 1-D CNN with batch norm
on MNIST-1D, offline) into runs/default. Rerunning the same command resumes from the latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(_HERE, "configs", "default.py"), "Path to a config file (get_config()).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Where metrics, checkpoints and the config go.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    import jaxnorm.train  # after flag parsing, so --help is fast

    # keys given as --config.KEY=... win over the preset that --config.size=NAME applies
    explicit = [name[len("config."):] for name in flags.FLAGS if name.startswith("config.") and flags.FLAGS[name].present]
    sys.exit(jaxnorm.train.main(_CONFIG.value, _WORKDIR.value, explicit))


if __name__ == "__main__":
    app.run(main)
