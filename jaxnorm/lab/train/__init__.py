"""Training: config, optimizer, jitted steps, loop, checkpoints and metrics."""

from jaxnorm.lab.train.config import base_config, validate
from jaxnorm.lab.train.loop import NonFiniteLossError, build, evaluate, main, train_and_evaluate
from jaxnorm.lab.train.steps import TrainState, create_state, make_eval_step, make_train_step

__all__ = [
    "NonFiniteLossError",
    "TrainState",
    "base_config",
    "build",
    "create_state",
    "evaluate",
    "main",
    "make_eval_step",
    "make_train_step",
    "train_and_evaluate",
    "validate",
]
