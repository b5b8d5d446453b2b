"""Wu & He (2018) at CPU size: batch, group, layer and instance norm in a 1-D CNN on MNIST-1D at batch sizes 32, 16,
8, 4 and 2, for the same number of epochs (20) with the learning rate scaled linearly with the batch size
(0.025 at 32), SGD with momentum 0.9 and a cosine schedule; group norm with 8 groups of 4 channels.

    python -m jaxnorm.sweep configs/wu_he.py --workdir runs/wu_he                  # 4 norms × 5 batch sizes × 3 seeds
    python train.py --config configs/wu_he.py --workdir runs/gn_b2 --config.norm=group --config.batch_size=2 \\
        --config.learning_rate=0.0015625 --config.num_steps=40000

About 12 minutes for the sweep on 2 CPU cores. --config.size=full: ResNet-50 on a prepared imagenet2012 (paper, batch
32 per GPU, top-1 error: BN 23.6/23.7/24.8/27.3/34.7 and GN 24.1/24.2/24.0/24.2/24.1 at 32/16/8/4/2; LN 25.3, IN 28.4
at 32). The claim: GN is flat across batch sizes while BN degrades at 2–4.
"""

from jaxnorm.train.config import base_config

SEEDS = 3
NORMS = ("batch", "group", "layer", "instance")
BATCH_SIZES = (32, 16, 8, 4, 2)
BASE_BATCH = 32


def get_config():
    c = base_config()
    c.model_kwargs.momentum = 0.9  # running-statistics momentum of the batch-statistics norms (models: 0.99)
    c.dataset = "mnist1d"
    c.model = "cnn1d"
    c.norm = "batch"
    c.model_kwargs.num_groups = 8
    c.dropout = "none"
    c.batch_size = BASE_BATCH
    c.optimizer = "momentum"
    c.learning_rate = 0.025  # at batch 32; the grid scales it with the batch size
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.num_steps = 2500  # 20 epochs of the 4000 MNIST-1D training signals at batch 32
    c.eval_every = 2500
    c.log_every = 125
    c.checkpoint_every = 2500
    # the grid's batch sizes are global: batch 2 cannot be split over several devices (Wu & He's per-GPU batch is
    # emulated by the global batch on one device)
    c.parallel = "none"
    c.sizes.smoke = dict(num_steps=4, eval_every=4, log_every=2, checkpoint_every=4)
    c.sizes.full = dict(dataset="imagenet2012", model="resnet50", model_kwargs=dict(stem="imagenet", num_groups=32),
                        learning_rate=0.0125, weight_decay=1e-4, num_steps=4_000_000, eval_every=40_000,
                        log_every=1000, checkpoint_every=40_000, augment=True)
    return c


def get_sweep(config):
    """norm × batch size; steps ∝ 1/batch (same epochs), LR ∝ batch, logging and eval at the same epochs."""
    sizes = BATCH_SIZES if config.size != "smoke" else (32, 2)
    norms = NORMS if config.size != "smoke" else ("batch", "group")
    grid = []
    for norm in norms:
        for bs in sizes:
            k = BASE_BATCH // bs
            grid.append({"name": f"{norm}_b{bs}", "norm": norm, "batch_size": bs,
                         "learning_rate": config.learning_rate * bs / BASE_BATCH, "num_steps": config.num_steps * k,
                         "eval_every": config.eval_every * k, "log_every": config.log_every * k,
                         "checkpoint_every": config.checkpoint_every * k})
    return grid
