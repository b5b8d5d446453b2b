"""Equinox layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropouts`.

Equinox's conventions: a layer is an ``equinox.Module`` called on ONE example, channels first (``C×…``, as
``eqx.nn.Conv`` and ``eqx.nn.BatchNorm``); the batch axis comes from ``jax.vmap(..., axis_name='batch')``;
running statistics live in an ``eqx.nn.State`` behind a ``StateIndex``; a stateful layer is called
``layer(x, state, *, key=None, inference=None) -> (y, state)`` (an ``eqx.nn.StatefulLayer``, so
``eqx.nn.Sequential`` threads the state through it), a stateless one ``layer(x, *, key=None) -> y`` (or
``layer(x, state) -> (y, state)``, as Equinox's own norms); ``eqx.nn.inference_mode(model)`` switches every
``inference`` flag::

    model, state = eqx.nn.make_with_state(Net)(key)
    batched = jax.vmap(model, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))
    y, state = batched(x, state, jax.random.split(key, len(x)))      # one dropout key per example

Batch norm's statistics are reduced over the vmapped axis with the pure function's ``axis_name`` path (sums and
counts), so they are exact for masked examples. Needs Equinox: ``pip install "jaxnorm[equinox]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax

try:
    import equinox as eqx
except ImportError as e:  # an optional extra: say which one
    raise ImportError(
        'jaxnorm.eqx needs Equinox, which is not installed: pip install "jaxnorm[equinox]" (or pip install equinox)'
    ) from e

from jaxnorm import _layers
from jaxnorm import dropouts as _do
from jaxnorm import norms as _norms
from jaxnorm._checks import check_choice, check_epsilon, check_groups, check_momentum, check_positive_int, check_rate

Array = jax.Array

__all__ = [
    "AlphaDropout",
    "BatchNorm",
    "BatchRenorm",
    "DropConnectLinear",
    "Dropout",
    "DyT",
    "GaussianDropout",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LpBatchNorm",
    "NoisyBatchNorm",
    "OriginalDropout",
    "RMSNorm",
    "SpatialDropout",
    "SpectralNorm",
    "StandardizedConv",
    "WeightNorm",
]

_NO_STATE = object()  # "called without a state": a stateless layer then returns y alone, as Equinox's do


def _training(inference, attr, layer: str):
    """``train`` for the pure functions from Equinox's ``inference`` flag (the call's, else the layer's; see
    :func:`jaxnorm._layers.mode`); errors name ``inference``."""
    return _layers.mode(layer, "inference", attr, inference)


def _dtype(dtype):
    return jnp.float64 if dtype is None and jax.config.jax_enable_x64 else (dtype or jnp.float32)


def _affine(use: bool, shape, dtype):
    return (jnp.ones(shape, _dtype(dtype)), jnp.zeros(shape, _dtype(dtype))) if use else (None, None)


def _one(layer: str, x, state):
    """Per-example input as a batch of one (the pure functions' layout), and the return convention."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{layer}: expected one example (channels first, C×…), got a scalar")
    return x[None], state


def _out(y, state):
    return y if state is _NO_STATE else (y, state)


def _batch_size(layer: str, axis_name) -> int:
    """The size of the vmapped batch axis (a tuple of names: their product); a NameError that shows the vmap
    call when the axis is not bound."""
    try:
        return lax.axis_size(axis_name)
    except NameError as err:
        raise NameError(
            f"{layer}: the batch axis {axis_name!r} is not bound ({err}); Equinox layers see one example, so call "
            f"the model under jax.vmap(model, axis_name={axis_name!r}, in_axes=(0, None), out_axes=(0, None)) "
            "(x batched, state shared), as eqx.nn.BatchNorm"
        ) from None


# --------------------------------------------------------------------------------------------------------------------
# batch-statistics norms


class _RunningStats(eqx.nn.StatefulLayer):  # eqx.nn.Sequential passes the state to StatefulLayers
    weight: Array | None
    bias: Array | None
    state_index: eqx.nn.StateIndex
    inference: bool
    axis_name: Hashable | Sequence[Hashable] = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)

    def _init_common(self, input_size, axis_name, eps, channelwise_affine, inference, dtype):
        name = type(self).__name__
        self.input_size = check_positive_int(name, "input_size", input_size)
        self.axis_name = axis_name
        self.eps = check_epsilon(name, eps)
        self.channelwise_affine = channelwise_affine
        self.inference = inference
        self.weight, self.bias = _affine(channelwise_affine, (input_size,), dtype)
        init = _norms.init_batch_stats(input_size, _dtype(dtype))
        self.state_index = eqx.nn.StateIndex(init)

    def _normalize(self, fn, x, state, inference, mask, **kw):
        name = type(self).__name__
        train = _training(inference, self.inference, name)
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[0] != self.input_size:
            raise ValueError(
                f"{name}: expected one example with input_size={self.input_size} channels first "
                f"(C×…), got shape {tuple(x.shape)}; the batch axis comes from jax.vmap"
            )
        if mask is not None:  # a scalar (this example counts) or one flag per value of x
            mask = jnp.asarray(mask)
            mask = mask.reshape((1,)) if mask.ndim == 0 else mask[None]
        if train is not False:
            _batch_size(name, self.axis_name)
        y, new = fn(
            x[None],
            self.weight,
            self.bias,
            state.get(self.state_index),
            train=train,
            epsilon=self.eps,
            axis=1,
            axis_name=self.axis_name,
            mask=mask,
            **kw,
        )
        if train is not False:
            state = state.set(self.state_index, new)
        return y[0], state


class BatchNorm(_RunningStats):
    """Batch normalization (Ioffe & Szegedy 2015) of one example ``C×…`` with statistics over the vmapped batch
    axis ``axis_name`` and the spatial axes (:func:`jaxnorm.batch_norm`).

    ``eqx.nn.BatchNorm(input_size, axis_name, eps, channelwise_affine, momentum, inference, dtype)`` with its
    ``mode='batch'`` semantics in training (batch statistics; the running averages ``m·r + (1−m)·stat``), plus
    jaxnorm's options: ``mask`` at call (a boolean scalar per example: padded examples stay out of the
    statistics), ``convention='pytorch'``, ``momentum=None`` (cumulative average), ``virtual_batch_size`` is not
    available here (ghost batches need the whole batch in one call; use :mod:`jaxnorm.nn` or :mod:`jaxnorm.nnx`).
    At inference the running statistics are used as stored, as in Flax and PyTorch (``eqx.nn.BatchNorm`` in
    ``'batch'`` mode divides them by ``1 − m^k`` first). ``momentum='auto'`` is 0.99 (flax) / 0.1 (pytorch).
    """

    momentum: Any = eqx.field(static=True)
    convention: str = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable] = "batch",
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float | None | str = "auto",
        inference: bool = False,
        dtype: Any = None,
        *,
        convention: str = "flax",
    ):
        self._init_common(input_size, axis_name, eps, channelwise_affine, inference, dtype)
        self.convention = check_choice("batch-norm convention", convention, _norms.CONVENTIONS)
        self.momentum = _layers.check_batch_momentum(type(self).__name__, momentum)

    def _options(self) -> dict:
        return dict(convention=self.convention, **_layers.momentum_option(type(self).__name__, self.momentum))

    def __call__(self, x, state, *, key=None, inference: bool | None = None, mask=None):
        del key
        return self._normalize(_norms.batch_norm, x, state, inference, mask, **self._options())


class NoisyBatchNorm(BatchNorm):
    """Batch norm plus Santurkar et al.'s Algorithm 1 noise in training (:func:`jaxnorm.noisy_batch_norm`).

    ``key`` must be the SAME for every example of the batch (``jax.vmap(..., in_axes=(0, None, None))``) and new
    every step: the per-unit draws μ_j, σ_j are shared by the batch, and each example takes its row of the batch's
    per-sample noise (by ``lax.axis_index``), so the result equals the pure function on the whole batch."""

    n_mu: float = eqx.field(static=True)
    n_sigma: float = eqx.field(static=True)
    r_mu: float = eqx.field(static=True)
    r_sigma: float = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable] = "batch",
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float | None | str = "auto",
        inference: bool = False,
        dtype: Any = None,
        *,
        n_mu: float = 0.5,
        n_sigma: float = 1.25,
        r_mu: float = 0.1,
        r_sigma: float = 0.1,
        convention: str = "flax",
    ):
        super().__init__(
            input_size, axis_name, eps, channelwise_affine, momentum, inference, dtype, convention=convention
        )
        _norms._check_noise(n_mu, n_sigma, r_mu, r_sigma)  # now, not at the first training call
        self.n_mu, self.n_sigma, self.r_mu, self.r_sigma = n_mu, n_sigma, r_mu, r_sigma

    def __call__(self, x, state, *, key=None, inference: bool | None = None, mask=None):
        y, state = self._normalize(_norms.batch_norm, x, state, inference, mask, **self._options())
        train = _training(inference, self.inference, "NoisyBatchNorm")
        if train is False:
            return y, state
        if key is None:
            raise ValueError(
                "NoisyBatchNorm: training needs key= (one key for the whole batch, new every step: "
                "jax.vmap(model, in_axes=(0, None, None), ...)), or inference=True"
            )
        row = (_batch_size("NoisyBatchNorm", self.axis_name), lax.axis_index(self.axis_name))
        return _norms._add_noise(
            y, key, train, n_mu=self.n_mu, n_sigma=self.n_sigma, r_mu=self.r_mu, r_sigma=self.r_sigma, axis=1, row=row
        ), state


class BatchRenorm(_RunningStats):
    """Batch renormalization (Ioffe 2017) of one example over the vmapped batch; see :func:`jaxnorm.batch_renorm`."""

    r_max: float = eqx.field(static=True)
    d_max: float = eqx.field(static=True)
    momentum: float = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable] = "batch",
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float = 0.99,
        inference: bool = False,
        dtype: Any = None,
        *,
        r_max: float = 3.0,
        d_max: float = 5.0,
    ):
        self._init_common(input_size, axis_name, eps, channelwise_affine, inference, dtype)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"BatchRenorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.r_max, self.d_max = r_max, d_max
        self.momentum = check_momentum("BatchRenorm", momentum)

    def __call__(self, x, state, *, key=None, inference: bool | None = None, mask=None):
        del key
        return self._normalize(
            _norms.batch_renorm, x, state, inference, mask, r_max=self.r_max, d_max=self.d_max, momentum=self.momentum
        )


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization (Santurkar et al. 2018, §3.3) of one example over the vmapped batch, ``p`` in
    {1, 2, 'inf'}; see :func:`jaxnorm.lp_batch_norm`."""

    p: Any = eqx.field(static=True)
    momentum: float = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: Hashable | Sequence[Hashable] = "batch",
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: float = 0.99,
        inference: bool = False,
        dtype: Any = None,
        *,
        p: int | str = 2,
    ):
        self._init_common(input_size, axis_name, eps, channelwise_affine, inference, dtype)
        if p not in _norms.LP_NORMS + (float("inf"),):
            raise ValueError(f"LpBatchNorm: p must be one of 1, 2, 'inf' (Santurkar et al.), got {p!r}")
        self.p = p
        self.momentum = check_momentum("LpBatchNorm", momentum)

    def __call__(self, x, state, *, key=None, inference: bool | None = None, mask=None):
        del key
        return self._normalize(_norms.lp_batch_norm, x, state, inference, mask, p=self.p, momentum=self.momentum)


# --------------------------------------------------------------------------------------------------------------------
# per-example norms (stateless)


def _shape(shape) -> tuple[int, ...]:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _check_shape(layer: str, x, shape) -> None:
    if tuple(jnp.shape(x)) != shape:
        raise ValueError(
            f"{layer}: the input has shape {tuple(jnp.shape(x))} but the layer was built for shape "
            f"{shape} (Equinox's convention: one example, x.shape == shape; jax.vmap over the batch)"
        )


def _elementwise(fn, x, weight, bias, **kw):
    """``fn`` (layer or RMS norm, no affine) over one example, then Equinox's elementwise ``γ ⊙ x̂ + β``, in float32
    (or wider) and cast back once. γ and β stay outside the pure function on purpose: vmapped over the examples, an
    unbatched elementwise γ inside its hand-written JVP made fwd+bwd 3.9× slower on XLA:CPU (16×32×16×16)."""
    x = jnp.asarray(x)
    dt = jnp.promote_types(x.dtype, jnp.float32)
    y = fn(x[None].astype(dt), epsilon=kw.pop("epsilon"), **kw)[0]
    if weight is not None:
        y = y * weight.astype(dt)
    if bias is not None:
        y = y + bias.astype(dt)
    return y.astype(x.dtype)


class _Elementwise(eqx.Module):
    """A per-example norm over all of the example's values with Equinox's elementwise γ, β of ``shape``."""

    weight: Array | None
    bias: Array | None
    shape: tuple[int, ...] = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    _norm: ClassVar[Callable]

    def __init__(self, shape, eps: float = 1e-5, use_weight: bool = True, use_bias: bool = True, dtype=None):
        self.shape, self.eps = _shape(shape), check_epsilon(type(self).__name__, eps)
        self.weight = jnp.ones(self.shape, _dtype(dtype)) if use_weight else None
        self.bias = jnp.zeros(self.shape, _dtype(dtype)) if use_bias else None

    def __call__(self, x, state=_NO_STATE, *, key=None):
        del key
        _check_shape(type(self).__name__, x, self.shape)
        return _out(_elementwise(type(self)._norm, x, self.weight, self.bias, epsilon=self.eps), state)


class LayerNorm(_Elementwise):
    """Layer normalization (Ba et al. 2016) of one example over all of its values, γ and β elementwise of
    ``shape`` (:func:`jaxnorm.layer_norm`); ``eqx.nn.LayerNorm(shape, eps, use_weight, use_bias, dtype)``."""

    _norm = _norms.layer_norm


class RMSNorm(_Elementwise):
    """RMS normalization (Zhang & Sennrich 2019) of one example over all of its values, ``x/√(mean(x²) + ε)·γ + β``
    (:func:`jaxnorm.rms_norm`, then β); ``eqx.nn.RMSNorm(shape, eps, use_weight, use_bias, dtype)``."""

    _norm = _norms.rms_norm


class GroupNorm(eqx.Module):
    """Group normalization (Wu & He 2018) of one example ``C×…``: per group of C/G channels over the group's
    channels and the spatial axes (:func:`jaxnorm.group_norm`); ``eqx.nn.GroupNorm(groups, channels, eps,
    channelwise_affine, dtype)``. The group count is checked at construction when ``channels`` is given."""

    weight: Array | None
    bias: Array | None
    groups: int = eqx.field(static=True)
    channels: int | None = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self, groups: int, channels: int | None = None, eps: float = 1e-5, channelwise_affine: bool = True, dtype=None
    ):
        if channels is None and channelwise_affine:
            raise ValueError("GroupNorm: channelwise_affine=True needs channels= (the number of channels C)")
        self.groups = check_positive_int("GroupNorm", "groups", groups)
        if channels is not None:
            check_groups("GroupNorm", check_positive_int("GroupNorm", "channels", channels), groups, None)
        self.channels, self.eps = channels, check_epsilon("GroupNorm", eps)
        self.weight, self.bias = _affine(channelwise_affine, (channels,), dtype)

    def __call__(self, x, state=_NO_STATE, *, key=None):
        del key
        xb, state = _one("GroupNorm", x, state)
        if self.channels is not None and xb.shape[1] != self.channels:
            raise ValueError(
                f"GroupNorm: expected one example with channels={self.channels} first (C×…), got shape "
                f"{tuple(jnp.shape(x))}"
            )
        return _out(
            _norms.group_norm(xb, self.weight, self.bias, num_groups=self.groups, epsilon=self.eps, axis=1)[0], state
        )


class InstanceNorm(eqx.Module):
    """Instance normalization (Ulyanov et al. 2016) of one example ``C×spatial…``: per channel over the spatial
    axes (:func:`jaxnorm.instance_norm`), per-channel γ, β."""

    weight: Array | None
    bias: Array | None
    channels: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float = 1e-5, channelwise_affine: bool = True, dtype=None):
        self.channels = check_positive_int("InstanceNorm", "channels", channels)
        self.eps = check_epsilon("InstanceNorm", eps)
        self.weight, self.bias = _affine(channelwise_affine, (channels,), dtype)

    def __call__(self, x, state=_NO_STATE, *, key=None):
        del key
        xb, state = _one("InstanceNorm", x, state)
        if xb.shape[1] != self.channels:
            raise ValueError(
                f"InstanceNorm: expected one example with channels={self.channels} first "
                f"(C×spatial…), got shape {tuple(jnp.shape(x))}"
            )
        return _out(_norms.instance_norm(xb, self.weight, self.bias, epsilon=self.eps, axis=1)[0], state)


class DyT(eqx.Module):
    """Dynamic Tanh (Zhu et al. 2025): ``y = γ ⊙ tanh(α·x) + β`` on one example of ``shape`` (:func:`jaxnorm.dyt`),
    α a scalar (``alpha_init`` 0.5, as in the paper), γ and β elementwise of ``shape``: a drop-in for
    :class:`LayerNorm`."""

    alpha: Array
    weight: Array | None
    bias: Array | None
    shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, shape, alpha_init: float = 0.5, use_weight: bool = True, use_bias: bool = True, dtype=None):
        self.shape = _shape(shape)
        self.alpha = jnp.full((), alpha_init, _dtype(dtype))
        self.weight = jnp.ones(self.shape, _dtype(dtype)) if use_weight else None
        self.bias = jnp.zeros(self.shape, _dtype(dtype)) if use_bias else None

    def __call__(self, x, state=_NO_STATE, *, key=None):
        del key
        _check_shape("DyT", x, self.shape)
        return _out(_norms.dyt(x, self.alpha, self.weight, self.bias), state)


# --------------------------------------------------------------------------------------------------------------------
# reparametrized kernels. Equinox kernels are out×in×… (the output axis first); the pure functions take …×in×out,
# so the kernel is viewed with its first axis moved last and moved back after.


def _last(w):
    return jnp.moveaxis(w, 0, -1)


def _first(w):
    return jnp.moveaxis(w, -1, 0)


class StandardizedConv(eqx.Module):
    """``eqx.nn.Conv`` whose kernel is weight-standardized (Qiao et al. 2019) at every call:
    ``Ŵ = (W − μ)/√(σ² + ε)`` per output channel over all other axes (:func:`jaxnorm.weight_standardize`); the raw
    kernel is the stored ``conv.weight``. Takes ``eqx.nn.Conv``'s arguments plus ``eps``."""

    conv: eqx.nn.Conv
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        num_spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size,
        *,
        eps: float = 1e-5,
        key,
        **conv_kwargs,
    ):
        self.conv = eqx.nn.Conv(num_spatial_dims, in_channels, out_channels, kernel_size, key=key, **conv_kwargs)
        self.eps = check_epsilon("StandardizedConv", eps)

    def __call__(self, x, *, key=None):
        w = _first(_norms.weight_standardize(_last(self.conv.weight), epsilon=self.eps))
        return eqx.tree_at(lambda c: c.weight, self.conv, w)(x, key=key)


class WeightNorm(eqx.Module):
    """Weight normalization (Salimans & Kingma 2016) of a layer's ``weight_name`` array: ``w = g·v/√(Σ v² + ε)``
    with the norm over every axis except ``axis`` (default 0, the output axis of ``eqx.nn.Linear``/``Conv``;
    None: one norm of the whole array), :func:`jaxnorm.weight_norm`. As ``eqx.nn.WeightNorm``: ``g`` starts at
    ``‖v‖``, so the wrapped layer computes what it did before wrapping."""

    layer: eqx.Module
    g: Array
    weight_name: str = eqx.field(static=True)
    axis: int | None = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, layer: eqx.Module, weight_name: str = "weight", axis: int | None = 0, eps: float = 1e-12):
        v = getattr(layer, weight_name, None)
        if v is None:
            raise ValueError(f"WeightNorm: {type(layer).__name__} has no array {weight_name!r}")
        if axis is not None and not -v.ndim <= axis < v.ndim:
            raise ValueError(f"WeightNorm: axis={axis} is out of range for {weight_name} of shape {tuple(v.shape)}")
        self.layer, self.weight_name, self.eps = layer, weight_name, check_epsilon("WeightNorm", eps)
        self.axis = None if axis is None else axis % v.ndim
        reduced = self._reduced(v)
        self.g = jnp.sqrt(jnp.sum(jnp.square(v.astype(jnp.float32)), axis=reduced)).astype(v.dtype)

    def _reduced(self, v):
        return tuple(range(v.ndim)) if self.axis is None else tuple(i for i in range(v.ndim) if i != self.axis)

    def __call__(self, x, *, key=None):
        del key
        v = getattr(self.layer, self.weight_name)
        w = _norms.weight_norm(v, self.g, axes=self._reduced(v), epsilon=self.eps)
        return eqx.tree_at(lambda m: getattr(m, self.weight_name), self.layer, w)(x)


class SpectralNorm(eqx.nn.StatefulLayer):
    """Spectral normalization (Miyato et al. 2018) of a layer's ``weight_name`` array (``out×in×…``, seen as the
    matrix ``(in·…) × out``): divided by its largest singular value σ, estimated by ``num_power_iterations`` power
    iterations per call from the vector ``u`` kept in the state (:func:`jaxnorm.spectral_normalize`).
    ``layer(x, state, *, key=None, inference=None) -> (y, state)``; at inference the same iterations run from
    the stored ``u`` and the state does not move."""

    layer: eqx.Module
    state_index: eqx.nn.StateIndex
    inference: bool
    weight_name: str = eqx.field(static=True)
    num_power_iterations: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(
        self,
        layer: eqx.Module,
        weight_name: str = "weight",
        num_power_iterations: int = 1,
        eps: float = 1e-12,
        inference: bool = False,
        *,
        key,
    ):
        w = getattr(layer, weight_name, None)
        if w is None or jnp.ndim(w) < 2:
            raise ValueError(
                f"SpectralNorm: {type(layer).__name__}.{weight_name} must be an array of rank >= 2, "
                f"got {None if w is None else tuple(jnp.shape(w))}"
            )
        self.layer, self.weight_name, self.inference = layer, weight_name, inference
        self.num_power_iterations = check_positive_int("SpectralNorm", "num_power_iterations", num_power_iterations)
        self.eps = check_epsilon("SpectralNorm", eps)
        u = _norms.init_spectral_state(key, _last(w), _dtype(None))
        self.state_index = eqx.nn.StateIndex({"u": u, "sigma": jnp.ones((), u.dtype)})

    def __call__(self, x, state, *, key=None, inference: bool | None = None):
        update = _layers.static_mode(
            "SpectralNorm",
            "inference",
            self.inference,
            inference,
            traced="inference must be a Python bool (whether to store the new u and sigma), got a traced value",
        )
        st = state.get(self.state_index)
        w = getattr(self.layer, self.weight_name)
        out, u, s = _norms.spectral_normalize(
            _last(w), st["u"], n_power_iterations=self.num_power_iterations, train=update, epsilon=self.eps
        )
        if update:
            state = state.set(self.state_index, {"u": u, "sigma": s.astype(st["sigma"].dtype)})
        layer = eqx.tree_at(lambda m: getattr(m, self.weight_name), self.layer, _first(out))
        return layer(x, key=key) if key is not None else layer(x), state


# --------------------------------------------------------------------------------------------------------------------
# dropout (``p`` is the drop probability, Equinox's name)


class _Stochastic(eqx.Module):
    p: float = eqx.field(static=True)
    inference: bool

    def __init__(self, p: float = 0.5, inference: bool = False):
        check_rate(type(self).__name__, p)
        self.p, self.inference = p, inference

    def _apply(self, fn, x, key, inference, **kw):
        train = _training(inference, self.inference, type(self).__name__)
        if train is False or float(self.p) == 0.0:
            return fn(x, self.p, train=False, **kw)
        return fn(x, self.p, key=key, train=train, **kw)


class Dropout(_Stochastic):
    """Inverted dropout (Srivastava et al. 2014): ``ξ ⊙ x/(1 − p)``, ``ξ ~ Bernoulli(1 − p)``
    (:func:`jaxnorm.dropout`); ``eqx.nn.Dropout(p, inference)``: the same key gives the same mask."""

    def __call__(self, x, *, key=None, inference: bool | None = None):
        return self._apply(_do.dropout, x, key, inference)


class OriginalDropout(_Stochastic):
    """Srivastava et al.'s original dropout: ``ξ ⊙ x`` in training, ``(1 − p)·x`` at inference
    (:func:`jaxnorm.original_dropout`)."""

    def __call__(self, x, *, key=None, inference: bool | None = None):
        return self._apply(_do.original_dropout, x, key, inference)


class SpatialDropout(_Stochastic):
    """Channel dropout (Tompson et al. 2015) of one example ``C×spatial…``: one mask value per channel
    (:func:`jaxnorm.spatial_dropout` on the example seen as ``1×spatial…×C``)."""

    def __call__(self, x, *, key=None, inference: bool | None = None):
        x = jnp.asarray(x)
        y = self._apply(_do.spatial_dropout, _last(x)[None], key, inference)
        return _first(y[0])


class GaussianDropout(_Stochastic):
    """Multiplicative Gaussian noise ``N(1, p/(1 − p))`` (Srivastava et al. 2014, §10;
    :func:`jaxnorm.gaussian_dropout`)."""

    def __call__(self, x, *, key=None, inference: bool | None = None):
        return self._apply(_do.gaussian_dropout, x, key, inference)


class AlphaDropout(_Stochastic):
    """Alpha dropout for SELU networks (Klambauer et al. 2017; :func:`jaxnorm.alpha_dropout`)."""

    def __call__(self, x, *, key=None, inference: bool | None = None):
        return self._apply(_do.alpha_dropout, x, key, inference)


class DropConnectLinear(_Stochastic):
    """``eqx.nn.Linear`` whose weights are dropped in training (DropConnect, Wan et al. 2013;
    :func:`jaxnorm.dropconnect`): ``y = (ξ ⊙ W/(1 − p)) x + b``; the layer's parameters are ``linear.weight``
    (out×in) and ``linear.bias``."""

    linear: eqx.nn.Linear

    def __init__(
        self,
        in_features: int,
        out_features: int,
        use_bias: bool = True,
        p: float = 0.5,
        inference: bool = False,
        dtype=None,
        *,
        key,
    ):
        super().__init__(p, inference)
        self.linear = eqx.nn.Linear(in_features, out_features, use_bias=use_bias, dtype=dtype, key=key)

    def __call__(self, x, *, key=None, inference: bool | None = None):
        w = self._apply(_do.dropconnect, self.linear.weight, key, inference)
        return eqx.tree_at(lambda m: m.weight, self.linear, w)(x)
