"""Dauphin & Cubuk (2021) at CPU size: does keeping the final layer's input small recover batch norm's benefit? A
1-D CNN on MNIST-1D without dropout, SGD + momentum with 100 warm-up steps and a cosine schedule, 2000 steps at batch
128: batch norm vs no normalization vs no normalization + embedding regularization λ·mean‖h(x)‖² on the final layer's
input h (λ = 1e-4 and 1e-3).

    python -m jaxnorm.sweep configs/dauphin.py --workdir runs/dauphin            # 4 variants × 3 seeds, ~3 minutes
    python train.py --config configs/dauphin.py --workdir runs/emb --config.norm=none --config.embedding_reg=1e-3

--config.size=full: ResNet-50 on a prepared imagenet2012 (paper: without BN, the regularization recovers +2.9% top-1
of BN's generalization benefit).
"""

from jaxnorm.train.config import base_config

SEEDS = 3
LAMBDAS = (1e-4, 1e-3)


def get_config():
    c = base_config()
    c.model_kwargs.momentum = 0.9  # running-statistics momentum of the batch-statistics norms (models: 0.99)
    c.dataset = "mnist1d"
    c.model = "cnn1d"
    c.norm = "batch"
    c.dropout = "none"
    c.batch_size = 128
    c.optimizer = "momentum"
    c.learning_rate = 0.05
    c.warmup_steps = 100
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.num_steps = 2000
    c.eval_every = 500
    c.log_every = 100
    c.checkpoint_every = 2000
    c.sizes.smoke = dict(num_steps=4, eval_every=2, log_every=2, checkpoint_every=4, warmup_steps=0)
    c.sizes.full = dict(dataset="imagenet2012", model="resnet50", model_kwargs=dict(stem="imagenet"),
                        batch_size=256, learning_rate=0.1, weight_decay=1e-4, warmup_steps=5000, num_steps=450_000,
                        eval_every=5000, log_every=1000, checkpoint_every=10_000, augment=True)
    return c


def get_sweep(config):
    """BN; no norm; no norm + embedding regularization at each λ."""
    return ([{"name": "batch_norm", "norm": "batch", "embedding_reg": 0.0},
             {"name": "no_norm", "norm": "none", "embedding_reg": 0.0}]
            + [{"name": f"no_norm_emb{lam:g}", "norm": "none", "embedding_reg": lam} for lam in LAMBDAS])
