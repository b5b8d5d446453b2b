"""The model zoo: Flax MLPs and CNNs that take a normalization, its placement and a dropout choice by name.

Every model is a ``flax.linen.Module`` called as::

    model = build_model('resnet18', norm='group', norm_position='before', dropout='dropout', dropout_rate=0.1,
                        num_classes=10, width=0.25)
    variables = model.init(jax.random.key(0), x, train=False)
    logits, state = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})
    logits = model.apply(variables, x, train=False)
    logits, features = model.apply(variables, x, train=False, return_features=True)   # the head's input

``features`` is the input of the final dense layer (for the embedding penalty λ·mean‖h(x)‖², Dauphin & Cubuk 2021).
Norms that keep running statistics (``'batch'``, ``'batch_renorm'``, ``'lp_batch_norm'``, ``'noisy_batch_norm'``)
create the ``'batch_stats'`` collection; the others create none. ``'noisy_batch_norm'`` draws its noise from the
``'dropout'`` rng stream. ``kernel_norm='weight'`` / ``'spectral'`` reparametrize the hidden conv/dense kernels
(weight norm, spectral norm; the latter keeps its power-iteration vectors in ``'batch_stats'`` too, see
:func:`wrap_kernel_norm`). Shared fields (norm options, placement, dropout, activation, bias rule, dtype, kernel norm)
are documented on :class:`~jaxnorm.lab.models.base.ZooModel`.

Registries: ``NORMS``, ``DROPOUTS``, ``ACTIVATIONS``, ``MODELS``; :func:`make_norm`, :func:`make_dropout`,
:func:`build_model`; :func:`register_norm` adds a norm (``'noisy_batch_norm'`` is registered that way) and
:func:`register_model` a model. Unknown names raise a ValueError listing the valid ones. :func:`model_fields` lists the
fields a config's ``model_kwargs`` may set, and :func:`check_model_config` checks them and the data's shape against
the model (see :mod:`jaxnorm.lab.models.fields`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxnorm.lab.models import components as _components
from jaxnorm.lab.models.base import ConvModel, ZooModel
from jaxnorm.lab.models.cnn import CNN1D, VGG, VGG_CONFIGS, SimpleCNN
from jaxnorm.lab.models.components import (
    ACTIVATIONS,
    KERNEL_NORMS,
    NORM_POSITIONS,
    DropoutFactory,
    Identity,
    NormFactory,
    NormSpec,
    check_choice,
    dropout_names,
    get_activation,
    make_dropout,
    make_norm,
    norm_names,
    norm_spec,
    register_dropout,
    register_norm,
    resolve_num_groups,
    unregister_norm,
    wrap_kernel_norm,
)
from jaxnorm.lab.models.fields import check_model_config, model_fields
from jaxnorm.lab.models.mlp import MLP, DeepLinear, ioffe_mlp, srivastava_mlp
from jaxnorm.lab.models.resnet import RESNET_DEPTHS, ResidualBlock, ResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "ioffe_mlp": ioffe_mlp,
    "srivastava_mlp": srivastava_mlp,
    "deep_linear": DeepLinear,
    "simple_cnn": SimpleCNN,
    "cnn1d": CNN1D,
    "vgg": VGG,
    **{name: functools.partial(VGG, cfg=name) for name in VGG_CONFIGS},
    "resnet": ResNet,
    **{f"resnet{d}": functools.partial(ResNet, depth=d) for d in RESNET_DEPTHS},
}


def register_model(name: str, constructor: Callable[..., nn.Module], *, overwrite: bool = False) -> None:
    """Add ``constructor(**kwargs) -> Module`` to ``MODELS`` under ``name``."""
    if name in MODELS and not overwrite:
        raise ValueError(f"register_model: {name!r} is already registered; pass overwrite=True to replace it")
    MODELS[name] = constructor


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """The model ``name`` (a key of ``MODELS``; case, '-' and '_' are ignored: 'ResNet-18' is 'resnet18') built
    with ``kwargs``; unknown names raise a ValueError listing ``MODELS``.

    >>> model = build_model('ResNet-18', norm='batch', width=0.125, num_classes=10)
    >>> type(model).__name__
    'ResNet'
    """

    def squash(s):
        return s.lower().replace("-", "").replace("_", "")

    if isinstance(name, str) and name not in MODELS:
        name = {squash(k): k for k in MODELS}.get(squash(name), name)
    return MODELS[check_choice("model", name, tuple(MODELS))](**kwargs)


def __getattr__(name: str):  # NORMS / DROPOUTS are live views: they include registered entries
    if name in ("NORMS", "DROPOUTS"):
        return getattr(_components, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "CNN1D",
    "ConvModel",
    "DROPOUTS",
    "DeepLinear",
    "DropoutFactory",
    "Identity",
    "KERNEL_NORMS",
    "MLP",
    "MODELS",
    "NORMS",
    "NORM_POSITIONS",
    "NormFactory",
    "NormSpec",
    "RESNET_DEPTHS",
    "ResNet",
    "ResidualBlock",
    "SimpleCNN",
    "VGG",
    "VGG_CONFIGS",
    "ZooModel",
    "build_model",
    "check_choice",
    "check_model_config",
    "dropout_names",
    "get_activation",
    "ioffe_mlp",
    "make_dropout",
    "make_norm",
    "model_fields",
    "norm_names",
    "norm_spec",
    "register_dropout",
    "register_model",
    "register_norm",
    "resolve_num_groups",
    "srivastava_mlp",
    "unregister_norm",
    "wrap_kernel_norm",
]
