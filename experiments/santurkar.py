"""Santurkar et al. (2018) at CPU size: a VGG-style CNN trained with plain SGD, batch 128, no augmentation, as
standard (norm=none), with batch norm, and with noisy batch norm (Algorithm 1), at LR 0.1 and 0.5; the landscape
probes (loss variation, gradient predictiveness, β-smoothness along the gradient; ICS per layer) every 25 steps in
the LR-0.1 runs.

    python -m jaxnorm.sweep configs/santurkar.py --workdir runs/santurkar          # the grid below, 3 seeds
    python train.py --config configs/santurkar.py --workdir runs/sant_bn_lr0.1   # one run
    python train.py --config configs/santurkar.py --workdir runs/sant_none_lr0.1 --config.norm=none
    python -m jaxnorm.plots runs/sant_none_lr0.1 runs/sant_bn_lr0.1

Reduced size: the small VGG (vgg_small) on scikit-learn digits, 500 steps (about 1 minute on 2 CPU cores per probed
run, most of it in the probes; 15 s without). --config.size=full: VGG-11 on a prepared tfds CIFAR-10, 15k steps
(paper: 83% test accuracy with BN, 80% without; BN's bands far narrower). Measured at reduced size: see
docs/results.md.
"""

from jaxnorm.train.config import base_config

SEEDS = 3
NORMS = ("none", "batch", "noisy_batch_norm")


def get_config():
    c = base_config()
    c.model_kwargs.momentum = 0.9  # running-statistics momentum of the batch-statistics norms (models: 0.99)
    c.dataset = "digits"
    c.model = "vgg_small"
    c.norm = "batch"
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.weight_decay = 0.0
    c.schedule = "constant"
    c.num_steps = 500
    c.eval_every = 50
    c.log_every = 25
    c.checkpoint_every = 500
    c.probes.every = 25
    c.probes.kinds = ("santurkar", "ics")
    c.sizes.smoke = dict(num_steps=4, eval_every=2, log_every=2, checkpoint_every=4, probes=dict(every=2),
                         eval_batch_size=500)
    c.sizes.full = dict(dataset="cifar10", model="vgg11", num_steps=15000, eval_every=500, log_every=100,
                        checkpoint_every=1000, probes=dict(every=100))
    return c


def get_sweep(config):
    """norm ∈ {none, batch, noisy} × LR ∈ {lr, 5·lr}; probes only at the first LR (they dominate the cost)."""
    lrs = (config.learning_rate, 5 * config.learning_rate)
    norms = NORMS if config.size != "smoke" else NORMS[:2]
    return [{"name": f"{norm}_lr{lr:g}", "norm": norm, "learning_rate": lr,
             "probes.every": config.probes.every if lr == lrs[0] else 0}
            for lr in lrs for norm in norms]
