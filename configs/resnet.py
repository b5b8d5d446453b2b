"""Wu & He's setting at CPU size: a quarter-width ResNet-18 (CIFAR stem) on scikit-learn digits with a choice of
norm; at paper scale ResNet-50 with the ImageNet stem on a prepared imagenet2012.

    python train.py --config configs/resnet.py --workdir runs/resnet --config.norm=group --config.batch_size=8
    python train.py --config configs/resnet.py --workdir runs/resnet50 --config.dataset=imagenet2012 \
        --config.model=resnet50 --config.model_kwargs.width=1.0 --config.model_kwargs.stem=imagenet ...

Expected (digits, 800 steps, ~40 s on 2 CPU cores): test accuracy 0.986 with BN at batch 32 (seed 0).
Paper (ResNet-50, ImageNet, batch 32/GPU): top-1 error BN 23.6, GN 24.1, LN 25.3, IN 28.4.
"""

from jaxnorm.lab.train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "digits"
    c.model = "resnet18"
    c.model_kwargs.width = 0.25
    c.model_kwargs.stem = "cifar"
    c.norm = "batch"
    c.batch_size = 32
    c.optimizer = "momentum"
    c.learning_rate = 0.05
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.warmup_steps = 50
    c.num_steps = 800
    c.eval_every = 200
    c.log_every = 50
    c.checkpoint_every = 400
    return c
