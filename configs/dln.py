"""Santurkar et al.'s deep linear network (DLN): 25 layers of 10×10, no activation, loss ‖W₂₅⋯W₁x − Ax‖² on 1000
Gaussian samples, full-batch gradient descent, with the landscape probes on; norm=none vs norm=batch.

    python train.py --config configs/dln.py --workdir runs/dln_nobn --config.norm=none
    python train.py --config configs/dln.py --workdir runs/dln_bn --config.norm=batch
    python -m jaxnorm.lab.plots runs/dln_nobn runs/dln_bn

Expected (2 CPU cores, ~1 minute each): see the results table in README.md. The paper uses LR 1e-6 for a summed
loss; ours is the per-example mean, so the LR is larger. The training loop's probe grid is [0.5, 4]·LR; the paper's
[0.01, 30]·LR grid, ICS per time window and 5 seeds of both arms are the DLN points of experiments/santurkar.py
(its grid takes this file's setting), reported in docs/results.md.
"""

from jaxnorm.lab.train.config import base_config


def get_config():
    c = base_config()
    c.dataset = "linear_regression"
    c.model = "deep_linear"
    c.model_kwargs.depth = 25
    c.model_kwargs.width = 10
    c.activation = "identity"
    c.norm = "none"
    c.batch_size = 1000  # full batch
    c.eval_batch_size = 1000
    c.optimizer = "sgd"
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.schedule = "constant"
    c.num_steps = 500
    c.eval_every = 100
    c.log_every = 10
    c.checkpoint_every = 500
    c.probes.every = 25
    c.probes.kinds = ("santurkar", "ics")
    return c
