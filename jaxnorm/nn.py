"""Flax linen layers: thin wrappers over the pure transforms in :mod:`jaxnorm.norms` and :mod:`jaxnorm.dropouts`.

Running statistics live in the ``batch_stats`` collection (``mean``, ``var``, ``count``), dropout masks come from
the ``dropout`` rng stream, and every layer takes ``train`` (as an attribute or a call argument), so::

    y, state = model.apply(variables, x, train=True, mutable=['batch_stats'], rngs={'dropout': key})
    y = model.apply(variables, x, train=False)

works as with ``flax.linen``. Every norm layer accepts ``train`` (the per-example norms ignore it), so a model can
call any of them the same way. As in Flax, running statistics are not updated by ``init``.
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
from jaxnorm._checks import check_rate, is_traced

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
        y, new = fn(x, scale, bias, {k: v.value for k, v in stats.items()}, train=train, epsilon=self.epsilon,
                    axis_name=axis_name, mask=mask, **kw)
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
        return self._batch_norm(_norms.batch_norm, type(self).__name__, x, train, mask)

    def _batch_norm(self, fn, name: str, x, train, mask, **kw):
        y, train, axis_name = self._normalize(
            fn, name, x, train, mask, axis_index_groups=self.axis_index_groups, convention=self.convention,
            virtual_batch_size=self.virtual_batch_size, **_layers.momentum_option(name, self.momentum), **kw)
        if train is not False:
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
        name = "NoisyBatchNorm"
        if _train(self.train, train, name) is False or self.is_initializing():  # no noise
            return self._batch_norm(_norms.batch_norm, name, x, train, mask)
        if not self.has_rng(self.rng_collection):
            raise ValueError(f"NoisyBatchNorm: train=True needs a {self.rng_collection!r} PRNG stream: "
                             f"model.apply(..., rngs={{{self.rng_collection!r}: key}}) with a new key every step")
        return self._batch_norm(_norms.noisy_batch_norm, name, x, train, mask, key=self.make_rng(self.rng_collection),
                                n_mu=self.n_mu, n_sigma=self.n_sigma, r_mu=self.r_mu, r_sigma=self.r_sigma)


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
        return self._normalize(_norms.batch_renorm, "BatchRenorm", x, train, mask, r_max=self.r_max,
                               d_max=self.d_max, momentum=self.momentum)[0]


class LpBatchNorm(_RunningStats):
    """ℓp batch normalization (Santurkar et al. 2018, §3.3), p in {1, 2, 'inf'}; see :func:`jaxnorm.lp_batch_norm`."""

    train: bool | None = None
    p: int | str = 2
    momentum: float = 0.99
    epsilon: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        return self._normalize(_norms.lp_batch_norm, "LpBatchNorm", x, train, mask, p=self.p,
                               momentum=self.momentum)[0]


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
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        del train
        scale = self.param("scale", self.scale_init, (x.shape[-1],), self.param_dtype) if self.use_scale else None
        return _norms.rms_norm(x, scale, epsilon=self.epsilon, axes=self.axes, mask=mask)


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
        check_rate(name, self.rate)
        if train is False or (not is_traced(self.rate) and float(self.rate) == 0.0):
            return x
        return fn(x, self.rate, key=self._key(name), train=train, **kw)


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
        if train is False:
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


def _collection(path) -> str:
    return getattr(path[0], "key", None)


class WeightNorm(nn.Module):
    """Weight normalization (Salimans & Kingma 2016) of a wrapped layer: ``w = g·v/√(Σ v² + ε)`` applied to the
    layer's kernel before every call (:func:`jaxnorm.weight_norm`), ``g`` a learnable gain per feature.

    ``WeightNorm(nn.Dense(4))(x)``: the call convention, attributes and variable names of ``flax.linen.WeightNorm``.
    The norm is over every axis except ``feature_axes`` (default -1: one norm per output unit of a Dense, Conv or
    DenseGeneral kernel; None: one norm of the whole array). ``variable_filter`` selects the variables whose path
    (e.g. ``'Dense_1/kernel'``) contains one of its strings (default ``{'kernel'}``: biases are left alone; None or
    empty: every variable, a rank-1 bias then being normalized entry by entry, as in flax). The gain is this
    module's parameter ``'<layer>/<path>/scale'`` (``scale_init``, default ones: at init ``‖w_j‖ = 1``); ``v`` stays
    the wrapped layer's own ``'kernel'``. ``dtype`` (None: inferred from the kernel and the gain) is the dtype of the
    kernel handed to the layer.
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
                raise ValueError(f"WeightNorm: feature_axes={self.feature_axes!r} is out of range for {name} of shape "
                                 f"{tuple(value.shape)}")
            fa = {a % value.ndim for a in fa}
            reduced = tuple(i for i in range(value.ndim) if i not in fa)
        kept = tuple(value.shape[i] for i in range(value.ndim) if i not in reduced)
        scale = self.param(f"{name}/scale", self.scale_init, kept, self.param_dtype) if self.use_scale else None
        out = _norms.weight_norm(value, scale, axes=reduced, epsilon=self.epsilon)
        return out.astype(self.dtype or jnp.result_type(value, *(() if scale is None else (scale,))))


class SpectralNorm(nn.Module):
    """Spectral normalization (Miyato et al. 2018) of a wrapped layer: every variable of rank >= 2 (the kernel) is
    divided by its largest singular value σ, estimated by power iteration (:func:`jaxnorm.spectral_normalize`; a
    Conv kernel ``…×C_in×C_out`` is seen as the matrix ``(…·C_in)×C_out``, as in flax).

    ``SpectralNorm(nn.Dense(4))(x, update_stats=train)``: the call convention, attributes (``n_steps`` here is
    ``n_power_iterations``, ``collection_name`` is ``collection``) and variable names of ``flax.linen.SpectralNorm``.
    The power-iteration vector and the last σ live in ``collection`` (default ``'batch_stats'``, which the trainer
    already carries) as ``'<layer>/<path>/u'`` (1×C_out, ``N(0, 1)`` at creation) and ``'<layer>/<path>/sigma'``.

    * ``update_stats=True`` (training; apply with ``mutable=['batch_stats']``): ``n_power_iterations`` iterations
      from the stored u; the new u and σ are stored — at ``init`` too, as in flax.
    * ``update_stats=False`` (eval): the same computation from the stored u, nothing stored (flax's semantics:
      deterministic given the variables).

    ``update_stats`` may also be set as an attribute (the model zoo passes ``train`` there), the call argument
    winning over ``None`` only. ``error_on_non_matrix=True`` refuses kernels of rank > 2 instead of flattening them.
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
        if self.update_stats is None and update_stats is None:
            raise ValueError(
                "SpectralNorm: pass update_stats=True in training (power iteration; apply with "
                f"mutable=[{self.collection!r}] to keep the new u and sigma) or update_stats=False in eval, at call "
                "time (layer(x, update_stats=train)) or as an attribute"
            )
        update = _layers.static_mode("SpectralNorm", "update_stats", self.update_stats, update_stats, exclusive=True,
                                     traced="update_stats must be a Python bool (whether to store the new u and "
                                     "sigma), got a traced value")
        return nn.map_variables(
            lambda layer: layer(*args, **kwargs),
            trans_in_fn=lambda vs: jax.tree_util.tree_map_with_path(
                lambda path, value: self._normalize(path, value, update), vs),
            init=self.is_initializing(),
            mutable=True,
        )(self.layer)

    def _normalize(self, path, value, update: bool):
        value = jnp.asarray(value)
        if _collection(path) != "params" or value.ndim <= 1:  # biases and scalars: no spectral norm
            return value
        name = _wrapped_name(self.layer, path)
        if value.ndim > 2 and self.error_on_non_matrix:
            raise ValueError(f"SpectralNorm: {name} has shape {tuple(value.shape)} (rank {value.ndim}) and "
                             "error_on_non_matrix=True; pass error_on_non_matrix=False to normalize it as the matrix "
                             f"{value.size // value.shape[-1]}×{value.shape[-1]}")
        col = self.collection
        u = self.variable(col, f"{name}/u", _norms.init_spectral_state,
                          None if self.has_variable(col, f"{name}/u") else self.make_rng("params"), value,
                          self.param_dtype)
        sigma = self.variable(col, f"{name}/sigma", jnp.ones, (), self.param_dtype)
        out, new_u, s = _norms.spectral_normalize(value, u.value, n_power_iterations=self.n_power_iterations,
                                                  train=update, epsilon=self.epsilon)
        if update:
            u.value, sigma.value = new_u, s.astype(sigma.value.dtype)
        return out.astype(self.dtype or jnp.result_type(value, new_u, s))


class DyT(_Affine):
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025): ``y = γ ⊙ tanh(α·x) + β``, a statistics-free replacement for
    layer norm (see :func:`jaxnorm.dyt`). Parameters: ``'alpha'`` (a scalar, ``alpha_init``: 0.5, the paper's
    default), ``'scale'`` (γ, ones, ``scale_init``) and ``'bias'`` (β, zeros) per channel on the last axis. Accepts
    ``train`` like the other norm layers and ignores it."""

    alpha_init: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool | None = None, *, mask: Array | None = None):
        del train, mask  # no statistics: the same map at train and test, padding or not
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), (), self.param_dtype)
        scale, bias = self._affine(jnp.shape(x)[-1])
        return _norms.dyt(x, alpha, scale, bias)
