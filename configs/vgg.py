"""Santurkar et al.'s VGG setting (plain SGD, batch 128, no augmentation) at CPU size: the small VGG-like net on
scikit-learn digits; at paper scale VGG-11 on a prepared CIFAR-10.

    python train.py --config configs/vgg.py --workdir runs/vgg
    python train.py --config configs/vgg.py --workdir runs/vgg_full \
        --config.dataset=cifar10 --config.model=vgg11 --config.num_steps=15000 --config.data_dir=DIR

Expected (digits, 1000 steps, ~1.5 minutes on 2 CPU cores): test accuracy 0.983 with BN (seed 0). Paper (CIFAR-10, 15k steps): 83% with BN,
80% without.
"""

from jaxnorm.lab.train.config import base_config


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
    c.num_steps = 1000
    c.eval_every = 250
    c.log_every = 50
    c.checkpoint_every = 500
    return c
