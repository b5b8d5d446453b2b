"""The default run: a small 1-D CNN with batch norm (and dropout 0.1) on MNIST-1D, offline.

    python train.py --config configs/default.py --workdir runs/default

Expected: about 30 s on 2 CPU cores, test accuracy 0.988 (seed 0; 0.989 on seeds 0 and 1 before the shifted statistics; >= 0.97 is the bar; the published MNIST-1D
CNN baseline is 0.94).
"""

from jaxnorm.lab.train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist1d"
    c.model = "cnn1d"
    c.norm = "batch"
    c.dropout = "dropout"
    c.dropout_rate = 0.1
    c.batch_size = 128
    c.optimizer = "momentum"
    c.learning_rate = 0.1
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.num_steps = 2000
    c.eval_every = 500
    c.log_every = 100
    c.checkpoint_every = 1000
    return c
