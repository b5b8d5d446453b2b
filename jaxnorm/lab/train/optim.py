"""Optimizers and learning-rate schedules from a config (optax)."""

from __future__ import annotations

import jax
import optax

from jaxnorm.dropouts import max_norm


def horizon(config) -> int:
    """The number of steps the step and cosine schedules span: ``schedule_steps``, or ``num_steps`` when it is 0."""
    return int(config.get("schedule_steps") or config["num_steps"])


def depends_on_horizon(config) -> bool:
    """Whether the learning rate of a step depends on the schedule's horizon (step and cosine; not constant)."""
    return config["schedule"] in ("step", "cosine")


def learning_rate_schedule(config) -> optax.Schedule:
    """constant | step (×decay_factor at each fraction in decay_boundaries of the horizon) | cosine to 0, each after
    a linear warm-up of ``warmup_steps`` from 0. The horizon is :func:`horizon` (``num_steps`` unless
    ``schedule_steps`` is set); after it the schedule stays at its final value."""
    lr, n, warm = config.learning_rate, horizon(config), config.warmup_steps
    if config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif config.schedule == "step":
        bounds = {int(f * n) - warm: config.decay_factor for f in config.decay_boundaries}
        main = optax.piecewise_constant_schedule(lr, bounds)
    else:  # cosine
        main = optax.cosine_decay_schedule(lr, max(n - warm, 1))
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def _decay_mask(params):
    # weight decay on kernels only: biases and norm scales/offsets are not decayed (common practice)
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """sgd | momentum | nesterov (SGD with L2 weight decay added to the gradient, as PyTorch's SGD) | adam (L2) |
    adamw (decoupled decay, Loshchilov & Hutter); ``max_norm`` > 0 chains :func:`jaxnorm.max_norm` (Srivastava et
    al. 2014's max-norm constraint on each unit's incoming weights)."""
    schedule = learning_rate_schedule(config)
    wd = config.weight_decay
    l2 = [optax.add_decayed_weights(wd, _decay_mask)] if wd > 0 else []
    name = config.optimizer
    if name == "sgd":
        tx = optax.chain(*l2, optax.sgd(schedule))
    elif name in ("momentum", "nesterov"):
        tx = optax.chain(*l2, optax.sgd(schedule, momentum=config.momentum, nesterov=name == "nesterov"))
    elif name == "adam":
        tx = optax.chain(*l2, optax.adam(schedule))
    else:
        tx = optax.adamw(schedule, weight_decay=wd, mask=_decay_mask)
    if config.max_norm > 0:  # after the update: the constraint holds for the weights every step uses
        tx = optax.chain(tx, max_norm(config.max_norm))
    return tx, schedule
