"""Equinox layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropouts`.

Equinox's conventions: a layer is an ``equinox.Module`` called on ONE example, channels first (``C×…``, as
``eqx.nn.Conv`` and ``eqx.nn.BatchNorm``); the batch axis comes from ``jax.vmap(..., axis_name='batch')``;
running statistics live in an ``eqx.nn.State`` behind a ``StateIndex``; a stateful layer is called
``layer(x, state, *, key=None, inference=None) -> (y, state)`` (an ``eqx.nn.StatefulLayer``, so
``eqx.nn.Sequential`` threads the state through it), a stateless one ``layer(x, *, key=None) -> y`` (or
``layer(x, state) -> (y, state)``, as Equinox's own norms); ``eqx.nn.inference_mode(model)`` switches every
``inference`` flag::

    model, state = eqx.nn.make_with_state(Net)(key)
    batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
    y, state = batched(x, state, key=jax.random.split(key, len(x)))  # one dropout key per example

(``key`` is keyword-only, as in Equinox's layers; ``jax.vmap`` maps keyword arguments over their first axis.)

Batch norm's statistics are reduced over the vmapped axis with the pure function's ``axis_name`` path (sums and
counts), so they are exact for masked examples. Needs Equinox: ``pip install "jaxnorm[equinox]"``.
"""

from __future__ import annotations

import math
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
from jaxnorm._checks import (
    check_choice,
    check_epsilon,
    check_float_input,
    check_groups,
    check_momentum,
    check_positive_int,
    is_traced,
)

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
    """The parameter dtype: ``dtype`` if given, else float32 (float64 with ``jax_enable_x64``)."""
    return jnp.float64 if dtype is None and jax.config.jax_enable_x64 else (dtype or jnp.float32)


def _affine(use: bool, shape, dtype):
    """``(γ, β)`` of ``shape`` (ones, zeros) if ``use``, else ``(None, None)``."""
    return (jnp.ones(shape, _dtype(dtype)), jnp.zeros(shape, _dtype(dtype))) if use else (None, None)


def _one(layer: str, x, state):
    """Per-example input as a batch of one (the pure functions' layout), and the return convention."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        raise ValueError(f"{layer}: expected one example (channels first, C×…), got a scalar")
    return x[None], state


def _out(y, state):
    """``y`` alone when the layer was called without a state, else ``(y, state)``."""
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
    """Per-channel γ, β, the running statistics in an ``eqx.nn.State`` and the ``inference`` switch."""

    weight: Array | None
    bias: Array | None
    state_index: eqx.nn.StateIndex
    inference: bool
    axis_name: Hashable | Sequence[Hashable] = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)

    def _init_common(self, input_size, axis_name, eps, channelwise_affine, inference, dtype):
        """The checks and fields every batch-statistics layer's constructor shares."""
        name = type(self).__name__
        self.input_size = check_positive_int(name, "input_size", input_size)
        self.axis_name = axis_name
        self.eps = check_epsilon(name, eps)
        self.channelwise_affine = channelwise_affine
        self.inference = inference
        self.weight, self.bias = _affine(channelwise_affine, (input_size,), dtype)
        # running statistics in at least float32, as Flax keeps them: an average stored in bfloat16 stops moving
        # once a step's change is under half its rounding unit (at momentum 0.99, a mean of 5.0 settled at 4.0)
        init = _norms.init_batch_stats(input_size, jnp.promote_types(_dtype(dtype), jnp.float32))
        self.state_index = eqx.nn.StateIndex(init)

    def _normalize(self, fn, x, state, inference, mask, **kw):
        """``fn`` on one example seen as a batch of one (statistics over ``axis_name``); the new state in training."""
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
    """Batch normalization layer (Equinox): ``y = γ·(x − μ_B)/√(σ²_B + ε) + β`` in training.

    See :func:`jaxnorm.batch_norm` for the formula and the options. ``eqx.nn.BatchNorm``'s arguments in its order
    (one example ``C×…`` per call, the batch from ``jax.vmap(..., axis_name=axis_name)``, the running statistics in
    an ``eqx.nn.State``) with its ``mode='batch'`` semantics in training: batch statistics, running averages
    ``m·r + (1 − m)·stat``. Plus jaxnorm's options: ``mask`` at call (padded examples stay out of the statistics,
    which are reduced over the vmapped axis as sums and counts, so they are exact), ``convention='pytorch'`` and
    ``momentum=None`` (a cumulative average). ``virtual_batch_size`` is not available here: ghost batches need the
    whole batch in one call (use :mod:`jaxnorm.nn` or :mod:`jaxnorm.nnx`). At inference the running statistics are
    used as stored, as in Flax and PyTorch (``eqx.nn.BatchNorm`` in ``'batch'`` mode first divides them by
    ``1 − m^k``), and no batch axis is needed.

    Reduces over: the vmapped batch axis ``axis_name`` and every axis of the example but its channel axis 0 (N, H, W
    for a batch of ``C×H×W`` examples).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        input_size: the channel count C (the first axis of each example).
        axis_name: the name of the vmapped batch axis (default ``'batch'``), or a tuple of names to reduce over all
            of them.
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros).
        momentum: ``'auto'`` (0.99 for ``convention='flax'``, 0.1 for ``'pytorch'``), a number in [0, 1], or None
            (a cumulative average).
        inference: the mode if the call gives none (False: training; True: the running statistics).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``); the running statistics are kept in
            this dtype or float32, whichever is wider.
        convention: ``'flax'`` (``r ← m·r + (1 − m)·stat``, biased variance) or ``'pytorch'``
            (``r ← (1 − m)·r + m·stat``, unbiased variance).

    Raises:
        ValueError: for a bad ``input_size``, ``eps``, ``momentum`` or ``convention``.
        TypeError: if ``eps`` or ``momentum`` is not a number.

    Examples:
        >>> import equinox as eqx
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))  # 4 examples of 3 channels
        >>> layer, state = eqx.nn.make_with_state(jn.eqx.BatchNorm)(3, momentum=0.9)
        >>> batched = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        >>> y, state = batched(x, state)  # training: batch statistics, running statistics updated
        >>> y0, _ = layer(x[0], state, inference=True)  # the running statistics: no batch axis needed
        >>> print(y.shape, y0.shape, int(state.get(layer.state_index)["count"]))
        (4, 3) (3,) 1
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
        """The keyword arguments of :func:`jaxnorm.batch_norm` this layer fixes."""
        return dict(convention=self.convention, **_layers.momentum_option(type(self).__name__, self.momentum))

    def __call__(self, x, state, *, key=None, inference: bool | None = None, mask=None):
        """Normalizes one example and, in training, returns the state with the new running statistics.

        Args:
            x: one example ``C×…`` with ``C = input_size`` channels first.
            state: the ``eqx.nn.State`` that holds the running statistics.
            key: ignored (accepted so that ``eqx.nn.Sequential`` can pass one).
            inference: True: the running statistics (the state does not move); False: the statistics of the vmapped
                batch (training); None: the layer's attribute. A traced boolean scalar picks the mode with
                ``lax.cond``.
            mask: optional, True = valid: a boolean scalar (whether this example enters the statistics) or one flag
                per value of ``x``.

        Returns:
            ``(y, state)``: ``y`` with ``x``'s shape and dtype, and ``state`` with the updated running statistics in
            training (unchanged at inference).

        Raises:
            ValueError: if ``x`` is not one example with ``input_size`` channels first, or ``mask`` does not fit it.
            NameError: in training, if ``axis_name`` is not bound by an enclosing ``jax.vmap``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        del key
        return self._normalize(_norms.batch_norm, x, state, inference, mask, **self._options())


def _noisy_no_key(axis_name) -> str:
    """The message of :class:`NoisyBatchNorm` in training without a key: the vmap call that binds one key for the
    whole batch (``key`` is keyword-only, and ``jax.vmap`` maps keyword arguments over the batch)."""
    name = repr(axis_name) if isinstance(axis_name, str) else "..."
    return (
        "NoisyBatchNorm: training (inference=False) needs key=, one PRNG key for the whole batch and a new one every "
        "step; bind it outside the vmap (key is keyword-only, and jax.vmap would map a keyword argument over the "
        f"batch): jax.vmap(functools.partial(model, key=key), axis_name={name}, in_axes=(0, None), "
        "out_axes=(0, None))(x, state); or pass inference=True for the running statistics without noise"
    )


class NoisyBatchNorm(BatchNorm):
    """Batch norm layer plus Santurkar et al.'s Algorithm 1 noise in training: ``a_ij ← s_ij·a_ij + m_ij``.

    The noise of :func:`jaxnorm.noisy_batch_norm`, added to :class:`BatchNorm`'s output (after γ, β). ``key`` must
    be the SAME for every example of the batch and new every step: bind it outside the vmap
    (``jax.vmap(functools.partial(layer, key=key), axis_name="batch", in_axes=(0, None), out_axes=(0, None))``, or
    ``jax.vmap(lambda x, s, k: layer(x, s, key=k), ..., in_axes=(0, None, None), ...)``; ``key`` is keyword-only
    and ``jax.vmap`` would map a keyword argument over the batch). The per-unit draws μ_j, σ_j are shared by the batch
    and each example takes its row of the batch's per-sample noise (by ``lax.axis_index``), so the result equals
    the pure function on the whole batch. At inference no noise is added and no key is needed.

    Reduces over: as :class:`BatchNorm`, the vmapped batch axis ``axis_name`` and every axis of the example but its
    channel axis 0.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?

    Args:
        input_size: the channel count C (the first axis of each example).
        axis_name: the name of the vmapped batch axis (default ``'batch'``), or a tuple of names to reduce over all
            of them.
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros).
        momentum: ``'auto'`` (0.99 for ``convention='flax'``, 0.1 for ``'pytorch'``), a number in [0, 1], or None.
        inference: the mode if the call gives none (False: training; True: the running statistics).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``); the running statistics are kept in
            this dtype or float32, whichever is wider.
        n_mu, n_sigma, r_mu, r_sigma: Algorithm 1's constants (default 0.5, 1.25, 0.1, 0.1).
        convention: ``'flax'`` or ``'pytorch'``, as :class:`BatchNorm`.

    Raises:
        ValueError: for invalid noise constants (``n_mu``, ``r_mu`` or ``r_sigma`` < 0, ``n_sigma`` < 1), or for
            :class:`BatchNorm`'s reasons.
        TypeError: if ``eps`` or ``momentum`` is not a number.

    Examples:
        >>> import functools
        >>> import equinox as eqx
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> layer, state = eqx.nn.make_with_state(jn.eqx.NoisyBatchNorm)(3)
        >>> noisy = functools.partial(layer, key=jax.random.key(1))  # one key for the whole batch
        >>> batched = jax.vmap(noisy, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        >>> y, state = batched(x, state)  # training: batch statistics and noise
        >>> y0, _ = layer(x[0], state, inference=True)  # no noise, no key
        >>> print(y.shape, y0.shape, int(state.get(layer.state_index)["count"]))
        (4, 3) (3,) 1
    """

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
        """Normalizes one example, adds the noise in training, and returns the state with the new statistics.

        Args:
            x: one example ``C×…`` with ``C = input_size`` channels first.
            state: the ``eqx.nn.State`` that holds the running statistics.
            key: a PRNG key, the same for every example of the batch and new every step; needed in training.
            inference: True: the running statistics, no noise (the state does not move); False: training; None:
                the layer's attribute. A traced boolean scalar picks the mode with ``lax.cond``.
            mask: optional, True = valid: a boolean scalar (whether this example enters the statistics) or one flag
                per value of ``x``.

        Returns:
            ``(y, state)``: ``y`` with ``x``'s shape and dtype, and ``state`` with the updated running statistics in
            training (unchanged at inference).

        Raises:
            ValueError: if training has no ``key``, ``x`` is not one example with ``input_size`` channels first, or
                ``mask`` does not fit it.
            NameError: in training, if ``axis_name`` is not bound by an enclosing ``jax.vmap``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        train = _training(inference, self.inference, "NoisyBatchNorm")
        if train is not False and key is None:
            raise ValueError(_noisy_no_key(self.axis_name))
        y, state = self._normalize(_norms.batch_norm, x, state, inference, mask, **self._options())
        if train is False:
            return y, state
        row = (_batch_size("NoisyBatchNorm", self.axis_name), lax.axis_index(self.axis_name))
        return _norms._add_noise(
            y, key, train, n_mu=self.n_mu, n_sigma=self.n_sigma, r_mu=self.r_mu, r_sigma=self.r_sigma, axis=1, row=row
        ), state


class BatchRenorm(_RunningStats):
    """Batch renormalization layer (Equinox): ``y = γ·((x − μ_B)/σ_B·r + d) + β``, r and d clipped.

    See :func:`jaxnorm.batch_renorm`; ``r_max = 1, d_max = 0`` is batch norm. One example ``C×…`` per call, the
    batch from ``jax.vmap(..., axis_name=axis_name)``, the running statistics (updated with Flax's convention,
    ``m·r + (1 − m)·stat``) in an ``eqx.nn.State``; at inference they are used as in :class:`BatchNorm`.

    Reduces over: the vmapped batch axis ``axis_name`` and every axis of the example but its channel axis 0 (N, H, W
    for a batch of ``C×H×W`` examples).

    Reference: Ioffe (2017), Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models.

    Args:
        input_size: the channel count C (the first axis of each example).
        axis_name: the name of the vmapped batch axis (default ``'batch'``), or a tuple of names to reduce over all
            of them.
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros).
        momentum: decay of the running averages, in [0, 1] (default 0.99), or None for a cumulative average.
        inference: the mode if the call gives none (False: training; True: the running statistics).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``); the running statistics are kept in
            this dtype or float32, whichever is wider.
        r_max: bound on r (>= 1, default 3).
        d_max: bound on ``|d|`` (>= 0, default 5).

    Raises:
        ValueError: if ``r_max < 1`` or ``d_max < 0``, or for a bad ``input_size``, ``eps`` or ``momentum``.
        TypeError: if ``eps`` or ``momentum`` is not a number.

    Examples:
        >>> import equinox as eqx
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> layer, state = eqx.nn.make_with_state(jn.eqx.BatchRenorm)(3)
        >>> batched = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        >>> y, state = batched(x, state)  # training: batch statistics, running statistics updated
        >>> y0, _ = layer(x[0], state, inference=True)
        >>> print(y.shape, y0.shape, int(state.get(layer.state_index)["count"]))
        (4, 3) (3,) 1
    """

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
        """Normalizes one example and, in training, returns the state with the new running statistics.

        Args:
            x: one example ``C×…`` with ``C = input_size`` channels first.
            state: the ``eqx.nn.State`` that holds the running statistics.
            key: ignored (accepted so that ``eqx.nn.Sequential`` can pass one).
            inference: True: the running statistics (the state does not move); False: the statistics of the vmapped
                batch (training); None: the layer's attribute. A traced boolean scalar picks the mode with
                ``lax.cond``.
            mask: optional, True = valid: a boolean scalar (whether this example enters the statistics) or one flag
                per value of ``x``.

        Returns:
            ``(y, state)``: ``y`` with ``x``'s shape and dtype, and ``state`` with the updated running statistics in
            training (unchanged at inference).

        Raises:
            ValueError: if ``x`` is not one example with ``input_size`` channels first, or ``mask`` does not fit it.
            NameError: in training, if ``axis_name`` is not bound by an enclosing ``jax.vmap``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        del key
        return self._normalize(
            _norms.batch_renorm, x, state, inference, mask, r_max=self.r_max, d_max=self.d_max, momentum=self.momentum
        )


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization layer (Equinox): the batch's ℓp deviation replaces its standard deviation.

    See :func:`jaxnorm.lp_batch_norm`: ``y = γ·(x − μ_B)/√(s² + ε) + β`` with ``s = (mean |x|^p)^(1/p)`` over the
    batch before the mean shift (``s = max |x|`` for ``p = 'inf'``). One example ``C×…`` per call, the batch from
    ``jax.vmap(..., axis_name=axis_name)``, the running μ and s² (Flax's convention) in an ``eqx.nn.State``, used at
    inference.

    Reduces over: the vmapped batch axis ``axis_name`` and every axis of the example but its channel axis 0 (N, H, W
    for a batch of ``C×H×W`` examples).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? (§3.3).

    Args:
        input_size: the channel count C (the first axis of each example).
        axis_name: the name of the vmapped batch axis (default ``'batch'``), or a tuple of names to reduce over all
            of them.
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros).
        momentum: decay of the running averages, in [0, 1] (default 0.99), or None for a cumulative average.
        inference: the mode if the call gives none (False: training; True: the running statistics).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``); the running statistics are kept in
            this dtype or float32, whichever is wider.
        p: 1, 2 (default) or ``'inf'``.

    Raises:
        ValueError: for another ``p``, or a bad ``input_size``, ``eps`` or ``momentum``.
        TypeError: if ``eps`` or ``momentum`` is not a number.

    Examples:
        >>> import equinox as eqx
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> layer, state = eqx.nn.make_with_state(jn.eqx.LpBatchNorm)(3, p=1)
        >>> batched = jax.vmap(layer, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        >>> y, state = batched(x, state)  # training: batch statistics, running statistics updated
        >>> y0, _ = layer(x[0], state, inference=True)
        >>> print(y.shape, y0.shape, int(state.get(layer.state_index)["count"]))
        (4, 3) (3,) 1
    """

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
        """Normalizes one example and, in training, returns the state with the new running statistics.

        Args:
            x: one example ``C×…`` with ``C = input_size`` channels first.
            state: the ``eqx.nn.State`` that holds the running statistics.
            key: ignored (accepted so that ``eqx.nn.Sequential`` can pass one).
            inference: True: the running statistics (the state does not move); False: the statistics of the vmapped
                batch (training); None: the layer's attribute. A traced boolean scalar picks the mode with
                ``lax.cond``.
            mask: optional, True = valid: a boolean scalar (whether this example enters the statistics) or one flag
                per value of ``x``.

        Returns:
            ``(y, state)``: ``y`` with ``x``'s shape and dtype, and ``state`` with the updated running statistics in
            training (unchanged at inference).

        Raises:
            ValueError: if ``x`` is not one example with ``input_size`` channels first, or ``mask`` does not fit it.
            NameError: in training, if ``axis_name`` is not bound by an enclosing ``jax.vmap``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        del key
        return self._normalize(_norms.lp_batch_norm, x, state, inference, mask, p=self.p, momentum=self.momentum)


# --------------------------------------------------------------------------------------------------------------------
# per-example norms (stateless)


def _shape(shape) -> tuple[int, ...]:
    """An int or a sequence of ints as a shape tuple."""
    return (shape,) if isinstance(shape, int) else tuple(shape)


def _check_shape(layer: str, x, shape) -> None:
    """ValueError unless one example ``x`` has the layer's ``shape``."""
    if tuple(jnp.shape(x)) != shape:
        raise ValueError(
            f"{layer}: the input has shape {tuple(jnp.shape(x))} but the layer was built for shape "
            f"{shape} (Equinox's convention: one example, x.shape == shape; jax.vmap over the batch)"
        )


def _elementwise(fn, x, weight, bias, **kw):
    """``fn`` (layer or RMS norm, no affine) over one example, then Equinox's elementwise ``γ ⊙ x̂ + β``, in float32
    (or wider) and cast back once. γ and β stay outside the pure function on purpose: inside it, an elementwise γ
    (one value per entry of the example, not per channel) would turn the small per-statistic coefficients of its
    hand-written JVP (``γ·r``, and ``r·γ̇`` in the coefficient of ``x − μ``) into full-size arrays, broadcast over
    the batch under ``jax.vmap``; outside, the affine map is a plain elementwise product that JAX differentiates and
    batches itself."""
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
        """Normalizes one example of the layer's ``shape`` over all of its values.

        Args:
            x: one example, ``x.shape == shape``.
            state: optional; when given it is returned with ``y``, unchanged (Equinox's norms' convention, so that
                ``eqx.nn.Sequential`` can thread it).
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x.shape`` is not ``shape``.
            TypeError: if ``x`` is not a float array.
        """
        del key
        _check_shape(type(self).__name__, x, self.shape)
        check_float_input(type(self).__name__, x)  # an integer x would be normalized and cast back to -1, 0, 1
        return _out(_elementwise(type(self)._norm, x, self.weight, self.bias, epsilon=self.eps), state)


class LayerNorm(_Elementwise):
    """Layer normalization layer (Equinox): ``y = γ ⊙ (x − μ)/√(σ² + ε) + β`` over all of one example's values.

    See :func:`jaxnorm.layer_norm` (on the example seen as a batch of one), then Equinox's elementwise γ, β of
    ``shape``; computed in float32 (or wider), returned in ``x``'s dtype. ``eqx.nn.LayerNorm(shape, eps,
    use_weight, use_bias, dtype)``'s arguments. Called as ``layer(x) -> y`` or ``layer(x, state) -> (y, state)``
    (the state passed through, as Equinox's norms); ``jax.vmap`` it over the batch.

    Reduces over: every axis of the example (all of ``shape``).

    Reference: Ba, Kiros & Hinton (2016), Layer Normalization.

    Args:
        shape: the shape of one example (an int for a vector).
        eps: ε added to the variance (default 1e-5).
        use_weight: learn the elementwise γ (``weight``, ones of ``shape``).
        use_bias: learn the elementwise β (``bias``, zeros of ``shape``).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``).

    Raises:
        ValueError: if ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))  # 4 examples of 3 features
        >>> layer = jn.eqx.LayerNorm(3)
        >>> y = jax.vmap(layer)(x)
        >>> print(y.shape, bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-6)))
        (4, 3) True
    """

    _norm = _norms.layer_norm

    def __call__(self, x, state=_NO_STATE, *, key=None):
        """Layer-normalizes one example over all of its values, then applies the elementwise γ, β.

        Args:
            x: one example, ``x.shape == shape``, of a float dtype (computed in float32 or wider, returned in
                ``x``'s dtype).
            state: optional; when given it is returned with ``y``, unchanged (Equinox's norms' convention, so that
                ``eqx.nn.Sequential`` can thread it).
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x.shape`` is not ``shape``.
            TypeError: if ``x`` is not a float array (an integer result would be rounded to −1, 0, 1); cast it
                first, e.g. ``x.astype(jnp.float32)``.

        Examples:
            >>> import jax.numpy as jnp
            >>> import jaxnorm as jn
            >>> layer = jn.eqx.LayerNorm(3)
            >>> print([round(v, 3) for v in layer(jnp.array([1.0, 2.0, 3.0])).tolist()])
            [-1.225, 0.0, 1.225]
            >>> layer(jnp.array([1, 2, 3]))
            Traceback (most recent call last):
            ...
            TypeError: LayerNorm: the input has dtype int32, which is not a float dtype; ...
        """
        return super().__call__(x, state, key=key)


class RMSNorm(_Elementwise):
    """RMS normalization layer (Equinox): ``y = γ ⊙ x/√(mean(x²) + ε) + β`` over all of one example's values.

    See :func:`jaxnorm.rms_norm` (on the example seen as a batch of one; no mean subtraction), then Equinox's
    elementwise γ, β of ``shape``; computed in float32 (or wider), returned in ``x``'s dtype.
    ``eqx.nn.RMSNorm(shape, eps, use_weight, use_bias, dtype)``'s arguments (β included by default, as there).
    Called as ``layer(x) -> y`` or ``layer(x, state) -> (y, state)``; ``jax.vmap`` it over the batch.

    Reduces over: every axis of the example (all of ``shape``).

    Reference: Zhang & Sennrich (2019), Root Mean Square Layer Normalization.

    Args:
        shape: the shape of one example (an int for a vector).
        eps: ε added to the mean square (default 1e-5).
        use_weight: learn the elementwise γ (``weight``, ones of ``shape``).
        use_bias: learn the elementwise β (``bias``, zeros of ``shape``).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``).

    Raises:
        ValueError: if ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> layer = jn.eqx.RMSNorm(3)
        >>> y = jax.vmap(layer)(x)
        >>> print(y.shape, bool(jnp.allclose((y**2).mean(-1), 1.0, atol=1e-3)))
        (4, 3) True
    """

    _norm = _norms.rms_norm

    def __call__(self, x, state=_NO_STATE, *, key=None):
        """RMS-normalizes one example over all of its values, then applies the elementwise γ, β.

        Args:
            x: one example, ``x.shape == shape``, of a float dtype (computed in float32 or wider, returned in
                ``x``'s dtype).
            state: optional; when given it is returned with ``y``, unchanged (Equinox's norms' convention, so that
                ``eqx.nn.Sequential`` can thread it).
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x.shape`` is not ``shape``.
            TypeError: if ``x`` is not a float array (an integer result would be rounded); cast it first, e.g.
                ``x.astype(jnp.float32)``.

        Examples:
            >>> import jax.numpy as jnp
            >>> import jaxnorm as jn
            >>> layer = jn.eqx.RMSNorm(2, use_bias=False)
            >>> print([round(v, 3) for v in layer(jnp.array([3.0, 4.0])).tolist()])  # x/√(mean(x²) + ε)
            [0.849, 1.131]
            >>> layer(jnp.array([3, 4]))
            Traceback (most recent call last):
            ...
            TypeError: RMSNorm: the input has dtype int32, which is not a float dtype; ...
        """
        return super().__call__(x, state, key=key)


class GroupNorm(eqx.Module):
    """Group normalization layer (Equinox): ``y = γ·(x − μ_g)/√(σ²_g + ε) + β`` per group of one example ``C×…``.

    See :func:`jaxnorm.group_norm` (on the example seen as a batch of one, channels on axis 1); per-channel γ, β.
    ``eqx.nn.GroupNorm(groups, channels, eps, channelwise_affine, dtype)``'s arguments. The group count is checked at
    construction when ``channels`` is given, else at the call. Called as ``layer(x) -> y`` or
    ``layer(x, state) -> (y, state)``; ``jax.vmap`` it over the batch.

    Reduces over: per group, its C/G channels and every other axis of the example (spatial axes).

    Reference: Wu & He (2018), Group Normalization.

    Args:
        groups: the number of groups G, a divisor of C.
        channels: the channel count C (the first axis of each example), or None (then ``channelwise_affine`` must
            be False).
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros); needs ``channels``.
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``).

    Raises:
        ValueError: if ``channelwise_affine`` is True without ``channels``, ``groups`` or ``channels`` is not a
            positive int, G does not divide C, or ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))  # one example: 4 channels, 3 positions
        >>> layer = jn.eqx.GroupNorm(2, 4)
        >>> print(layer(x).shape)
        (4, 3)
    """

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
        """Normalizes one example ``C×…`` per group.

        Args:
            x: one example, channels first.
            state: optional; when given it is returned with ``y``, unchanged.
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x`` is a scalar, has not ``channels`` channels first, or G does not divide its channel
                count.
            TypeError: if ``x`` is not a float array.
        """
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
    """Instance normalization layer (Equinox): ``y = γ·(x − μ)/√(σ² + ε) + β`` per channel of one example.

    See :func:`jaxnorm.instance_norm` (on the example ``C×spatial…`` seen as a batch of one, channels on axis 1);
    per-channel γ, β. Called as ``layer(x) -> y`` or ``layer(x, state) -> (y, state)``; ``jax.vmap`` it over the
    batch.

    Reduces over: per channel, the spatial axes of the example.

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), Instance Normalization: The Missing Ingredient for Fast
    Stylization.

    Args:
        channels: the channel count C (the first axis of each example).
        eps: ε added to the variance (default 1e-5).
        channelwise_affine: learn per-channel γ (``weight``, ones) and β (``bias``, zeros).
        dtype: dtype of γ, β (None: float32, float64 with ``jax_enable_x64``).

    Raises:
        ValueError: if ``channels`` is not a positive int, or ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))  # one example: 4 channels, 3 positions
        >>> y = jn.eqx.InstanceNorm(4)(x)
        >>> print(y.shape, bool(jnp.allclose(y.mean(-1), 0.0, atol=1e-6)))
        (4, 3) True
    """

    weight: Array | None
    bias: Array | None
    channels: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)

    def __init__(self, channels: int, eps: float = 1e-5, channelwise_affine: bool = True, dtype=None):
        self.channels = check_positive_int("InstanceNorm", "channels", channels)
        self.eps = check_epsilon("InstanceNorm", eps)
        self.weight, self.bias = _affine(channelwise_affine, (channels,), dtype)

    def __call__(self, x, state=_NO_STATE, *, key=None):
        """Normalizes one example ``C×spatial…`` per channel.

        Args:
            x: one example, channels first, with at least one spatial axis.
            state: optional; when given it is returned with ``y``, unchanged.
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x`` is a scalar, has not ``channels`` channels first, has no spatial axis, or has one
                spatial value per channel.
            TypeError: if ``x`` is not a float array.
        """
        del key
        xb, state = _one("InstanceNorm", x, state)
        if xb.shape[1] != self.channels:
            raise ValueError(
                f"InstanceNorm: expected one example with channels={self.channels} first "
                f"(C×spatial…), got shape {tuple(jnp.shape(x))}"
            )
        return _out(_norms.instance_norm(xb, self.weight, self.bias, epsilon=self.eps, axis=1)[0], state)


class DyT(eqx.Module):
    """Dynamic Tanh layer (Equinox): ``y = γ ⊙ tanh(α·x) + β``, a statistics-free replacement for layer norm.

    See :func:`jaxnorm.dyt`; α a learnable scalar (``alpha``), γ and β elementwise of ``shape``: a drop-in for
    :class:`LayerNorm`. Called as ``layer(x) -> y`` or ``layer(x, state) -> (y, state)``.

    Reduces over: nothing (elementwise).

    Reference: Zhu, Chen, He, LeCun & Liu (2025), Transformers without Normalization.

    Args:
        shape: the shape of one example (an int for a vector).
        alpha_init: the initial α (default 0.5, the paper's).
        use_weight: learn the elementwise γ (``weight``, ones of ``shape``).
        use_bias: learn the elementwise β (``bias``, zeros of ``shape``).
        dtype: dtype of α, γ, β (None: float32, float64 with ``jax_enable_x64``).

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (4, 3))
        >>> layer = jn.eqx.DyT(3)
        >>> print(jax.vmap(layer)(x).shape)
        (4, 3)
    """

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
        """Applies ``γ ⊙ tanh(α·x) + β`` to one example.

        Args:
            x: one example, ``x.shape == shape``.
            state: optional; when given it is returned with ``y``, unchanged.
            key: ignored.

        Returns:
            ``y`` with ``x``'s shape and dtype, or ``(y, state)`` when a state was given.

        Raises:
            ValueError: if ``x.shape`` is not ``shape``.
            TypeError: if ``x`` is not a float array.
        """
        del key
        _check_shape("DyT", x, self.shape)
        return _out(_norms.dyt(x, self.alpha, self.weight, self.bias), state)


# --------------------------------------------------------------------------------------------------------------------
# reparametrized kernels. Equinox kernels are out×in×… (the output axis first); the pure functions take …×in×out,
# so the kernel is viewed with its first axis moved last and moved back after.


def _last(w):
    """An Equinox kernel ``out×in×…`` as the pure functions' ``in×…×out`` (the first axis moved last)."""
    return jnp.moveaxis(w, 0, -1)


def _first(w):
    """The inverse of :func:`_last`: the last axis moved first."""
    return jnp.moveaxis(w, -1, 0)


class StandardizedConv(eqx.Module):
    """Weight-standardized convolution (Equinox): ``eqx.nn.Conv`` with the kernel ``Ŵ = (W − μ)/√(σ² + ε)``.

    See :func:`jaxnorm.weight_standardize`. The stored kernel ``conv.weight`` stays raw: every call standardizes it
    and runs the convolution with ``Ŵ`` (gradients reach ``conv.weight`` through the standardization). Takes
    ``eqx.nn.Conv``'s arguments plus ``eps``; pairs with :class:`GroupNorm` for small-batch training.

    Reduces over: per output channel, every other axis of the kernel (``C_in`` and the window).

    Reference: Qiao, Wang, Liu, Shen & Yuille (2019), Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization.

    Args:
        num_spatial_dims: the number of spatial axes (1, 2, 3, ...).
        in_channels: the input channels C_in.
        out_channels: the output channels C_out.
        kernel_size: the window size (an int or a sequence of ints).
        eps: ε added to the variance (default 1e-5).
        key: a PRNG key for the convolution's initialization.
        **conv_kwargs: ``eqx.nn.Conv``'s other arguments (``stride``, ``padding``, ``use_bias``, ...).

    Raises:
        ValueError: if ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> layer = jn.eqx.StandardizedConv(1, 3, 4, 3, key=jax.random.key(0))  # 1-D, 3 -> 4 channels, width 3
        >>> print(layer(jnp.ones((3, 8))).shape)  # one example C_in×W; eqx.nn.Conv's default padding is 0
        (4, 6)
    """

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
        """Convolves one example with the standardized kernel.

        Args:
            x: one example ``C_in×spatial…``, as ``eqx.nn.Conv`` takes it.
            key: passed to ``eqx.nn.Conv`` (which ignores it).

        Returns:
            ``eqx.nn.Conv``'s output ``C_out×spatial…``, computed with ``Ŵ``.
        """
        w = _first(_norms.weight_standardize(_last(self.conv.weight), epsilon=self.eps))
        return eqx.tree_at(lambda c: c.weight, self.conv, w)(x, key=key)


class WeightNorm(eqx.Module):
    """Weight normalization wrapper (Equinox): ``w = g·v/√(Σ v² + ε)`` for one array of a wrapped layer.

    See :func:`jaxnorm.weight_norm`. As ``eqx.nn.WeightNorm``: ``g`` (one gain per index of ``axis``) starts at
    ``‖v‖``, so the wrapped layer computes what it did before wrapping. The wrapped layer keeps the raw direction
    ``v`` as its ``weight_name`` array; every call runs it with ``w`` instead.

    Reduces over: every axis of the array but ``axis`` (for ``eqx.nn.Linear``'s ``out×in`` weight: ``in``, one norm
    per output unit); all of them for ``axis=None``.

    Reference: Salimans & Kingma (2016), Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks.

    Args:
        layer: the wrapped Equinox layer, e.g. ``eqx.nn.Linear`` or ``eqx.nn.Conv``.
        weight_name: the name of the array to normalize (default ``'weight'``).
        axis: the kept axis, one norm per index (default 0, the output axis of Equinox kernels), or None for one
            norm of the whole array.
        eps: ε inside the square root (default 1e-12).

    Raises:
        ValueError: if ``layer`` has no array ``weight_name``, ``axis`` is out of range, or ``eps`` is negative or
            not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import equinox as eqx
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> linear = eqx.nn.Linear(3, 4, key=jax.random.key(0))
        >>> layer = jn.eqx.WeightNorm(linear)
        >>> x = jnp.ones(3)
        >>> print(layer(x).shape, layer.g.shape, bool(jnp.allclose(layer(x), linear(x), atol=1e-5)))
        (4,) (4,) True
    """

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
        """The axes of the norm: all of ``v``'s, or all but ``axis``."""
        return tuple(range(v.ndim)) if self.axis is None else tuple(i for i in range(v.ndim) if i != self.axis)

    def __call__(self, x, *, key=None):
        """Runs the wrapped layer with the normalized array.

        Args:
            x: the wrapped layer's input.
            key: passed to the wrapped layer when given (as :class:`SpectralNorm` does), e.g. for a layer with
                dropout inside; without one the wrapped layer is called as ``layer(x)``.

        Returns:
            The wrapped layer's output.
        """
        v = getattr(self.layer, self.weight_name)
        w = _norms.weight_norm(v, self.g, axes=self._reduced(v), epsilon=self.eps)
        layer = eqx.tree_at(lambda m: getattr(m, self.weight_name), self.layer, w)
        return layer(x, key=key) if key is not None else layer(x)


class SpectralNorm(eqx.nn.StatefulLayer):
    """Spectral normalization wrapper (Equinox): a wrapped layer's array divided by its largest singular value σ.

    See :func:`jaxnorm.spectral_normalize`. The ``weight_name`` array (``out×in×…``) is seen as the matrix
    ``(in·…) × out``; σ is estimated by ``num_power_iterations`` power iterations per call from the vector ``u``
    kept in the state (``{'u', 'sigma'}`` behind ``state_index``; ``u`` of shape ``1×out``, drawn ``N(0, 1)`` from
    ``key``). A stateful layer, built with ``eqx.nn.make_with_state``:
    ``layer(x, state, *, key=None, inference=None) -> (y, state)``. In training the iterated ``u`` and the new σ
    are stored; at inference the same iterations run from the stored ``u`` and the state does not move.

    Reduces over: the whole array (one σ per array, through the power iteration's matrix products).

    Reference: Miyato, Kataoka, Koyama & Yoshida (2018), Spectral Normalization for Generative Adversarial
    Networks.

    Args:
        layer: the wrapped Equinox layer, e.g. ``eqx.nn.Linear`` or ``eqx.nn.Conv``.
        weight_name: the name of the array to normalize, rank >= 2 (default ``'weight'``).
        num_power_iterations: power iterations per call (default 1).
        eps: ε of the vector normalization (default 1e-12).
        inference: the mode if the call gives none (False: training, the state moves).
        key: a PRNG key for the initial ``u``.

    Raises:
        ValueError: if ``layer`` has no array ``weight_name`` of rank >= 2, ``num_power_iterations`` is not a
            positive int, or ``eps`` is negative or not finite.
        TypeError: if ``eps`` is not a number.

    Examples:
        >>> import equinox as eqx
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> linear = eqx.nn.Linear(3, 4, key=jax.random.key(0))
        >>> layer, state = eqx.nn.make_with_state(jn.eqx.SpectralNorm)(linear, key=jax.random.key(1))
        >>> x = jnp.ones(3)
        >>> y, state = layer(x, state)  # training: u and sigma stored
        >>> y_eval, state_eval = layer(x, state, inference=True)  # the state does not move
        >>> u = state.get(layer.state_index)["u"]
        >>> print(y.shape, u.shape, bool((state_eval.get(layer.state_index)["u"] == u).all()))
        (4,) (1, 4) True
    """

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
        """Runs the wrapped layer with the normalized array and, in training, stores the new ``u`` and σ.

        Args:
            x: the wrapped layer's input.
            state: the ``eqx.nn.State`` that holds ``u`` and σ.
            key: passed to the wrapped layer when given.
            inference: True: iterate from the stored ``u`` and keep it; False: store the iterated ``u`` and σ; None:
                the layer's attribute. Must be a Python bool (it decides what is stored).

        Returns:
            ``(y, state)``: the wrapped layer's output, and ``state`` with the new ``u`` and σ in training
            (unchanged at inference).

        Raises:
            TypeError: if ``inference`` is not a Python bool (a traced value included).
        """
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


def _check_p(layer: str, p: Any, *, below_one: bool = False) -> None:
    """ValueError unless the drop probability ``p`` is a number in [0, 1] (in [0, 1) if ``below_one``), TypeError
    unless it is a number; the messages name Equinox's ``p``."""
    if is_traced(p):
        raise TypeError(f"{layer}: p must be a Python number (a static field of the layer), got a traced value")
    try:
        r = float(p)
    except (TypeError, ValueError):
        raise TypeError(f"{layer}: p must be a number in [0, 1] (the drop probability), got {p!r}") from None
    if math.isnan(r) or not 0.0 <= r <= 1.0:
        raise ValueError(
            f"{layer}: p must be in [0, 1] (the probability of dropping a unit), got {p}; "
            "p=0 keeps everything, p=1 drops everything"
        )
    if below_one and r >= 1.0:
        raise ValueError(
            f"{layer}: p must be < 1 (the noise variance p/(1 − p) is infinite at p=1), got {p}; "
            "use p in [0, 1), e.g. p=0.5"
        )


def _no_key(layer: str) -> str:
    """The message of a dropout layer called in training without a key, in Equinox's terms."""
    return (
        f"{layer}: training (inference=False) needs a PRNG key: pass key=jax.random.key(seed) to the call (a new key "
        "every step; under jax.vmap one key per example, e.g. jax.vmap(layer)(x, key=jax.random.split(key, len(x))), "
        "as keyword arguments are mapped over their first axis), or inference=True for the inference map (no key)"
    )


class _Stochastic(eqx.Module):
    """The drop probability ``p`` and the ``inference`` switch every dropout layer shares."""

    p: float = eqx.field(static=True)
    inference: bool
    _below_one: ClassVar[bool] = False  # GaussianDropout: p = 1 is an infinite noise variance

    def __init__(self, p: float = 0.5, inference: bool = False):
        _check_p(type(self).__name__, p, below_one=self._below_one)
        self.p, self.inference = p, inference

    def _apply(self, fn, x, key, inference, **kw):
        """``fn(x, p, key=…, train=…)``: its eval map (no key needed) at inference or for ``p = 0``; a float input
        and, in training, a key are checked here so that the errors name the layer and Equinox's ``key=`` and
        ``inference=True``."""
        name = type(self).__name__
        train = _training(inference, self.inference, name)
        check_float_input(name, x)
        if train is False or float(self.p) == 0.0:
            return fn(x, self.p, train=False, **kw)
        if key is None:
            raise ValueError(_no_key(name))
        return fn(x, self.p, key=key, train=train, **kw)


class Dropout(_Stochastic):
    """Inverted dropout layer (Equinox): ``y = ξ ⊙ x/(1 − p)``, ``ξ ~ Bernoulli(1 − p)``, the identity at inference.

    See :func:`jaxnorm.dropout`. ``eqx.nn.Dropout(p, inference)``'s constructor and call: the same key gives the
    same mask. ``p`` is the drop probability (Equinox's name); ``p = 0`` is the identity and needs no key.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        p: the drop probability, in [0, 1] (default 0.5).
        inference: the mode if the call gives none (False: training; True: the identity).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.eqx.Dropout(0.5)
        >>> y = layer(x, key=jax.random.key(0))  # a new key per step gives a new mask
        >>> print(bool(((y == 0) | (y == 2)).all()), bool((layer(x, inference=True) == x).all()))
        True True
    """

    def __call__(self, x, *, key=None, inference: bool | None = None):
        """Applies the dropout in training, its inference map otherwise.

        Args:
            x: the input, any shape.
            key: a PRNG key, needed in training for ``p > 0`` (under ``jax.vmap``, one key per example gives each
                example its own mask).
            inference: True: the inference map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if training has no ``key``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.dropout, x, key, inference)


class OriginalDropout(_Stochastic):
    """Original dropout layer (Equinox): ``y = ξ ⊙ x`` in training, ``(1 − p)·x`` at inference.

    See :func:`jaxnorm.original_dropout`: no rescaling in training; with the same key it drops exactly the units
    :class:`Dropout` drops.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        p: the drop probability, in [0, 1] (default 0.5).
        inference: the mode if the call gives none (False: training; True: ``(1 − p)·x``).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.eqx.OriginalDropout(0.5)
        >>> y = layer(x, key=jax.random.key(0))
        >>> print(bool(((y == 0) | (y == 1)).all()), layer(x, inference=True)[0].tolist())
        True [0.5, 0.5, 0.5]
    """

    def __call__(self, x, *, key=None, inference: bool | None = None):
        """Applies the dropout in training, its inference map otherwise.

        Args:
            x: the input, any shape.
            key: a PRNG key, needed in training for ``p > 0`` (under ``jax.vmap``, one key per example gives each
                example its own mask).
            inference: True: the inference map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if training has no ``key``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.original_dropout, x, key, inference)


class SpatialDropout(_Stochastic):
    """Channel dropout layer (Equinox): one mask value per channel of one example ``C×spatial…``, shared over space.

    See :func:`jaxnorm.spatial_dropout` (on the example seen as ``1×spatial…×C``): ``y = ξ ⊙ x/(1 − p)`` with
    ``ξ_c ~ Bernoulli(1 − p)``; the identity at inference.

    Reduces over: nothing (one mask value per channel).

    Reference: Tompson, Goroshin, Jain, LeCun & Bregler (2015), Efficient Object Localization Using Convolutional
    Networks.

    Args:
        p: the drop probability, in [0, 1] (default 0.5).
        inference: the mode if the call gives none (False: training; True: the identity).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))  # one example: 4 channels, 3 positions
        >>> y = jn.eqx.SpatialDropout(0.5)(x, key=jax.random.key(0))
        >>> print(y.shape, bool((y == y[:, :1]).all()))  # each channel kept or dropped whole
        (4, 3) True
    """

    def __call__(self, x, *, key=None, inference: bool | None = None):
        """Applies the dropout in training, its inference map otherwise.

        Args:
            x: one example ``C×spatial…`` (rank >= 2), channels first.
            key: a PRNG key, needed in training for ``p > 0`` (under ``jax.vmap``, one key per example gives each
                example its own mask).
            inference: True: the inference map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if training has no ``key``, or ``x`` has rank < 2.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        x = jnp.asarray(x)
        if x.ndim < 2:  # checked here: the pure function would report the transposed batch of one, 1×spatial…×C
            raise ValueError(
                f"SpatialDropout: expected one example C×spatial… (rank >= 2, channels first), got shape "
                f"{tuple(x.shape)}; a vector has no spatial axis to share the mask over: use Dropout"
            )
        y = self._apply(_do.spatial_dropout, _last(x)[None], key, inference)
        return _first(y[0])


class GaussianDropout(_Stochastic):
    """Gaussian dropout layer (Equinox): ``y = ξ ⊙ x``, ``ξ ~ N(1, p/(1 − p))``, the identity at inference.

    See :func:`jaxnorm.gaussian_dropout`: the multiplicative noise with the mean and variance of inverted Bernoulli
    dropout (Srivastava et al. 2014, §10). ``p`` must be < 1 (the variance ``p/(1 − p)`` is infinite at 1), which
    the constructor checks.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        p: the equivalent Bernoulli drop probability, in [0, 1) (default 0.5).
        inference: the mode if the call gives none (False: training; True: the identity).

    Raises:
        ValueError: if ``p`` is outside [0, 1).
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.eqx.GaussianDropout(0.5)
        >>> y = layer(x, key=jax.random.key(0))
        >>> print(y.shape, bool((layer(x, inference=True) == x).all()))
        (4, 3) True
    """

    _below_one = True

    def __call__(self, x, *, key=None, inference: bool | None = None):
        """Applies the dropout in training, its inference map otherwise.

        Args:
            x: the input, any shape.
            key: a PRNG key, needed in training for ``p > 0`` (under ``jax.vmap``, one key per example gives each
                example its own mask).
            inference: True: the inference map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if training has no ``key``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.gaussian_dropout, x, key, inference)


class AlphaDropout(_Stochastic):
    """Alpha dropout layer for SELU networks (Equinox): ``y = a·(ξ ⊙ x + (1 − ξ)·α') + b``, the identity at inference.

    See :func:`jaxnorm.alpha_dropout`: dropped units are set to SELU's saturation value ``α' = −λα`` and the affine
    map ``a·(·) + b`` keeps zero mean and unit variance; ``ξ ~ Bernoulli(1 − p)``.

    Reduces over: nothing (elementwise).

    Reference: Klambauer, Unterthiner, Mayr & Hochreiter (2017), Self-Normalizing Neural Networks.

    Args:
        p: the drop probability, in [0, 1] (default 0.5).
        inference: the mode if the call gives none (False: training; True: the identity).

    Raises:
        ValueError: if ``p`` is outside [0, 1].
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.eqx.AlphaDropout(0.5)
        >>> y = layer(x, key=jax.random.key(0))
        >>> print(y.shape, bool((layer(x, inference=True) == x).all()))
        (4, 3) True
    """

    def __call__(self, x, *, key=None, inference: bool | None = None):
        """Applies the dropout in training, its inference map otherwise.

        Args:
            x: the input (SELU activations), any shape.
            key: a PRNG key, needed in training for ``p > 0`` (under ``jax.vmap``, one key per example gives each
                example its own mask).
            inference: True: the inference map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if training has no ``key``.
            TypeError: if ``x`` is not a float array, or ``inference`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.alpha_dropout, x, key, inference)


class DropConnectLinear(_Stochastic):
    """DropConnect linear layer (Equinox): ``y = (ξ ⊙ W/(1 − p)) x + b`` in training, ``W x + b`` at inference.

    See :func:`jaxnorm.dropconnect`: each weight is dropped on its own (``ξ ~ Bernoulli(1 − p)`` per entry of
    ``W``), not each unit. The parameters are those of the wrapped ``eqx.nn.Linear``: ``linear.weight`` (``out×in``)
    and ``linear.bias``. Under ``jax.vmap``, one key per example gives each example its own weight mask; one shared
    key, one mask for the batch.

    Reduces over: nothing (one mask value per weight).

    Reference: Wan, Zeiler, Zhang, LeCun & Fergus (2013), Regularization of Neural Networks using DropConnect.

    Args:
        in_features: the input size.
        out_features: the output size.
        use_bias: learn a bias ``b`` (default True).
        p: the drop probability of each weight, in [0, 1] (default 0.5).
        inference: the mode if the call gives none (False: training; True: the plain linear map).
        dtype: the parameters' dtype, passed to ``eqx.nn.Linear`` (None: its default).
        key: a PRNG key for the initialization.

    Raises:
        ValueError: if ``p`` is outside [0, 1].
        TypeError: if ``p`` is not a number.

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> layer = jn.eqx.DropConnectLinear(3, 4, key=jax.random.key(0))
        >>> x = jnp.ones(3)
        >>> y = layer(x, key=jax.random.key(1))  # training: a new weight mask per key
        >>> print(y.shape, bool((layer(x, inference=True) == layer.linear(x)).all()))
        (4,) True
    """

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
        """Applies the linear map with a dropped weight in training, the plain one otherwise.

        Args:
            x: one example, as ``eqx.nn.Linear`` takes it (shape ``(in_features,)``).
            key: a PRNG key, needed in training for ``p > 0``.
            inference: True: the plain linear map; False: training; None: the layer's attribute. A traced boolean
                scalar picks the mode with ``lax.cond``.

        Returns:
            The output, shape ``(out_features,)``.

        Raises:
            ValueError: if training has no ``key``.
            TypeError: if ``inference`` is not a Python bool or a traced boolean scalar.
        """
        w = self._apply(_do.dropconnect, self.linear.weight, key, inference)
        return eqx.tree_at(lambda m: m.weight, self.linear, w)(x)
