"""Flax NNX layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropouts`.

The constructor and call conventions are those of ``flax.nnx``: parameters are ``nnx.Param``, running statistics
``nnx.BatchStat`` (``mean``, ``var`` and the ``count`` of batches a cumulative average needs), random numbers come
from an ``nnx.Rngs`` stream (``'dropout'``), and the train/eval switches are the attributes ``use_running_average``
(norms) and ``deterministic`` (dropout), set at construction, overridden per call, or for a whole model with
``model.train()`` / ``model.eval()`` / ``nnx.view(model, use_running_average=True, deterministic=True)``::

    bn = jn.nnx.BatchNorm(64, momentum=0.9, rngs=nnx.Rngs(0))
    y = bn(x)                                  # training: batch statistics; running statistics updated in place
    y = bn(x, use_running_average=True)        # eval: running statistics
    drop = jn.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=1))
    y = drop(x)                                # a new mask per call from the forked 'dropout' stream

Every formula lives in the pure functions; a layer only holds the variables and passes them in and out. The
per-example norms accept ``use_running_average`` like the batch norms and ignore it, so a model can call any norm
the same way. :func:`population_batch_stats` and :func:`fold_batch_norm` do for NNX models what the linen helpers
do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn.dtypes import promote_dtype

from jaxnorm import _layers
from jaxnorm import dropouts as _do
from jaxnorm import norms as _norms
from jaxnorm._checks import (
    check_choice,
    check_epsilon,
    check_float_input,
    check_gaussian_rate,
    check_groups,
    check_momentum,
    check_positive_int,
    check_rate,
    is_traced,
)

Array = jax.Array
Initializer = Callable[..., Array]

__all__ = [
    "AlphaDropout",
    "BatchMoments",
    "BatchNorm",
    "BatchRenorm",
    "DropConnectLinear",
    "Dropout",
    "DyT",
    "FoldedBatchNorm",
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
    "fold_batch_norm",
    "population_batch_stats",
]


# --------------------------------------------------------------------------------------------------------------------
# shared pieces: mode flags, random streams, affine parameters


def _missing(flag: str) -> str:
    """How to give an NNX layer's ``flag``: the hint of the error when neither the layer nor the call has it."""
    return (
        f"pass {flag}=True/False to the constructor or to the call, or set it for the whole model with "
        f"model.train() / model.eval() or nnx.view(model, {flag}=True/False)"
    )


def _mode(layer: str, flag: str, attr, call, **kw):
    """``train`` for the pure functions from an NNX flag (the call's value, else the layer's; see
    :func:`jaxnorm._layers.mode`): a Python bool, or a traced boolean scalar (``lax.cond`` then); errors name
    ``flag``."""
    return _layers.mode(layer, flag, attr, call, missing=_missing(flag), **kw)


def _stream(rngs, collection: str, layer: str):
    """The layer's own random stream, forked at construction from ``rngs[collection]`` as ``nnx.Dropout`` does (so
    the same ``nnx.Rngs`` gives the same masks as Flax's layer)."""
    if isinstance(rngs, nnx.Rngs):
        return rngs[collection].fork()
    if isinstance(rngs, nnx.RngStream):
        return rngs.fork()
    if rngs is None:
        return nnx.data(None)
    raise TypeError(f"{layer}: rngs must be an nnx.Rngs, an nnx.RngStream or None, got {type(rngs).__name__}")


def _key(call_rngs, own, collection: str, layer: str) -> Array:
    """A PRNG key from the call's ``rngs`` (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) or the layer's stream."""
    rngs = own if call_rngs is None else call_rngs
    if isinstance(rngs, nnx.Rngs):
        return rngs[collection]()
    if isinstance(rngs, nnx.RngStream):
        return rngs()
    if isinstance(rngs, jax.Array):
        return rngs
    if rngs is None:
        raise ValueError(
            f"{layer}: training (deterministic=False) needs random numbers but the layer has no stream; build it "
            f"with rngs=nnx.Rngs({collection}=0), or pass rngs= (an nnx.Rngs, an nnx.RngStream or a key) to the "
            "call, or pass deterministic=True (or model.eval()) for eval without randomness"
        )
    raise TypeError(
        f"{layer}: rngs must be an nnx.Rngs, an nnx.RngStream or a jax.Array key, got {type(rngs).__name__}"
    )


def _value(v):
    """The value of an optional variable (None stays None)."""
    return None if v is None else v[...]


def _param(use: bool, init: Initializer, rngs: nnx.Rngs, shape, dtype):
    """An ``nnx.Param`` initialized by ``init`` if ``use``, else a None data attribute."""
    return nnx.Param(init(rngs.params(), shape, dtype)) if use else nnx.data(None)


def _needs_rngs(layer: str, rngs) -> nnx.Rngs:
    """``rngs`` if it is an ``nnx.Rngs``, else a TypeError that shows how to pass one."""
    if not isinstance(rngs, nnx.Rngs):
        raise TypeError(
            f"{layer}: rngs must be an nnx.Rngs (it initializes the parameters), e.g. rngs=nnx.Rngs(0); "
            f"got {type(rngs).__name__}"
        )
    return rngs


class _Affine(nnx.Module):
    """Per-channel γ/β parameters (``scale``, ``bias``) and the common checks of every norm layer."""

    def _init_affine(
        self, num_features, epsilon, *, use_scale, use_bias, scale_init, bias_init, param_dtype, dtype, rngs
    ):
        """The checks and the γ, β parameters every norm layer's constructor shares."""
        name = type(self).__name__
        rngs = _needs_rngs(name, rngs)
        self.num_features = check_positive_int(name, "num_features", num_features)
        self.epsilon = check_epsilon(name, epsilon)
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_scale, self.use_bias = use_scale, use_bias
        self.scale = _param(use_scale, scale_init, rngs, (num_features,), param_dtype)
        self.bias = _param(use_bias, bias_init, rngs, (num_features,), param_dtype)

    def _input(self, x, axis: int = -1):
        """``x`` cast to ``dtype``; ValueError unless it has ``num_features`` channels on ``axis``."""
        x = jnp.asarray(x)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if x.ndim == 0 or not -x.ndim <= axis < x.ndim or x.shape[axis] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}: the input of shape {tuple(x.shape)} has "
                f"{x.shape[axis] if x.ndim and -x.ndim <= axis < x.ndim else 'no'} features on axis {axis}, but the "
                f"layer was built with num_features={self.num_features}; build it with num_features="
                f"{x.shape[axis] if x.ndim and -x.ndim <= axis < x.ndim else '<the channel count>'}"
            )
        return x

    def _affine(self):
        """The values of γ and β (None where not learned)."""
        return _value(self.scale), _value(self.bias)


class BatchMoments(nnx.Variable):
    """The moments of one batch that a batch-statistics layer records for :func:`population_batch_stats`.

    Its value is :func:`jaxnorm.batch_moments` of the layer's input: ``{'mean': μ_B, 'var': σ²_B, 'count': n_B}``
    with ``μ_B = Σ x/n_B``, ``σ²_B = Σ (x − μ_B)²/n_B`` (biased) and ``n_B`` the number of valid values per channel.
    A variable type of its own, not ``nnx.BatchStat``: it is written (as the attribute ``batch_moments``) only on
    the copy that :func:`population_batch_stats` runs, in training mode, so the model's running statistics,
    ``nnx.state(model, nnx.BatchStat)`` and checkpoints never see it.

    Reduces over: every axis of the input but the layer's ``axis`` (with ``axis_name``, also across devices).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift (§3.1, the population statistics).

    Args:
        value: the ``{'mean', 'var', 'count'}`` dict (``nnx.Variable``'s argument).

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> moments = jn.nnx.BatchMoments(jn.batch_moments(jnp.array([[0.0, 1.0], [2.0, 5.0]])))
        >>> m = moments.get_value()
        >>> print(m["mean"].tolist(), m["var"].tolist(), int(m["count"]))
        [1.0, 3.0] [1.0, 4.0] 2
    """


class _RunningStats(_Affine):
    """``nnx.BatchStat`` running statistics ``mean``, ``var``, ``count`` and the ``use_running_average`` switch."""

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        scale_init: Initializer = nnx.initializers.ones_init(),
        axis_name: str | None = None,
        rngs: nnx.Rngs,
    ):
        """The arguments every batch-statistics layer takes, as ``flax.nnx.BatchNorm``."""
        self._init_affine(
            num_features,
            epsilon,
            use_scale=use_scale,
            use_bias=use_bias,
            scale_init=scale_init,
            bias_init=bias_init,
            param_dtype=param_dtype,
            dtype=dtype,
            rngs=rngs,
        )
        self._init_stats(use_running_average, axis, axis_name)

    def _init_stats(self, use_running_average, axis: int, axis_name):
        """The ``nnx.BatchStat`` running statistics and the mode, axis and axis-name attributes."""
        init = _norms.init_batch_stats(self.num_features)
        self.mean = nnx.BatchStat(init["mean"])
        self.var = nnx.BatchStat(init["var"])
        self.count = nnx.BatchStat(init["count"])
        if not isinstance(axis, int):
            raise ValueError(f"{type(self).__name__}: axis must be one feature axis (an int), got {axis!r}")
        self.use_running_average = use_running_average
        self.axis = axis
        self.axis_name = axis_name
        self.record_moments = False  # set on a copy by population_batch_stats

    def set_view(self, use_running_average: bool | None = None):
        """``nnx.view(model, use_running_average=...)``."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def _normalize(self, fn, x, use_running_average, mask, **kw):
        """``fn(x, scale, bias, stats, train=…, epsilon=…, axis=…, axis_name=…, mask=…, **kw)`` on this layer's
        variables; the new running statistics are written back in training."""
        name = type(self).__name__
        train = _mode(name, "use_running_average", self.use_running_average, use_running_average)
        x = self._input(x, self.axis)
        scale, bias = self._affine()
        stats = {"mean": self.mean[...], "var": self.var[...], "count": self.count[...]}
        y, new = fn(
            x,
            scale,
            bias,
            stats,
            train=train,
            epsilon=self.epsilon,
            axis=self.axis,
            axis_name=self.axis_name,
            mask=mask,
            **kw,
        )
        if train is not False:  # a traced flag: the pure function returned the old statistics in eval
            self.mean[...], self.var[...], self.count[...] = new["mean"], new["var"], new["count"]
            if self.record_moments:
                # set only by population_batch_stats, which runs unsynchronized (axis_name None)
                self.batch_moments = BatchMoments(_norms.batch_moments(x, axis=self.axis, mask=mask))
        return y


_AFFINE_DEFAULTS = dict(use_scale=True, use_bias=True)


# --------------------------------------------------------------------------------------------------------------------
# batch-statistics norms


class BatchNorm(_RunningStats):
    """Batch normalization layer (flax.nnx): ``y = γ·(x − μ_B)/√(σ²_B + ε) + β`` in training.

    See :func:`jaxnorm.batch_norm` for the formula and the options. ``flax.nnx.BatchNorm``'s constructor and call,
    plus ``axis_name`` (statistics synced as sums and counts), ``mask``, ``virtual_batch_size`` (ghost batch norm),
    ``convention='pytorch'`` and ``momentum=None`` (a cumulative average).

    Reduces over: every axis but ``axis`` (N, H, W for NHWC input).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        num_features: the channel count C of ``axis``.
        use_running_average: the mode if the call gives none (False: training; True: eval; None: must be given at
            call or by ``model.train()`` / ``model.eval()``).
        axis: the feature axis (default -1).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of γ, β.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        axis_name: a mapped axis to synchronize the statistics over.
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        momentum: ``'auto'`` (0.99 for ``convention='flax'``, 0.1 for ``'pytorch'``), a number in [0, 1], or None.
        axis_index_groups: groups of devices for ``axis_name``.
        convention: ``'flax'`` or ``'pytorch'``.
        virtual_batch_size: examples per ghost batch.

    Raises:
        ValueError: for a bad ``num_features``, ``epsilon``, ``momentum``, ``convention`` or ``virtual_batch_size``.
        TypeError: if ``rngs`` is not an ``nnx.Rngs``.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0, dropout=1))
        >>> y = layer(x)  # training: batch statistics, running statistics updated
        >>> y_eval = layer(x, use_running_average=True)
        >>> print(y.shape, int(layer.count[...]))
        (8, 3) 1
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool | None = False,
        axis: int = -1,
        momentum: float | None | str = "auto",
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        scale_init: Initializer = nnx.initializers.ones_init(),
        axis_name: str | None = None,
        axis_index_groups: Any = None,
        convention: str = "flax",
        virtual_batch_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        name = type(self).__name__
        super().__init__(
            num_features,
            use_running_average=use_running_average,
            axis=axis,
            epsilon=epsilon,
            dtype=dtype,
            param_dtype=param_dtype,
            use_bias=use_bias,
            use_scale=use_scale,
            bias_init=bias_init,
            scale_init=scale_init,
            axis_name=axis_name,
            rngs=rngs,
        )
        self.convention = check_choice("batch-norm convention", convention, _norms.CONVENTIONS)
        self.momentum = _layers.check_batch_momentum(name, momentum)
        self.axis_index_groups = axis_index_groups
        if virtual_batch_size is not None:
            check_positive_int(name, "virtual_batch_size", virtual_batch_size)
        self.virtual_batch_size = virtual_batch_size

    def _options(self) -> dict:
        """The keyword arguments of :func:`jaxnorm.batch_norm` this layer fixes."""
        return dict(
            axis_index_groups=self.axis_index_groups,
            convention=self.convention,
            virtual_batch_size=self.virtual_batch_size,
            **_layers.momentum_option(type(self).__name__, self.momentum),
        )

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` and, in training, updates ``mean``, ``var``, ``count`` in place.

        Args:
            x: the input, C channels on ``axis``.
            use_running_average: True: the running statistics (eval); False: batch statistics (training); None: the
                layer's attribute. A traced boolean scalar picks the mode with ``lax.cond``.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or ``x`` has not ``num_features`` channels on ``axis``.
            TypeError: if ``use_running_average`` is not a Python bool or a traced boolean scalar.
        """
        return self._normalize(_norms.batch_norm, x, use_running_average, mask, **self._options())


class NoisyBatchNorm(BatchNorm):
    """Batch norm plus Santurkar et al.'s Algorithm 1 noise in training: ``a_ij ← s_ij·a_ij + m_ij``.

    The layer calls :func:`jaxnorm.noisy_batch_norm`. The noise comes from the layer's ``rng_collection`` stream
    (forked at construction) or the call's ``rngs``: new noise per call. ``use_running_average`` switches the
    statistics as in :class:`BatchNorm`; ``deterministic`` switches the noise, so ``model.eval()`` turns off both.

    Reduces over: every axis but ``axis``.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?

    Args:
        num_features: the channel count C.
        n_mu, n_sigma, r_mu, r_sigma: Algorithm 1's constants (0.5, 1.25, 0.1, 0.1).
        deterministic: no noise when True (the mode if the call gives none).
        rng_collection: the stream of the noise.
        rngs: an ``nnx.Rngs``.
        **batch_norm_kwargs: :class:`BatchNorm`'s other arguments.

    Raises:
        ValueError: for invalid noise constants, or :class:`BatchNorm`'s.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nnx.NoisyBatchNorm(3, rngs=nnx.Rngs(0, dropout=1))
        >>> y = layer(x)  # training: batch statistics, running statistics updated
        >>> y_eval = layer(x, use_running_average=True)
        >>> print(y.shape, int(layer.count[...]))
        (8, 3) 1
    """

    def __init__(
        self,
        num_features: int,
        *,
        n_mu: float = 0.5,
        n_sigma: float = 1.25,
        r_mu: float = 0.1,
        r_sigma: float = 0.1,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs,
        **batch_norm_kwargs,
    ):
        super().__init__(num_features, rngs=rngs, **batch_norm_kwargs)
        _norms._check_noise(n_mu, n_sigma, r_mu, r_sigma)  # now, not at the first training call
        self.noise = dict(n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = _stream(rngs, rng_collection, "NoisyBatchNorm")

    def set_view(self, use_running_average: bool | None = None, deterministic: bool | None = None):
        """``nnx.view(model, use_running_average=..., deterministic=...)``."""
        super().set_view(use_running_average)
        if deterministic is not None:
            self.deterministic = deterministic

    def __call__(
        self,
        x,
        use_running_average: bool | None = None,
        *,
        mask: Array | None = None,
        deterministic: bool | None = None,
        rngs=None,
    ):
        """Normalizes ``x`` and, in training, updates ``mean``, ``var``, ``count`` in place.

        Args:
            x: the input, C channels on ``axis``.
            use_running_average: True: the running statistics (eval); False: batch statistics (training); None: the
                layer's attribute. A traced boolean scalar picks the mode with ``lax.cond``.
            mask: optional, True = valid: values that enter the statistics.
            deterministic: True: no noise; None: the layer's attribute.
            rngs: the call's randomness instead of the layer's stream.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or ``x`` has not ``num_features`` channels on ``axis``.
            TypeError: if ``use_running_average`` is not a Python bool or a traced boolean scalar, or
                ``deterministic`` is not a Python bool.
        """
        name = "NoisyBatchNorm"
        train = _mode(name, "use_running_average", self.use_running_average, use_running_average)
        noise = _layers.static_mode(
            name,
            "deterministic",
            self.deterministic,
            deterministic,
            missing=_missing("deterministic"),
            traced="deterministic (which switches the noise) must be a Python bool, got a "
            "traced value; a traced use_running_average is fine",
        )
        if train is False or not noise:
            return self._normalize(_norms.batch_norm, x, use_running_average, mask, **self._options())
        key = _key(rngs, self.rngs, self.rng_collection, name)
        return self._normalize(
            _norms.noisy_batch_norm, x, use_running_average, mask, key=key, **self.noise, **self._options()
        )


class BatchRenorm(_RunningStats):
    """Batch renormalization layer: ``y = γ·((x − μ_B)/σ_B·r + d) + β``, r and d clipped.

    See :func:`jaxnorm.batch_renorm`; ``r_max = 1, d_max = 0`` is batch norm.

    Reduces over: every axis but ``axis``.

    Reference: Ioffe (2017), Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models.

    Args:
        num_features: the channel count C of ``axis``.
        use_running_average: the mode if the call gives none (False: training; True: eval; None: must be given at
            call or by ``model.train()`` / ``model.eval()``).
        axis: the feature axis (default -1).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of γ, β.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        axis_name: a mapped axis to synchronize the statistics over.
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        r_max: bound on r (>= 1).
        d_max: bound on ``|d|`` (>= 0).
        momentum: decay of the running averages, in [0, 1].

    Raises:
        ValueError: if ``r_max < 1`` or ``d_max < 0``, or a bad momentum.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nnx.BatchRenorm(3, rngs=nnx.Rngs(0, dropout=1))
        >>> y = layer(x)  # training: batch statistics, running statistics updated
        >>> y_eval = layer(x, use_running_average=True)
        >>> print(y.shape, int(layer.count[...]))
        (8, 3) 1
    """

    def __init__(self, num_features: int, *, r_max: float = 3.0, d_max: float = 5.0, momentum: float = 0.99, **kwargs):
        super().__init__(num_features, **kwargs)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"BatchRenorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        self.r_max, self.d_max = r_max, d_max
        self.momentum = check_momentum("BatchRenorm", momentum)

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` and, in training, updates ``mean``, ``var``, ``count`` in place.

        Args:
            x: the input, C channels on ``axis``.
            use_running_average: True: the running statistics (eval); False: batch statistics (training); None: the
                layer's attribute. A traced boolean scalar picks the mode with ``lax.cond``.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or ``x`` has not ``num_features`` channels on ``axis``.
            TypeError: if ``use_running_average`` is not a Python bool or a traced boolean scalar.
        """
        return self._normalize(
            _norms.batch_renorm,
            x,
            use_running_average,
            mask,
            r_max=self.r_max,
            d_max=self.d_max,
            momentum=self.momentum,
        )


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization layer: the batch's ℓp deviation replaces its standard deviation.

    See :func:`jaxnorm.lp_batch_norm` for the scale of each p in {1, 2, 'inf'}.

    Reduces over: every axis but ``axis``.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?

    Args:
        num_features: the channel count C of ``axis``.
        use_running_average: the mode if the call gives none (False: training; True: eval; None: must be given at
            call or by ``model.train()`` / ``model.eval()``).
        axis: the feature axis (default -1).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of γ, β.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        axis_name: a mapped axis to synchronize the statistics over.
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        p: 1, 2 or ``'inf'``.
        momentum: decay of the running averages, in [0, 1].

    Raises:
        ValueError: for another ``p`` or a bad momentum.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nnx.LpBatchNorm(3, p=1, rngs=nnx.Rngs(0, dropout=1))
        >>> y = layer(x)  # training: batch statistics, running statistics updated
        >>> y_eval = layer(x, use_running_average=True)
        >>> print(y.shape, int(layer.count[...]))
        (8, 3) 1
    """

    def __init__(self, num_features: int, *, p: int | str = 2, momentum: float = 0.99, **kwargs):
        super().__init__(num_features, **kwargs)
        if p not in _norms.LP_NORMS + (float("inf"),):
            raise ValueError(f"LpBatchNorm: p must be one of 1, 2, 'inf' (Santurkar et al.), got {p!r}")
        self.p = p
        self.momentum = check_momentum("LpBatchNorm", momentum)

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` and, in training, updates ``mean``, ``var``, ``count`` in place.

        Args:
            x: the input, C channels on ``axis``.
            use_running_average: True: the running statistics (eval); False: batch statistics (training); None: the
                layer's attribute. A traced boolean scalar picks the mode with ``lax.cond``.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or ``x`` has not ``num_features`` channels on ``axis``.
            TypeError: if ``use_running_average`` is not a Python bool or a traced boolean scalar.
        """
        return self._normalize(_norms.lp_batch_norm, x, use_running_average, mask, p=self.p, momentum=self.momentum)


# --------------------------------------------------------------------------------------------------------------------
# per-example norms


class _PerExample(_Affine):
    """The constructor every per-example norm shares (γ, β per channel; no running statistics)."""

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-5,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Initializer = nnx.initializers.zeros_init(),
        scale_init: Initializer = nnx.initializers.ones_init(),
        rngs: nnx.Rngs,
    ):
        self._init_affine(
            num_features,
            epsilon,
            use_scale=use_scale,
            use_bias=use_bias,
            scale_init=scale_init,
            bias_init=bias_init,
            param_dtype=param_dtype,
            dtype=dtype,
            rngs=rngs,
        )


class LayerNorm(_PerExample):
    """Layer normalization layer: ``y = γ·(x − μ)/√(σ² + ε) + β`` per example, per-channel γ, β.

    See :func:`jaxnorm.layer_norm`. ``LayerNorm(C, axes=-1, epsilon=1e-6)`` is ``flax.nnx.LayerNorm(C)``.

    Reduces over: ``axes`` (default every axis but the batch axis 0).

    Reference: Ba, Kiros & Hinton (2016), Layer Normalization.

    Args:
        num_features: the channel count C (last axis).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of the parameters.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        axes: the axes reduced over.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nnx.LayerNorm(8, rngs=nnx.Rngs(0))
        >>> print(layer(x).shape)
        (2, 4, 4, 8)
    """

    def __init__(self, num_features: int, *, axes: int | Sequence[int] | None = None, **kwargs):
        super().__init__(num_features, **kwargs)
        self.axes = axes

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x``; ``use_running_average`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            use_running_average: ignored (the same map at train and test).
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has not ``num_features`` channels on the last axis.
        """
        del use_running_average  # the same computation at train and test
        return _norms.layer_norm(self._input(x), *self._affine(), epsilon=self.epsilon, axes=self.axes, mask=mask)


class InstanceNorm(_PerExample):
    """Instance normalization layer: ``y = γ·(x − μ)/√(σ² + ε) + β`` per example and channel.

    See :func:`jaxnorm.instance_norm`. ``InstanceNorm(C, epsilon=1e-6)`` is ``flax.nnx.InstanceNorm(C)``.

    Reduces over: the spatial axes.

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), Instance Normalization: The Missing Ingredient for Fast Stylization.

    Args:
        num_features: the channel count C (last axis).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of the parameters.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        rngs: an ``nnx.Rngs`` (initializes the parameters).

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nnx.InstanceNorm(8, rngs=nnx.Rngs(0))
        >>> print(layer(x).shape)
        (2, 4, 4, 8)
    """

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x``; ``use_running_average`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            use_running_average: ignored (the same map at train and test).
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has not ``num_features`` channels on the last axis.
        """
        del use_running_average
        return _norms.instance_norm(self._input(x), *self._affine(), epsilon=self.epsilon, mask=mask)


class GroupNorm(_PerExample):
    """Group normalization layer: ``y = γ·(x − μ_g)/√(σ²_g + ε) + β`` per example and group.

    See :func:`jaxnorm.group_norm`. ``GroupNorm(C, G, epsilon=1e-6)`` is ``flax.nnx.GroupNorm(C, G)``.

    Reduces over: the spatial axes and the channels of each group.

    Reference: Wu & He (2018), Group Normalization.

    Args:
        num_features: the channel count C (last axis).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of the parameters.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        num_groups: the number of groups (default 32), or None with ``group_size``.
        group_size: channels per group.

    Raises:
        ValueError: if the channel count is not divisible into the groups.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nnx.GroupNorm(8, 2, rngs=nnx.Rngs(0))
        >>> print(layer(x).shape)
        (2, 4, 4, 8)
    """

    def __init__(self, num_features: int, num_groups: int | None = 32, group_size: int | None = None, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_groups = check_groups("GroupNorm", self.num_features, num_groups, group_size)
        self.group_size = self.num_features // self.num_groups

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x``; ``use_running_average`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            use_running_average: ignored (the same map at train and test).
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has not ``num_features`` channels on the last axis.
        """
        del use_running_average
        return _norms.group_norm(
            self._input(x), *self._affine(), num_groups=self.num_groups, epsilon=self.epsilon, mask=mask
        )


class RMSNorm(_PerExample):
    """RMS normalization layer: ``y = γ·x/√(mean(x²) + ε)``, per-channel γ, no centring.

    See :func:`jaxnorm.rms_norm`. ``RMSNorm(C, axes=-1, epsilon=1e-6)`` is ``flax.nnx.RMSNorm(C)``.

    Reduces over: ``axes`` (default every axis but the batch axis 0).

    Reference: Zhang & Sennrich (2019), Root Mean Square Layer Normalization.

    Args:
        num_features: the channel count C (last axis).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of the parameters.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        axes: the axes reduced over.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nnx.RMSNorm(8, rngs=nnx.Rngs(0))
        >>> print(layer(x).shape)
        (2, 4, 4, 8)
    """

    def __init__(self, num_features: int, *, axes: int | Sequence[int] | None = None, **kwargs):
        super().__init__(num_features, use_bias=False, **kwargs)
        self.axes = axes

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x``; ``use_running_average`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            use_running_average: ignored (the same map at train and test).
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has not ``num_features`` channels on the last axis.
        """
        del use_running_average
        return _norms.rms_norm(self._input(x), _value(self.scale), epsilon=self.epsilon, axes=self.axes, mask=mask)


class DyT(_PerExample):
    """Dynamic Tanh layer: ``y = γ ⊙ tanh(α·x) + β``, a statistics-free replacement for layer norm.

    See :func:`jaxnorm.dyt`; ``alpha`` a scalar parameter, γ, β per channel.

    Reduces over: nothing (elementwise).

    Reference: Zhu, Chen, He, LeCun & Liu (2025), Transformers without Normalization.

    Args:
        num_features: the channel count C (last axis).
        epsilon: ε added to the variance.
        dtype: dtype the input is cast to (None: kept).
        param_dtype: dtype of the parameters.
        use_bias, use_scale: learn β, γ (``bias_init``, ``scale_init``: zeros, ones).
        rngs: an ``nnx.Rngs`` (initializes the parameters).
        alpha_init: the initial α (0.5, the paper's default).

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 5, 8))
        >>> layer = jn.nnx.DyT(8, rngs=nnx.Rngs(0))
        >>> print(layer(x).shape)
        (2, 5, 8)
    """

    def __init__(self, num_features: int, *, alpha_init: float = 0.5, **kwargs):
        super().__init__(num_features, **kwargs)
        self.alpha = nnx.Param(jnp.full((), alpha_init, self.param_dtype))

    def __call__(self, x, use_running_average: bool | None = None, *, mask: Array | None = None):
        """Applies ``γ ⊙ tanh(α·x) + β``; ``use_running_average`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            use_running_average: ignored (the same map at train and test).
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has not ``num_features`` channels on the last axis.
        """
        del use_running_average, mask  # no statistics: the same map at train and test, padding or not
        return _norms.dyt(self._input(x), self.alpha[...], *self._affine())


# --------------------------------------------------------------------------------------------------------------------
# reparametrized kernels: weight standardization, weight norm, spectral norm


@contextlib.contextmanager
def _substituted(pairs: Sequence[tuple[nnx.Variable, Array]]):
    """Give each variable a new value while the body runs, then its own back: the wrapped layer computes with the
    transformed kernel (a function of the stored one, so gradients reach the stored one) and keeps its own."""
    saved = [v[...] for v, _ in pairs]
    try:
        for v, new in pairs:
            v[...] = new
        yield
    finally:
        for (v, _), old in zip(pairs, saved):
            v[...] = old


def _params_of(layer) -> list[tuple[tuple, nnx.Param]]:
    """``(path, parameter)`` of every ``nnx.Param`` of ``layer``."""
    return [(tuple(path), node) for path, node in nnx.iter_graph(layer) if isinstance(node, nnx.Param)]


def _path_name(path) -> str:
    """A graph path as a '/'-joined name ('block/conv/kernel')."""
    return "/".join(str(p) for p in path)


class StandardizedConv(nnx.Conv):
    """Weight-standardized convolution (flax.nnx): ``nnx.Conv`` with the kernel ``Ŵ = (W − μ)/√(σ² + ε)``.

    See :func:`jaxnorm.weight_standardize`. The stored ``kernel`` stays raw: at every call the standardized kernel
    is substituted for it while ``nnx.Conv`` runs (gradients reach the stored kernel through the standardization),
    then the raw one is put back. Takes ``nnx.Conv``'s arguments plus ``epsilon``; pairs with :class:`GroupNorm` for
    small-batch training.

    Reduces over: per output channel, every other axis of the kernel (the window and ``C_in``).

    Reference: Qiao, Wang, Liu, Shen & Yuille (2019), Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization.

    Args:
        in_features: the input channels C_in.
        out_features: the output channels C_out.
        kernel_size: the window size (an int or a sequence of ints).
        epsilon: ε added to the variance (default 1e-5).
        **conv_kwargs: ``nnx.Conv``'s other arguments (``strides``, ``padding``, ``use_bias``, ..., and ``rngs``).

    Raises:
        ValueError: if ``epsilon`` is negative or not finite.
        TypeError: if ``epsilon`` is not a number.

    Examples:
        >>> import jax
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 8, 3))  # N×W×C_in
        >>> layer = jn.nnx.StandardizedConv(3, 4, (3,), rngs=nnx.Rngs(0))
        >>> print(layer(x).shape, layer.kernel[...].shape)  # nnx.Conv's default padding is 'SAME'
        (2, 8, 4) (3, 3, 4)
    """

    def __init__(self, in_features: int, out_features: int, kernel_size, *, epsilon: float = 1e-5, **conv_kwargs):
        super().__init__(in_features, out_features, kernel_size, **conv_kwargs)
        self.epsilon = check_epsilon("StandardizedConv", epsilon)

    def __call__(self, x):
        """Convolves ``x`` with the standardized kernel.

        Args:
            x: the input ``N×spatial…×C_in``, as ``nnx.Conv`` takes it.

        Returns:
            ``nnx.Conv``'s output, computed with ``Ŵ``.
        """
        with _substituted([(self.kernel, _norms.weight_standardize(self.kernel[...], epsilon=self.epsilon))]):
            return super().__call__(x)


class WeightNorm(nnx.Module):
    """Weight normalization wrapper (flax.nnx): ``w = g·v/√(Σ v² + ε)`` for each selected parameter of a layer.

    See :func:`jaxnorm.weight_norm`. The arguments of ``flax.nnx.WeightNorm``, e.g.
    ``WeightNorm(nnx.Linear(3, 4, rngs=rngs), rngs=rngs)``. ``variable_filter`` selects the parameters; the gains
    ``g`` (one per index of the kept axes) are ``nnx.Param`` in ``scales['<path>']``, initialized by ``scale_init``
    (default ones: at init ``‖w_j‖ = 1``, so the wrapped layer computes something else than before wrapping unless
    its kernel had unit norms). Unlike ``flax.nnx.WeightNorm``, the wrapped layer keeps its raw ``v``: the
    normalized kernel is substituted only for the call.

    Reduces over: every axis of each selected parameter except ``feature_axes`` (default: all but the last, one norm
    per output unit of a Linear or Conv kernel); all of them for ``feature_axes=None``.

    Reference: Salimans & Kingma (2016), Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks.

    Args:
        layer_instance: the wrapped layer.
        feature_axes: the axes kept, one norm per index of them (default -1), or None for one norm of the whole
            parameter.
        use_scale: learn the gains ``g`` (False: ``g = 1``).
        scale_init: the gains' initializer (default ``nnx.initializers.ones``).
        epsilon: ε inside the square root (default 1e-12).
        dtype: dtype of the normalized parameters (None: the result type of ``v`` and ``g``).
        param_dtype: dtype of the gains.
        variable_filter: an nnx filter of the parameters to normalize (default ``nnx.PathContains('kernel')``).
        rngs: an ``nnx.Rngs`` (initializes the gains).

    Raises:
        ValueError: if ``variable_filter`` selects no parameter, ``feature_axes`` is out of range for one, or
            ``epsilon`` is negative or not finite.
        TypeError: if ``rngs`` is not an ``nnx.Rngs``, or ``epsilon`` is not a number.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> layer = jn.nnx.WeightNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
        >>> w = layer(jnp.eye(3))  # the rows of the normalized kernel (the bias is zero at init)
        >>> print(w.shape, layer.scales["kernel"][...].shape, bool(jnp.allclose(jnp.linalg.norm(w, axis=0), 1.0)))
        (3, 4) (4,) True
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        feature_axes: int | Sequence[int] | None = -1,
        use_scale: bool = True,
        scale_init: Initializer = nnx.initializers.ones,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        variable_filter: Any = nnx.PathContains("kernel"),
        rngs: nnx.Rngs,
    ):
        rngs = _needs_rngs("WeightNorm", rngs)
        self.layer_instance = layer_instance
        self.feature_axes = feature_axes
        self.epsilon = check_epsilon("WeightNorm", epsilon)
        self.dtype = dtype
        self.use_scale = use_scale
        self.variable_filter = variable_filter
        keep = nnx.filterlib.to_predicate(variable_filter)
        self.paths = [_path_name(p) for p, v in _params_of(layer_instance) if keep(p, v)]
        if not self.paths:
            raise ValueError(
                f"WeightNorm: variable_filter={variable_filter!r} selects no parameter of "
                f"{type(layer_instance).__name__} (its parameters: "
                f"{[_path_name(p) for p, _ in _params_of(layer_instance)]})"
            )
        scales = {}
        for path, v in self._selected():
            scales[path] = nnx.Param(scale_init(rngs.params(), self._kept(path, v[...])[1], param_dtype))
        self.scales = nnx.data(scales if use_scale else {})

    def _selected(self):
        """``(path, variable)`` of each selected parameter of the wrapped layer."""
        by_name = {_path_name(p): v for p, v in _params_of(self.layer_instance)}
        return [(p, by_name[p]) for p in self.paths]

    def _kept(self, path: str, value) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(reduced axes, shape of the kept axes) of one parameter."""
        if self.feature_axes is None:
            return tuple(range(value.ndim)), ()
        fa = (self.feature_axes,) if isinstance(self.feature_axes, int) else tuple(self.feature_axes)
        if any(not -value.ndim <= a < value.ndim for a in fa):
            raise ValueError(
                f"WeightNorm: feature_axes={self.feature_axes!r} is out of range for {path} of shape "
                f"{tuple(value.shape)}"
            )
        kept: set[int] = {a % value.ndim for a in fa}
        return tuple(i for i in range(value.ndim) if i not in kept), tuple(value.shape[i] for i in sorted(kept))

    def _normalized(self, path: str, v):
        """The normalized value of one selected parameter, in ``dtype`` (else the result type of ``v`` and ``g``)."""
        value = v[...]
        reduced, _ = self._kept(path, value)
        g = self.scales[path][...] if self.use_scale else None
        out = _norms.weight_norm(value, g, axes=reduced, epsilon=self.epsilon)
        return out.astype(self.dtype or jnp.result_type(value, *(() if g is None else (g,))))

    def __call__(self, x, *args, **kwargs):
        """Runs the wrapped layer with the normalized parameters.

        Args:
            x: the wrapped layer's input.
            *args: the wrapped layer's other positional arguments.
            **kwargs: the wrapped layer's keyword arguments.

        Returns:
            The wrapped layer's output.
        """
        with _substituted([(v, self._normalized(p, v)) for p, v in self._selected()]):
            return self.layer_instance(x, *args, **kwargs)


class SpectralNorm(nnx.Module):
    """Spectral normalization wrapper (flax.nnx): each kernel of a layer divided by its largest singular value σ.

    See :func:`jaxnorm.spectral_normalize`. Every parameter of rank >= 2 (a kernel ``…×C_in×C_out``, seen as the
    matrix ``(…·C_in) × C_out``) is normalized, σ estimated by ``n_steps`` power iterations per call; the arguments
    of ``flax.nnx.SpectralNorm``. The power-iteration vector and the last σ are ``nnx.BatchStat`` in
    ``batch_stats['<path>/u']`` (``1×C_out``, ``N(0, 1)`` at creation) and ``batch_stats['<path>/sigma']``.
    ``update_stats=True`` (training) stores the iterated u and σ; False (eval) runs the same iterations from the
    stored u and stores nothing. ``model.train()`` / ``model.eval()`` switch it through ``use_running_average``
    (= not update_stats), as in Flax. The wrapped layer keeps its raw kernels: the normalized ones are substituted
    only for the call.

    Reduces over: each kernel as a whole (one σ per kernel, through the power iteration's matrix products).

    Reference: Miyato, Kataoka, Koyama & Yoshida (2018), Spectral Normalization for Generative Adversarial
    Networks.

    Args:
        layer_instance: the wrapped layer.
        n_steps: power iterations per call (default 1).
        epsilon: ε of the vector normalization (default 1e-12).
        dtype: dtype of the normalized kernels (None: the result type of the kernel, u and σ).
        param_dtype: dtype of ``u`` and σ.
        error_on_non_matrix: raise for a parameter of rank > 2 instead of normalizing it as a matrix.
        update_stats: the mode if the call gives none (True: training, store u and σ; False: eval).
        rngs: an ``nnx.Rngs`` (draws each initial ``u`` from its ``params`` stream).

    Raises:
        ValueError: if ``n_steps`` is not a positive int, ``epsilon`` is negative or not finite, or a parameter has
            rank > 2 with ``error_on_non_matrix=True``.
        TypeError: if ``rngs`` is not an ``nnx.Rngs``, or ``epsilon`` is not a number.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> layer = jn.nnx.SpectralNorm(nnx.Linear(3, 4, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
        >>> x = jnp.ones((2, 3))
        >>> y = layer(x)  # training: the iterated u and sigma stored
        >>> u = layer.batch_stats["kernel/u"][...]
        >>> y_eval = layer(x, update_stats=False)  # eval: the state does not move
        >>> print(y.shape, u.shape, bool((layer.batch_stats["kernel/u"][...] == u).all()))
        (2, 4) (1, 4) True
    """

    def __init__(
        self,
        layer_instance: nnx.Module,
        *,
        n_steps: int = 1,
        epsilon: float = 1e-12,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        error_on_non_matrix: bool = False,
        update_stats: bool = True,
        rngs: nnx.Rngs,
    ):
        rngs = _needs_rngs("SpectralNorm", rngs)
        self.layer_instance = layer_instance
        self.n_steps = check_positive_int("SpectralNorm", "n_steps", n_steps)
        self.epsilon = check_epsilon("SpectralNorm", epsilon)
        self.dtype = dtype
        self.use_running_average = not update_stats
        stats, self.paths = {}, []
        for path, v in _params_of(layer_instance):
            if v[...].ndim <= 1:  # biases and scalars: no spectral norm
                continue
            name = _path_name(path)
            if v[...].ndim > 2 and error_on_non_matrix:
                raise ValueError(
                    f"SpectralNorm: {name} has shape {tuple(v[...].shape)} (rank {v[...].ndim}) and "
                    "error_on_non_matrix=True; pass error_on_non_matrix=False to normalize it as the "
                    f"matrix {v[...].size // v[...].shape[-1]}×{v[...].shape[-1]}"
                )
            stats[f"{name}/u"] = nnx.BatchStat(_norms.init_spectral_state(rngs.params(), v[...], param_dtype))
            stats[f"{name}/sigma"] = nnx.BatchStat(jnp.ones((), param_dtype))
            self.paths.append(name)
        self.batch_stats = nnx.data(stats)

    def set_view(self, use_running_average: bool | None = None, update_stats: bool | None = None):
        """``nnx.view(model, use_running_average=...)`` (or ``update_stats=...``)."""
        if use_running_average is not None:
            self.use_running_average = use_running_average
        if update_stats is not None:
            self.use_running_average = not update_stats

    def __call__(self, x, *args, update_stats: bool | None = None, **kwargs):
        """Runs the wrapped layer with the normalized kernels and, in training, stores the new u and σ.

        Args:
            x: the wrapped layer's input.
            *args: the wrapped layer's other positional arguments.
            update_stats: True: store the iterated u and σ (training); False: iterate from the stored u and keep it
                (eval); None: the layer's ``use_running_average`` (= not update_stats). Must be a Python bool.
            **kwargs: the wrapped layer's keyword arguments.

        Returns:
            The wrapped layer's output.

        Raises:
            ValueError: if no mode is given anywhere.
            TypeError: if the mode is not a Python bool (a traced value included).
        """
        traced = "update_stats must be a Python bool (whether to store the new u and sigma), got a traced value"
        if update_stats is None:  # the layer's switch, as model.train() / model.eval() set it
            update = _layers.static_mode(
                "SpectralNorm",
                "use_running_average",
                self.use_running_average,
                None,
                missing=_missing("use_running_average"),
                traced=traced,
            )
        else:
            update = _layers.static_mode("SpectralNorm", "update_stats", None, update_stats, traced=traced)
        by_name = {_path_name(p): v for p, v in _params_of(self.layer_instance)}
        pairs, updates = [], []
        for name in self.paths:
            v = by_name[name]
            u, sigma = self.batch_stats[f"{name}/u"], self.batch_stats[f"{name}/sigma"]
            out, new_u, s = _norms.spectral_normalize(
                v[...], u[...], n_power_iterations=self.n_steps, train=update, epsilon=self.epsilon
            )
            pairs.append((v, out.astype(self.dtype or jnp.result_type(v[...], new_u, s))))
            updates.append((u, sigma, new_u, s))
        if update:
            for u, sigma, new_u, s in updates:
                u[...], sigma[...] = new_u, s.astype(sigma[...].dtype)
        with _substituted(pairs):
            return self.layer_instance(x, *args, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# dropout


class _Stochastic(nnx.Module):
    """The rate, the ``deterministic`` switch and the random stream every dropout layer shares."""

    def __init__(
        self,
        rate: float = 0.5,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ):
        check_rate(type(self).__name__, rate)
        self._check_rate(rate)
        self.rate = rate
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.rngs = _stream(rngs, rng_collection, type(self).__name__)

    def set_view(self, deterministic: bool | None = None):
        """``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _check_rate(self, rate) -> None:
        """A layer's own check of ``rate`` beyond [0, 1] (none here)."""

    def _apply(self, fn, x, deterministic, rngs, **kw):
        """``fn(x, rate, key=…, train=…)``: its eval map (no key drawn) in eval or for rate 0; a non-float input is
        refused here, so that the error names the layer."""
        name = type(self).__name__
        train = _mode(name, "deterministic", self.deterministic, deterministic)
        check_float_input(name, x)
        if train is False or (not is_traced(self.rate) and float(self.rate) == 0.0):
            return fn(x, self.rate, train=False, **kw)  # no key drawn: the stream advances only when it is used
        return fn(x, self.rate, key=_key(rngs, self.rngs, self.rng_collection, name), train=train, **kw)


class Dropout(_Stochastic):
    """Inverted dropout layer: ``y = ξ ⊙ x/(1 − rate)``, ``ξ ~ Bernoulli(1 − rate)``, the identity in eval.

    See :func:`jaxnorm.dropout`; ``broadcast_dims`` share the mask along those axes. The constructor and call of
    ``flax.nnx.Dropout``: the same ``rngs`` give the same masks.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        rate: the drop probability, in [0, 1].
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or None (then pass ``rngs=`` at call).
        broadcast_dims: axes along which the mask is shared.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> y = layer(x)  # a new mask per call
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """

    def __init__(self, rate: float = 0.5, *, broadcast_dims: Sequence[int] = (), **kwargs):
        super().__init__(rate, **kwargs)
        self.broadcast_dims = tuple(broadcast_dims)

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or training has no stream and no ``rngs``.
            TypeError: if ``x`` is not a float array, or ``deterministic`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.dropout, x, deterministic, rngs, broadcast_dims=self.broadcast_dims)


class OriginalDropout(_Stochastic):
    """Original dropout layer: ``y = ξ ⊙ x`` in training, ``(1 − rate)·x`` in eval.

    See :func:`jaxnorm.original_dropout`.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        rate: the drop probability, in [0, 1].
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or None (then pass ``rngs=`` at call).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nnx.OriginalDropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> y = layer(x)  # a new mask per call
        >>> bool((layer(x, deterministic=True) == 0.5).all())
        True
    """

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or training has no stream and no ``rngs``.
            TypeError: if ``x`` is not a float array, or ``deterministic`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.original_dropout, x, deterministic, rngs)


class SpatialDropout(_Stochastic):
    """Channel dropout layer: one mask value per example and channel of ``N×…×C``, shared over space.

    See :func:`jaxnorm.spatial_dropout`; the identity in eval.

    Reduces over: nothing (one mask per channel).

    Reference: Tompson, Goroshin, Jain, LeCun & Bregler (2015), Efficient Object Localization Using Convolutional
    Networks.

    Args:
        rate: the drop probability, in [0, 1].
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or None (then pass ``rngs=`` at call).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nnx.SpatialDropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> y = layer(x)  # a new mask per call
        >>> bool((y.min(axis=(1, 2)) == y.max(axis=(1, 2))).all())
        True
    """

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array with ``x``'s shape.

        Raises:
            ValueError: if ``x`` has rank < 3, no mode is given anywhere, or training has no stream and no
                ``rngs``.
            TypeError: if ``x`` is not a float array, or ``deterministic`` is not a Python bool or a traced boolean
                scalar.
        """
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ValueError(
                f"SpatialDropout: expected N×spatial…×C (rank >= 3, channels last), got shape {tuple(x.shape)}; "
                "an N×C input has no spatial axis to share the mask over: use Dropout"
            )
        return self._apply(_do.spatial_dropout, x, deterministic, rngs)


class GaussianDropout(_Stochastic):
    """Gaussian dropout layer: ``y = ξ ⊙ x``, ``ξ ~ N(1, rate/(1 − rate))``, the identity in eval.

    See :func:`jaxnorm.gaussian_dropout`.

    Reduces over: nothing (elementwise).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        rate: the equivalent Bernoulli drop probability, in [0, 1) (the noise variance ``rate/(1 − rate)`` is
            infinite at 1).
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or None (then pass ``rngs=`` at call).

    Raises:
        ValueError: if ``rate`` is outside [0, 1).
        TypeError: if ``rate`` is not a number.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nnx.GaussianDropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> y = layer(x)  # a new mask per call
        >>> bool((layer(x, deterministic=True) == x).all())
        True
    """

    def _check_rate(self, rate) -> None:
        """ValueError for ``rate >= 1`` now, not at every call (eval included)."""
        check_gaussian_rate("GaussianDropout", rate)

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or training has no stream and no ``rngs``.
            TypeError: if ``x`` is not a float array, or ``deterministic`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.gaussian_dropout, x, deterministic, rngs)


class AlphaDropout(_Stochastic):
    """Alpha dropout layer for SELU networks; the identity in eval.

    See :func:`jaxnorm.alpha_dropout`.

    Reduces over: nothing (elementwise).

    Reference: Klambauer, Unterthiner, Mayr & Hochreiter (2017), Self-Normalizing Neural Networks.

    Args:
        rate: the drop probability, in [0, 1].
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` or None (then pass ``rngs=`` at call).

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nnx.AlphaDropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> y = layer(x)  # a new mask per call
        >>> bool((layer(x, deterministic=True) == x).all())
        True
    """

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array with ``x``'s shape.

        Raises:
            ValueError: if no mode is given anywhere, or training has no stream and no ``rngs``.
            TypeError: if ``x`` is not a float array, or ``deterministic`` is not a Python bool or a traced boolean
                scalar.
        """
        return self._apply(_do.alpha_dropout, x, deterministic, rngs)


class DropConnectLinear(_Stochastic):
    """DropConnect linear layer (flax.nnx): ``y = x @ (ξ ⊙ W/(1 − rate)) + b`` in training, ``x @ W + b`` in eval.

    See :func:`jaxnorm.dropconnect`: each kernel entry is dropped on its own (``ξ ~ Bernoulli(1 − rate)`` per
    weight), one mask for the whole batch of a call. Parameters ``kernel`` (``in×out``) and ``bias``, as
    ``flax.nnx.Linear``; the mask comes from the ``rng_collection`` stream forked at construction, or the call's
    ``rngs``.

    Reduces over: nothing (one mask value per weight).

    Reference: Wan, Zeiler, Zhang, LeCun & Fergus (2013), Regularization of Neural Networks using DropConnect.

    Args:
        in_features: the input size (the last axis of ``x``).
        out_features: the output size.
        rate: the drop probability of each weight, in [0, 1] (default 0.5).
        use_bias: learn a bias ``b`` (default True).
        kernel_init: the kernel's initializer (default LeCun normal).
        bias_init: the bias's initializer (default zeros).
        dtype: the dtype of the computation, as ``flax.nnx.Linear``'s: None (default) promotes the input, the
            kernel and the bias together (``flax.nnx.nn.dtypes.promote_dtype``: ``jnp.result_type``, and at least
            float32 for an integer input), else all three are cast to it.
        param_dtype: dtype of the parameters (default float32).
        deterministic: the mode if the call gives none (False: training; True: eval).
        rng_collection: the stream forked from ``rngs`` at construction (default ``'dropout'``).
        rngs: an ``nnx.Rngs`` (initializes the parameters and gives the mask stream).

    Raises:
        ValueError: if ``rate`` is outside [0, 1], or ``in_features`` or ``out_features`` is not a positive int.
        TypeError: if ``rngs`` is not an ``nnx.Rngs``, or ``rate`` is not a number.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.nnx.DropConnectLinear(3, 2, rngs=nnx.Rngs(0, dropout=1))
        >>> y = layer(x)  # a new weight mask per call
        >>> y_eval = layer(x, deterministic=True)  # x @ kernel + bias
        >>> print(y.shape, bool(jnp.allclose(y_eval, x @ layer.kernel[...] + layer.bias[...])))
        (4, 2) True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rate: float = 0.5,
        use_bias: bool = True,
        kernel_init: Initializer = nnx.initializers.lecun_normal(),
        bias_init: Initializer = nnx.initializers.zeros_init(),
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs,
    ):
        rngs = _needs_rngs("DropConnectLinear", rngs)
        super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
        self.in_features = check_positive_int("DropConnectLinear", "in_features", in_features)
        self.out_features = check_positive_int("DropConnectLinear", "out_features", out_features)
        self.dtype, self.param_dtype = dtype, param_dtype
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
        self.bias = _param(use_bias, bias_init, rngs, (out_features,), param_dtype)

    def __call__(self, x, *, deterministic: bool | None = None, rngs=None):
        """Applies the linear map with a dropped kernel in training, the plain kernel otherwise.

        Args:
            x: the input ``…×in_features``.
            deterministic: True: eval; False: training; None: the layer's attribute.
            rngs: the call's randomness (an ``nnx.Rngs``, an ``nnx.RngStream`` or a key) instead of the layer's stream.

        Returns:
            An array ``…×out_features`` in ``flax.nnx.Linear``'s dtype: ``dtype`` if set, else the promoted dtype of
            ``x``, the kernel and the bias (float32 for an integer or bfloat16 input with float32 parameters).

        Raises:
            ValueError: if ``x`` does not end in ``in_features``, or no mode is given anywhere.
            TypeError: if ``deterministic`` is not a Python bool or a traced boolean scalar.
        """
        x = jnp.asarray(x)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"DropConnectLinear: the input of shape {tuple(x.shape)} must end in in_features={self.in_features}"
            )
        kernel = self._apply(_do.dropconnect, self.kernel[...], deterministic, rngs)  # the mask in param_dtype
        x, kernel, bias = promote_dtype((x, kernel, _value(self.bias)), dtype=self.dtype)  # as nnx.Linear
        y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        return y if bias is None else y + jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))


# --------------------------------------------------------------------------------------------------------------------
# population statistics and folding for a whole model


def _stat_layers(model) -> list[tuple[str, _RunningStats]]:
    """``(path name, layer)`` of every jaxnorm batch-statistics layer of ``model``."""
    return [(_path_name(p), m) for p, m in nnx.iter_graph(model) if isinstance(m, _RunningStats)]


def population_batch_stats(model: nnx.Module, batches: Iterable[Any], **call_kwargs) -> nnx.Module:
    """Replaces every batch-statistics layer's running statistics by population statistics over ``batches``.

    Ioffe & Szegedy's inference statistics (2015, §3.1): ``E[x] = E_B[μ_B]`` and ``Var[x] = E_B[m/(m − 1)·σ²_B]``,
    ``m`` the number of values per channel in a batch (see :func:`jaxnorm.population_stats`; batches of different
    sizes are weighted by their counts). Each batch goes through ``model(batch, **call_kwargs)`` with batch norm in
    training mode (each layer sees the activations the trained network produces, normalized with batch statistics,
    as in Ioffe & Szegedy's Algorithm 2) and dropout off (``deterministic=True``, the noise of
    :class:`NoisyBatchNorm` included), in one jitted function of a copy, so the parameters and the running
    statistics are not touched while the moments (:class:`BatchMoments`) are collected. Then the ``mean``, ``var``
    and ``count`` (the number of batches) of ``model``'s :class:`BatchNorm`, :class:`BatchRenorm`,
    :class:`LpBatchNorm` and :class:`NoisyBatchNorm` layers are overwritten in place. Each batch is a whole batch on
    this device: a layer synchronized across devices (``axis_name``) takes the batch's own statistics here.

    Reduces over: per layer, every axis of its input but its ``axis`` in each batch, then over the batches.

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        model: an NNX model with at least one jaxnorm batch-statistics layer; its parameters should be trained.
        batches: an iterable of model inputs (e.g. training batches), consumed once.
        **call_kwargs: further arguments of every ``model(batch, ...)`` call.

    Returns:
        ``model`` itself, its running statistics replaced (for chaining: ``population_batch_stats(m, b).eval()``).

    Raises:
        ValueError: if ``model`` has no jaxnorm batch-statistics layer, or ``batches`` is empty.

    Examples:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> model = nnx.Sequential(jn.nnx.BatchNorm(2, rngs=nnx.Rngs(0)))
        >>> batches = [jnp.array([[0.0, 2.0], [2.0, 6.0]]), jnp.array([[4.0, 2.0], [6.0, 6.0]])]
        >>> bn = jn.nnx.population_batch_stats(model, batches).layers[0]
        >>> print(bn.mean[...].tolist(), bn.var[...].tolist(), int(bn.count[...]))  # Var: 2/(2 − 1)·σ²_B
        [3.0, 4.0] [2.0, 8.0] 2
    """
    layers = _stat_layers(model)
    if not layers:
        raise ValueError(
            "population_batch_stats: the model has no jaxnorm.nnx batch-statistics layer (BatchNorm, "
            "BatchRenorm, LpBatchNorm, NoisyBatchNorm)"
        )
    view = nnx.view(model, use_running_average=False, deterministic=True, raise_if_not_found=False)
    for _, layer in _stat_layers(view):
        layer.record_moments = True
        # each given batch is a whole batch on this device: a synchronized layer's statistics are its own here
        layer.axis_name = None
    graphdef, state = nnx.split(view)

    @jax.jit
    def moments(state, batch):
        copy = nnx.merge(graphdef, state)
        copy(batch, **call_kwargs)
        return {
            name: layer.batch_moments.get_value()
            for name, layer in _stat_layers(copy)
            if hasattr(layer, "batch_moments")
        }

    pop = _norms.population_stats(moments(state, b) for b in batches)
    for name, layer in layers:
        if name in pop:
            st = pop[name]
            layer.mean[...] = st["mean"].astype(layer.mean[...].dtype)
            layer.var[...] = st["var"].astype(layer.var[...].dtype)
            layer.count[...] = st["count"]
    return model


class FoldedBatchNorm(nnx.Module):
    """The identity layer that :func:`fold_batch_norm` puts where a batch norm was folded into the preceding layer.

    The fold itself is :func:`jaxnorm.fold_batch_norm` (``W' = W·a``, ``b' = a·(b − E[x]) + β`` with
    ``a = γ/√(Var + ε)``); what is left in the norm's place accepts the norm's call arguments
    (``use_running_average``, ``mask``, ...) and ignores them, so the folded model is called as before. It has no
    arguments, parameters or statistics.

    Reduces over: nothing (the identity).

    Reference: Jacob et al. (2018), Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference (§3.2, batch normalization folding).

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 3))
        >>> layer = jn.nnx.FoldedBatchNorm()
        >>> print(bool((layer(x, use_running_average=True) == x).all()))
        True
    """

    def __call__(self, x, *args, **kwargs):
        """Returns ``x`` unchanged.

        Args:
            x: the input.
            *args: ignored (the folded norm's positional arguments).
            **kwargs: ignored (the folded norm's keyword arguments).

        Returns:
            ``x`` itself.
        """
        return x


def _walk(model, path: str):
    """(parent, key, node) for a '/'-joined attribute path ('block/conv', 'layers/0')."""
    parent, key, node = None, None, model
    for part in path.split("/"):
        parent, key = node, part
        try:
            node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError, TypeError):
            raise KeyError(
                f"fold_batch_norm: path {path!r} not found in {type(model).__name__} (at {part!r})"
            ) from None
    return parent, key, node


def fold_batch_norm(model: nnx.Module, pairs: Mapping[str, str]) -> nnx.Module:
    """Returns a copy of ``model`` with each batch norm of ``pairs`` folded into the Linear/Conv layer before it.

    Batch norm's inference form is affine, ``BN(Wx + b) = a·(Wx + b) + β − a·E[x]`` with ``a = γ/√(Var + ε)``, so
    the layer gets ``W' = W·a`` (per output channel, the kernel's last axis) and ``b' = a·(b − E[x]) + β``
    (:func:`jaxnorm.fold_batch_norm`; a layer without a bias gets one), and the norm is replaced by
    :class:`FoldedBatchNorm`. The copy in eval mode computes what ``model`` computes in eval mode (with its running
    or population statistics), with one layer fewer per pair; ``model`` is not modified. Works for jaxnorm's and
    Flax's ``nnx.BatchNorm`` (feature axis -1).

    Reduces over: nothing (the running statistics are already per channel).

    Reference: Jacob et al. (2018), Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference (§3.2, batch normalization folding).

    Args:
        model: the NNX model (its batch norms' running statistics are used as stored).
        pairs: ``{layer_path: bn_path}``, attribute paths joined with '/' (``'block/conv'``; a list index for
            ``nnx.Sequential``: ``'layers/0'``); each batch norm must directly follow its layer.

    Returns:
        The folded copy.

    Raises:
        KeyError: if a path is not found in ``model``.
        ValueError: if a layer has no ``kernel`` parameter, a norm has no running ``mean``/``var``, or a norm's
            axis is not the kernel's output axis (-1).

    Examples:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> import jaxnorm as jn
        >>> model = nnx.Sequential(nnx.Linear(3, 2, rngs=nnx.Rngs(0)), jn.nnx.BatchNorm(2, rngs=nnx.Rngs(1)))
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> _ = model(x)  # training: the running statistics move
        >>> model.eval()
        >>> folded = jn.nnx.fold_batch_norm(model, {"layers/0": "layers/1"})
        >>> print(type(folded.layers[1]).__name__, bool(jnp.allclose(folded(x), model(x), atol=1e-5)))
        FoldedBatchNorm True
    """
    out = nnx.clone(model)
    for layer_path, bn_path in pairs.items():
        _, _, layer = _walk(out, layer_path)
        bn_parent, bn_key, bn = _walk(out, bn_path)
        if not isinstance(getattr(layer, "kernel", None), nnx.Param):
            raise ValueError(
                f"fold_batch_norm: {layer_path!r} ({type(layer).__name__}) has no 'kernel' parameter; "
                "fold into a Linear or Conv layer"
            )
        if not all(isinstance(getattr(bn, k, None), nnx.BatchStat) for k in ("mean", "var")):
            raise ValueError(
                f"fold_batch_norm: {bn_path!r} ({type(bn).__name__}) has no running 'mean'/'var'; "
                "pass a batch-norm layer"
            )
        if getattr(bn, "axis", -1) not in (-1, layer.kernel[...].ndim - 1):
            raise ValueError(
                f"fold_batch_norm: {bn_path!r} normalizes axis {bn.axis}; folding needs the channel "
                "axis -1, the kernel's output axis"
            )
        bias = getattr(layer, "bias", None)
        kernel, new_bias = _norms.fold_batch_norm(
            layer.kernel[...],
            _value(bias),
            _value(getattr(bn, "scale", None)),
            _value(getattr(bn, "bias", None)),
            {"mean": bn.mean[...], "var": bn.var[...]},
            epsilon=bn.epsilon,
        )
        layer.kernel[...] = kernel
        if bias is None:
            layer.bias = nnx.Param(new_bias)
            if hasattr(layer, "use_bias"):
                layer.use_bias = True
        else:
            bias[...] = new_bias
        if bn_key.lstrip("-").isdigit():  # as _walk reads it: an index into a list of layers
            bn_parent[int(bn_key)] = FoldedBatchNorm()
        else:
            setattr(bn_parent, bn_key, FoldedBatchNorm())
    return out
