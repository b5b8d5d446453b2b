"""Flax linen layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropout`.

Running statistics live in the ``batch_stats`` collection (``mean``, ``var``, ``count``), dropout masks come from
the ``dropout`` rng stream, and every layer takes ``train`` (as an attribute or a call argument), so::

    y, state = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})
    y = model.apply(variables, x, train=False)

works as with ``flax.linen``. Every norm layer accepts ``train`` (the per-example norms ignore it), so a model can
call any of them the same way. As in Flax, running statistics are not updated by ``init``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import dropout as _do
from jaxnorm import norms as _norms

Array = jax.Array
Initializer = Callable[..., Array]


def _train(module_value: bool | None, call_value: bool | None, name: str) -> bool:
    value = nn.merge_param("train", module_value, call_value)
    if not isinstance(value, (bool, jnp.bool_)) and not hasattr(value, "dtype"):
        raise ValueError(f"{name}: train must be True or False, got {value!r}")
    return bool(value)


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

    def _sow_moments(self, x, mask, axis_name) -> None:
        """Record this batch's moments when the caller asks for them (see :func:`population_batch_stats`)."""
        if self.is_mutable_collection("batch_moments"):
            m = _norms.batch_moments(x, axis=-1, mask=mask, axis_name=axis_name)
            for k, v in m.items():
                self.put_variable("batch_moments", k, v)


class BatchNorm(_RunningStats):
    """Batch normalization (Ioffe & Szegedy 2015) over all axes but the last; see :func:`jaxnorm.batch_norm`.

    ``momentum='auto'`` is 0.99 for ``convention='flax'`` and 0.1 for ``'pytorch'``; ``None`` is a cumulative
    average. ``axis_name`` syncs statistics across devices (sums and counts); ``virtual_batch_size`` gives ghost
    batch norm.
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
        train = _train(self.train, train, "BatchNorm")
        c = x.shape[-1]
        scale, bias = self._affine(c)
        stats = self._stats(c)
        axis_name = None if self.is_initializing() else self.axis_name
        kw = {} if self.momentum == "auto" else {"momentum": self.momentum}
        y, new = _norms.batch_norm(
            x, scale, bias, {k: v.value for k, v in stats.items()}, train=train, epsilon=self.epsilon,
            axis_name=axis_name, axis_index_groups=self.axis_index_groups, mask=mask,
            convention=self.convention, virtual_batch_size=self.virtual_batch_size, **kw,
        )
        if train:
            self._store(stats, new)
            self._sow_moments(x, mask, axis_name)
        return y


class NoisyBatchNorm(BatchNorm):
    """Batch norm plus Santurkar et al.'s Algorithm 1 noise in training (see :func:`jaxnorm.noisy_batch_norm`),
    drawn from the ``rng_collection`` stream (default ``'dropout'``, so the usual ``rngs={'dropout': key}`` with a
    new key per step gives new noise per step); no noise in eval."""

    n_mu: float = 0.5
    n_sigma: float = 1.25
    r_mu: float = 0.1
    r_sigma: float = 0.1
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        y = super().__call__(x, train, mask=mask)
        if not _train(self.train, train, "NoisyBatchNorm") or self.is_initializing():
            return y
        if not self.has_rng(self.rng_collection):
            raise ValueError(f"NoisyBatchNorm: train=True needs a {self.rng_collection!r} PRNG stream: "
                             f"model.apply(..., rngs={{{self.rng_collection!r}: key}}) with a new key every step")
        s, m = _norms.batch_norm_noise(self.make_rng(self.rng_collection), y.shape, n_mu=self.n_mu,
                                       n_sigma=self.n_sigma, r_mu=self.r_mu, r_sigma=self.r_sigma)
        return (y.astype(jnp.float32) * s + m).astype(y.dtype)


class BatchRenorm(_RunningStats):
    """Batch renormalization (Ioffe 2017); see :func:`jaxnorm.batch_renorm`."""

    train: bool | None = None
    r_max: float = 3.0
    d_max: float = 5.0
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        train = _train(self.train, train, "BatchRenorm")
        scale, bias = self._affine(x.shape[-1])
        stats = self._stats(x.shape[-1])
        axis_name = None if self.is_initializing() else self.axis_name
        y, new = _norms.batch_renorm(
            x, scale, bias, {k: v.value for k, v in stats.items()}, train=train, r_max=self.r_max,
            d_max=self.d_max, momentum=self.momentum, epsilon=self.epsilon, axis_name=axis_name, mask=mask,
        )
        if train:
            self._store(stats, new)
        return y


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization (Santurkar et al. 2018, §3.3), p in {1, 2, 'inf'}; see :func:`jaxnorm.lp_batch_norm`."""

    train: bool | None = None
    p: int | str = 2
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        train = _train(self.train, train, "LpBatchNorm")
        scale, bias = self._affine(x.shape[-1])
        stats = self._stats(x.shape[-1])
        axis_name = None if self.is_initializing() else self.axis_name
        y, new = _norms.lp_batch_norm(
            x, scale, bias, {k: v.value for k, v in stats.items()}, train=train, p=self.p,
            momentum=self.momentum, epsilon=self.epsilon, axis_name=axis_name, mask=mask,
        )
        if train:
            self._store(stats, new)
        return y


class LayerNorm(_Affine):
    """Layer normalization (Ba et al. 2016) over ``axes`` (default: every non-batch axis), per-channel γ, β;
    see :func:`jaxnorm.layer_norm`. ``LayerNorm(axes=-1)`` is ``flax.linen.LayerNorm()``."""

    epsilon: float = 1e-5
    axes: int | Sequence[int] | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        del train  # same computation at train and test
        scale, bias = self._affine(x.shape[-1])
        return _norms.layer_norm(x, scale, bias, epsilon=self.epsilon, axes=self.axes, mask=mask)


class InstanceNorm(_Affine):
    """Instance normalization (Ulyanov et al. 2016) over the spatial axes; see :func:`jaxnorm.instance_norm`."""

    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        del train
        scale, bias = self._affine(x.shape[-1])
        return _norms.instance_norm(x, scale, bias, epsilon=self.epsilon, mask=mask)


class GroupNorm(_Affine):
    """Group normalization (Wu & He 2018); see :func:`jaxnorm.group_norm`. As in Flax, ``num_groups`` defaults to
    32; to give ``group_size`` instead pass ``num_groups=None``."""

    num_groups: int | None = 32
    group_size: int | None = None
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        del train
        scale, bias = self._affine(x.shape[-1])
        return _norms.group_norm(x, scale, bias, num_groups=self.num_groups, group_size=self.group_size,
                                 epsilon=self.epsilon, mask=mask)


class RMSNorm(nn.Module):
    """RMS normalization (Zhang & Sennrich 2019), per-channel γ; see :func:`jaxnorm.rms_norm`."""

    epsilon: float = 1e-5
    axes: int | Sequence[int] | None = None
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        del train
        scale = self.param("scale", self.scale_init, (x.shape[-1],), self.param_dtype) if self.use_scale else None
        return _norms.rms_norm(x, scale, epsilon=self.epsilon, axes=self.axes)


class StandardizedConv(nn.Module):
    """A channels-last convolution whose kernel is weight-standardized (Qiao et al. 2019) at every call:
    ``Ŵ = (W − μ)/√(σ² + ε)`` per output channel (see :func:`jaxnorm.weight_standardize`); the raw kernel is the
    stored parameter. Pairs with :class:`GroupNorm` for small batches. 1-, 2- and 3-D."""

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
        ks = tuple(self.kernel_size)
        nd = len(ks)
        if x.ndim != nd + 2:
            raise ValueError(f"StandardizedConv: a {nd}-D kernel needs input N×{'×'.join('S' * nd)}×C, got {x.shape}")
        kernel = self.param("kernel", self.kernel_init, ks + (x.shape[-1], self.features), jnp.float32)
        strides = (self.strides,) * nd if isinstance(self.strides, int) else tuple(self.strides)
        sp = "DHW"[-nd:]
        y = jax.lax.conv_general_dilated(
            x, _norms.weight_standardize(kernel, epsilon=self.epsilon).astype(x.dtype), strides, self.padding,
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
        _do._check_rate(name, self.rate)
        if not train or _do._is_static_zero(self.rate):
            return x
        return fn(x, self.rate, key=self._key(name), train=True, **kw)


class Dropout(_Stochastic):
    """Inverted dropout (Srivastava et al. 2014); ``broadcast_dims`` share the mask along those axes."""

    broadcast_dims: Sequence[int] = ()

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        return self._apply(_do.dropout, x, train, "Dropout", broadcast_dims=self.broadcast_dims)


class OriginalDropout(_Stochastic):
    """Srivastava et al.'s original dropout: ``ξ ⊙ x`` in training, ``(1 − rate)·x`` at test
    (:func:`jaxnorm.original_dropout`); the test-time scaling is not the identity, so it is applied here too."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        train = _train(self.train, train, "OriginalDropout")
        if not train:
            return _do.original_dropout(x, self.rate, train=False)
        return self._apply(_do.original_dropout, x, train, "OriginalDropout")


class SpatialDropout(_Stochastic):
    """Channel dropout: one mask value per example and channel, shared over space (Tompson et al. 2015)."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        return self._apply(_do.spatial_dropout, x, train, "SpatialDropout")


class GaussianDropout(_Stochastic):
    """Multiplicative Gaussian noise N(1, rate/(1−rate)) (Srivastava et al. 2014, §10)."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        return self._apply(_do.gaussian_dropout, x, train, "GaussianDropout")


class AlphaDropout(_Stochastic):
    """Alpha dropout for SELU networks (Klambauer et al. 2017)."""

    @nn.compact
    def __call__(self, x, train: bool | None = None):
        return self._apply(_do.alpha_dropout, x, train, "AlphaDropout")


class DropConnectDense(_Stochastic):
    """A Dense layer whose kernel entries are dropped in training (DropConnect, Wan et al. 2013)."""

    features: int = 0
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, train: bool | None = None):
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
