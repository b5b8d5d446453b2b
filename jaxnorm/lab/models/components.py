"""Registries that turn config strings into layers: norms, dropouts, activations.

A model names its normalization, dropout and activation by string (``norm='group'``, ``dropout='spatial'``,
``activation='relu'``); this module resolves the names, checks them eagerly and builds the Flax layers of
:mod:`jaxnorm.nn`.

* :func:`make_norm` returns a :class:`NormFactory`; ``factory(features, name=...)`` builds one norm layer, called
  as ``layer(x, train=train)`` whatever the norm. ``'none'`` builds :class:`Identity` (no parameters, no state).
* :func:`make_dropout` returns a :class:`DropoutFactory`; ``factory(name=...)`` builds one dropout layer drawing from
  the ``'dropout'`` rng stream, called as ``layer(x, train=train)``.
* :func:`wrap_kernel_norm` wraps a conv/dense layer in weight norm or spectral norm (``KERNEL_NORMS``): these
  reparametrize weights, not activations, so models take them as a separate ``kernel_norm=`` choice.
* :func:`register_norm` / :func:`register_dropout` add new choices (:func:`unregister_norm` removes one). This is how
  ``'noisy_batch_norm'`` (Santurkar et al. 2018, Algorithm 1, :class:`jaxnorm.nn.NoisyBatchNorm`) is plugged in,
  below::

      register_norm('noisy_batch_norm', jnn.NoisyBatchNorm, options=('momentum', 'epsilon', 'n_mu', ...),
                    batch_stats=True, absorbs_bias=True)

  after which ``NORMS`` lists it and every model accepts ``norm='noisy_batch_norm'``. A registered layer must accept
  ``name=`` and the keyword arguments in ``options`` at construction, ``(x, train=...)`` at call, and (if it has a
  ``'scale'``) ``scale_init=`` so that residual blocks can zero-initialize it. Extra randomness comes from an rng
  stream (NoisyBatchNorm uses ``'dropout'``, which every training apply passes).

``NORMS`` and ``DROPOUTS`` are read live from the registries (module ``__getattr__``), so they include registered
entries.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import nn as jnn
from jaxnorm._checks import check_choice, check_positive_int

__all__ = [
    "ACTIVATIONS",
    "DROPOUTS",  # noqa: F822 (module __getattr__: a live view of the registry)
    "DropoutFactory",
    "Identity",
    "KERNEL_NORMS",
    "NORMS",  # noqa: F822 (module __getattr__: a live view of the registry)
    "NORM_POSITIONS",
    "NormFactory",
    "NormSpec",
    "get_activation",
    "make_dropout",
    "make_norm",
    "norm_spec",
    "register_dropout",
    "register_norm",
    "resolve_num_groups",
    "unregister_norm",
    "wrap_kernel_norm",
]

NORM_POSITIONS = ("before", "after")


class Identity(nn.Module):
    """The ``'none'`` norm / dropout: returns its input; no parameters, no state."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        del train
        return x


# --------------------------------------------------------------------------------------------------------------------
# norms


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """A registered normalization.

    ``layer`` builds the Flax module (``layer(name=..., **options)``); ``options`` are the keyword arguments
    :func:`make_norm` accepts for it; ``batch_stats``: it keeps running statistics in the ``'batch_stats'``
    collection; ``absorbs_bias``: it subtracts a per-channel mean, so a bias of the conv/dense layer directly before
    it is redundant (models then build that layer with ``use_bias=False``); ``needs_spatial``: it is undefined on
    ``N×C`` activations (instance norm); ``has_scale``: it has a per-channel ``'scale'`` (γ) set by ``scale_init``.
    """

    name: str
    layer: Callable[..., nn.Module]
    options: tuple[str, ...] = ()
    batch_stats: bool = False
    absorbs_bias: bool = False
    needs_spatial: bool = False
    has_scale: bool = True


_AFFINE = ("use_scale", "use_bias", "scale_init", "bias_init", "param_dtype")

_NORM_REGISTRY: dict[str, NormSpec] = {}


def register_norm(
    name: str,
    layer: Callable[..., nn.Module],
    *,
    options: Sequence[str] = ("epsilon",),
    batch_stats: bool = False,
    absorbs_bias: bool = False,
    needs_spatial: bool = False,
    has_scale: bool = True,
    overwrite: bool = False,
) -> NormSpec:
    """Add a normalization to ``NORMS`` (see :class:`NormSpec` for the fields). Returns the spec."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_norm: name must be a non-empty string, got {name!r}")
    if name in _NORM_REGISTRY and not overwrite:
        raise ValueError(f"register_norm: {name!r} is already registered; pass overwrite=True to replace it")
    spec = NormSpec(name, layer, tuple(options), batch_stats, absorbs_bias, needs_spatial, has_scale)
    _NORM_REGISTRY[name] = spec
    return spec


def unregister_norm(name: str) -> NormSpec:
    """Remove a registered normalization from ``NORMS`` (the inverse of :func:`register_norm`); returns its spec."""
    return _NORM_REGISTRY.pop(check_choice("norm", name, norm_names()))


register_norm("none", Identity, options=(), has_scale=False)
register_norm(
    "batch",
    jnn.BatchNorm,
    options=("momentum", "epsilon", "axis_name", "axis_index_groups", "convention", "virtual_batch_size") + _AFFINE,
    batch_stats=True,
    absorbs_bias=True,
)
register_norm("layer", jnn.LayerNorm, options=("epsilon", "axes") + _AFFINE)
register_norm("instance", jnn.InstanceNorm, options=("epsilon",) + _AFFINE, absorbs_bias=True, needs_spatial=True)
register_norm("group", jnn.GroupNorm, options=("num_groups", "group_size", "epsilon") + _AFFINE)
register_norm("rms", jnn.RMSNorm, options=("epsilon", "axes", "use_scale", "scale_init", "param_dtype"))
register_norm(
    "batch_renorm",
    jnn.BatchRenorm,
    options=("momentum", "epsilon", "axis_name", "r_max", "d_max") + _AFFINE,
    batch_stats=True,
    absorbs_bias=True,
)
# ℓp batch norm divides by the ℓp norm of the activations *before* the mean shift (Santurkar et al. §3.3), so a
# bias of the preceding layer changes the scale: it is not redundant and is kept.
register_norm(
    "lp_batch_norm",
    jnn.LpBatchNorm,
    options=("p", "momentum", "epsilon", "axis_name") + _AFFINE,
    batch_stats=True,
    absorbs_bias=False,
)
# Santurkar et al. (2018, Algorithm 1): batch norm followed by per-unit random shifts and scales, drawn in training
# from the 'dropout' rng stream (the layer's rng_collection). Registered like any other norm: this is the hook.
register_norm(
    "noisy_batch_norm",
    jnn.NoisyBatchNorm,
    options=(
        "momentum",
        "epsilon",
        "axis_name",
        "axis_index_groups",
        "convention",
        "virtual_batch_size",
        "n_mu",
        "n_sigma",
        "r_mu",
        "r_sigma",
        "rng_collection",
    )
    + _AFFINE,
    batch_stats=True,
    absorbs_bias=True,
)
# Dynamic Tanh (Zhu et al. 2025) replaces layer norm by γ·tanh(α·x) + β: nothing is subtracted, so the bias of the
# layer before it shifts where tanh saturates and is kept.
register_norm("dyt", jnn.DyT, options=("alpha_init",) + _AFFINE, absorbs_bias=False)


def norm_names() -> tuple[str, ...]:
    """The registered normalization names (``NORMS``), in registration order."""
    return tuple(_NORM_REGISTRY)


def norm_spec(name: str) -> NormSpec:
    """The :class:`NormSpec` registered under ``name``; ValueError listing the valid names otherwise."""
    return _NORM_REGISTRY[check_choice("norm", name, norm_names())]


def resolve_num_groups(channels: int, num_groups: int, *, dense: bool = False, where: str = "group norm") -> int:
    """The group count used for a ``channels``-wide layer when ``num_groups`` is asked for.

    Our rule: ``min(num_groups, channels)``, so that tiny test widths (C < 32) run with one channel per group (G = C,
    Wu & He's instance-norm end of the family); otherwise ``num_groups`` must divide ``channels`` and the error of
    :func:`jaxnorm.group_norm` names a divisor. On dense ``N×C`` activations a group of one channel normalizes a single
    number to a constant, so there a group size < 2 is an error that names a valid ``num_groups``.
    """
    g = min(check_positive_int(where, "num_groups", num_groups), channels)
    if dense and channels // g < 2:
        ok = [d for d in range(1, channels // 2 + 1) if channels % d == 0 and channels // d >= 2]
        raise ValueError(
            f"{where}: group norm with {g} groups on a dense layer of {channels} units normalizes single units to a "
            f"constant; pass num_groups <= {channels // 2} dividing {channels} (e.g. {ok[-1] if ok else 1}), or use "
            f"norm='layer' (num_groups=1)"
        )
    return g


@dataclasses.dataclass(frozen=True)
class NormFactory:
    """Builds norm layers of one kind with fixed options; see :func:`make_norm`."""

    spec: NormSpec
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def batch_stats(self) -> bool:
        return self.spec.batch_stats

    @property
    def absorbs_bias(self) -> bool:
        return self.spec.absorbs_bias

    def check_dense(self, where: str = "") -> None:
        """ValueError if this norm is undefined on dense ``N×C`` activations (instance norm)."""
        if self.spec.needs_spatial:
            label = f"{where}: norm={self.spec.name!r}" if where else f"norm={self.spec.name!r}"
            raise ValueError(
                f"{label} normalizes each example and channel over spatial axes, and a dense model's N×C "
                f"activations have none (instance norm is undefined there); use 'layer', 'group', 'rms' or 'batch'"
            )

    def __call__(
        self,
        features: int | None = None,
        *,
        dense: bool = False,
        zero_init: bool = False,
        name: str | None = None,
        where: str = "",
    ) -> nn.Module:
        """One norm layer for ``features`` channels (used for group-count resolution and checks).

        ``dense``: the layer will see ``N×C`` activations (instance norm then raises); ``zero_init``: γ starts at 0
        (the last norm of a residual branch); ``where`` prefixes error messages (the model's name).
        """
        spec, kw = self.spec, dict(self.kwargs)
        label = f"{where}: norm={spec.name!r}" if where else f"norm={spec.name!r}"
        if dense:
            self.check_dense(where)
        if spec.name == "group" and kw.get("group_size") is None and features is not None:
            kw["num_groups"] = resolve_num_groups(features, kw.get("num_groups", 32), dense=dense, where=label)
        if zero_init and spec.has_scale:
            kw["scale_init"] = nn.initializers.zeros
        return spec.layer(name=name, **kw)


def make_norm(name: str, **kwargs) -> NormFactory:
    """A factory of ``name`` norm layers (one of ``NORMS``) with the given options.

    Options are checked against the norm: ``momentum``, ``epsilon``, ``axis_name`` (sync batch norm across the
    ``'batch'`` axis) for the batch-statistics norms; ``num_groups`` (default 32, see :func:`resolve_num_groups`) or
    ``group_size`` for ``'group'``; ``p`` (1, 2, ``'inf'``) for ``'lp_batch_norm'``; ``r_max``/``d_max`` for
    ``'batch_renorm'``; the affine options (``use_scale``, ``scale_init``, ...) for all but ``'none'``. Values are
    passed literally (``momentum=None`` is a cumulative average for ``'batch'``).

    >>> norm = make_norm('group', num_groups=8)
    >>> layer = norm(64, name='norm1')      # inside a compact method; layer(x, train=train)
    >>> type(layer).__name__, layer.num_groups
    ('GroupNorm', 8)
    """
    spec = norm_spec(name)
    bad = sorted(set(kwargs) - set(spec.options))
    if bad:
        accepted = ", ".join(spec.options) if spec.options else "none"
        raise ValueError(f"make_norm: norm {name!r} takes no option(s) {bad}; its options are: {accepted}")
    if name == "group":
        if kwargs.get("group_size") is not None:
            if kwargs.get("num_groups") is not None:
                raise ValueError("make_norm: give one of num_groups and group_size for norm 'group', not both")
            kwargs["num_groups"] = None
        elif kwargs.get("num_groups") is None:
            kwargs["num_groups"] = 32
    return NormFactory(spec, tuple(sorted(kwargs.items())))


# --------------------------------------------------------------------------------------------------------------------
# kernel norms: reparametrizations of a conv/dense layer's weights (not of its activations)

KERNEL_NORMS = ("none", "weight", "spectral")


def wrap_kernel_norm(kind: str, layer: nn.Module, *, train: bool | None = None, where: str = "") -> nn.Module:
    """``layer`` (a conv/dense layer with a ``'kernel'``) reparametrized by the kernel norm ``kind``:

    * ``'none'``: ``layer`` itself;
    * ``'weight'``: :class:`jaxnorm.nn.WeightNorm` (Salimans & Kingma 2016), one gain per output unit in
      ``params/<name>_weight_norm``;
    * ``'spectral'``: :class:`jaxnorm.nn.SpectralNorm` (Miyato et al. 2018) whose ``u``/``sigma`` live in
      ``batch_stats/<name>_spectral_norm``; the power iteration runs and is stored when ``train`` (so the trainer's
      ``mutable=['batch_stats']`` apply carries it), and reads the stored ``u`` in eval.

    ``layer`` keeps its own name and parameters (``params/<name>/kernel`` is the raw kernel), so code that finds
    kernels by layer name (max-norm, pretraining, probes) keeps working; the wrapper is named ``<name>_<kind>_norm``.
    Call the result as ``wrapped(x)``.
    """
    check_choice("kernel_norm", kind, KERNEL_NORMS)
    if kind == "none":
        return layer
    name = f"{layer.name}_{kind}_norm" if layer.name else None
    if kind == "weight":
        return jnn.WeightNorm(layer, name=name)
    if train is None:
        label = f"{where}: " if where else ""
        raise ValueError(
            f"{label}kernel_norm='spectral' needs train=True/False where the layer is built (the power "
            "iteration is stored in training only)"
        )
    return jnn.SpectralNorm(layer, update_stats=bool(train), name=name)


# --------------------------------------------------------------------------------------------------------------------
# dropouts


@dataclasses.dataclass(frozen=True)
class DropoutSpec:
    name: str
    layer: Callable[..., nn.Module] | None
    needs_spatial: bool = False
    max_rate: float = 1.0  # exclusive upper bound when < 1 is required


_DROPOUT_REGISTRY: dict[str, DropoutSpec] = {}


def register_dropout(
    name: str,
    layer: Callable[..., nn.Module] | None,
    *,
    needs_spatial: bool = False,
    rate_below_one: bool = False,
    overwrite: bool = False,
) -> DropoutSpec:
    """Add a dropout kind to ``DROPOUTS``: ``layer(rate=..., name=...)`` called as ``layer(x, train=train)``."""
    if name in _DROPOUT_REGISTRY and not overwrite:
        raise ValueError(f"register_dropout: {name!r} is already registered; pass overwrite=True to replace it")
    spec = DropoutSpec(name, layer, needs_spatial, 1.0 if rate_below_one else math.inf)
    _DROPOUT_REGISTRY[name] = spec
    return spec


register_dropout("none", None)
register_dropout("dropout", jnn.Dropout)
register_dropout("original", jnn.OriginalDropout)
register_dropout("spatial", jnn.SpatialDropout, needs_spatial=True)
register_dropout("gaussian", jnn.GaussianDropout, rate_below_one=True)
register_dropout("alpha", jnn.AlphaDropout)


def dropout_names() -> tuple[str, ...]:
    """The registered dropout names (``DROPOUTS``)."""
    return tuple(_DROPOUT_REGISTRY)


@dataclasses.dataclass(frozen=True)
class DropoutFactory:
    """Builds dropout layers of one kind and rate; see :func:`make_dropout`."""

    spec: DropoutSpec
    rate: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def active(self) -> bool:
        return self.spec.layer is not None and self.rate > 0

    def check_dense(self, where: str = "") -> None:
        """ValueError if this dropout is undefined on dense ``N×C`` activations (spatial dropout)."""
        if self.spec.needs_spatial:
            label = f"{where}: dropout={self.spec.name!r}" if where else f"dropout={self.spec.name!r}"
            raise ValueError(
                f"{label} drops whole channels of N×spatial…×C maps, and a dense model's N×C activations have no "
                f"spatial axes; use 'dropout', 'gaussian' or 'alpha'"
            )

    def __call__(self, *, dense: bool = False, name: str | None = None, where: str = "") -> nn.Module:
        """One dropout layer (:class:`Identity` when inactive); ``dense``: it will see N×C activations."""
        if dense:
            self.check_dense(where)
        if not self.active:
            return Identity(name=name)
        return self.spec.layer(rate=self.rate, name=name)


def make_dropout(name: str, rate: float = 0.5) -> DropoutFactory:
    """A factory of ``name`` dropout layers (one of ``DROPOUTS``) with drop probability ``rate``.

    ``'none'`` or ``rate=0`` build :class:`Identity`. The rate is checked here: in [0, 1], and < 1 for ``'gaussian'``.
    """
    spec = _DROPOUT_REGISTRY[check_choice("dropout", name, dropout_names())]
    r = float(rate)
    if math.isnan(r) or not 0.0 <= r <= 1.0 or (spec.max_rate <= 1.0 and r >= spec.max_rate):
        hi = "< 1" if spec.max_rate <= 1.0 else "<= 1"
        raise ValueError(f"make_dropout: {name!r} needs 0 <= rate {hi} (the probability of dropping), got {rate}")
    return DropoutFactory(spec, r)


# --------------------------------------------------------------------------------------------------------------------
# activations

ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "tanh": jnp.tanh,
    "selu": nn.selu,
    "gelu": nn.gelu,
    "elu": nn.elu,
    "swish": nn.swish,
    "identity": lambda x: x,
}

# He (Kaiming) initialization for the rectifier family, LeCun for the rest (SELU needs LeCun normal).
_HE = ("relu", "gelu", "elu", "swish")


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function called ``name`` (one of ``ACTIVATIONS``)."""
    return ACTIVATIONS[check_choice("activation", name, tuple(ACTIVATIONS))]


def default_kernel_init(activation: str):
    """He normal (fan-in) for ReLU-like activations, LeCun normal otherwise."""
    if activation in _HE:
        return nn.initializers.variance_scaling(2.0, "fan_in", "normal")
    return nn.initializers.lecun_normal()


def __getattr__(name: str):  # live views of the registries (PEP 562)
    if name == "NORMS":
        return norm_names()
    if name == "DROPOUTS":
        return dropout_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
