"""Smoke test: a few steps of a tiny model on scikit-learn digits, in seconds.

    python train.py --config configs/smoke.py --workdir /tmp/smoke

Expected: finishes in seconds; the loss goes down; accuracy is not the point.
"""

from jaxnorm.lab.train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.model = "simple_cnn"
    c.model_kwargs.channels = (8, 16)
    c.norm = "batch"
    c.batch_size = 32
    c.learning_rate = 0.05
    c.num_steps = 20
    c.eval_every = 10
    c.log_every = 5
    c.checkpoint_every = 10
    c.eval_batch_size = 200
    c.progress = False
    return c
