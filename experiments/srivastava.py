"""Srivastava et al. (2014) at CPU size: a 3×512 ReLU MLP on MNIST-1D (4000 training signals, which an MLP overfits:
100% train accuracy, about 71% test) trained with SGD + momentum for 5000 steps at batch 128, with and without
dropout on the hidden units (rates 0.2 and 0.5), with dropout and the max-norm constraint ‖w‖₂ ≤ 3, and with the
original (scale-at-test) form of dropout instead of the inverted one.

    python -m jaxnorm.sweep configs/srivastava.py --workdir runs/srivastava      # 5 variants × 3 seeds, ~5 minutes
    python train.py --config configs/srivastava.py --workdir runs/dropout --config.dropout=dropout

--config.size=full: the paper's network (3×1024, dropout 0.5 hidden / 0.2 input) on a prepared tfds MNIST (paper:
test error 1.60% standard, 1.25% dropout, 1.06% dropout + max-norm).
"""

from jaxnorm.train.config import base_config

SEEDS = 3


def get_config():
    c = base_config()
    c.model_kwargs.momentum = 0.9  # running-statistics momentum of the batch-statistics norms (models: 0.99)
    c.dataset = "mnist1d"
    c.model = "mlp"
    c.model_kwargs.hidden = (512, 512, 512)
    c.norm = "none"
    c.dropout = "none"
    c.dropout_rate = 0.2
    c.batch_size = 128
    c.optimizer = "momentum"
    c.learning_rate = 0.1
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.num_steps = 5000
    c.eval_every = 1000
    c.log_every = 100
    c.checkpoint_every = 5000
    c.sizes.smoke = dict(num_steps=4, eval_every=2, log_every=2, checkpoint_every=4,
                         model_kwargs=dict(hidden=(32, 32, 32)))
    c.sizes.full = dict(dataset="mnist", model_kwargs=dict(hidden=(1024, 1024, 1024), input_dropout_rate=0.2),
                        dropout_rate=0.5,
                        num_steps=100_000, eval_every=5000, log_every=1000, checkpoint_every=10_000)
    return c


def get_sweep(config):
    """standard / dropout at the config's rate and at 0.5 / dropout + max-norm 3 / original-form dropout."""
    r = config.dropout_rate
    half = [] if r == 0.5 else [{"name": "dropout0.5", "dropout": "dropout", "dropout_rate": 0.5, "max_norm": 0.0}]
    return [
        {"name": "standard", "dropout": "none", "max_norm": 0.0},
        {"name": f"dropout{r:g}", "dropout": "dropout", "dropout_rate": r, "max_norm": 0.0},
        *half,
        {"name": f"dropout{r:g}_maxnorm3", "dropout": "dropout", "dropout_rate": r, "max_norm": 3.0},
        {"name": f"original{r:g}", "dropout": "original", "dropout_rate": r, "max_norm": 0.0},
    ]
