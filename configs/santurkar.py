"""Santurkar et al. (2018) at CPU size: a VGG-style CNN trained with plain SGD, batch 128, no augmentation, as
standard (norm=none), with batch norm, and with noisy batch norm (Algorithm 1), at LR 0.1 and 0.5, with the landscape
probes (loss variation, gradient predictiveness, β-smoothness along the gradient; ICS per layer) every 25 steps.

    python train.py --config configs/santurkar.py --workdir runs/sant_bn_lr0.1
    python train.py --config configs/santurkar.py --workdir runs/sant_none_lr0.1 --config.norm=none
    python train.py --config configs/santurkar.py --workdir runs/sant_noisy_lr0.1 --config.norm=noisy_batch_norm
    python train.py --config configs/santurkar.py --workdir runs/sant_bn_lr0.5 --config.learning_rate=0.5
    python -m jaxnorm.plots runs/sant_none_lr0.1 runs/sant_bn_lr0.1 runs/sant_noisy_lr0.1

Reduced size: the small VGG (vgg_small) on scikit-learn digits, 500 steps (~2 minutes on 2 CPU cores per run, most of
it in the probes). Paper size: --config.dataset=cifar10 --config.model=vgg11 --config.num_steps=15000 with a prepared
tfds CIFAR-10 (paper: 83% test accuracy with BN, 80% without; BN's bands far narrower).
"""

from jaxnorm.train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.model = "vgg_small"
    c.norm = "batch"
    c.batch_size = 128
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.weight_decay = 0.0
    c.schedule = "constant"
    c.num_steps = 500
    c.eval_every = 100
    c.log_every = 25
    c.checkpoint_every = 250
    c.probes.every = 25
    c.probes.kinds = ("santurkar", "ics")
    return c
