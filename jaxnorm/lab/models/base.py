"""Fields and helpers shared by the model zoo: norm, placement, dropout, activation, bias rule, dtype."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from jaxnorm import nn as jnn
from jaxnorm._checks import check_choice, check_positive_int
from jaxnorm.lab.models.components import (
    ACTIVATIONS,
    KERNEL_NORMS,
    NORM_POSITIONS,
    DropoutFactory,
    NormFactory,
    default_kernel_init,
    dropout_names,
    get_activation,
    make_dropout,
    make_norm,
    norm_spec,
    wrap_kernel_norm,
)

Array = jax.Array

# model-level norm options, each forwarded only to the norms that take it (so a sweep over NORMS can keep them set)
_COMMON_NORM_OPTIONS = ("num_groups", "momentum", "epsilon", "axis_name", "p")


class ZooModel(nn.Module):
    """Fields every model of the zoo shares. Models are called as ``model.apply(variables, x, train=...,
    return_features=False)``; ``return_features=True`` returns ``(logits, features)``, features being the input of
    the final dense layer. Names are checked when the model is constructed (ValueError listing the valid ones).

    * ``norm``: one of ``NORMS``; ``norm_position``: ``'before'`` (layer → norm → activation, Ioffe & Szegedy's
      placement, the default) or ``'after'`` (layer → activation → norm).
    * Norm options, each forwarded only to the norms that use it: ``num_groups`` (group norm; ``None`` = 32, clamped to
      the channel count, see :func:`jaxnorm.lab.models.resolve_num_groups`), ``momentum``/``epsilon``/``axis_name``
      (``None`` = the layer's default; ``axis_name='batch'`` gives sync batch norm), ``p`` (ℓp batch norm).
      ``norm_kwargs``: any further options, passed to :func:`jaxnorm.lab.models.make_norm` and checked strictly.
    * ``dropout``: one of ``DROPOUTS``, at rate ``dropout_rate`` (default 0.5, Srivastava's hidden rate; ignored for
      ``'none'``), applied at the end of each block (after its activation, or after its norm when
      ``norm_position='after'``), i.e. just before the next weight layer.
    * ``activation``: a name in ``ACTIVATIONS``.
    * ``use_bias``: ``None`` (auto) drops the bias of a conv/dense layer that a bias-absorbing norm (one that subtracts
      a per-channel mean: batch, batch renorm, noisy batch norm, instance) directly follows, as Flax's and
      torchvision's ResNets do; ``True``/``False`` force it. ℓp batch norm keeps the bias (its scale is measured
      before the mean shift, so the bias is not redundant). The dense head always has a bias.
    * ``kernel_init``: ``None`` = He normal for ReLU-like activations, LeCun normal otherwise.
    * ``dtype``: computation dtype of the conv/dense layers (e.g. ``jnp.bfloat16``); parameters and norm statistics
      stay float32 and logits are returned as float32.
    * ``kernel_norm``: a reparametrization of the weights of every hidden conv/dense layer (the projection shortcuts
      of ResNets included): ``'none'``, ``'weight'`` (weight norm, Salimans & Kingma 2016: ``w = g·v/‖v‖`` per output
      unit) or ``'spectral'`` (spectral norm, Miyato et al. 2018: ``W/σ(W)``, its power-iteration state in
      ``'batch_stats'``, updated in training only); see :func:`jaxnorm.lab.models.components.wrap_kernel_norm`. It
      combines with any ``norm``. ``kernel_norm_head``: also wrap the dense head (and DeepLinear's last layer);
      off by default, because a spectrally normalized head bounds the logits (every layer 1-Lipschitz: the logits
      cannot grow beyond the features' scale, which slows cross-entropy training), and a plain head leaves the
      classifier's scale free.
    """

    num_classes: int = 10
    norm: str = "none"
    norm_position: str = "before"
    num_groups: int | None = None
    momentum: float | None = None
    epsilon: float | None = None
    axis_name: str | None = None
    p: int | str | None = None
    norm_kwargs: Mapping[str, Any] | None = None
    dropout: str = "none"
    dropout_rate: float = 0.5
    activation: str = "relu"
    use_bias: bool | None = None
    kernel_init: Callable[..., Array] | None = None
    dtype: Any = jnp.float32
    kernel_norm: str = "none"
    kernel_norm_head: bool = False

    _dense = False  # N×C activations everywhere (MLP, DeepLinear): no instance norm, no spatial dropout
    # the spatial axes the model convolves over: 1 (inputs N×L×C), 2 (N×H×W×C), None: any input (it flattens them);
    # a class constant, not annotated, so not a field (see jaxnorm.lab.models.fields.check_model_config)
    _spatial_dims = None

    def __post_init__(self):
        # lists and dicts from configs become tuples and FrozenDicts, so that models stay hashable (jit static args)
        for f in dataclasses.fields(self):
            if f.name in ("parent", "name"):
                continue
            v = getattr(self, f.name, None)
            if isinstance(v, list):
                object.__setattr__(self, f.name, tuple(v))
            elif isinstance(v, dict):
                object.__setattr__(self, f.name, FrozenDict(v))
        self._check_config()
        super().__post_init__()

    def _check_config(self) -> None:
        where = type(self).__name__
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("activation", self.activation, tuple(ACTIVATIONS))
        check_choice("dropout", self.dropout, dropout_names())
        check_choice("kernel_norm", self.kernel_norm, KERNEL_NORMS)
        norm = self.norm_factory()  # checks the norm name and options
        drop = self.dropout_factory()  # checks the rate
        if self._dense:
            norm.check_dense(where)
            drop.check_dense(where)
        check_positive_int(where, "num_classes", self.num_classes)

    # ---- factories -------------------------------------------------------------------------------------------------

    def norm_factory(self) -> NormFactory:
        spec = norm_spec(self.norm)
        kw = {k: getattr(self, k) for k in _COMMON_NORM_OPTIONS if getattr(self, k) is not None and k in spec.options}
        kw.update(dict(self.norm_kwargs or {}))
        return make_norm(self.norm, **kw)

    def dropout_factory(self, rate: float | None = None, kind: str | None = None) -> DropoutFactory:
        return make_dropout(kind or self.dropout, self.dropout_rate if rate is None else rate)

    def act_fn(self) -> Callable[[Array], Array]:
        return get_activation(self.activation)

    def init_fn(self) -> Callable[..., Array]:
        return self.kernel_init if self.kernel_init is not None else default_kernel_init(self.activation)

    def layer_bias(self, norm: NormFactory, *, directly_followed: bool | None = None) -> bool:
        """Whether a conv/dense layer gets a bias: not when a bias-absorbing norm directly follows it."""
        if self.use_bias is not None:
            return bool(self.use_bias)
        if directly_followed is None:
            directly_followed = self.norm_position == "before"
        return not (directly_followed and norm.absorbs_bias)

    # ---- building blocks -------------------------------------------------------------------------------------------

    def norm_act(self, h: Array, norm_layer: nn.Module, act: Callable, train: bool, sow_name: str | None = None):
        """``act(norm(h))`` for ``norm_position='before'``, ``norm(act(h))`` for ``'after'``. ``sow_name`` records the
        activation's input in the ``'intermediates'`` collection (Ioffe's sigmoid-input percentiles)."""
        if self.norm_position == "before":
            h = norm_layer(h, train=train)
            if sow_name:
                self.sow("intermediates", sow_name, h)
            return act(h)
        if sow_name:
            self.sow("intermediates", sow_name, h)
        return norm_layer(act(h), train=train)

    def dense(
        self, features: int, use_bias: bool, name: str, *, train: bool | None = None, head: bool = False
    ) -> nn.Module:
        """A hidden dense layer, wrapped by ``kernel_norm`` (``head=True``: an output layer, wrapped only with
        ``kernel_norm_head``); ``train`` is needed by ``kernel_norm='spectral'``."""
        layer = nn.Dense(features, use_bias=use_bias, kernel_init=self.init_fn(), dtype=self.dtype, name=name)
        return self.wrap_kernel(layer, train, head=head)

    def wrap_kernel(self, layer: nn.Module, train: bool | None, *, head: bool = False) -> nn.Module:
        """``layer`` wrapped by this model's ``kernel_norm`` (unless it is an output layer without
        ``kernel_norm_head``)."""
        if head and not self.kernel_norm_head:
            return layer
        return wrap_kernel_norm(self.kernel_norm, layer, train=train, where=type(self).__name__)

    def head(self, h: Array, name: str = "head", *, train: bool | None = None) -> Array:
        """The final dense layer (always with a bias), logits as float32."""
        layer = nn.Dense(self.num_classes, dtype=self.dtype, name=name)
        logits = self.wrap_kernel(layer, train, head=True)(h)
        return jnp.asarray(logits, jnp.float32)


class ConvModel(ZooModel):
    """:class:`ZooModel` plus ``weight_standardize``: weight-standardized convolutions (Qiao et al. 2019; pairs with
    group norm at small batch sizes). It standardizes the kernel itself, so it excludes ``kernel_norm``."""

    weight_standardize: bool = False

    def _check_config(self) -> None:
        super()._check_config()
        if self.weight_standardize and self.kernel_norm != "none":
            raise ValueError(
                f"{type(self).__name__}: weight_standardize=True and kernel_norm={self.kernel_norm!r} both "
                "reparametrize the conv kernels (standardization removes the scale that weight/spectral norm sets); "
                "choose one"
            )

    def conv_builder(self, kernel_init=None, *, train: bool | None = None) -> Callable[..., nn.Module]:
        """``conv(features, kernel_size, strides=1, use_bias=True, name=None)`` building this model's conv layers
        ('SAME' padding), wrapped by ``kernel_norm`` (which needs ``train`` for ``'spectral'``). A plain function
        (no module method), so submodules such as residual blocks can call it and own the layers it builds."""
        init = kernel_init if kernel_init is not None else self.init_fn()
        ws, dtype, kind, where = self.weight_standardize, self.dtype, self.kernel_norm, type(self).__name__

        def conv(features: int, kernel_size, strides=1, use_bias: bool = True, name: str | None = None):
            ks = tuple(kernel_size)
            if ws:
                return jnn.StandardizedConv(
                    features, ks, strides=strides, padding="SAME", use_bias=use_bias, kernel_init=init, name=name
                )
            layer = nn.Conv(
                features,
                ks,
                strides=strides,
                padding="SAME",
                use_bias=use_bias,
                kernel_init=init,
                dtype=dtype,
                name=name,
            )
            return wrap_kernel_norm(kind, layer, train=train, where=where)

        return conv


def as_images(x: Array, ndim: int, where: str) -> Array:
    """Adds a channel axis to an input one axis short (N×H×W → N×H×W×1, N×L → N×L×1); checks the rank."""
    x = jnp.asarray(x)
    if x.ndim == ndim - 1:
        x = x[..., None]
    if x.ndim != ndim:
        want = {3: "N×L×C (or N×L)", 4: "N×H×W×C (or N×H×W)"}[ndim]
        raise ValueError(f"{where}: expected an input of shape {want}, got {tuple(x.shape)}")
    return x


def max_pool(x: Array, window: int = 2, stride: int | None = None) -> Array:
    """Max pooling over the spatial axes, ``'SAME'`` padding (so a 1×1 map stays 1×1 at tiny test sizes)."""
    nd = x.ndim - 2
    stride = window if stride is None else stride
    return nn.max_pool(x, (window,) * nd, strides=(stride,) * nd, padding="SAME")


def global_avg_pool(x: Array) -> Array:
    return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
