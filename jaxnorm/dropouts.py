"""Pure dropout transforms (Srivastava et al. 2014) with explicit PRNG keys, and the max-norm constraint.

Every function takes ``key`` and ``train`` explicitly: ``train=False`` is the identity and needs no key. Masks are
drawn from ``jax.random`` only, so the same key gives the same mask on every backend and under ``jit``/``vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxnorm._checks import check_float_input, check_gaussian_rate, check_rate, check_train, is_traced

Array = jax.Array

# SELU constants (Klambauer et al. 2017): alpha' = -λα is the value SELU saturates to.
_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805
_ALPHA_PRIME = -_SELU_SCALE * _SELU_ALPHA


def _needs_key(name: str, key: Array | None) -> None:
    """ValueError when training needs a key and none was given."""
    if key is None:
        raise ValueError(
            f"{name}: train=True needs a PRNG key: pass key=jax.random.key(seed) (split it per step), "
            "or train=False for the deterministic identity"
        )


def _prepare(name: str, x, rate, train):
    """The checks every dropout starts with: a float input, a rate in [0, 1], a bool (or traced bool) train."""
    x = jnp.asarray(x)
    check_float_input(name, x)
    check_rate(name, rate)
    return x, check_train(name, train)


def _by_mode(train, x, fn):
    """``fn()`` in training, ``x`` at test; a traced ``train`` chooses with ``lax.cond``."""
    if train is True:
        return fn()
    if train is False:
        return x
    return lax.cond(train, fn, lambda: x)


def _is_static_zero(rate) -> bool:
    """True for a Python (non-traced) rate of 0: the identity, no key needed."""
    return not is_traced(rate) and float(rate) == 0.0


def _keep_prob(rate) -> Array:
    """keep = 1 − rate as float32. A static rate is subtracted in float64 first: 1 − float32(rate) would turn the
    float32 rounding error of rate (~3e-8) into a relative error ~3e-8/keep (1e-6 at rate 0.99, 2e-4 at 0.9999)."""
    if is_traced(rate):
        return 1.0 - jnp.clip(jnp.asarray(rate, jnp.float32), 0.0, 1.0)
    return jnp.asarray(1.0 - float(rate), jnp.float32)


def _keep_mask(key: Array, keep, shape) -> Array:
    """The Bernoulli(keep) mask of every dropout here (``losses.masking_noise`` makes the same draw)."""
    return jax.random.bernoulli(key, keep, shape)


def _inverted(x: Array, mask: Array, keep) -> Array:
    # x / keep as flax.linen.Dropout computes it; keep = 0 is replaced by 1 under the (all-False) mask so that
    # rate 1 gives zeros and finite (zero) gradients
    safe = jnp.where(keep > 0, keep, 1.0).astype(x.dtype)
    return jnp.where(mask, x / safe, jnp.zeros((), x.dtype))


def dropout(
    x: Array,
    rate: float,
    *,
    key: Array | None = None,
    train: bool = True,
    broadcast_dims: Sequence[int] = (),
) -> Array:
    """Inverted dropout: ``y = ξ ⊙ x / (1 − rate)`` with ``ξ ~ Bernoulli(1 − rate)`` in training, ``y = x`` at test.

    Same network in expectation as Srivastava et al.'s original form (keep at train, scale weights by
    ``1 − rate`` at test), with no test-time change. ``broadcast_dims`` share one mask value along those axes
    (as ``flax.linen.Dropout``). rate 1 drops everything (zeros, zero gradients), rate 0 is the identity.
    ``train`` is a Python bool or a traced boolean (then ``lax.cond`` picks; a key is needed).

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        x: the input, any float dtype.
        rate: the probability of dropping a unit, in [0, 1] (a traced rate is clipped to it).
        key: a PRNG key, needed in training for rate > 0.
        train: True to drop, False for the identity.
        broadcast_dims: axes along which one mask value is shared.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``rate`` is outside [0, 1], or ``key`` is missing in training.
        TypeError: if ``x`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.dropout(jnp.ones((4, 1000)), 0.5, key=jax.random.key(0))
        >>> print(sorted(set(y.ravel().tolist())), bool(abs(float(y.mean()) - 1.0) < 0.05))
        [0.0, 2.0] True
        >>> print(bool((jaxnorm.dropout(jnp.ones(3), 0.5, train=False) == 1.0).all()))
        True
    """
    x, train = _prepare("dropout", x, rate, train)
    if train is False or _is_static_zero(rate):
        return x
    _needs_key("dropout", key)

    def drop():
        keep = _keep_prob(rate)
        shape = list(x.shape)
        for d in broadcast_dims:
            shape[d] = 1
        mask = jnp.broadcast_to(_keep_mask(key, keep, tuple(shape)), x.shape)
        return _inverted(x, mask, keep)

    return _by_mode(train, x, drop)


def original_dropout(x: Array, rate: float, *, key: Array | None = None, train: bool = True) -> Array:
    """Srivastava et al. (2014)'s original form: ``y = ξ ⊙ x`` with ``ξ ~ Bernoulli(1 − rate)`` in training (no
    rescaling) and ``y = (1 − rate)·x`` at test, which is their "outgoing weights multiplied by p" (``(p·x)W = x(pW)``).
    With the same key it drops exactly the units :func:`dropout` drops; a network trained this way with weights
    ``W`` computes what an inverted-dropout network with weights ``(1 − rate)·W`` computes, at train and at test.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        x: the input, any float dtype.
        rate: the probability of dropping a unit, in [0, 1].
        key: a PRNG key, needed in training for rate > 0.
        train: True to drop, False to scale by ``1 − rate``.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``rate`` is outside [0, 1], or ``key`` is missing in training.
        TypeError: if ``x`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jnp.ones((2, 4))
        >>> print(sorted(set(jaxnorm.original_dropout(x, 0.25, key=jax.random.key(0)).ravel().tolist())) <= [0.0, 1.0])
        True
        >>> print(jaxnorm.original_dropout(x, 0.25, train=False)[0].tolist())
        [0.75, 0.75, 0.75, 0.75]
    """
    x, train = _prepare("original_dropout", x, rate, train)
    if _is_static_zero(rate):
        return x
    keep = _keep_prob(rate)
    scaled = (x * keep.astype(x.dtype)).astype(x.dtype)
    if train is False:
        return scaled
    _needs_key("original_dropout", key)

    def drop():
        return jnp.where(_keep_mask(key, keep, x.shape), x, jnp.zeros((), x.dtype))

    return drop() if train is True else lax.cond(train, drop, lambda: scaled)


def spatial_dropout(x: Array, rate: float, *, key: Array | None = None, train: bool = True) -> Array:
    """Channel ("spatial") dropout (Tompson et al. 2015): one Bernoulli mask value per example and channel of an
    ``N×…×C`` input, shared over all spatial positions, inverted scaling by ``1/(1 − rate)``:
    ``y = ξ ⊙ x / (1 − rate)`` with ``ξ_nc ~ Bernoulli(1 − rate)`` broadcast over the spatial axes.

    Reference: Tompson, Goroshin, Jain, LeCun & Bregler (2015), Efficient Object Localization Using Convolutional
    Networks.

    Args:
        x: the input ``N×spatial…×C`` (rank ≥ 3), any float dtype.
        rate: the probability of dropping a channel, in [0, 1].
        key: a PRNG key, needed in training for rate > 0.
        train: True to drop, False for the identity.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``x`` has rank < 3, ``rate`` is outside [0, 1], or ``key`` is missing in training.
        TypeError: if ``x`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.spatial_dropout(jnp.ones((2, 5, 5, 8)), 0.5, key=jax.random.key(0))
        >>> print(bool((y == y[:, :1, :1, :]).all()))  # one value per example and channel
        True
    """
    x, train = _prepare("spatial_dropout", x, rate, train)
    if x.ndim < 3:
        raise ValueError(
            f"spatial_dropout: expected N×spatial…×C (rank >= 3), got shape {tuple(x.shape)}; for N×C use dropout"
        )
    if train is False or _is_static_zero(rate):
        return x
    _needs_key("spatial_dropout", key)
    return dropout(x, rate, key=key, train=train, broadcast_dims=tuple(range(1, x.ndim - 1)))


def dropconnect(w: Array, rate: float, *, key: Array | None = None, train: bool = True) -> Array:
    """DropConnect (Wan et al. 2013): drop individual *weights* ``w`` (e.g. a Dense kernel) with probability
    ``rate``, inverted scaling so that ``E[w̃] = w``; apply ``x @ dropconnect(w, ...)``. Identity at test.

    Formula: ``w̃ = ξ ⊙ w / (1 − rate)`` with ``ξ ~ Bernoulli(1 − rate)`` per weight.

    Reference: Wan, Zeiler, Zhang, LeCun & Fergus (2013), Regularization of Neural Networks using DropConnect.

    Args:
        w: the weights, any float dtype.
        rate: the probability of dropping a weight, in [0, 1].
        key: a PRNG key, needed in training for rate > 0.
        train: True to drop, False for the identity.

    Returns:
        ``w̃`` with ``w``'s shape and dtype.

    Raises:
        ValueError: if ``rate`` is outside [0, 1], or ``key`` is missing in training.
        TypeError: if ``w`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> w = jaxnorm.dropconnect(jnp.ones((3, 4)), 0.5, key=jax.random.key(0))
        >>> print(w.shape, sorted(set(w.ravel().tolist())) <= [0.0, 2.0])
        (3, 4) True
    """
    w, train = _prepare("dropconnect", w, rate, train)
    if train is False or _is_static_zero(rate):
        return w
    _needs_key("dropconnect", key)
    return dropout(w, rate, key=key, train=train)


def gaussian_dropout(x: Array, rate: float, *, key: Array | None = None, train: bool = True) -> Array:
    """Gaussian dropout (Srivastava et al. 2014, §10): ``y = x ⊙ ξ`` with ``ξ ~ N(1, rate/(1 − rate))``, the
    multiplicative noise with the same mean and variance as inverted Bernoulli dropout. Identity at test;
    rate must be < 1.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        x: the input, any float dtype.
        rate: the equivalent Bernoulli drop rate, in [0, 1).
        key: a PRNG key, needed in training for rate > 0.
        train: True for noise, False for the identity.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``rate`` is outside [0, 1), or ``key`` is missing in training.
        TypeError: if ``x`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.gaussian_dropout(jnp.ones(20000), 0.5, key=jax.random.key(0))
        >>> print(round(float(y.mean()), 1), round(float(y.var()), 1))  # mean 1, variance rate/(1 − rate) = 1
        1.0 1.0
    """
    x, train = _prepare("gaussian_dropout", x, rate, train)
    check_gaussian_rate("gaussian_dropout", rate)
    if train is False or _is_static_zero(rate):
        return x
    _needs_key("gaussian_dropout", key)

    def drop():
        std = jnp.sqrt(rate / (1.0 - rate)).astype(jnp.float32)
        noise = 1.0 + std * jax.random.normal(key, x.shape, jnp.float32)
        return (x.astype(jnp.float32) * noise).astype(x.dtype)

    return _by_mode(train, x, drop)


def alpha_dropout(x: Array, rate: float, *, key: Array | None = None, train: bool = True) -> Array:
    """Alpha dropout (Klambauer et al. 2017) for SELU networks: dropped units are set to SELU's saturation value
    ``α' = −λα`` and an affine map ``a·(·) + b`` restores zero mean and unit variance,
    ``a = (q + α'²q(1 − q))^(−1/2)``, ``b = −a·(1 − q)·α'`` with ``q = 1 − rate`` the keep probability.
    Identity at test; rate 1 gives zeros.

    Formula: ``y = a·(ξ ⊙ x + (1 − ξ)·α') + b`` with ``ξ ~ Bernoulli(q)``.

    Reference: Klambauer, Unterthiner, Mayr & Hochreiter (2017), Self-Normalizing Neural Networks.

    Args:
        x: the input (SELU activations), any float dtype.
        rate: the probability of dropping a unit, in [0, 1].
        key: a PRNG key, needed in training for rate > 0.
        train: True to drop, False for the identity.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``rate`` is outside [0, 1], or ``key`` is missing in training.
        TypeError: if ``x`` is not a float array, ``rate`` is not a number, or ``train`` is not a bool.

    Examples:
        >>> import jax
        >>> import jaxnorm
        >>> x = jax.random.normal(jax.random.key(0), (50000,))  # mean 0, variance 1
        >>> y = jaxnorm.alpha_dropout(x, 0.2, key=jax.random.key(1))
        >>> print(bool(abs(float(y.mean())) < 0.05), round(float(y.var()), 1))  # mean 0 and variance 1 kept
        True 1.0
    """
    x, train = _prepare("alpha_dropout", x, rate, train)
    if train is False or _is_static_zero(rate):
        return x
    _needs_key("alpha_dropout", key)

    def drop():
        if not is_traced(rate) and float(rate) == 1.0:
            return jnp.zeros_like(x) * x  # keeps the gradient path (zero) and the dtype
        q = _keep_prob(rate)  # a traced rate is clipped to [0, 1]
        q_safe = jnp.where(q > 0, q, 1.0)  # traced rate 1: a, b finite, the output is zeroed below
        a = (q_safe + _ALPHA_PRIME**2 * q_safe * (1.0 - q_safe)) ** -0.5
        b = -a * (1.0 - q_safe) * _ALPHA_PRIME
        mask = _keep_mask(key, q, x.shape)
        y = jnp.where(mask, x.astype(jnp.float32), _ALPHA_PRIME)
        return jnp.where(q > 0, a * y + b, 0.0).astype(x.dtype)

    return _by_mode(train, x, drop)


# max-norm constraint


def _max_norm_leaf(w: Array, c: float) -> Array:
    """One leaf of max_norm_project: a kernel scaled to per-unit norms ≤ c, any other leaf unchanged."""
    if jnp.ndim(w) < 2:
        return w  # biases, norm scales: unconstrained
    axes = tuple(range(w.ndim - 1))
    norm = jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axes, keepdims=True))
    factor = jnp.minimum(1.0, c / jnp.maximum(norm, 1e-12))
    return (w * factor).astype(w.dtype)


def max_norm_project(params: Any, c: float = 3.0) -> Any:
    """Project every kernel (leaf of rank ≥ 2, ``…×fan_in×units``) so that the incoming weight vector of each unit
    (last axis) has ``‖w‖₂ ≤ c`` (Srivastava et al. 2014, §5.1: c = 3–4). Biases and scales are left alone.

    Formula: ``w_j ← w_j · min(1, c/‖w_j‖₂)``, the norm over every axis but the last.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting.

    Args:
        params: a pytree of parameters.
        c: the largest norm, > 0.

    Returns:
        The projected pytree (leaves of rank < 2 unchanged).

    Raises:
        ValueError: if ``c`` is not > 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> p = jaxnorm.max_norm_project({"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]]), "bias": jnp.ones(2) * 9}, 1.0)
        >>> print([round(v, 4) for v in p["kernel"][:, 0].tolist()], p["bias"].tolist())
        [0.6, 0.8] [9.0, 9.0]
    """
    if not c > 0:
        raise ValueError(f"max_norm: c must be > 0, got {c}")
    return jax.tree.map(lambda w: _max_norm_leaf(w, c), params)


def _exact_update(q: Array, p: Array) -> Array:
    """``q − p`` in at least float32: the difference of two half-precision values is exact there, so ``p + (q − p)``
    is ``q`` again (in the parameters' own half precision it would be rounded twice)."""
    dtype = jnp.promote_types(p.dtype, jnp.float32)
    return q.astype(dtype) - p.astype(dtype)


def max_norm(c: float = 3.0) -> optax.GradientTransformation:
    """Max-norm as an optax gradient transformation: turns ``updates`` into ``project(params + updates) − params``
    so that after ``optax.apply_updates`` every unit's incoming weights satisfy ``‖w‖₂ ≤ c``. Use it last:
    ``optax.chain(optax.sgd(lr, 0.9), jaxnorm.max_norm(3.0))``. ``update`` needs ``params``; no state. For
    half-precision parameters the updates are float32: ``P(p + u) − p`` rounded to bfloat16 and added back in
    bfloat16 would round twice (about 1% off the projection), while ``optax.apply_updates`` adds a float32 update in
    float32 and rounds once, landing exactly on the projected weights.

    Formula: ``u ← P(p + u) − p`` with ``P`` :func:`max_norm_project`.

    Reference: Srivastava, Hinton, Krizhevsky, Sutskever & Salakhutdinov (2014), Dropout: A Simple Way to Prevent
    Neural Networks from Overfitting (§5.1).

    Args:
        c: the largest norm of each unit's incoming weights, > 0.

    Returns:
        An ``optax.GradientTransformation``.

    Raises:
        ValueError: if ``c`` is not > 0 (and, from ``update``, if ``params`` is not given).

    Examples:
        >>> import jax.numpy as jnp
        >>> import optax
        >>> import jaxnorm
        >>> params = {"kernel": jnp.array([[3.0], [4.0]])}
        >>> opt = optax.chain(optax.sgd(1.0), jaxnorm.max_norm(1.0))
        >>> grads = {"kernel": jnp.zeros((2, 1))}
        >>> updates, _ = opt.update(grads, opt.init(params), params)
        >>> print([round(v, 4) for v in optax.apply_updates(params, updates)["kernel"][:, 0].tolist()])
        [0.6, 0.8]
    """
    if not c > 0:
        raise ValueError(f"max_norm: c must be > 0, got {c}")

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("max_norm: update(updates, state, params) needs params to project the new weights")
        new = jax.tree.map(lambda p, u: p + u, params, updates)
        projected = max_norm_project(new, c)
        return jax.tree.map(_exact_update, projected, params), state

    return optax.GradientTransformation(init, update)
