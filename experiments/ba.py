"""Ba et al. (2016) at CPU size: layer norm vs batch norm (and none) in the 1-D CNN of the default run on MNIST-1D,
2000 steps at batch 128 with SGD + momentum; the invariance table of their §5.1 (Table 1) is measured separately by
``jaxnorm.probes.norm_invariances`` (no training) and printed by ``python -m jaxnorm.report``.

    python -m jaxnorm.sweep configs/ba.py --workdir runs/ba                      # 3 norms × 3 seeds, ~2 minutes

--config.size=full: ResNet-50 on a prepared imagenet2012 (Wu & He's numbers: top-1 error BN 23.6, LN 25.3). Ba et
al. themselves report LN helps RNNs most and "batch normalization is better than layer normalization" in ConvNets.
"""

from jaxnorm.train.config import base_config

SEEDS = 3
NORMS = ("none", "batch", "layer")


def get_config():
    c = base_config()
    c.model_kwargs.momentum = 0.9  # running-statistics momentum of the batch-statistics norms (models: 0.99)
    c.dataset = "mnist1d"
    c.model = "cnn1d"
    c.norm = "layer"
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
    return [{"name": norm, "norm": norm} for norm in NORMS]
