"""Flax linen layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropouts`.

Running statistics live in the ``batch_stats`` collection (``mean``, ``var``, ``count``), dropout masks come from
the ``dropout`` rng stream, and every layer takes ``train`` (as an attribute or a call argument, not both), as
``flax.linen`` layers do. Every norm layer accepts ``train`` (the per-example norms ignore it), so a model can call
any of them the same way. As in Flax, running statistics are not updated by ``init``.

Examples:
    >>> import jax
    >>> import jaxnorm as jn
    >>> x = jax.random.normal(jax.random.key(0), (4, 3))
    >>> model = jn.nn.BatchNorm()
    >>> variables = model.init(jax.random.key(1), x, train=False)
    >>> y, state = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(2)})
    >>> print(model.apply({**variables, **state}, x, train=False).shape)
    (4, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import _layers
from jaxnorm import dropouts as _do
from jaxnorm import norms as _norms
from jaxnorm._checks import check_gaussian_rate, check_rate, is_traced

__all__ = [
    "AlphaDropout",
    "BatchNorm",
    "BatchRenorm",
    "DropConnectDense",
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
    "population_batch_stats",
]

Array = jax.Array
Initializer = Callable[..., Array]


def _train(module_value: bool | None, call_value: bool | None, name: str):
    """The merged ``train`` flag (``flax.linen.merge_param``'s rule: exactly one of the attribute and the call
    argument): a Python bool, or a traced boolean scalar (the pure functions then use ``lax.cond``)."""
    return _layers.mode(name, "train", module_value, call_value, exclusive=True)


class _Affine(nn.Module):
    """Shared per-channel γ/β parameters ('scale', 'bias') of the norm layers."""

    use_scale: bool = True
    use_bias: bool = True
    scale_init: Initializer = nn.initializers.ones
    bias_init: Initializer = nn.initializers.zeros
    param_dtype: Any = jnp.float32

    def _affine(self, features: int):
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype) if self.use_scale else None
        bias = self.param("bias", self.bias_init, (features,), self.param_dtype) if self.use_bias else None
        return scale, bias


class _RunningStats(_Affine):
    """Shared 'batch_stats' variables of the batch-statistics layers."""

    def _stats(self, features: int):
        init = _norms.init_batch_stats(features)
        return {k: self.variable("batch_stats", k, lambda v=v: v) for k, v in init.items()}

    def _store(self, variables, new_stats) -> None:
        if not self.is_initializing():  # Flax semantics: init does not move the running averages
            for k, var in variables.items():
                var.value = new_stats[k]

    def _normalize(self, fn, name: str, x, train, mask, **kw):
        """``fn(x, scale, bias, stats, train=…, epsilon=…, axis_name=…, mask=…, **kw)`` on this layer's parameters
        and running statistics; stores the new statistics in training. Returns ``(y, train, axis_name)``."""
        train = _train(self.train, train, name)
        scale, bias = self._affine(x.shape[-1])
        stats = self._stats(x.shape[-1])
        axis_name = None if self.is_initializing() else self.axis_name
        y, new = fn(
            x,
            scale,
            bias,
            {k: v.value for k, v in stats.items()},
            train=train,
            epsilon=self.epsilon,
            axis_name=axis_name,
            mask=mask,
            **kw,
        )
        if train is not False:  # a traced train: the pure function returned the old statistics in eval
            self._store(stats, new)
        return y, train, axis_name

    def _sow_moments(self, x, mask, axis_name) -> None:
        """Record this batch's moments when the caller asks for them (see :func:`population_batch_stats`)."""
        if self.is_mutable_collection("batch_moments"):
            m = _norms.batch_moments(x, axis=-1, mask=mask, axis_name=axis_name)
            for k, v in m.items():
                self.put_variable("batch_moments", k, v)


class BatchNorm(_RunningStats):
    """Batch normalization layer (flax.linen): ``y = γ·(x − μ_B)/√(σ²_B + ε) + β`` in training.

    See :func:`jaxnorm.batch_norm` for the formula and the options. In training the batch statistics normalize and
    the running averages in ``batch_stats`` (``mean``, ``var``, ``count``) move; in eval the running statistics
    normalize. ``init`` does not move them (Flax semantics). In training the batch's moments are also recorded in a
    ``batch_moments`` collection when it is mutable (see :func:`population_batch_stats`).

    Reduces over: every axis but the last (N, H, W for NHWC input), and over ``axis_name`` when given.

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        train: the mode, if not given at call time.
        epsilon: ε added to the variance.
        axis_name: a mapped axis to synchronize the statistics over (sums and counts).
        momentum: ``'auto'`` (0.99 for ``convention='flax'``, 0.1 for ``'pytorch'``), a number in [0, 1], or None
            for a cumulative average.
        axis_index_groups: groups of devices for ``axis_name``.
        convention: ``'flax'`` (decay momentum, biased running variance) or ``'pytorch'``.
        virtual_batch_size: normalize each group of that many examples with its own statistics (ghost batch norm).
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Raises:
        ValueError: at call, for a momentum outside [0, 1], an unknown convention, or a bad shape (see
            :func:`jaxnorm.batch_norm`).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nn.BatchNorm(momentum=0.9)
        >>> variables = layer.init(jax.random.key(1), x, train=False)
        >>> y, state = layer.apply(variables, x, train=True, mutable=['batch_stats'],
        ...                        rngs={'dropout': jax.random.key(2)})
        >>> print(y.shape, int(state['batch_stats']['count']))
        (8, 3) 1
        >>> y_eval = layer.apply({**variables, **state}, x, train=False)  # the running statistics
        >>> print(y_eval.shape)
        (8, 3)
    """

    train: bool | None = None
    momentum: float | None | str = "auto"
    epsilon: float = 1e-5
    axis_name: str | None = None
    axis_index_groups: Any = None
    convention: str = "flax"
    virtual_batch_size: int | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last) and, in training, stores the new running statistics.

        Args:
            x: the input ``N×…×C``.
            train: True: batch statistics, the running ones updated (apply with ``mutable=['batch_stats']``); False: the
                running statistics. Give it here or as the attribute, not both; a traced boolean scalar picks the mode
                with ``lax.cond``.
            mask: optional, True = valid: shape ``(N,)`` or aligned with ``x``'s leading axes; masked values stay out of
                the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given both as the attribute and at call time, or neither.
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._batch_norm(_norms.batch_norm, type(self).__name__, x, train, mask)

    def _batch_norm(self, fn, name: str, x, train, mask, **kw):
        y, train, axis_name = self._normalize(
            fn,
            name,
            x,
            train,
            mask,
            axis_index_groups=self.axis_index_groups,
            convention=self.convention,
            virtual_batch_size=self.virtual_batch_size,
            **_layers.momentum_option(name, self.momentum),
            **kw,
        )
        if train is not False:
            self._sow_moments(x, mask, axis_name)
        return y


class NoisyBatchNorm(BatchNorm):
    """Batch norm plus Santurkar et al.'s Algorithm 1 noise in training: ``a_ij ← s_ij·a_ij + m_ij``.

    See :func:`jaxnorm.noisy_batch_norm` (the layer calls it) and :func:`jaxnorm.batch_norm_noise`. The noise is
    drawn from the ``rng_collection`` stream (default ``'dropout'``, so ``rngs={'dropout': key}`` with a new key per
    step gives new noise per step); no noise in eval or at ``init``.

    Reduces over: every axis but the last, as :class:`BatchNorm`.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?

    Args:
        n_mu: per-unit mean shifts μ_j ~ U(−n_mu, n_mu).
        n_sigma: per-unit scales σ_j ~ U(1, n_sigma).
        r_mu: per-sample spread of the additive noise.
        r_sigma: per-sample standard deviation of the multiplicative noise.
        rng_collection: the PRNG stream of the noise.
        others: as :class:`BatchNorm`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nn.NoisyBatchNorm()
        >>> variables = layer.init(jax.random.key(1), x, train=False)
        >>> y, state = layer.apply(variables, x, train=True, mutable=['batch_stats'],
        ...                        rngs={'dropout': jax.random.key(2)})
        >>> print(y.shape, int(state['batch_stats']['count']))
        (8, 3) 1
        >>> y_eval = layer.apply({**variables, **state}, x, train=False)  # the running statistics
        >>> print(y_eval.shape)
        (8, 3)
    """

    n_mu: float = 0.5
    n_sigma: float = 1.25
    r_mu: float = 0.1
    r_sigma: float = 0.1
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last) and, in training, stores the new running statistics.

        Args:
            x: the input ``N×…×C``.
            train: True: batch statistics, the running ones updated (apply with ``mutable=['batch_stats']``); False: the
                running statistics. Give it here or as the attribute, not both; a traced boolean scalar picks the mode
                with ``lax.cond``.
            mask: optional, True = valid: shape ``(N,)`` or aligned with ``x``'s leading axes; masked values stay out of
                the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given both as the attribute and at call time, or neither, or if training has
                no ``rng_collection`` stream.
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        name = "NoisyBatchNorm"
        if _train(self.train, train, name) is False or self.is_initializing():  # no noise
            return self._batch_norm(_norms.batch_norm, name, x, train, mask)
        if not self.has_rng(self.rng_collection):
            raise ValueError(
                f"NoisyBatchNorm: train=True needs a {self.rng_collection!r} PRNG stream: "
                f"model.apply(..., rngs={{{self.rng_collection!r}: key}}) with a new key every step"
            )
        return self._batch_norm(
            _norms.noisy_batch_norm,
            name,
            x,
            train,
            mask,
            key=self.make_rng(self.rng_collection),
            n_mu=self.n_mu,
            n_sigma=self.n_sigma,
            r_mu=self.r_mu,
            r_sigma=self.r_sigma,
        )


class BatchRenorm(_RunningStats):
    """Batch renormalization layer: ``y = γ·((x − μ_B)/σ_B·r + d) + β``, r and d clipped.

    See :func:`jaxnorm.batch_renorm`: ``r = σ_B/σ`` clipped to ``[1/r_max, r_max]``, ``d = (μ_B − μ)/σ`` clipped to
    ``[−d_max, d_max]`` (μ, σ the running statistics, no gradient through r, d); eval uses the running statistics.

    Reduces over: every axis but the last.

    Reference: Ioffe (2017), Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models.

    Args:
        train: the mode, if not given at call time.
        epsilon: ε added to the variance.
        axis_name: a mapped axis to synchronize the statistics over (sums and counts).
        r_max: bound on r (>= 1).
        d_max: bound on ``|d|`` (>= 0).
        momentum: decay of the running averages, in [0, 1].
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nn.BatchRenorm()
        >>> variables = layer.init(jax.random.key(1), x, train=False)
        >>> y, state = layer.apply(variables, x, train=True, mutable=['batch_stats'],
        ...                        rngs={'dropout': jax.random.key(2)})
        >>> print(y.shape, int(state['batch_stats']['count']))
        (8, 3) 1
        >>> y_eval = layer.apply({**variables, **state}, x, train=False)  # the running statistics
        >>> print(y_eval.shape)
        (8, 3)
    """

    train: bool | None = None
    r_max: float = 3.0
    d_max: float = 5.0
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last) and, in training, stores the new running statistics.

        Args:
            x: the input ``N×…×C``.
            train: True: batch statistics, the running ones updated (apply with ``mutable=['batch_stats']``); False: the
                running statistics. Give it here or as the attribute, not both; a traced boolean scalar picks the mode
                with ``lax.cond``.
            mask: optional, True = valid: shape ``(N,)`` or aligned with ``x``'s leading axes; masked values stay out of
                the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given both as the attribute and at call time, or neither.
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._normalize(
            _norms.batch_renorm,
            "BatchRenorm",
            x,
            train,
            mask,
            r_max=self.r_max,
            d_max=self.d_max,
            momentum=self.momentum,
        )[0]


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization layer: ``y = γ·(x − μ_B)/(‖x − μ_B‖_p/m^(1/p) + ε) + β`` per channel.

    See :func:`jaxnorm.lp_batch_norm` for the exact scale of each p in {1, 2, 'inf'}.

    Reduces over: every axis but the last.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? (§3.3).

    Args:
        train: the mode, if not given at call time.
        epsilon: ε added to the variance.
        axis_name: a mapped axis to synchronize the statistics over (sums and counts).
        p: 1, 2 or ``'inf'``.
        momentum: decay of the running averages, in [0, 1].
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> layer = jn.nn.LpBatchNorm(p=1)
        >>> variables = layer.init(jax.random.key(1), x, train=False)
        >>> y, state = layer.apply(variables, x, train=True, mutable=['batch_stats'],
        ...                        rngs={'dropout': jax.random.key(2)})
        >>> print(y.shape, int(state['batch_stats']['count']))
        (8, 3) 1
        >>> y_eval = layer.apply({**variables, **state}, x, train=False)  # the running statistics
        >>> print(y_eval.shape)
        (8, 3)
    """

    train: bool | None = None
    p: int | str = 2
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last) and, in training, stores the new running statistics.

        Args:
            x: the input ``N×…×C``.
            train: True: batch statistics, the running ones updated (apply with ``mutable=['batch_stats']``); False: the
                running statistics. Give it here or as the attribute, not both; a traced boolean scalar picks the mode
                with ``lax.cond``.
            mask: optional, True = valid: shape ``(N,)`` or aligned with ``x``'s leading axes; masked values stay out of
                the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given both as the attribute and at call time, or neither.
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._normalize(_norms.lp_batch_norm, "LpBatchNorm", x, train, mask, p=self.p, momentum=self.momentum)[0]


class LayerNorm(_Affine):
    """Layer normalization layer: ``y = γ·(x − μ)/√(σ² + ε) + β`` per example, per-channel γ, β.

    See :func:`jaxnorm.layer_norm`. ``LayerNorm(axes=-1)`` is ``flax.linen.LayerNorm()``.

    Reduces over: ``axes`` (default every axis but the batch axis 0).

    Reference: Ba, Kiros & Hinton (2016), Layer Normalization.

    Args:
        epsilon: ε added to the variance.
        axes: the axes reduced over (None: all but axis 0).
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nn.LayerNorm()
        >>> variables = layer.init(jax.random.key(1), x)
        >>> y = layer.apply(variables, x, train=True)  # the same map at train and eval
        >>> print(y.shape)
        (2, 4, 4, 8)
    """

    epsilon: float = 1e-5
    axes: int | Sequence[int] | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last); ``train`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            train: ignored (the same map at train and test), so models can call every norm the same way.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.
        """
        del train  # same computation at train and test
        scale, bias = self._affine(x.shape[-1])
        return _norms.layer_norm(x, scale, bias, epsilon=self.epsilon, axes=self.axes, mask=mask)


class InstanceNorm(_Affine):
    """Instance normalization layer: ``y = γ·(x − μ)/√(σ² + ε) + β`` per example and channel.

    See :func:`jaxnorm.instance_norm`.

    Reduces over: the spatial axes (H, W for NHWC input).

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), Instance Normalization: The Missing Ingredient for Fast
    Stylization.

    Args:
        epsilon: ε added to the variance.
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nn.InstanceNorm()
        >>> variables = layer.init(jax.random.key(1), x)
        >>> y = layer.apply(variables, x, train=True)  # the same map at train and eval
        >>> print(y.shape)
        (2, 4, 4, 8)
    """

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last); ``train`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            train: ignored (the same map at train and test), so models can call every norm the same way.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.
        """
        del train
        scale, bias = self._affine(x.shape[-1])
        return _norms.instance_norm(x, scale, bias, epsilon=self.epsilon, mask=mask)


class GroupNorm(_Affine):
    """Group normalization layer: ``y = γ·(x − μ_g)/√(σ²_g + ε) + β`` per example and group of channels.

    See :func:`jaxnorm.group_norm`. As in Flax, ``num_groups`` defaults to 32; to give ``group_size`` instead pass
    ``num_groups=None``.

    Reduces over: the spatial axes and the channels of each group.

    Reference: Wu & He (2018), Group Normalization.

    Args:
        num_groups: the number of groups G (C must be divisible by G).
        group_size: channels per group, with ``num_groups=None``.
        epsilon: ε added to the variance.
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nn.GroupNorm(num_groups=2)
        >>> variables = layer.init(jax.random.key(1), x)
        >>> y = layer.apply(variables, x, train=True)  # the same map at train and eval
        >>> print(y.shape)
        (2, 4, 4, 8)
    """

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last); ``train`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            train: ignored (the same map at train and test), so models can call every norm the same way.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.
        """
        del train
        scale, bias = self._affine(x.shape[-1])
        return _norms.group_norm(
            x, scale, bias, num_groups=self.num_groups, group_size=self.group_size, epsilon=self.epsilon, mask=mask
        )


class RMSNorm(nn.Module):
    """RMS normalization layer: ``y = γ·x/√(mean(x²) + ε)``, per-channel γ, no centring.

    See :func:`jaxnorm.rms_norm`.

    Reduces over: ``axes`` (default every axis but the batch axis 0).

    Reference: Zhang & Sennrich (2019), Root Mean Square Layer Normalization.

    Args:
        epsilon: ε added to the mean square.
        axes: the axes reduced over (None: all but axis 0).
        use_scale: learn γ (``'scale'``, ``scale_init``, default ones).
        scale_init: initializer of γ.
        param_dtype: dtype of γ.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> layer = jn.nn.RMSNorm()
        >>> variables = layer.init(jax.random.key(1), x)
        >>> y = layer.apply(variables, x, train=True)  # the same map at train and eval
        >>> print(y.shape)
        (2, 4, 4, 8)
    """

    epsilon: float = 1e-5
    axes: int | Sequence[int] | None = None
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Normalizes ``x`` (channels last); ``train`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            train: ignored (the same map at train and test), so models can call every norm the same way.
            mask: optional, True = valid: values that enter the statistics.

        Returns:
            The normalized array, with ``x``'s shape and dtype.
        """
        del train
        scale = self.param("scale", self.scale_init, (x.shape[-1],), self.param_dtype) if self.use_scale else None
        return _norms.rms_norm(x, scale, epsilon=self.epsilon, axes=self.axes, mask=mask)


class StandardizedConv(nn.Module):
    """A channels-last convolution whose kernel is weight-standardized at every call: ``Ŵ = (W − μ)/√(σ² + ε)``.

    See :func:`jaxnorm.weight_standardize`; the raw kernel is the stored parameter. Pairs with :class:`GroupNorm` for
    small batches. 1-, 2- and 3-D.

    Reduces over: every kernel axis but the output-channel axis (per output channel).

    Reference: Qiao, Wang, Liu, Shen & Yuille (2019), Micro-Batch Training with Batch-Channel Normalization and Weight
    Standardization.

    Args:
        features: output channels.
        kernel_size: the window, one int per spatial axis.
        strides: an int or one per spatial axis.
        padding: ``'SAME'``, ``'VALID'`` or explicit pairs.
        use_bias: add a learned bias.
        epsilon: ε added to the kernel variance.
        kernel_init: initializer of the raw kernel.
        bias_init: initializer of the bias.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
        >>> conv = jn.nn.StandardizedConv(features=4, kernel_size=(3, 3))
        >>> variables = conv.init(jax.random.key(1), x)
        >>> print(conv.apply(variables, x).shape)
        (2, 8, 8, 4)
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    use_bias: bool = True
    epsilon: float = 1e-5
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        """Convolves ``x`` with the standardized kernel.

        Args:
            x: the input ``N×spatial…×C``, with as many spatial axes as ``kernel_size``.

        Returns:
            ``N×spatial'…×features``.

        Raises:
            ValueError: if ``x`` does not have ``len(kernel_size) + 2`` axes.
        """
        ks = tuple(self.kernel_size)
        nd = len(ks)
        if x.ndim != nd + 2:
            raise ValueError(f"StandardizedConv: a {nd}-D kernel needs input N×{'×'.join('S' * nd)}×C, got {x.shape}")
        kernel = self.param("kernel", self.kernel_init, ks + (x.shape[-1], self.features), jnp.float32)
        strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
        sp = "DHW"[-nd:]
        y = jax.lax.conv_general_dilated(
            x,
            _norms.weight_standardize(kernel, epsilon=self.epsilon).astype(x.dtype),
            strides,
            self.padding,
            dimension_numbers=(f"N{sp}C", f"{sp}IO", f"N{sp}C"),
        )
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y


# --------------------------------------------------------------------------------------------------------------------
# dropout layers


class _Stochastic(nn.Module):
    rate: float = 0.5
    train: bool | None = None
    rng_collection: str = "dropout"

    def _key(self, name: str):
        if not self.has_rng(self.rng_collection):
            raise ValueError(
                f"{name}: train=True needs a {self.rng_collection!r} PRNG stream: "
                f"model.apply(variables, x, train=True, rngs={{{self.rng_collection!r}: jax.random.key(0)}})"
            )
        return self.make_rng(self.rng_collection)

    def _apply(self, fn, x, train, name, **kw):
        train = _train(self.train, train, name)
        check_rate(name, self.rate)
        if train is False or (not is_traced(self.rate) and float(self.rate) == 0.0):
            return x
        return fn(x, self.rate, key=self._key(name), train=train, **kw)


class Dropout(_Stochastic):
    """Inverted dropout layer: ``y = ξ ⊙ x/(1 − rate)``, ``ξ ~ Bernoulli(1 − rate)``, the identity in eval.

    See :func:`jaxnorm.dropout`; ``broadcast_dims`` share the mask along those axes.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        rate: the drop probability, in [0, 1].
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the masks (default ``'dropout'``).
        broadcast_dims: axes along which the mask is shared.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nn.Dropout(0.5)
        >>> y, _ = layer.apply({}, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        >>> print(y.shape)
        (4, 2, 2, 3)
        >>> bool(((y == 0) | (y == 2)).all())
        True
    """

    broadcast_dims: Sequence[int] = ()

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._apply(_do.dropout, x, train, "Dropout", broadcast_dims=self.broadcast_dims)


class OriginalDropout(_Stochastic):
    """Srivastava et al.'s original dropout layer: ``y = ξ ⊙ x`` in training, ``(1 − rate)·x`` in eval.

    See :func:`jaxnorm.original_dropout`; the eval scaling is not the identity, so it is applied at ``train=False``.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        rate: the drop probability, in [0, 1].
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the masks.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nn.OriginalDropout(0.5)
        >>> y, _ = layer.apply({}, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        >>> print(y.shape)
        (4, 2, 2, 3)
        >>> bool((layer.apply({}, x, train=False) == 0.5).all())
        True
    """

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        train = _train(self.train, train, "OriginalDropout")
        if train is False:
            return _do.original_dropout(x, self.rate, train=False)
        return self._apply(_do.original_dropout, x, train, "OriginalDropout")


class SpatialDropout(_Stochastic):
    """Channel dropout layer: ``y = ξ ⊙ x/(1 − rate)`` with one ξ per example and channel, shared over space.

    See :func:`jaxnorm.spatial_dropout`; the identity in eval.

    Reference: Tompson, Goroshin, Jain, LeCun & Bregler (2015), Efficient Object Localization Using Convolutional
    Networks.

    Args:
        rate: the drop probability, in [0, 1].
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the masks.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nn.SpatialDropout(0.5)
        >>> y, _ = layer.apply({}, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        >>> print(y.shape)
        (4, 2, 2, 3)
        >>> bool((y.min(axis=(1, 2)) == y.max(axis=(1, 2))).all())
        True
    """

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._apply(_do.spatial_dropout, x, train, "SpatialDropout")


class GaussianDropout(_Stochastic):
    """Gaussian dropout layer: ``y = ξ ⊙ x``, ``ξ ~ N(1, rate/(1 − rate))``, the identity in eval.

    See :func:`jaxnorm.gaussian_dropout`.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting (§10).

    Args:
        rate: the equivalent drop probability, in [0, 1).
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the noise.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nn.GaussianDropout(0.5)
        >>> y, _ = layer.apply({}, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        >>> print(y.shape)
        (4, 2, 2, 3)
        >>> bool((layer.apply({}, x, train=False) == x).all())
        True
    """

    def __post_init__(self):  # pragma: no mutate block (a mutmut trampoline breaks linen's construction)
        """ValueError for ``rate >= 1`` at construction, as the NNX and Equinox layers (eval would hide it)."""
        check_rate("GaussianDropout", self.rate)
        check_gaussian_rate("GaussianDropout", self.rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._apply(_do.gaussian_dropout, x, train, "GaussianDropout")


class AlphaDropout(_Stochastic):
    """Alpha dropout layer for SELU networks: dropped units set to SELU's saturation, then an affine map.

    The affine map keeps the mean and variance of SELU activations.

    See :func:`jaxnorm.alpha_dropout`; the identity in eval.

    Reference: Klambauer, Unterthiner, Mayr & Hochreiter (2017), Self-Normalizing Neural Networks.

    Args:
        rate: the drop probability, in [0, 1].
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the masks.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((4, 2, 2, 3))
        >>> layer = jn.nn.AlphaDropout(0.5)
        >>> y, _ = layer.apply({}, x, train=True, mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
        >>> print(y.shape)
        (4, 2, 2, 3)
        >>> bool((layer.apply({}, x, train=False) == x).all())
        True
    """

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """Applies the dropout in training, its eval map otherwise.

        Args:
            x: the input.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            An array with ``x``'s shape and dtype.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        return self._apply(_do.alpha_dropout, x, train, "AlphaDropout")


class DropConnectDense(_Stochastic):
    """A Dense layer whose kernel entries are dropped in training: ``y = x @ (ξ ⊙ W/(1 − rate)) + b``.

    See :func:`jaxnorm.dropconnect`; in eval ``y = x @ W + b``.

    Reference: Wan, Zeiler, Zhang, LeCun & Fergus (2013), Regularization of Neural Networks using DropConnect.

    Args:
        rate: the drop probability of each kernel entry, in [0, 1].
        train: the mode, if not given at call time.
        rng_collection: the PRNG stream of the masks.
        features: output features (a positive int).
        use_bias: add a learned bias.
        kernel_init: initializer of the kernel (``in×features``).
        bias_init: initializer of the bias.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm as jn
        >>> x = jnp.ones((2, 3))
        >>> layer = jn.nn.DropConnectDense(rate=0.5, features=4)
        >>> variables = layer.init(jax.random.key(0), x, train=False)
        >>> y = layer.apply(variables, x, train=True, rngs={'dropout': jax.random.key(1)})
        >>> print(y.shape)
        (2, 4)
    """

    features: int = 0
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        """``x @ kernel + bias``, the kernel dropped in training.

        Args:
            x: the input ``…×in``.
            train: True: a mask from the ``rng_collection`` stream; False: eval. Give it here or as the attribute, not
                both.

        Returns:
            ``…×features``.

        Raises:
            ValueError: if ``train`` is given twice or not at all, if ``rate`` is outside [0, 1], if ``features`` is
                not positive, or if training has no
                ``rng_collection`` stream (``rngs={'dropout': key}``).
            TypeError: if ``train`` is not a Python bool or a traced boolean scalar.
        """
        if self.features <= 0:
            raise ValueError(f"DropConnectDense: features must be a positive int, got {self.features}")
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        kernel = self._apply(_do.dropconnect, kernel, train, "DropConnectDense")
        y = x @ kernel.astype(x.dtype)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(y.dtype)
        return y


# --------------------------------------------------------------------------------------------------------------------
# population statistics for a whole model


def population_batch_stats(
    apply_fn: Callable[..., Any], variables: dict, batches: Iterable[Any], **apply_kwargs
) -> dict:
    """Recompute every BatchNorm layer's statistics as population statistics (Ioffe & Szegedy 2015, §3.1).

    Runs ``apply_fn(variables, batch, train=True, mutable=['batch_stats', 'batch_moments'], **apply_kwargs)`` on
    each batch with the parameters fixed, collects each layer's batch mean and variance, and returns ``variables``
    with ``batch_stats`` replaced by ``E[x] = E_B[μ_B]``, ``Var[x] = E_B[m/(m−1)·σ²_B]`` (see
    :func:`jaxnorm.population_stats`). The running statistics passed in are not used and not modified.
    """

    @jax.jit
    def moments(variables, batch):
        _, state = apply_fn(variables, batch, train=True, mutable=["batch_stats", "batch_moments"], **apply_kwargs)
        return state.get("batch_moments", {})

    pop = _norms.population_stats(moments(variables, b) for b in batches)
    if not pop:
        raise ValueError("population_batch_stats: the model has no BatchNorm layer that records batch moments")
    return {**variables, "batch_stats": _merge(variables.get("batch_stats", {}), pop)}


def _merge(old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{k: _merge(old.get(k), v) for k, v in new.items()}}
    return new


# --------------------------------------------------------------------------------------------------------------------
# weight norm, spectral norm (wrappers that reparametrize a layer's kernel) and dynamic tanh
#
# The wrappers follow flax.linen.WeightNorm / SpectralNorm: the wrapped layer keeps its own raw parameters and the
# wrapper transforms them on the way in with nn.map_variables, so a wrapped nn.Dense/nn.Conv/nn.DenseGeneral needs no
# change, and the wrapper's own variables carry flax's names ('Dense_1/kernel/scale', 'Dense_1/kernel/u',
# 'Dense_1/kernel/sigma'): variables port between the two libraries as they are.


def _wrapped_name(layer: nn.Module, path) -> str:
    """flax's name of a wrapped variable: the layer's name, then the variable's path without its collection."""
    return f"{layer.name}/" + jax.tree_util.keystr(tuple(path[1:]), simple=True, separator="/")


def _collection(path) -> str | None:
    """The collection a ``tree_flatten_with_path`` path over a variables dict starts in (None if not a dict key)."""
    return getattr(path[0], "key", None)


class WeightNorm(nn.Module):
    """Weight normalization of a wrapped layer: ``w = g·v/√(Σ v² + ε)`` applied to its kernel before every call.

    See :func:`jaxnorm.weight_norm`. ``WeightNorm(nn.Dense(4))(x)`` has the call convention, attributes and variable
    names of ``flax.linen.WeightNorm``. The gain is this module's parameter ``'<layer>/<path>/scale'`` (``scale_init``,
    default ones: at init ``‖w_j‖ = 1``); ``v`` stays the wrapped layer's own ``'kernel'``.

    Reduces over: every kernel axis except ``feature_axes`` (default -1: one norm per output unit; None: the whole
    array).

    Reference: Salimans & Kingma (2016), Weight Normalization: A Simple Reparameterization to Accelerate Training of
    Deep Neural Networks.

    Args:
        layer: the wrapped linen module.
        epsilon: ε inside the square root.
        dtype: dtype of the kernel handed to the layer (None: from the kernel and the gain).
        param_dtype: dtype of the gain.
        use_scale: learn the gain g (else g = 1).
        scale_init: initializer of g.
        feature_axes: the kept axes (int, sequence, or None).
        variable_filter: strings one of which a variable's path must contain (default ``{'kernel'}``; None or empty:
            every variable).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import jaxnorm as jn
        >>> layer = jn.nn.WeightNorm(nn.Dense(4))
        >>> x = jnp.ones((2, 3))
        >>> variables = layer.init(jax.random.key(0), x)
        >>> print(layer.apply(variables, x).shape)
        (2, 4)
    """

    layer: nn.Module
    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones
    feature_axes: int | Sequence[int] | None = -1
    variable_filter: Iterable[str] | None = frozenset({"kernel"})

    @nn.compact
    def __call__(self, *args, **kwargs):
        """Calls the wrapped layer with its selected variables weight-normalized.

        Args:
            *args: the wrapped layer's positional arguments.
            **kwargs: its keyword arguments.

        Returns:
            What the wrapped layer returns.

        Raises:
            ValueError: if ``feature_axes`` is out of range for a selected variable.
        """
        return nn.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(self._normalize, vs),
            init=self.is_initializing(),
        )(self.layer)

    def _normalize(self, path, value):
        value = jnp.asarray(value)
        name = _wrapped_name(self.layer, path)
        if _collection(path) != "params":
            return value
        if self.variable_filter and not any(f in name for f in self.variable_filter):
            return value
        if self.feature_axes is None:
            reduced = tuple(range(value.ndim))
        else:
            fa = (self.feature_axes,) if isinstance(self.feature_axes, int) else tuple(self.feature_axes)
            if any(not -value.ndim <= a < value.ndim for a in fa):
                raise ValueError(
                    f"WeightNorm: feature_axes={self.feature_axes!r} is out of range for {name} of shape "
                    f"{tuple(value.shape)}"
                )
            fa = {a % value.ndim for a in fa}
            reduced = tuple(i for i in range(value.ndim) if i not in fa)
        kept = tuple(value.shape[i] for i in range(value.ndim) if i not in reduced)
        scale = self.param(f"{name}/scale", self.scale_init, kept, self.param_dtype) if self.use_scale else None
        out = _norms.weight_norm(value, scale, axes=reduced, epsilon=self.epsilon)
        return out.astype(self.dtype or jnp.result_type(value, *(() if scale is None else (scale,))))


class SpectralNorm(nn.Module):
    """Spectral normalization of a wrapped layer: ``W_SN = W/σ(W)``, σ estimated by power iteration.

    See :func:`jaxnorm.spectral_normalize`: every variable of rank >= 2 (a Conv kernel ``…×C_in×C_out`` seen as the
    matrix ``(…·C_in)×C_out``) is divided by its largest singular value. The call convention, attributes and variable
    names of ``flax.linen.SpectralNorm``: ``u`` (``1×C_out``) and the last σ live in ``collection`` as
    ``'<layer>/<path>/u'`` and ``'<layer>/<path>/sigma'``. ``update_stats=True`` (training; apply with
    ``mutable=['batch_stats']``) stores the iterated u and σ, at ``init`` too; False runs the same iterations from
    the stored u and stores nothing.

    Reduces over: the kernel's matrix (its largest singular value).

    Reference: Miyato, Kataoka, Koyama & Yoshida (2018), Spectral Normalization for Generative Adversarial Networks.

    Args:
        layer: the wrapped linen module.
        n_power_iterations: power iterations per call.
        epsilon: ε of the vector normalizations.
        dtype: dtype of the kernel handed to the layer (None: inferred).
        param_dtype: dtype of u and σ.
        error_on_non_matrix: refuse kernels of rank > 2 instead of flattening them.
        collection: the collection of u and σ.
        update_stats: the mode, if not given at call time.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import flax.linen as nn
        >>> import jaxnorm as jn
        >>> layer = jn.nn.SpectralNorm(nn.Dense(4))
        >>> x = jnp.ones((2, 3))
        >>> variables = layer.init(jax.random.key(0), x, update_stats=False)
        >>> y, state = layer.apply(variables, x, update_stats=True, mutable=['batch_stats'])
        >>> y_eval = layer.apply({**variables, **state}, x, update_stats=False)  # nothing stored
        >>> print(y.shape, y_eval.shape)
        (2, 4) (2, 4)
    """

    layer: nn.Module
    n_power_iterations: int = 1
    epsilon: float = 1e-12
    dtype: Any = None
    param_dtype: Any = jnp.float32
    error_on_non_matrix: bool = False
    collection: str = "batch_stats"
    update_stats: bool | None = None

    @nn.compact
    def __call__(self, *args, update_stats: bool | None = None, **kwargs):
        """Calls the wrapped layer with its kernels spectrally normalized.

        Args:
            *args: the wrapped layer's positional arguments.
            update_stats: True: store the iterated u and σ; False: store nothing. Here or as the attribute, not both.
            **kwargs: its keyword arguments.

        Returns:
            What the wrapped layer returns.

        Raises:
            ValueError: if ``update_stats`` is given neither here nor as the attribute, or both, or a kernel has
                rank > 2 with ``error_on_non_matrix=True``.
            TypeError: if ``update_stats`` is not a Python bool.
        """
        if self.update_stats is None and update_stats is None:
            raise ValueError(
                "SpectralNorm: pass update_stats=True in training (power iteration; apply with "
                f"mutable=[{self.collection!r}] to keep the new u and sigma) or update_stats=False in eval, at call "
                "time (layer(x, update_stats=train)) or as an attribute"
            )
        update = _layers.static_mode(
            "SpectralNorm",
            "update_stats",
            self.update_stats,
            update_stats,
            exclusive=True,
            traced="update_stats must be a Python bool (whether to store the new u and sigma), got a traced value",
        )
        return nn.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(
                lambda path, value: self._normalize(path, value, update), vs
            ),
            init=self.is_initializing(),
            mutable=True,
        )(self.layer)

    def _normalize(self, path, value, update: bool):
        value = jnp.asarray(value)
        if _collection(path) != "params" or value.ndim <= 1:  # biases and scalars: no spectral norm
            return value
        name = _wrapped_name(self.layer, path)
        if value.ndim > 2 and self.error_on_non_matrix:
            raise ValueError(
                f"SpectralNorm: {name} has shape {tuple(value.shape)} (rank {value.ndim}) and "
                "error_on_non_matrix=True; pass error_on_non_matrix=False to normalize it as the matrix "
                f"{value.size // value.shape[-1]}×{value.shape[-1]}"
            )
        col = self.collection
        u = self.variable(
            col,
            f"{name}/u",
            _norms.init_spectral_state,
            None if self.has_variable(col, f"{name}/u") else self.make_rng("params"),
            value,
            self.param_dtype,
        )
        sigma = self.variable(col, f"{name}/sigma", jnp.ones, (), self.param_dtype)
        out, new_u, s = _norms.spectral_normalize(
            value, u.value, n_power_iterations=self.n_power_iterations, train=update, epsilon=self.epsilon
        )
        if update:
            u.value, sigma.value = new_u, s.astype(sigma.value.dtype)
        return out.astype(self.dtype or jnp.result_type(value, new_u, s))


class DyT(_Affine):
    """Dynamic Tanh layer: ``y = γ ⊙ tanh(α·x) + β``, a statistics-free replacement for layer norm.

    See :func:`jaxnorm.dyt`. Parameters: ``'alpha'`` (a scalar, ``alpha_init``), ``'scale'`` (γ) and ``'bias'`` (β)
    per channel on the last axis.

    Reduces over: nothing (elementwise).

    Reference: Zhu, Chen, He, LeCun & Liu (2025), Transformers without Normalization.

    Args:
        alpha_init: the initial α (0.5, the paper's default).
        use_scale: learn a per-channel γ (``'scale'``, ``scale_init``, default ones).
        use_bias: learn a per-channel β (``'bias'``, ``bias_init``, default zeros).
        scale_init: initializer of γ.
        bias_init: initializer of β.
        param_dtype: dtype of γ and β.

    Examples:
        >>> import jax
        >>> import jaxnorm as jn
        >>> x = jax.random.normal(jax.random.key(0), (2, 5, 8))
        >>> layer = jn.nn.DyT()
        >>> variables = layer.init(jax.random.key(1), x)
        >>> y = layer.apply(variables, x, train=True)  # the same map at train and eval
        >>> print(y.shape)
        (2, 5, 8)
    """

    alpha_init: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        """Applies ``γ ⊙ tanh(α·x) + β``; ``train`` is accepted and ignored.

        Args:
            x: the input ``N×…×C``.
            train: ignored (the same map at train and test), so models can call every norm the same way.
            mask: ignored (no statistics).

        Returns:
            The normalized array, with ``x``'s shape and dtype.
        """
        del train, mask  # no statistics: the same map at train and test, padding or not
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), (), self.param_dtype)
        scale, bias = self._affine(jnp.shape(x)[-1])
        return _norms.dyt(x, alpha, scale, bias)
