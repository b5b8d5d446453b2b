"""Pure normalization transforms: batch, layer, instance, group, RMS, batch renorm, ℓp batch norm.

Every function here is a pure JAX function of its inputs: no hidden state, explicit statistics in and out, safe
under ``jit``, ``vmap``, ``grad`` and ``pmap``/``shard_map``. Arrays are channels-last (``N…C``) like Flax; the
batch-statistics norms, instance and group norm take ``axis=`` for another feature axis (``axis=1`` for PyTorch's
NCHW), and a 1-D scale/bias of length C then applies per channel on that axis.

Statistics are always reduced in float32 (or wider), whatever the input dtype, in one pass over ``x`` as sums of
``x − k`` and ``(x − k)²`` with ``k`` a shift taken from the data (the first valid value of each statistic, under
``stop_gradient``): the variance ``Σ(x−k)²/n − (Σ(x−k)/n)²`` then cancels only as much as ``(μ − k)²/σ²``, a few
units, instead of ``μ²/σ²`` (10⁸ at μ = 10⁴σ), and the output is formed as ``((x − k) − (μ − k))/σ`` so that μ's
float32 rounding never enters. Across devices (``axis_name``) the shift is agreed first (one small ``psum``), then
the sums and counts are added with a second ``psum``: exact for uneven or masked shards. Masks select
(``jnp.where``), so NaN or inf in padded positions never reaches the statistics.

Normalized output: ``x̂ = (x − μ)/√(σ² + ε)``, ``y = γ·x̂ + β``, with σ² the biased variance (Ioffe & Szegedy 2015).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnorm._checks import check_epsilon, check_float_input, check_groups, check_momentum, check_train

Array = jax.Array
BatchStats = dict  # {'mean': (C,), 'var': (C,), 'count': ()} -- see init_batch_stats

CONVENTIONS = ("flax", "pytorch")
_DEFAULT: Any = object()  # sentinel: "momentum not given", whose default depends on the convention
_DEFAULT_MOMENTUM = {"flax": 0.99, "pytorch": 0.1}


# --------------------------------------------------------------------------------------------------------------------
# checks (static: shapes, names, numbers) -- raised eagerly, before tracing goes any further


def _axes(name: str, ndim: int, axes: int | Sequence[int]) -> tuple[int, ...]:
    """``axes`` as sorted, non-negative ints; ValueError for an axis out of range or named twice (``name`` begins it).

    A repeated axis (``(1, 1)``, or ``(2, -1)`` at rank 3) is refused as numpy's reductions refuse it: silently
    reducing once would hide a typo for the axis the user meant.
    """
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out: list[int] = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"{name}: axis {a} is out of range for an input of rank {ndim} (axes run from {-ndim} to {ndim - 1})"
            )
        if a % ndim in out:
            raise ValueError(
                f"{name}: axes {axes} name axis {a % ndim} twice for an input of rank {ndim}; give each axis once"
            )
        out.append(a % ndim)
    return tuple(sorted(out))


def _feature_axis(name: str, x: Array, axis: int) -> int:
    """The one feature axis ``axis`` of ``x``, non-negative; ValueError unless it is an int in range."""
    if not isinstance(axis, int):
        raise ValueError(f"{name}: axis must name one feature axis (an int), got {axis!r}")
    return _axes(name, x.ndim, axis)[0]


def _check_convention(convention: str) -> None:
    """ValueError, explaining both conventions, unless ``convention`` is one of CONVENTIONS."""
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown batch-norm convention {convention!r}; valid: {', '.join(map(repr, CONVENTIONS))} "
            "('flax': running = m·running + (1−m)·batch, biased variance; "
            "'pytorch': momentum is the update weight, unbiased running variance)"
        )


def _resolve_momentum(name: str, momentum: Any, convention: str) -> float | None:
    """The convention's default momentum when none was given, else the checked ``momentum``."""
    if momentum is _DEFAULT:
        return _DEFAULT_MOMENTUM[convention]
    return check_momentum(name, momentum)


def _nchw_hint(name: str, what: str, size: int, x: Array | None, axis: Any) -> str | None:
    """The message for a per-channel parameter of ``size`` entries that matches axis 1 of ``x`` (PyTorch's NCHW)
    rather than the feature axis ``axis``, or None; ``x`` None: the caller has no ``axis`` argument to suggest."""
    if x is None or x.ndim < 3 or axis % x.ndim == 1 or x.shape[1] != size or x.shape[axis] == size:
        return None
    return (
        f"{name}: {what} has {size} entries but x has {x.shape[axis]} channels on axis {axis} "
        f"(x.shape={tuple(x.shape)}); for PyTorch's NCHW layout pass axis=1"
    )


def _check_stats(
    name: str, stats: Mapping[str, Array], num_features: int, x: Array | None = None, axis: Any = -1
) -> None:
    """ValueError unless ``stats`` holds 'mean' and 'var' of shape (num_features,); given ``x`` and the caller's
    ``axis``, a size that matches axis 1 of ``x`` gets the NCHW advice (``axis=1``) rather than new stats."""
    if not isinstance(stats, Mapping) or not {"mean", "var"} <= set(stats):
        got = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
        raise ValueError(
            f"{name}: stats must be a dict with 'mean', 'var' and 'count' (got {got}); "
            f"create them with jaxnorm.init_batch_stats({num_features})"
        )
    for k in ("mean", "var"):
        shape = tuple(jnp.shape(stats[k]))
        if shape != (num_features,):
            hint = _nchw_hint(name, f"stats[{k!r}]", shape[0], x, axis) if len(shape) == 1 else None
            if hint:
                raise ValueError(hint)
            raise ValueError(
                f"{name}: stats[{k!r}] has shape {shape} but the input has {num_features} "
                f"channels on its feature axis; create matching stats with jaxnorm.init_batch_stats({num_features})"
            )


def _affine(name: str, x: Array, scale: Array | None, bias: Array | None, fax: int = -1, axis: Any = None):
    """``(scale, bias)`` ready to broadcast against ``x``: a 1-D parameter of length C (the size of the feature axis
    ``fax``) is per channel on that axis, as in PyTorch's NCHW layout; any other shape must broadcast from the
    right. ``axis``: the caller's ``axis`` argument as given (None if it has none), for the NCHW advice."""
    fax = fax % x.ndim
    c = x.shape[fax]
    feat_shape = [c if i == fax else 1 for i in range(x.ndim)]
    out: list[Array | None] = []
    for pname, p in (("scale", scale), ("bias", bias)):
        if p is None:
            out.append(None)
            continue
        shape = tuple(jnp.shape(p))
        if len(shape) == 1 and shape[0] == c:
            out.append(jnp.reshape(p, feat_shape))
            continue
        ok = len(shape) != 1 or fax == x.ndim - 1  # a 1-D parameter is per channel or wrong
        if ok:
            try:
                jnp.broadcast_shapes(shape, x.shape)
            except ValueError:
                ok = False
        if not ok:
            hint = _nchw_hint(name, pname, shape[0], x, axis) if len(shape) == 1 and axis is not None else None
            if hint:
                raise ValueError(hint)
            raise ValueError(
                f"{name}: {pname} of shape {shape} does not broadcast against the input of shape {tuple(x.shape)}: "
                f"pass one value per channel, shape ({c},) for the {c} channels on axis {fax}"
            )
        out.append(p)
    return tuple(out)


def _check_rank(name: str, x: Array, min_ndim: int, what: str) -> None:
    """ValueError unless ``x`` has rank >= ``min_ndim`` (``what`` says which layout is expected)."""
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected an input of rank >= {min_ndim} ({what}), got shape {tuple(x.shape)}")


def _input(name: str, x: Any) -> Array:
    """``x`` as an array; TypeError unless it has a real float dtype."""
    x = jnp.asarray(x)
    check_float_input(name, x)
    return x


def _stat_dtype(x: Array):
    # float32 statistics for bf16/fp16 inputs; float64 stays float64
    return jnp.promote_types(x.dtype, jnp.float32)


# --------------------------------------------------------------------------------------------------------------------
# moments


def _psum(tree, axis_name, axis_index_groups=None, fn=lax.psum):
    """``fn`` (psum/pmax) of ``tree`` over ``axis_name`` (identity for None), with a ValueError if it is unbound."""
    if axis_name is None:
        return tree
    try:
        return fn(tree, axis_name, axis_index_groups=axis_index_groups)
    except NameError as e:
        raise ValueError(
            f"axis_name={axis_name!r} is not bound: sync batch norm must run inside jax.pmap(..., "
            f"axis_name={axis_name!r}) or shard_map over a mesh axis of that name; outside a mapped context "
            "pass axis_name=None"
        ) from e


def _expand_mask(name: str, mask: Array | None, x: Array) -> Array | None:
    """A boolean mask (True = a valid value) aligned with the leading axes of ``x`` (e.g. shape (N,)), or of
    ``x``'s rank and broadcastable to it, reshaped to ``x``'s rank. Non-bool masks select where they are nonzero."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim > x.ndim:
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} has more axes than the input {tuple(x.shape)}")
    if mask.ndim < x.ndim:
        if tuple(mask.shape) != tuple(x.shape[: mask.ndim]):
            raise ValueError(
                f"{name}: mask of shape {tuple(mask.shape)} must match the leading axes of the input {tuple(x.shape)} "
                f"(e.g. shape ({x.shape[0]},) for one flag per example)"
            )
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    elif any(m not in (1, n) for m, n in zip(mask.shape, x.shape)):
        raise ValueError(f"{name}: mask of shape {tuple(mask.shape)} does not broadcast to the input {tuple(x.shape)}")
    return mask if mask.dtype == jnp.bool_ else mask != 0


def _normalize(x, scale, bias, mean, var, epsilon, shift=None):
    """``y = (x − μ)·(1/√(σ²+ε))·γ + β``, one elementwise pass over ``x``; with ``shift`` (``k``) and ``mean``
    then meaning ``μ − k``, ``((x − k) − (μ − k))`` keeps μ's rounding out of the output.

    ``mean``/``var`` and ``scale``/``bias`` must already broadcast against ``x`` (from the right). Written with the
    small per-feature factors applied one by one rather than pre-multiplied (``x·a + b``): XLA then keeps each
    broadcast inside the consumer's fusion, where a pre-multiplied ``a`` shared with the backward pass gets
    materialized at full size (one extra write of ``x``'s size on CPU); it also avoids ``x·a − μ·a`` cancelling
    when ``|μ| ≫ σ``."""
    r = lax.rsqrt(var + epsilon)
    dt = r.dtype
    xf = x.astype(dt)
    if shift is not None:
        xf = xf - shift
    y = (xf - mean) * r
    if scale is not None:
        y = y * jnp.asarray(scale, dt)
    if bias is not None:
        y = y + jnp.asarray(bias, dt)
    return y.astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# the training-mode core shared by every norm: statistics and normalized output in one function with a hand-written
# JVP. Differentiating the plain formula makes XLA keep broadcast factors as full-size temporaries shared by the
# forward and backward passes; the JVP below is linear in ẋ through two reductions only (Σẋ, Σ(x−μ)·ẋ), so reverse
# mode (its transpose) is the textbook ``∂L/∂x = (γ/σ)(g − mean(g) − x̂·mean(g·x̂))``: two reductions and one
# elementwise pass, nothing else written. Everything is expressed through ``x − k`` (k the data shift) and
# ``d = μ − k``, so no term is a difference of two numbers of size |μ|. A custom_jvp (not custom_vjp) keeps forward
# mode, jvp-of-grad (Hessian-vector products) and higher orders working.


class _Spec(NamedTuple):
    """Static description of one normalization: which values share a statistic and how it is formed."""

    axes: tuple[int, ...]  # reduced axes (keepdims)
    groups: int | None  # group norm: channels (axis group_axis) combined in this many groups
    group_axis: int  # the channel axis that groups split (non-negative)
    axis_name: Any  # psum the sums and counts across devices
    axis_index_groups: Any  # hashable (tuple of tuples) or None
    center: bool  # subtract the mean (False: RMS norm)
    centered_var: bool  # σ² = mean((x−μ)²) (False: the raw second moment mean(x²))
    epsilon: float


def _spec(
    axes,
    *,
    groups=None,
    group_axis=-1,
    axis_name=None,
    axis_index_groups=None,
    center=True,
    centered_var=True,
    epsilon=1e-5,
) -> _Spec:
    """A hashable _Spec (it is a static argument of the custom JVP); ``group_axis`` (group norm's channel axis) must
    already be non-negative."""
    aig = None if axis_index_groups is None else tuple(tuple(int(i) for i in g) for g in axis_index_groups)
    return _Spec(tuple(axes), groups, group_axis, axis_name, aig, bool(center), bool(centered_var), float(epsilon))


def _group_split(s, spec: _Spec):
    """``s`` (keep-shaped) with the grouped channel axis split into (G, C/G)."""
    ga, g = spec.group_axis % s.ndim, spec.groups
    return s.reshape(s.shape[:ga] + (g, s.shape[ga] // g) + s.shape[ga + 1 :]), ga + 1


def _group_combine(s, spec: _Spec, fn=jnp.sum):
    """Group norm: combine the per-channel values of each group with ``fn`` and give each channel its group's."""
    g = spec.groups
    if g is None or g >= s.shape[spec.group_axis % s.ndim]:
        return s
    sg, ax = _group_split(s, spec)
    return jnp.broadcast_to(fn(sg, ax, keepdims=True), sg.shape).reshape(s.shape)


def _stat_sum(t, spec: _Spec, mask):
    """Σ of ``t`` over the values sharing a statistic, masked positions selected out, keep-shaped (not psum-ed)."""
    if mask is not None:
        t = jnp.where(mask, t, jnp.zeros((), t.dtype))
    return _group_combine(jnp.sum(t, spec.axes, keepdims=True), spec)


def _stat_psum(tree, spec: _Spec, fn=lax.psum):
    """The per-device sums (``fn=lax.pmax``: maxima) of ``tree`` combined across ``spec.axis_name`` and its device
    groups (nothing without one)."""
    aig = None if spec.axis_index_groups is None else [list(g) for g in spec.axis_index_groups]
    return _psum(tree, spec.axis_name, aig, fn=fn)


def _stat_shape(shape, spec: _Spec):
    """The keep-dims shape of one statistic: 1 on the reduced axes."""
    return tuple(1 if i in spec.axes else n for i, n in enumerate(shape))


def _count(x, spec: _Spec, mask, dt):
    """The number of (valid) values per statistic: a scalar without mask, keep-shaped with one."""
    if mask is None:
        n = math.prod(x.shape[a] for a in spec.axes)
        if spec.groups is not None:
            n *= x.shape[spec.group_axis] // spec.groups
        return jnp.asarray(n, dt)
    # from the (usually tiny) mask itself: its broadcast axes contribute their size as a factor
    factor = math.prod(x.shape[a] for a in spec.axes if mask.shape[a] == 1)
    c = jnp.sum(mask.astype(dt), spec.axes, keepdims=True) * factor
    return _group_combine(jnp.broadcast_to(c, _stat_shape(x.shape, spec)), spec)


def _data_shift(xf, spec: _Spec, mask):
    """A per-statistic shift ``k`` taken from the data (no gradient): the first valid value of each statistic's
    reduction set (0 where there is none), agreed across devices as the largest of the devices' shifts."""
    if any(xf.shape[a] == 0 for a in spec.axes):  # nothing to take a shift from (an empty batch)
        return jnp.zeros(_stat_shape(xf.shape, spec), xf.dtype)
    first = tuple(
        slice(0, 1) if (i in spec.axes and (mask is None or mask.shape[i] == 1)) else slice(None)
        for i in range(xf.ndim)
    )
    k = xf[first]
    valid = None
    if mask is not None:
        mv = [a for a in spec.axes if mask.shape[a] > 1]  # reduced axes along which validity varies
        if mv:
            rest = [a for a in range(mask.ndim) if a not in mv]
            mt = jnp.transpose(mask, rest + mv)
            lead = mt.shape[: len(rest)]
            flat = mt.reshape(lead + (-1,))
            pos = jnp.argmax(flat, -1)
            valid = jnp.any(flat, -1)
            idx = jnp.unravel_index(pos, tuple(mask.shape[a] for a in mv))

            def keep(t):  # back to keep-rank: singleton at the mv axes
                return jnp.expand_dims(t, tuple(mv))

            for a, ia in zip(mv, idx):
                k = jnp.take_along_axis(k, keep(ia), axis=a)
            valid = keep(valid)
        else:
            valid = mask
        valid = jnp.broadcast_to(valid, _stat_shape(xf.shape, spec))
        k = jnp.where(valid, k, jnp.zeros((), k.dtype))
    if spec.groups is not None and spec.groups < xf.shape[spec.group_axis]:
        # one shift per group: that of the group's first channel with a valid value
        kg, ax = _group_split(k, spec)
        if valid is None:
            pick = jnp.zeros(kg.shape[:ax] + (1,) + kg.shape[ax + 1 :], jnp.int32)
        else:
            vg, _ = _group_split(valid, spec)
            pick = jnp.argmax(vg, ax, keepdims=True)
        k = jnp.broadcast_to(jnp.take_along_axis(kg, pick, axis=ax), kg.shape).reshape(k.shape)
        if valid is not None:
            valid = _group_combine(valid, spec, jnp.any)
    if spec.axis_name is not None:
        # agreed exactly: the largest valid shift of any device (a max rounds nothing). k must be one value wherever
        # it is used, and the mean of the shifts was a division that XLA recomputes in each fusion that uses it,
        # free to round it differently there (XLA:CPU's elemental emitters at -O0 did: one ulp of a mean of 1e4,
        # 3e-4 in y); the largest first value is within a few σ of the mean, all a shift needs
        if valid is None:
            k = _stat_psum(k, spec, fn=lax.pmax)
        else:
            k = _stat_psum(jnp.where(valid, k, -jnp.inf), spec, fn=lax.pmax)
            k = jnp.where(k == -jnp.inf, jnp.zeros((), k.dtype), k)
    return lax.stop_gradient(k)


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def _norm_core(x, scale, bias, shift, mask, spec: _Spec):
    """``(y, μ, σ², count, k, d)``: ``y = (x − μ)·γ/√(σ² + ε) + β`` in the statistics dtype (``x·γ/√(σ²+ε) + β``
    when not ``spec.center``), μ, σ², count keep-shaped (count a scalar without ``mask``), ``k`` the shift (no
    gradient; ``shift`` if given, else taken from the data) and ``d = μ − k`` unrounded. ``mask`` is boolean."""
    dt = _stat_dtype(x)
    xf = x.astype(dt)
    count = _count(x, spec, mask, dt)
    want_mean = spec.center or spec.centered_var
    if want_mean:
        k = _data_shift(xf, spec, mask) if shift is None else lax.stop_gradient(jnp.asarray(shift, dt))
        xs = xf - k
        s1 = _stat_sum(xs, spec, mask)
    else:
        k = jnp.zeros((), dt)
        xs, s1 = xf, None
    s2 = _stat_sum(xs * xs if spec.centered_var else xf * xf, spec, mask)
    s1, s2, count = _stat_psum((s1, s2, count), spec)
    safe = jnp.maximum(count, 1.0)
    d = s1 / safe if want_mean else jnp.zeros_like(s2)
    var = jnp.maximum(s2 / safe - d * d, 0.0) if spec.centered_var else s2 / safe
    r = lax.rsqrt(var + spec.epsilon)
    y = ((xs - d) if spec.center else xf) * r
    if scale is not None:
        y = y * jnp.asarray(scale, dt)
    if bias is not None:
        y = y + jnp.asarray(bias, dt)
    mean = k + d if want_mean else jnp.zeros_like(s2)
    return y, mean, var, count, jnp.broadcast_to(k, d.shape), d


@_norm_core.defjvp
def _norm_core_jvp(spec: _Spec, primals, tangents):
    x, scale, bias, shift, mask = primals
    xd, sd, bd = tangents[:3]
    out = _norm_core(x, scale, bias, shift, mask, spec)
    y, mean, var, count, k, d = out
    dt = y.dtype
    xdf = xd.astype(dt)
    safe = jnp.maximum(count, 1.0)
    want_mean = spec.center or spec.centered_var
    xf = x.astype(dt)
    # everything through xs = x − k (its own full-size value; XLA:CPU cannot fuse the broadcast of k into a
    # reduction, so sharing one xs costs one write, where x − k and x − μ would cost two) and d = μ − k, which is
    # O(σ): Σ(x−μ)ẋ = Σxs·ẋ − d·Σẋ and (x−μ)·w = xs·w − d·w cancel only by O(σ), never by O(|μ|)
    xs = xf - k if want_mean else xf
    xv = xs if spec.centered_var else xf  # σ² = mean((x−μ)²) [or mean(x²)]: d(Σ(x−k)²/n − d²) = 2Σ(x−μ)ẋ/n
    if mask is not None:  # selected, not multiplied: the transpose then sends exact zeros to masked positions
        xv = jnp.where(mask, xv, jnp.zeros((), dt))
    sums = (_stat_sum(xdf, spec, mask) if want_mean else None, _stat_sum(xv * xdf, spec, None))
    md, mq = _stat_psum(sums, spec)
    md = md / safe if want_mean else jnp.zeros_like(mean)  # μ̇ = mean(ẋ)
    q = mq / safe - d * md if spec.centered_var else mq / safe  # σ̇²/2
    r = lax.rsqrt(var + spec.epsilon)
    sr = r if scale is None else r * jnp.asarray(scale, dt)
    # ẏ = ẋ·γr + xo·w + u, xo = x − μ = xs − d (x itself without centering), w the coefficient of xo,
    # u a per-statistic constant
    w = -(sr * r * r) * q
    if scale is not None:
        w = w + r * jnp.asarray(sd, dt)
    xo = xs if spec.center else xf
    if mask is not None:
        # padding may hold NaN/inf: the transpose sums ct·xo into w, and 0·NaN would poison every gradient, so
        # non-finite padded values count as 0 here (finite padding keeps its exact derivative)
        xo = jnp.where(mask | jnp.isfinite(xo), xo, jnp.zeros((), dt))
    yd = xdf * sr + xo * w
    u = -(sr * md) - d * w if spec.center else None
    if bias is not None:
        u = jnp.asarray(bd, dt) if u is None else u + jnp.asarray(bd, dt)
    if u is not None:
        yd = yd + u
    return out, (yd, md, 2.0 * q, jnp.zeros_like(count), jnp.zeros_like(k), md)


def _mask_for(name: str, mask, x):
    """The boolean mask at ``x``'s rank, under stop_gradient (or None); ``name`` begins its errors."""
    m = _expand_mask(name, mask, x)
    return None if m is None else lax.stop_gradient(m)


def _per_example_spec(name, axes, epsilon, **kw) -> _Spec:
    """The _Spec of a per-example norm, ``epsilon`` checked."""
    return _spec(axes, epsilon=check_epsilon(name, epsilon), **kw)


# --------------------------------------------------------------------------------------------------------------------
# batch norm


def init_batch_stats(num_features: int, dtype=jnp.float32) -> BatchStats:
    """Fresh running statistics for ``num_features`` channels: mean 0, var 1, count 0 (the number of batches seen).

    Formula: ``{'mean': 0, 'var': 1, 'count': 0}``, so that eval mode before any training step is
    ``y = γ·x/√(1 + ε) + β``.

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift (the running averages used at inference).

    Args:
        num_features: the number of channels C (the size of the feature axis of the batch norm's input).
        dtype: the dtype of ``'mean'`` and ``'var'``; ``'count'`` is int32. Keep float32 (or wider) for a model
            in half precision: a running average stored in bfloat16 stops moving once a step's change,
            ``(1 − m)·|stat − r|``, is under half its rounding unit; at momentum 0.99 that is up to 50 units from
            the target (batches at mean 5.0 leave it at 4.0).

    Returns:
        A dict ``{'mean': (C,), 'var': (C,), 'count': ()}``.

    Raises:
        ValueError: if ``num_features`` is not a positive int.

    Examples:
        >>> import jaxnorm
        >>> stats = jaxnorm.init_batch_stats(3)
        >>> print(stats["mean"].shape, stats["var"].tolist(), int(stats["count"]))
        (3,) [1.0, 1.0, 1.0] 0
    """
    if not isinstance(num_features, (int,)) or num_features <= 0:
        raise ValueError(f"init_batch_stats: num_features must be a positive int, got {num_features!r}")
    return {
        "mean": jnp.zeros((num_features,), dtype),
        "var": jnp.ones((num_features,), dtype),
        "count": jnp.zeros((), jnp.int32),
    }


def update_running_stats(
    stats: BatchStats,
    mean: Array,
    var: Array,
    n: Array,
    *,
    momentum: float | None,
    convention: str = "flax",
) -> BatchStats:
    """One running-statistics update from a batch's ``mean`` and biased ``var`` over ``n`` values per channel.

    Formula, per channel:

    - ``convention='flax'``: ``r ← m·r + (1−m)·stat`` with the biased variance (``m`` = momentum; the callers'
      default is 0.99);
    - ``convention='pytorch'``: ``r ← (1−p)·r + p·stat`` with the unbiased variance ``n/(n−1)·σ²``
      (``p`` = momentum; the callers' default is 0.1), as ``torch.nn.BatchNorm``;
    - ``momentum=None``: the cumulative average over all batches so far, ``r ← r + (stat − r)/k`` at the k-th batch.

    A channel with ``n = 0`` valid values (an all-False mask, an empty batch) keeps its statistics; ``count`` (the
    number of batches seen) grows only when some channel was updated. Nothing is reduced here: the batch statistics
    come in already reduced. The update is computed in at least float32 and rounded once to the statistics' dtype;
    half-precision running statistics still stall (a bfloat16 average at momentum 0.99 of batches at mean 5 stops
    at 4.0, where a step's change is under half the rounding unit), so keep them in float32, the default.

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        stats: the running statistics ``{'mean', 'var', 'count'}`` (see :func:`init_batch_stats`).
        mean: the batch mean per channel, shape (C,).
        var: the biased batch variance per channel, shape (C,).
        n: the number of values behind each channel's statistics (a scalar or shape (C,)).
        momentum: the decay (Flax) or update weight (PyTorch) in [0, 1], or None for the cumulative average.
        convention: ``'flax'`` or ``'pytorch'``.

    Returns:
        The new ``{'mean', 'var', 'count'}`` in the dtypes of ``stats``.

    Raises:
        ValueError: if ``convention`` is not one of :data:`CONVENTIONS`.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> st = jaxnorm.init_batch_stats(2)
        >>> new = jaxnorm.update_running_stats(st, jnp.array([1.0, 2.0]), jnp.array([4.0, 4.0]), 5, momentum=0.9)
        >>> print([round(v, 4) for v in new["mean"].tolist()], [round(v, 4) for v in new["var"].tolist()])
        [0.1, 0.2] [1.3, 1.3]
        >>> new = jaxnorm.update_running_stats(st, jnp.array([1.0, 2.0]), jnp.array([4.0, 4.0]), 5, momentum=0.1,
        ...                                    convention="pytorch")
        >>> print([round(v, 4) for v in new["var"].tolist()], int(new["count"]))
        [1.4, 1.4] 1
    """
    _check_convention(convention)
    old = jnp.asarray(stats.get("count", jnp.zeros((), jnp.int32)))
    rdt = stats["mean"].dtype
    n = jnp.asarray(n, jnp.float32)
    valid = n > 0
    count = old + jnp.any(valid).astype(old.dtype)
    if convention == "pytorch":
        var = var * (n / jnp.maximum(n - 1.0, 1.0))
    w: Array | float
    if momentum is None:
        w = 1.0 / jnp.maximum(count, 1).astype(jnp.float32)
    elif convention == "pytorch":
        w = momentum
    else:
        w = 1.0 - momentum
    # (1−w)·r + w·stat, not r + w·(stat − r): the latter cancels when stat ≪ r (σ² = 1e-6 against r = 1). In at
    # least float32, rounded once to the statistics' dtype: in bfloat16 the weights themselves would round (0.99 →
    # 0.98828, 0.01 → 0.01001, summing to 0.9983), and a running mean of batches at 5.0 settled at 3.34
    cdt = jnp.promote_types(rdt, jnp.float32)

    def update(r, stat):
        r = jnp.asarray(r)
        new = (1.0 - w) * r.astype(cdt) + w * stat.astype(cdt)
        return jnp.where(valid, new.astype(r.dtype), r)

    return {"mean": update(stats["mean"], mean), "var": update(stats["var"], var), "count": count}


def _ghost_view(name: str, x: Array, mask, virtual_batch_size: int):
    """``x`` (and ``mask``) reshaped to (N/v, v, …) ghost batches; ValueError unless v divides N."""
    n = x.shape[0]
    if not isinstance(virtual_batch_size, int) or virtual_batch_size <= 0 or n % virtual_batch_size:
        vbs = virtual_batch_size if isinstance(virtual_batch_size, int) else 1
        raise ValueError(
            f"{name}: virtual_batch_size={virtual_batch_size} must be a positive divisor of the batch size {n}; "
            f"choose e.g. {next(d for d in range(min(max(vbs, 1), max(n, 1)), 0, -1) if max(n, 1) % d == 0)}"
        )
    g = n // virtual_batch_size
    xg = x.reshape((g, virtual_batch_size) + x.shape[1:])
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape[:1] + mask.shape[1:]).reshape((g, virtual_batch_size) + mask.shape[1:])
    return xg, mask


def _with_count(stats: Mapping) -> dict:
    """``stats`` as arrays with a 'count' (0 if absent): both lax.cond branches need the same structure."""
    return {
        "mean": jnp.asarray(stats["mean"]),
        "var": jnp.asarray(stats["var"]),
        "count": jnp.asarray(stats.get("count", jnp.zeros((), jnp.int32))),
    }


def _by_mode(train, train_fn, eval_fn, stats):
    """``train=True`` runs ``train_fn``; a traced boolean runs ``lax.cond`` (one branch executes). The callers return
    ``eval_fn(stats)`` themselves for ``train=False``, before the training-only checks."""
    if train is True:
        return train_fn(stats)
    stats = _with_count(stats)

    def same_types(out):  # the branches must agree on dtypes (weak types included)
        y, st = out
        return y, jax.tree.map(lambda a, b: jnp.asarray(a, b.dtype).reshape(b.shape), st, stats)

    return lax.cond(train, lambda s: same_types(train_fn(s)), lambda s: same_types(eval_fn(s)), stats)


def _per_feature(n, c: int):
    """A count from the core (a scalar, or keep-shaped with a mask) as one value per feature (or the scalar)."""
    return n.reshape(c) if jnp.ndim(n) else n


def _check_train_size(name: str, x: Array, c: int, mask, axis_name) -> None:
    """ValueError for one value per channel in training (as PyTorch): the batch variance would be 0."""
    if mask is None and axis_name is None and x.size // c == 1:
        raise ValueError(
            f"{name}: expected more than 1 value per channel in training, got input shape {tuple(x.shape)}: the "
            "batch variance of one value is 0 and the output would be the bias alone (PyTorch raises the same "
            "error). Use a batch of at least 2, train=False, or a per-example norm such as layer_norm/group_norm"
        )


def batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    stats: BatchStats,
    *,
    train: bool,
    momentum: float | None = _DEFAULT,
    epsilon: float = 1e-5,
    axis: int = -1,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    mask: Array | None = None,
    convention: str = "flax",
    virtual_batch_size: int | None = None,
) -> tuple[Array, BatchStats]:
    """Batch normalization (Ioffe & Szegedy 2015): ``y = γ·(x − μ_B)/√(σ²_B + ε) + β``.

    Statistics are per channel (``axis``, default the last; ``axis=1`` for NCHW, with 1-D γ, β of length C),
    reduced over the batch and all spatial axes. ``train=True`` normalizes with the batch statistics and returns
    updated running statistics (see :func:`update_running_stats` for the ``convention`` and ``momentum`` options:
    default Flax's decay 0.99, PyTorch's update weight 0.1, ``None`` for a cumulative average); ``train=False``
    normalizes with the running (or population) statistics and returns ``stats`` unchanged. ``train`` may be a
    traced boolean (``lax.cond`` picks the mode).

    Options: ``axis_name`` synchronizes the statistics across devices by adding per-device sums and counts
    (``psum``), exact for uneven shards; ``mask`` (shape (N,) or aligned with ``x``'s leading axes; True = valid)
    selects the values that enter the statistics, so padding may hold anything, NaN included (the output at masked
    positions is still computed from them); ``virtual_batch_size`` normalizes each consecutive group of that many
    examples with its own statistics ("ghost" batch norm, Hoffer et al. 2017) and updates the running statistics
    with the average over the groups that hold valid values. Statistics are float32 for bf16/fp16 input; the output
    has the input's dtype. An empty batch (or an all-False mask) leaves the running statistics unchanged, as in
    PyTorch; one value per channel in training is an error, as in PyTorch.

    Reduces over: every axis but ``axis`` (N, H, W for NHWC input; with ``axis_name`` also across devices).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        x: the input, any float dtype, e.g. ``N×H×W×C``.
        scale: γ, one value per channel (shape (C,)), or None for 1.
        bias: β, one value per channel (shape (C,)), or None for 0.
        stats: the running statistics ``{'mean', 'var', 'count'}`` for the C channels (:func:`init_batch_stats`).
        train: True for the batch statistics, False for ``stats``; a traced boolean scalar picks with ``lax.cond``.
        momentum: see :func:`update_running_stats`; default 0.99 (``'flax'``) or 0.1 (``'pytorch'``).
        epsilon: ε ≥ 0, added to the variance.
        axis: the feature (channel) axis; ``axis=1`` for PyTorch's NCHW layout.
        axis_name: a mapped axis name (``pmap``/``shard_map``) to synchronize the statistics over, or None.
        axis_index_groups: device groups for the ``psum`` (as in ``lax.psum``).
        mask: True for the values that enter the statistics; shape (N,), or aligned with ``x``'s leading axes.
        convention: ``'flax'`` or ``'pytorch'``, the running-statistics update (:func:`update_running_stats`).
        virtual_batch_size: ghost batch size (a divisor of N), or None for the whole batch.

    Returns:
        ``(y, new_stats)``: ``y`` with ``x``'s shape and dtype, and the updated statistics (``stats`` itself in
        eval mode).

    Raises:
        ValueError: if the stats, scale or bias do not match the channels on ``axis`` (with the advice ``axis=1``
            when their size is that of axis 1, PyTorch's NCHW), ``axis`` is out of range, ``convention`` is
            unknown, ``momentum`` is outside [0, 1], ``epsilon`` is negative or not finite, training sees one value
            per channel, ``mask`` does not fit ``x``, ``axis_name`` is unbound, or ``virtual_batch_size`` does not
            divide N (or is combined with ``axis_name`` or ``axis=0``).
        TypeError: if ``x`` is not a float array, ``train`` is not a bool, or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = 5.0 + 3.0 * jax.random.normal(jax.random.key(0), (16, 4))
        >>> y, stats = jaxnorm.batch_norm(x, None, None, jaxnorm.init_batch_stats(4), train=True)
        >>> print(y.shape, bool(jnp.allclose(y.mean(0), 0.0, atol=1e-5)), bool(jnp.allclose(y.std(0), 1.0, atol=1e-3)))
        (16, 4) True True
        >>> x_nchw = jax.random.normal(jax.random.key(1), (8, 3, 5, 5))  # PyTorch layout: channels on axis 1
        >>> y, stats = jaxnorm.batch_norm(x_nchw, jnp.ones(3), jnp.zeros(3), jaxnorm.init_batch_stats(3),
        ...                               train=True, axis=1)
        >>> print(stats["mean"].shape, int(stats["count"]))
        (3,) 1
    """
    return _batch_norm(
        "batch_norm",
        x,
        scale,
        bias,
        stats,
        train,
        momentum=momentum,
        epsilon=epsilon,
        axis=axis,
        axis_name=axis_name,
        axis_index_groups=axis_index_groups,
        mask=mask,
        convention=convention,
        virtual_batch_size=virtual_batch_size,
    )


def _batch_norm(
    name,
    x,
    scale,
    bias,
    stats,
    train,
    *,
    momentum,
    epsilon,
    axis,
    axis_name,
    axis_index_groups,
    mask,
    convention,
    virtual_batch_size,
):
    """:func:`batch_norm`, its errors beginning with ``name`` (the public function the user called)."""
    _check_convention(convention)
    momentum = _resolve_momentum(name, momentum, convention)
    x, train, eps, fax, c, scale, bias, red = _bn_setup(name, x, scale, bias, stats, train, epsilon, axis)
    feat_shape = [c if i == fax else 1 for i in range(x.ndim)]
    dt = _stat_dtype(x)

    def eval_mode(st):
        mean = jnp.asarray(st["mean"]).astype(dt).reshape(feat_shape)
        var = jnp.asarray(st["var"]).astype(dt).reshape(feat_shape)
        return _normalize(x, scale, bias, mean, var, eps), st

    if train is False:
        return eval_mode(stats)
    _check_train_size(name, x, c, mask, axis_name)
    mk = _mask_for(name, mask, x)
    if virtual_batch_size is not None:
        if axis_name is not None:
            raise ValueError(
                f"{name}: virtual_batch_size and axis_name cannot be combined: ghost batches are per-device "
                "already; pass axis_name=None (per-device statistics) or drop virtual_batch_size"
            )
        if fax == 0:
            raise ValueError(
                f"{name}: virtual_batch_size splits axis 0 into ghost batches, so axis 0 cannot be the feature "
                "axis; put the channels on another axis (axis=-1 for NHWC, axis=1 for NCHW) or drop virtual_batch_size"
            )
        xg, mg = _ghost_view(name, x, mk, virtual_batch_size)

    def train_mode(st):
        if virtual_batch_size is not None:
            # ghost batches along a new leading axis: the feature axis moves to fax + 1; statistics per (ghost, feature)
            spec = _spec([i for i in range(xg.ndim) if i not in (0, fax + 1)], epsilon=eps)
            y, mean, var, n, _, _ = _norm_core(xg, scale, bias, None, mg, spec)
            y = y.reshape(x.shape)
            n = jnp.broadcast_to(n, mean.shape)
            has = (n > 0).astype(dt)  # average over the ghost batches that hold valid values
            k = jnp.maximum(jnp.sum(has, 0), 1.0)
            mean, var, n = (jnp.sum(t * has, 0) / k for t in (mean, var, n))
        else:
            spec = _spec(red, axis_name=axis_name, axis_index_groups=axis_index_groups, epsilon=eps)
            y, mean, var, n, _, _ = _norm_core(x, scale, bias, None, mk, spec)
        mean, var = mean.reshape(c), var.reshape(c)
        n = _per_feature(n, c)
        new_stats = update_running_stats(
            st,
            lax.stop_gradient(mean),
            lax.stop_gradient(var),
            lax.stop_gradient(n),
            momentum=momentum,
            convention=convention,
        )
        return y.astype(x.dtype), new_stats

    return _by_mode(train, train_mode, eval_mode, stats)


def batch_moments(
    x: Array,
    *,
    axis: int | Sequence[int] = -1,
    mask: Array | None = None,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    shift: Array | None = None,
) -> dict:
    """Per-feature batch mean and biased variance of ``x``, reduced over every axis except ``axis``.

    ``μ = k + Σ(x−k)/n``, ``σ² = Σ(x−k)²/n − (μ−k)²`` in one float32 pass, ``k`` a per-feature shift without
    gradient: by default the first valid value of each feature (so the variance does not cancel however large the
    mean), or ``shift`` if given (it must then be the same on every device). With ``axis_name`` the per-device sums
    and counts are combined with ``psum``, so uneven or masked shards give exactly the global statistics. ``mask``
    (aligned with the leading axes of ``x``, e.g. shape (N,); True = valid) selects the values that count.

    Reduces over: every axis but ``axis`` (N, H, W for NHWC input; with ``axis_name`` also across devices).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift (the minibatch mean and variance of Algorithm 1).

    Args:
        x: the input, any float dtype.
        axis: the feature axis, or several (their statistics are kept separately).
        mask: True for the values that count; aligned with the leading axes of ``x``.
        axis_name: a mapped axis name to combine the devices' sums over, or None.
        axis_index_groups: device groups for the ``psum``.
        shift: the per-feature shift ``k`` (same on every device), or None for the data's first valid value.

    Returns:
        ``{'mean', 'var', 'count'}``, mean and var of the feature shape, ``count`` the number of values per feature
        (global with ``axis_name``).

    Raises:
        ValueError: if an axis is out of range or ``mask`` does not fit ``x``.
        TypeError: if ``x`` is not a float array.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> m = jaxnorm.batch_moments(jnp.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]]))
        >>> print(m["mean"].tolist(), [round(v, 4) for v in m["var"].tolist()], int(m["count"]))
        [3.0, 10.0] [2.6667, 0.0] 3
    """
    x = _input("batch_moments", x)
    feat = _axes("batch_moments", x.ndim, axis)
    red = tuple(i for i in range(x.ndim) if i not in feat)
    fshape = tuple(x.shape[i] for i in feat)
    mk = _mask_for("batch_moments", mask, x)
    if shift is not None:
        shift = jnp.asarray(shift, _stat_dtype(x)).reshape([x.shape[i] if i in feat else 1 for i in range(x.ndim)])
    spec = _spec(red, axis_name=axis_name, axis_index_groups=axis_index_groups)  # no groups: no group axis
    _, mean, var, count, _, _ = _norm_core(x, None, None, shift, mk, spec)
    count = jnp.broadcast_to(count, mean.shape).reshape(fshape) if jnp.ndim(count) else count
    return {"mean": mean.reshape(fshape), "var": var.reshape(fshape), "count": count}


def population_stats(moments: Iterable[Any]) -> Any:
    """Population statistics from the batch moments of many training minibatches (Ioffe & Szegedy 2015, §3.1).

    ``E[x] = E_B[μ_B]`` and ``Var[x] = E_B[m/(m−1)·σ²_B]`` with ``m`` the number of values per channel in batch B,
    Ioffe & Szegedy's formula for a fixed batch size. Batches of different sizes (a masked last batch) are weighted by
    their counts: ``E[x] = Σ n_B μ_B / Σ n_B``, ``Var[x] = Σ n_B σ²_B / Σ (n_B − 1)`` (the pooled unbiased
    within-batch variance, equal to the formula above when all n_B = m); batches with no valid values add nothing.
    The means are accumulated relative to the first batch's (a shift, as in Chan et al.'s parallel variance), so
    large means lose nothing to float32 rounding.

    Reduces over: the batches (the per-batch moments were already reduced over every axis but the feature axis).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift.

    Args:
        moments: an iterable of pytrees whose leaves come in dicts ``{'mean', 'var', 'count'}`` (as returned by
            :func:`batch_moments`, one per layer), computed with the parameters fixed.

    Returns:
        The same tree of ``{'mean', 'var', 'count'}`` running statistics, with ``count`` the number of batches,
        ready to use with ``train=False``.

    Raises:
        ValueError: if ``moments`` is empty or a node is not a nested dict of statistics.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> batches = [jnp.array([[0.0], [2.0]]), jnp.array([[4.0], [6.0]])]
        >>> pop = jaxnorm.population_stats(jaxnorm.batch_moments(b) for b in batches)
        >>> print(pop["mean"].tolist(), pop["var"].tolist(), int(pop["count"]))
        [3.0] [2.0] 2
    """

    def counts(s):
        return jnp.broadcast_to(jnp.asarray(s["count"], jnp.float32), jnp.shape(s["mean"]))

    def first(s):  # the reference mean: the first batch's, 0 where it is empty (its moments may be NaN)
        return {"mean": jnp.where(counts(s) > 0, jnp.asarray(s["mean"], jnp.float32), 0.0)}

    def terms(s, r):  # one batch's count-weighted, shifted contributions
        n = counts(s)
        has = n > 0
        mean = jnp.where(has, jnp.asarray(s["mean"], jnp.float32) - r["mean"], 0.0)
        var = jnp.where(has, jnp.asarray(s["var"], jnp.float32), 0.0)
        return {"n": n, "dm": n * mean, "ss": n * var, "dof": jnp.maximum(n - 1.0, 0.0)}

    total, ref, k = None, None, 0
    for tree in moments:
        if ref is None:
            ref = _map_stats(first, tree)
        cur = _map_stats(terms, tree, ref)
        total = cur if total is None else jax.tree.map(jnp.add, total, cur)
        k += 1
    if total is None:
        raise ValueError("population_stats: the iterator of batch moments was empty; pass at least one batch")
    return _map_stats(
        lambda t, r: {
            "mean": r["mean"] + t["dm"] / jnp.maximum(t["n"], 1.0),
            "var": t["ss"] / jnp.maximum(t["dof"], 1.0),
            "count": jnp.asarray(k, jnp.int32),
        },
        total,
        ref,
        leaf=lambda t: "dm" in t,
    )


def _is_stats(node) -> bool:
    """True for a statistics dict (one with 'mean' and 'var')."""
    return isinstance(node, Mapping) and "mean" in node and "var" in node


def _map_stats(fn, tree, ref=None, leaf=None):
    """``fn(node)`` (``fn(node, ref_node)`` with ``ref``, a tree of the same nesting) on every statistics dict of a
    nested dict ``tree``; ``leaf`` tells a statistics dict (default: one with 'mean' and 'var')."""
    if (leaf or _is_stats)(tree):
        return fn(tree) if ref is None else fn(tree, ref)
    if isinstance(tree, Mapping):
        return {k: _map_stats(fn, v, None if ref is None else ref[k], leaf) for k, v in tree.items()}
    raise ValueError(f"expected a nested dict of {{'mean', 'var', 'count'}} statistics, found {type(tree).__name__}")


def fold_batch_norm(
    kernel: Array,
    bias: Array | None,
    bn_scale: Array | None,
    bn_bias: Array | None,
    stats: BatchStats,
    *,
    epsilon: float = 1e-5,
) -> tuple[Array, Array]:
    """Fold batch norm's inference form into the preceding Dense/Conv layer (kernel ``…×C_in×C_out``).

    ``BN(Wx + b) = a·(Wx + b) + (β − a·E[x])`` with ``a = γ/√(Var + ε)``, so ``W' = W·a`` (per output channel,
    the last kernel axis) and ``b' = a·(b − E[x]) + β``. The folded layer needs no BN. Nothing is reduced: the
    running statistics are already per channel.

    Reference: Jacob et al. (2018), Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference (§3.2, batch normalization folding).

    Args:
        kernel: the layer's kernel ``…×C_in×C_out``.
        bias: the layer's bias (C_out,), or None for 0.
        bn_scale: the batch norm's γ (C_out,), or None for 1.
        bn_bias: the batch norm's β (C_out,), or None for 0.
        stats: the batch norm's running statistics for the C_out channels.
        epsilon: the batch norm's ε.

    Returns:
        ``(W', b')`` in ``kernel``'s dtype.

    Raises:
        ValueError: if ``stats`` lacks 'mean'/'var' or does not have C_out channels.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> st = {"mean": jnp.array([1.0, -1.0]), "var": jnp.array([4.0, 1.0]), "count": jnp.array(1)}
        >>> w, b = jaxnorm.fold_batch_norm(jnp.ones((3, 2)), None, None, None, st, epsilon=0.0)
        >>> print(w[0].tolist(), b.tolist())
        [0.5, 1.0] [-0.5, 1.0]
    """
    c = kernel.shape[-1]
    _check_stats("fold_batch_norm", stats, c)
    a = lax.rsqrt(stats["var"].astype(jnp.float32) + epsilon)
    if bn_scale is not None:
        a = a * bn_scale
    b = jnp.zeros((c,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    b = a * (b - stats["mean"])
    if bn_bias is not None:
        b = b + bn_bias
    return (kernel * a).astype(kernel.dtype), b.astype(kernel.dtype)


def _get(tree: Mapping, path: str, what: str):
    """The node at the '/'-joined ``path`` of ``tree``; KeyError naming the missing part otherwise."""
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            where = list(node) if isinstance(node, Mapping) else []
            raise KeyError(f"fold_batch_norm_params: {what} path {path!r} not found (at {part!r}; have {where})")
        node = node[part]
    return node


def fold_batch_norm_params(
    params: Mapping, batch_stats: Mapping, pairs: Mapping[str, str], *, epsilon: float = 1e-5
) -> dict:
    """Fold every ``{layer_path: bn_path}`` pair of a Flax parameter tree (paths joined with '/').

    Returns a new parameter tree (the input is not modified) where each layer gets the folded ``kernel`` and a
    ``bias``, and each folded BN module is removed: apply it with the same network built without those BN layers
    (and with a bias on the folded layers). Equal to the unfolded network in eval mode. Each pair is
    :func:`fold_batch_norm`: ``W' = W·a``, ``b' = a·(b − E[x]) + β`` with ``a = γ/√(Var + ε)``.

    Reference: Jacob et al. (2018), Quantization and Training of Neural Networks for Efficient
    Integer-Arithmetic-Only Inference.

    Args:
        params: the Flax parameter tree (nested dicts).
        batch_stats: the Flax ``batch_stats`` tree, with the BN paths of ``pairs``.
        pairs: ``{layer_path: bn_path}``, paths joined with '/'.
        epsilon: the batch norms' ε.

    Returns:
        The new parameter tree.

    Raises:
        KeyError: if a path of ``pairs`` is not in ``params`` or ``batch_stats``.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> params = {"Dense_0": {"kernel": jnp.ones((3, 2))},
        ...           "BatchNorm_0": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}
        >>> stats = {"BatchNorm_0": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}
        >>> folded = jaxnorm.fold_batch_norm_params(params, stats, {"Dense_0": "BatchNorm_0"}, epsilon=0.0)
        >>> print(sorted(folded), sorted(folded["Dense_0"]))
        ['Dense_0'] ['bias', 'kernel']
    """
    out = jax.tree.map(lambda v: v, dict(params))  # structural copy; leaves are immutable arrays

    def _copy_dicts(t):
        return {k: _copy_dicts(v) for k, v in t.items()} if isinstance(t, Mapping) else t

    out = _copy_dicts(out)
    for layer, bn in pairs.items():
        lp, bp, st = _get(params, layer, "layer"), _get(params, bn, "bn"), _get(batch_stats, bn, "bn statistics")
        k, b = fold_batch_norm(lp["kernel"], lp.get("bias"), bp.get("scale"), bp.get("bias"), st, epsilon=epsilon)
        node = out
        for part in layer.split("/"):
            node = node[part]
        node["kernel"], node["bias"] = k, b
        parent, leaf = out, bn.split("/")
        for part in leaf[:-1]:
            parent = parent[part]
        del parent[leaf[-1]]
    return out


# --------------------------------------------------------------------------------------------------------------------
# per-example norms: layer, instance, group, RMS


def layer_norm(
    x: Array,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    epsilon: float = 1e-5,
    axes: int | Sequence[int] | None = None,
    mask: Array | None = None,
) -> Array:
    """Layer normalization (Ba et al. 2016): ``y = γ·(x − μ)/√(σ² + ε) + β`` per example.

    μ and σ² are reduced over ``axes``: by default every non-batch axis (all hidden units of a layer, Ba et al.'s
    definition; for an ``N×H×W×C`` map: H, W and C). Pass ``axes=-1`` for the per-token form of transformers
    (Flax's ``nn.LayerNorm()`` default). ``scale``/``bias`` broadcast from the right (shape (C,) is per channel).
    ``mask`` (True = valid, e.g. (N, T) for padded tokens) selects the values that enter μ and σ².
    Invariant to re-scaling the incoming weights and to re-scaling a single example (up to ε).

    Reduces over: ``axes``, by default every axis but the batch axis 0 (H, W, C for NHWC input).

    Reference: Ba, Kiros & Hinton (2016), Layer Normalization.

    Args:
        x: the input ``N×…``, rank ≥ 2, any float dtype.
        scale: γ, broadcast from the right (e.g. shape (C,)), or None for 1.
        bias: β, broadcast from the right, or None for 0.
        epsilon: ε ≥ 0, added to the variance.
        axes: the axes of each statistic, or None for every non-batch axis.
        mask: True for the values that enter μ and σ².

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``x`` has rank < 2, an axis is out of range, ``scale``/``bias`` do not broadcast, ``mask``
            does not fit ``x``, or ``epsilon`` is negative or not finite.
        TypeError: if ``x`` is not a float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.layer_norm(jnp.array([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 20.0, 20.0]]))
        >>> print([round(v, 4) for v in y[1].tolist()])
        [-1.0, -1.0, 1.0, 1.0]
    """
    x = _input("layer_norm", x)
    _check_rank("layer_norm", x, 2, "a batch axis and at least one feature axis")
    scale, bias = _affine("layer_norm", x, scale, bias)
    red = tuple(range(1, x.ndim)) if axes is None else _axes("layer_norm", x.ndim, axes)
    spec = _per_example_spec("layer_norm", red, epsilon)
    return _norm_core(x, scale, bias, None, _mask_for("layer_norm", mask, x), spec)[0].astype(x.dtype)


def rms_norm(
    x: Array,
    scale: Array | None = None,
    *,
    epsilon: float = 1e-5,
    axes: int | Sequence[int] | None = None,
    mask: Array | None = None,
) -> Array:
    """RMS normalization (Zhang & Sennrich 2019): ``y = γ·x/√(mean(x²) + ε)``, no mean subtraction.

    The mean square is over ``axes`` (default every non-batch axis, like :func:`layer_norm`; ``axes=-1`` for
    Flax's ``nn.RMSNorm()`` default); ``mask`` (True = valid) selects the values that enter it.

    Reduces over: ``axes``, by default every axis but the batch axis 0.

    Reference: Zhang & Sennrich (2019), Root Mean Square Layer Normalization.

    Args:
        x: the input ``N×…``, rank ≥ 2, any float dtype.
        scale: γ, broadcast from the right, or None for 1.
        epsilon: ε ≥ 0, added to the mean square.
        axes: the axes of each statistic, or None for every non-batch axis.
        mask: True for the values that enter the mean square.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``x`` has rank < 2, an axis is out of range, ``scale`` does not broadcast, ``mask`` does
            not fit ``x``, or ``epsilon`` is negative or not finite.
        TypeError: if ``x`` is not a float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.rms_norm(jnp.array([[3.0, -3.0, 3.0, -3.0]]), epsilon=0.0)
        >>> print(y.tolist())
        [[1.0, -1.0, 1.0, -1.0]]
    """
    x = _input("rms_norm", x)
    _check_rank("rms_norm", x, 2, "a batch axis and at least one feature axis")
    scale, _ = _affine("rms_norm", x, scale, None)
    red = tuple(range(1, x.ndim)) if axes is None else _axes("rms_norm", x.ndim, axes)
    spec = _per_example_spec("rms_norm", red, epsilon, center=False, centered_var=False)
    return _norm_core(x, scale, None, None, _mask_for("rms_norm", mask, x), spec)[0].astype(x.dtype)


def group_norm(
    x: Array,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    num_groups: int | None = None,
    group_size: int | None = None,
    epsilon: float = 1e-5,
    axis: int = -1,
    mask: Array | None = None,
) -> Array:
    """Group normalization (Wu & He 2018): per example, μ and σ² over the spatial axes and the C/G channels of
    each of the G groups; ``y = γ·(x − μ)/√(σ² + ε) + β`` with per-channel γ, β.

    Give exactly one of ``num_groups`` (G; Wu & He use 32) or ``group_size`` (C/G). G = 1 is layer norm
    over (H, W, C); G = C is instance norm. ``axis`` is the channel axis (default the last; ``axis=1`` for NCHW,
    with 1-D γ, β of length C). Computed from per-(example, channel) sums over space combined per group, so ``x``
    is read in its natural layout (no ``…×G×C/G`` reshape of the activations). A group of one value normalizes to
    0 (the output is β), as in PyTorch, which does not raise either.

    Reduces over: per example, the spatial axes and the C/G channels of each group (H, W and C/G for NHWC input).

    Reference: Wu & He (2018), Group Normalization.

    Args:
        x: the input ``N×…×C``, rank ≥ 2, any float dtype.
        scale: γ, one value per channel (shape (C,)), or None for 1.
        bias: β, one value per channel (shape (C,)), or None for 0.
        num_groups: G, a divisor of C (give this or ``group_size``).
        group_size: C/G, a divisor of C (give this or ``num_groups``).
        epsilon: ε ≥ 0, added to the variance.
        axis: the channel axis; ``axis=1`` for PyTorch's NCHW layout.
        mask: True for the values that enter μ and σ².

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``x`` has rank < 2, ``axis`` is 0 or out of range, not exactly one of ``num_groups`` and
            ``group_size`` is given or it does not divide C, ``scale``/``bias`` do not match the channels (with the
            advice ``axis=1`` when their size is that of axis 1), ``mask`` does not fit ``x``, or ``epsilon`` is
            negative or not finite.
        TypeError: if ``x`` is not a float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
        >>> y = jaxnorm.group_norm(x, num_groups=2)
        >>> g = y.reshape(2, 4, 4, 2, 4)  # per example and group: mean 0, variance 1
        >>> print(y.shape, bool(jnp.allclose(g.mean((1, 2, 4)), 0.0, atol=1e-5)))
        (2, 4, 4, 8) True
    """
    x = _input("group_norm", x)
    _check_rank("group_norm", x, 2, "N×…×C")
    fax = _feature_axis("group_norm", x, axis)
    if fax == 0:
        raise ValueError("group_norm: axis 0 is the batch axis; pass the channel axis (-1 for NHWC, 1 for NCHW)")
    scale, bias = _affine("group_norm", x, scale, bias, fax, axis)
    g = check_groups("group_norm", x.shape[fax], num_groups, group_size)
    red = [i for i in range(1, x.ndim) if i != fax]  # per-(example, channel) sums, then per group
    spec = _per_example_spec("group_norm", red, epsilon, groups=g, group_axis=fax)
    return _norm_core(x, scale, bias, None, _mask_for("group_norm", mask, x), spec)[0].astype(x.dtype)


def instance_norm(
    x: Array,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    epsilon: float = 1e-5,
    axis: int = -1,
    mask: Array | None = None,
) -> Array:
    """Instance normalization (Ulyanov et al. 2016): per example and channel, μ and σ² over the spatial axes;
    ``y = γ·(x − μ)/√(σ² + ε) + β``. Needs at least one spatial axis (``N×…×C`` with rank ≥ 3) and, as in PyTorch,
    more than one spatial value (one value normalizes to a constant). ``axis`` is the channel axis (default the
    last; ``axis=1`` for NCHW, with 1-D γ, β of length C).

    Reduces over: per example and channel, the spatial axes (H, W for NHWC input).

    Reference: Ulyanov, Vedaldi & Lempitsky (2016), Instance Normalization: The Missing Ingredient for Fast
    Stylization.

    Args:
        x: the input ``N×spatial…×C``, rank ≥ 3, any float dtype.
        scale: γ, one value per channel (shape (C,)), or None for 1.
        bias: β, one value per channel (shape (C,)), or None for 0.
        epsilon: ε ≥ 0, added to the variance.
        axis: the channel axis; ``axis=1`` for PyTorch's NCHW layout.
        mask: True for the values that enter μ and σ².

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``x`` has rank < 3 or one spatial value (without ``mask``), ``axis`` is 0 or out of range,
            ``scale``/``bias`` do not match the channels (with the advice ``axis=1`` when their size is that of
            axis 1), ``mask`` does not fit ``x``, or ``epsilon`` is negative or not finite.
        TypeError: if ``x`` is not a float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4))  # NCHW
        >>> y = jaxnorm.instance_norm(x, jnp.ones(3), jnp.zeros(3), axis=1)
        >>> print(y.shape, bool(jnp.allclose(y.mean((2, 3)), 0.0, atol=1e-5)))
        (2, 3, 4, 4) True
    """
    x = _input("instance_norm", x)
    _check_rank("instance_norm", x, 3, "N×spatial…×C; an N×C input has nothing to normalize per instance")
    fax = _feature_axis("instance_norm", x, axis)
    if fax == 0:
        raise ValueError("instance_norm: axis 0 is the batch axis; pass the channel axis (-1 for NHWC, 1 for NCHW)")
    scale, bias = _affine("instance_norm", x, scale, bias, fax, axis)
    red = [i for i in range(1, x.ndim) if i != fax]
    if mask is None and math.prod(x.shape[i] for i in red) == 1 and x.size:
        raise ValueError(
            f"instance_norm: expected more than 1 spatial element per channel, got input shape {tuple(x.shape)}: "
            "the variance of one value is 0 and the output would be the bias alone (PyTorch raises the same "
            "error). Normalize before the spatial size reaches 1, or use group_norm/layer_norm"
        )
    spec = _per_example_spec("instance_norm", red, epsilon)
    return _norm_core(x, scale, bias, None, _mask_for("instance_norm", mask, x), spec)[0].astype(x.dtype)


def weight_standardize(kernel: Array, *, epsilon: float = 1e-5) -> Array:
    """Weight standardization (Qiao et al. 2019) of a Dense/Conv kernel ``…×C_in×C_out``: each output channel's
    weights are shifted to mean 0 and scaled to variance 1 over all other axes, ``Ŵ = (W − μ)/√(σ² + ε)``
    (two-pass mean and variance: a kernel is small). Pairs with group norm for small-batch training.

    Reduces over: every axis but the last (the output channel's ``…×C_in`` weights).

    Reference: Qiao, Wang, Liu, Shen & Yuille (2019), Micro-Batch Training with Batch-Channel Normalization and
    Weight Standardization.

    Args:
        kernel: a Dense or Conv kernel ``…×C_in×C_out``, rank ≥ 2, any float dtype.
        epsilon: ε ≥ 0, added to the variance.

    Returns:
        ``Ŵ`` with ``kernel``'s shape and dtype.

    Raises:
        ValueError: if ``kernel`` has rank < 2, or ``epsilon`` is negative or not finite.
        TypeError: if ``kernel`` is not a float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> w = jaxnorm.weight_standardize(jax.random.normal(jax.random.key(0), (3, 3, 4, 8)))
        >>> print(w.shape, bool(jnp.allclose(w.mean((0, 1, 2)), 0.0, atol=1e-5)))
        (3, 3, 4, 8) True
    """
    kernel = _input("weight_standardize", kernel)
    eps = check_epsilon("weight_standardize", epsilon)
    if kernel.ndim < 2:
        raise ValueError(f"weight_standardize: expected a kernel of rank >= 2 (…×C_in×C_out), got {kernel.shape}")
    axes = tuple(range(kernel.ndim - 1))
    dt = _stat_dtype(kernel)
    k = kernel.astype(dt)
    mean = jnp.mean(k, axes, keepdims=True)
    var = jnp.var(k, axes, keepdims=True)
    return ((k - mean) * lax.rsqrt(var + eps)).astype(kernel.dtype)


# --------------------------------------------------------------------------------------------------------------------
# batch renorm and ℓp batch norm


def _bn_setup(name, x, scale, bias, stats, train, epsilon, axis):
    """The checks and per-channel parameters every batch-statistics norm starts with."""
    x = _input(name, x)
    train = check_train(name, train)
    eps = check_epsilon(name, epsilon)
    fax = _feature_axis(name, x, axis)
    c = x.shape[fax]
    _check_stats(name, stats, c, x, axis)
    scale, bias = _affine(name, x, scale, bias, fax, axis)
    red = [i for i in range(x.ndim) if i != fax]
    return x, train, eps, fax, c, scale, bias, red


def _eval_with_running_stats(x, scale, bias, eps, fax, st):
    """Eval mode of every batch-statistics norm: batch norm with the running statistics."""
    return batch_norm(x, scale, bias, st, train=False, epsilon=eps, axis=fax)


def batch_renorm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    stats: BatchStats,
    *,
    train: bool,
    r_max: float = 3.0,
    d_max: float = 5.0,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int = -1,
    axis_name: str | None = None,
    mask: Array | None = None,
) -> tuple[Array, BatchStats]:
    """Batch renormalization (Ioffe 2017). In training,
    ``x̂ = (x − μ_B)/σ_B · r + d`` with ``r = sg(clip(σ_B/σ, 1/r_max, r_max))``,
    ``d = sg(clip((μ_B − μ)/σ, −d_max, d_max))``, ``σ_B = √(σ²_B + ε)``, ``σ = √(Var + ε)`` from the running
    statistics and ``sg`` stop-gradient; ``y = γ·x̂ + β``. Statistics per channel (``axis``) over all other axes.
    In eval, the running statistics as in batch norm. r_max = 1, d_max = 0 is batch norm. Running statistics
    update with Flax's convention (``momentum`` decay).

    Reduces over: every axis but ``axis`` (N, H, W for NHWC input; with ``axis_name`` also across devices).

    Reference: Ioffe (2017), Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized
    Models.

    Args:
        x: the input, any float dtype.
        scale: γ, one value per channel (shape (C,)), or None for 1.
        bias: β, one value per channel (shape (C,)), or None for 0.
        stats: the running statistics for the C channels (:func:`init_batch_stats`).
        train: True for training mode, False for eval; a traced boolean scalar picks with ``lax.cond``.
        r_max: the clip of r, ≥ 1.
        d_max: the clip of d, ≥ 0.
        momentum: the running statistics' decay in [0, 1] (None: cumulative average).
        epsilon: ε ≥ 0, added to the variances.
        axis: the feature axis; ``axis=1`` for PyTorch's NCHW layout.
        axis_name: a mapped axis name to synchronize the batch statistics over, or None.
        mask: True for the values that enter the statistics.

    Returns:
        ``(y, new_stats)``: ``y`` with ``x``'s shape and dtype, the updated statistics (``stats`` in eval).

    Raises:
        ValueError: if ``r_max < 1`` or ``d_max < 0``, the stats, scale or bias do not match the channels on
            ``axis`` (with the advice ``axis=1`` when their size is that of axis 1), ``momentum`` is outside
            [0, 1], ``epsilon`` is negative, training sees one value per channel, or ``mask`` does not fit ``x``.
        TypeError: if ``x`` is not a float array, ``train`` is not a bool, or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jax.random.normal(jax.random.key(0), (16, 4))
        >>> st = jaxnorm.init_batch_stats(4)
        >>> y, _ = jaxnorm.batch_renorm(x, None, None, st, train=True, r_max=1.0, d_max=0.0)
        >>> y_bn, _ = jaxnorm.batch_norm(x, None, None, st, train=True)
        >>> print(bool(jnp.allclose(y, y_bn, atol=1e-5)))
        True
    """
    x, train, eps, fax, c, scale, bias, red = _bn_setup("batch_renorm", x, scale, bias, stats, train, epsilon, axis)
    check_momentum("batch_renorm", momentum)
    if r_max < 1 or d_max < 0:
        raise ValueError(f"batch_renorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
    feat_shape = [c if i == fax else 1 for i in range(x.ndim)]

    eval_mode = partial(_eval_with_running_stats, x, scale, bias, eps, fax)

    if train is False:
        return eval_mode(stats)
    _check_train_size("batch_renorm", x, c, mask, axis_name)
    dt = _stat_dtype(x)
    spec = _spec(red, axis_name=axis_name, epsilon=eps)
    mk = _mask_for("batch_renorm", mask, x)

    def train_mode(st):
        # the batch statistics first (no gradient: r and d are constants), then the core with the affine map
        # (x̂·r + d)·γ + β = x̂·(r·γ) + (d·γ + β) folded into its scale and bias; XLA merges the two calls' identical
        # reductions, and the gradient w.r.t. γ, β flows through the small per-channel products
        _, mean, var, n, k, dk = _norm_core(lax.stop_gradient(x), None, None, None, mk, spec)
        mean, var = mean.reshape(c), var.reshape(c)
        run_mean = jnp.asarray(st["mean"]).astype(dt)
        sigma_b = jnp.sqrt(var + eps)
        sigma = jnp.sqrt(jnp.asarray(st["var"]).astype(dt) + eps)
        r = jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max)
        # μ_B − μ as (k − μ) + (μ_B − k): no rounding of μ_B at |μ| ≫ σ
        diff = (k.reshape(c) - run_mean) + dk.reshape(c)
        d = jnp.clip(diff / sigma, -d_max, d_max)
        g = jnp.ones((c,), dt) if scale is None else jnp.asarray(scale, dt).reshape(c)
        beta = jnp.zeros((c,), dt) if bias is None else jnp.asarray(bias, dt).reshape(c)
        y = _norm_core(x, (r * g).reshape(feat_shape), (d * g + beta).reshape(feat_shape), None, mk, spec)[0]
        n = _per_feature(n, c)
        new_stats = update_running_stats(
            st, lax.stop_gradient(mean), lax.stop_gradient(var), lax.stop_gradient(n), momentum=momentum
        )
        return y.astype(x.dtype), new_stats

    return _by_mode(train, train_mode, eval_mode, stats)


LP_NORMS = (1, 2, "inf")


def lp_batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    stats: BatchStats,
    *,
    train: bool,
    p: int | float | str = 2,
    momentum: float = 0.99,
    epsilon: float = 1e-5,
    axis: int = -1,
    axis_name: str | None = None,
    mask: Array | None = None,
) -> tuple[Array, BatchStats]:
    """ℓp batch normalization (Santurkar et al. 2018, §3.3): subtract the batch mean and divide by the batch
    average ℓp norm of the activations *before* the mean shift, per channel:
    ``s = (mean_b |a_b|^p)^(1/p)`` for p = 1, 2, and ``s = max_b |a_b|`` for p = ∞ (``'inf'``, our reading);
    ``y = γ·(x − μ_B)/√(s² + ε) + β``. The running statistics keep μ in ``'mean'`` and s² in ``'var'`` (Flax
    convention), which eval mode uses.

    Reduces over: every axis but ``axis``, the batch and spatial axes (N, H, W for NHWC input).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?

    Args:
        x: the input, any float dtype.
        scale: γ, one value per channel (shape (C,)), or None for 1.
        bias: β, one value per channel (shape (C,)), or None for 0.
        stats: the running statistics for the C channels (:func:`init_batch_stats`).
        train: True for training mode, False for eval; a traced boolean scalar picks with ``lax.cond``.
        p: 1, 2, or ``'inf'`` (``float('inf')`` is accepted).
        momentum: the running statistics' decay in [0, 1] (None: cumulative average).
        epsilon: ε ≥ 0, added to s².
        axis: the feature axis; ``axis=1`` for PyTorch's NCHW layout.
        axis_name: a mapped axis name to synchronize the statistics over, or None.
        mask: True for the values that enter the statistics.

    Returns:
        ``(y, new_stats)``: ``y`` with ``x``'s shape and dtype, the updated statistics (``stats`` in eval).

    Raises:
        ValueError: if ``p`` is not 1, 2 or ``'inf'``, the stats, scale or bias do not match the channels on
            ``axis`` (with the advice ``axis=1`` when their size is that of axis 1), ``momentum`` is outside
            [0, 1], ``epsilon`` is negative, training sees one value per channel, or ``mask`` does not fit ``x``.
        TypeError: if ``x`` is not a float array, ``train`` is not a bool, or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jnp.array([[1.0], [-1.0], [3.0], [-3.0]])  # mean 0, mean |x| = 2
        >>> y, st = jaxnorm.lp_batch_norm(x, None, None, jaxnorm.init_batch_stats(1), train=True, p=1, epsilon=0.0)
        >>> print(y[:, 0].tolist(), [round(v, 4) for v in st["var"].tolist()])
        [0.5, -0.5, 1.5, -1.5] [1.03]
    """
    if p in (float("inf"), "inf", math.inf):
        p = "inf"
    if p not in LP_NORMS:
        raise ValueError(f"lp_batch_norm: p must be one of 1, 2, 'inf' (Santurkar et al.), got {p!r}")
    x, train, eps, fax, c, scale, bias, red = _bn_setup("lp_batch_norm", x, scale, bias, stats, train, epsilon, axis)
    check_momentum("lp_batch_norm", momentum)

    eval_mode = partial(_eval_with_running_stats, x, scale, bias, eps, fax)

    if train is False:
        return eval_mode(stats)
    _check_train_size("lp_batch_norm", x, c, mask, axis_name)
    feat_shape = [c if i == fax else 1 for i in range(x.ndim)]
    mk = _mask_for("lp_batch_norm", mask, x)

    def train_mode(st):
        if p == 2:  # s² = mean(x²): the core's raw-second-moment form, with its fused gradient
            spec = _spec(red, axis_name=axis_name, centered_var=False, epsilon=eps)
            y, mean, s2, n, _, _ = _norm_core(x, scale, bias, None, mk, spec)
            s2 = s2.reshape(c)
        else:
            spec = _spec(red, axis_name=axis_name, epsilon=eps)
            _, mean, _, n, k, d = _norm_core(x, None, None, None, mk, spec)
            ax = jnp.abs(x.astype(_stat_dtype(x)))
            if mk is not None:
                ax = jnp.where(mk, ax, jnp.zeros((), ax.dtype))
            if p == "inf":
                s = _psum(jnp.max(ax, red), axis_name, fn=lax.pmax)
            else:
                s = _psum(jnp.sum(ax, red), axis_name) / jnp.maximum(_per_feature(n, c), 1.0)
            s2 = s * s
            xn = x
            if mk is not None:  # as in the core's JVP: non-finite padding must not reach the gradients
                xn = jnp.where(mk | jnp.isfinite(x), x, jnp.zeros((), x.dtype))
            y = _normalize(xn, scale, bias, d, s2.reshape(feat_shape), eps, shift=k)
        n = _per_feature(n, c)
        new_stats = update_running_stats(
            st, lax.stop_gradient(mean.reshape(c)), lax.stop_gradient(s2), lax.stop_gradient(n), momentum=momentum
        )
        return y.astype(x.dtype), new_stats

    return _by_mode(train, train_mode, eval_mode, stats)


# --------------------------------------------------------------------------------------------------------------------
# noisy batch norm (Santurkar et al. 2018, Algorithm 1)


def batch_norm_noise(
    key: Array,
    shape: Sequence[int],
    *,
    n_mu: float = 0.5,
    n_sigma: float = 1.25,
    r_mu: float = 0.1,
    r_sigma: float = 0.1,
    axis: int = -1,
) -> tuple[Array, Array]:
    """The multiplicative and additive noise ``(s, m)`` of Santurkar et al.'s Algorithm 1 for activations of
    ``shape``: per unit j (channel, on ``axis``), ``μ_j ~ U(−n_μ, n_μ)``, ``σ_j ~ U(1, n_σ)``; per sample i and unit
    j (every spatial position counts as a sample), ``m_ij ~ U(μ_j − r_μ, μ_j + r_μ)``, ``s_ij ~ N(σ_j, r_σ)``.

    Nothing is reduced: one noise value per entry of ``shape``, around one per-channel centre.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?
    (Algorithm 1).

    Args:
        key: a PRNG key (a new one every step gives new noise).
        shape: the shape of the activations.
        n_mu: the range of the per-channel additive centre μ_j, ≥ 0.
        n_sigma: the upper end of the per-channel multiplicative centre σ_j, ≥ 1.
        r_mu: the half-width of the per-sample additive noise, ≥ 0.
        r_sigma: the standard deviation of the per-sample multiplicative noise, ≥ 0.
        axis: the channel axis of ``shape``.

    Returns:
        ``(s, m)``, float32 arrays of ``shape``.

    Raises:
        ValueError: if ``n_mu < 0``, ``n_sigma < 1``, ``r_mu < 0`` or ``r_sigma < 0``.

    Examples:
        >>> import jax
        >>> import jaxnorm.norms
        >>> s, m = jaxnorm.norms.batch_norm_noise(jax.random.key(0), (64, 3))
        >>> print(s.shape, m.shape, bool(abs(m).max() <= 0.6), bool(s.mean() > 0.5))
        (64, 3) (64, 3) True True
    """
    _check_noise(n_mu, n_sigma, r_mu, r_sigma)
    fax = axis % len(shape)
    c = shape[fax]
    feat_shape = [c if i == fax else 1 for i in range(len(shape))]
    k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
    mu = jax.random.uniform(k_mu, (c,), jnp.float32, -n_mu, n_mu).reshape(feat_shape)
    sigma = jax.random.uniform(k_sigma, (c,), jnp.float32, 1.0, n_sigma).reshape(feat_shape)
    m = mu + jax.random.uniform(k_m, tuple(shape), jnp.float32, -r_mu, r_mu)
    s = sigma + r_sigma * jax.random.normal(k_s, tuple(shape), jnp.float32)
    return s, m


def noisy_batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    stats: BatchStats,
    *,
    train: bool,
    key: Array | None = None,
    n_mu: float = 0.5,
    n_sigma: float = 1.25,
    r_mu: float = 0.1,
    r_sigma: float = 0.1,
    **batch_norm_kwargs,
) -> tuple[Array, BatchStats]:
    """Batch norm followed by Santurkar et al.'s time-varying noise (Algorithm 1): ``a_ij ← s_ij·a_ij + m_ij`` on
    each output of :func:`batch_norm` (after γ, β), with ``(s, m)`` from :func:`batch_norm_noise` drawn from
    ``key`` — a new key every step gives new noise. Eval mode (``train=False``) adds no noise and needs no key.
    The paper's constants are the defaults: n_μ = 0.5, n_σ = 1.25, r_μ = r_σ = 0.1.

    Reduces over: as :func:`batch_norm`, every axis but ``axis`` (N, H, W for NHWC input).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?
    (Algorithm 1).

    Args:
        x: the input, any float dtype.
        scale: γ, one value per channel, or None for 1.
        bias: β, one value per channel, or None for 0.
        stats: the running statistics for the C channels (:func:`init_batch_stats`).
        train: True for training mode (noise), False for eval (no noise); a traced boolean scalar is accepted.
        key: a PRNG key, needed when ``train`` is not False.
        n_mu: see :func:`batch_norm_noise`.
        n_sigma: see :func:`batch_norm_noise`.
        r_mu: see :func:`batch_norm_noise`.
        r_sigma: see :func:`batch_norm_noise`.
        **batch_norm_kwargs: passed to :func:`batch_norm` (``axis``, ``momentum``, ``epsilon``, ``mask``, ...).

    Returns:
        ``(y, new_stats)`` as :func:`batch_norm`, with the noise applied to ``y`` in training.

    Raises:
        ValueError: if ``key`` is missing in training, the noise constants are invalid, or for any of
            :func:`batch_norm`'s reasons (e.g. stats or scale of the size of axis 1 with the default ``axis=-1``:
            the advice is ``axis=1``).
        TypeError: as :func:`batch_norm`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> x = jax.random.normal(jax.random.key(0), (8, 3))
        >>> st = jaxnorm.init_batch_stats(3)
        >>> y, st = jaxnorm.noisy_batch_norm(x, None, None, st, train=True, key=jax.random.key(1))
        >>> y_eval, _ = jaxnorm.noisy_batch_norm(x, None, None, st, train=False)  # no noise, no key
        >>> print(y.shape, int(st["count"]))
        (8, 3) 1
    """
    train = check_train("noisy_batch_norm", train)
    # batch_norm's options with their defaults (all but train); from its signature, which a wrapper that keeps
    # __wrapped__ (functools.wraps: mutmut's trampolines, tracing decorators) still reports, unlike __kwdefaults__
    kw = {n: p.default for n, p in inspect.signature(batch_norm).parameters.items() if p.default is not p.empty}
    unknown = sorted(set(batch_norm_kwargs) - set(kw))
    if unknown:
        raise TypeError(f"noisy_batch_norm: unexpected keyword arguments {unknown}; batch_norm takes {sorted(kw)}")
    kw |= batch_norm_kwargs
    y, new_stats = _batch_norm("noisy_batch_norm", x, scale, bias, stats, train, **kw)
    if train is False:
        return y, new_stats
    if key is None:
        raise ValueError(
            "noisy_batch_norm: train=True (or a traced train) needs key= (a new PRNG key every step), or train=False"
        )
    return _add_noise(y, key, train, n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma, axis=kw["axis"]), new_stats


def _check_noise(n_mu: float, n_sigma: float, r_mu: float, r_sigma: float) -> None:
    """ValueError unless Algorithm 1's constants are valid (the layers check them at construction)."""
    if n_mu < 0 or n_sigma < 1 or r_mu < 0 or r_sigma < 0:
        raise ValueError(
            f"noisy batch norm: need n_mu >= 0, n_sigma >= 1, r_mu >= 0, r_sigma >= 0; got "
            f"n_mu={n_mu}, n_sigma={n_sigma}, r_mu={r_mu}, r_sigma={r_sigma}"
        )


def _add_noise(
    y: Array,
    key: Array,
    train,
    *,
    n_mu: float,
    n_sigma: float,
    r_mu: float,
    r_sigma: float,
    axis: int = -1,
    row: tuple[int, Array] | None = None,
) -> Array:
    """``s ⊙ y + m`` with ``(s, m)`` from :func:`batch_norm_noise` where ``train`` (a bool or a traced bool), else
    ``y``: the one place the noise is applied (:func:`noisy_batch_norm` and the layers call it). ``row=(n, i)``:
    ``y`` is example i of a batch of n (a per-example layer under ``vmap``; ``axis`` counts the batch axis); the
    batch's noise is drawn and row i taken, so the result equals the whole batch's."""
    shape = tuple(y.shape) if row is None else (row[0],) + tuple(y.shape)
    s, m = batch_norm_noise(key, shape, n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma, axis=axis)
    if row is not None:
        s, m = s[row[1]], m[row[1]]
    noisy = (y.astype(jnp.float32) * s + m).astype(y.dtype)
    return noisy if train is True else jnp.where(train, noisy, y)


# --------------------------------------------------------------------------------------------------------------------
# weight norm, spectral norm, dynamic tanh
#
# Weight and spectral norm reparametrize a *kernel* (Dense ``in×out``, Conv ``…×C_in×C_out``), not activations: they
# run once per step on the weights, whatever the batch size.


def _real_kernel(name: str, what: str, x) -> None:
    # the shared check's advice for complex input is about activations (split real and imaginary channels); a
    # complex kernel gets a kernel's fix
    dt = jnp.result_type(x)
    if jnp.issubdtype(dt, jnp.complexfloating):
        raise TypeError(
            f"{name}: the {what} has complex dtype {dt}; weight and spectral norm are defined here for "
            "real kernels: cast to a float dtype first (a complex layer can keep its real and imaginary "
            "parts as two real kernels)"
        )
    check_float_input(name, x, what)


def _l2_normalize_rows(x: Array, epsilon: float) -> Array:
    # ε inside the square root, as flax.linen's _l2_normalize: a zero vector maps to 0 (not NaN) for ε > 0
    return x * lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + epsilon)


def weight_norm(
    v: Array,
    g: Array | None = None,
    *,
    axes: int | Sequence[int] | None = None,
    epsilon: float = 1e-12,
) -> Array:
    """Weight normalization (Salimans & Kingma 2016): ``w = g · v/√(Σ_axes v² + ε)``.

    The norm is taken over ``axes``, by default every axis but the last: a Dense kernel ``in×out`` or a Conv kernel
    ``…×C_in×C_out`` gets one norm per output unit j (its incoming weight vector ``v_j``), so that ``‖w_j‖ = |g_j|``
    whatever ``‖v_j‖`` — the length of each weight vector is the parameter ``g`` and its direction ``v_j/‖v_j‖``.
    ``g`` (None = 1) broadcasts against the kept axes: shape ``(C_out,)`` for the default. ``axes=()`` normalizes
    every entry on its own (what ``flax.linen.WeightNorm`` does to a rank-1 variable such as a bias).

    ε sits inside the square root, as in ``flax.linen.WeightNorm`` (whose ``feature_axes`` are the axes *kept*
    here: its default ``feature_axes=-1`` is this function's default). Computed in float32 (or wider), returned in
    ``v``'s dtype.

    Reduces over: ``axes``, by default every axis but the last (``…×C_in`` for each output unit).

    Reference: Salimans & Kingma (2016), Weight Normalization: A Simple Reparameterization to Accelerate Training
    of Deep Neural Networks.

    Args:
        v: the direction parameter, a kernel ``in×out`` or ``…×C_in×C_out``.
        g: the gain, broadcast against the kept axes (shape ``(C_out,)`` for the default), or None for 1.
        axes: the axes of the norm, or None for every axis but the last.
        epsilon: ε ≥ 0, inside the square root.

    Returns:
        ``w`` with ``v``'s shape and dtype.

    Raises:
        ValueError: if the default axes meet a ``v`` of rank < 2, an axis is out of range, ``g`` does not
            broadcast against the kept axes, or ``epsilon`` is negative or not finite.
        TypeError: if ``v`` is not a real float array or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> w = jaxnorm.weight_norm(jnp.array([[3.0, 1.0], [4.0, 0.0]]), jnp.array([10.0, 2.0]), epsilon=0.0)
        >>> print(w.tolist(), jnp.linalg.norm(w, axis=0).tolist())
        [[6.0, 2.0], [8.0, 0.0]] [10.0, 2.0]
    """
    v = jnp.asarray(v)
    _real_kernel("weight_norm", "kernel v", v)
    epsilon = check_epsilon("weight_norm", epsilon)
    if axes is None:
        if v.ndim < 2:
            raise ValueError(
                f"weight_norm: the default axes (all but the last) need a kernel of rank >= 2 (in×out or "
                f"…×C_in×C_out), got shape {tuple(v.shape)}; pass axes=0 to normalize a vector as a whole"
            )
        red = tuple(range(v.ndim - 1))
    else:
        red = (axes,) if isinstance(axes, int) else tuple(axes)
        for a in red:
            if not -v.ndim <= a < v.ndim:
                raise ValueError(f"weight_norm: axis {a} is out of range for v of shape {tuple(v.shape)}")
        red = tuple(sorted({a % v.ndim for a in red}))
    kept = tuple(v.shape[i] for i in range(v.ndim) if i not in red)
    dt = _stat_dtype(v)
    vf = v.astype(dt)
    w = vf * lax.rsqrt(jnp.sum(vf * vf, axis=red, keepdims=True) + epsilon)
    if g is not None:
        g = jnp.asarray(g)
        try:
            fits = jnp.broadcast_shapes(g.shape, kept) == kept
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"weight_norm: g of shape {tuple(g.shape)} does not broadcast against the axes of v that are kept, "
                f"shape {kept} (v has shape {tuple(v.shape)}, the norm is over axes {red}); pass one gain per "
                f"output unit, shape {kept}"
            )
        keep_shape = tuple(1 if i in red else v.shape[i] for i in range(v.ndim))
        w = w * jnp.broadcast_to(g.astype(dt), kept).reshape(keep_shape)
    return w.astype(v.dtype)


def _check_kernel(name: str, w: Array) -> None:
    """TypeError unless ``w`` is a real float kernel, ValueError unless its rank is >= 2."""
    _real_kernel(name, "kernel w", w)
    if w.ndim < 2:
        raise ValueError(
            f"{name}: expected a kernel of rank >= 2 (in×out, or …×C_in×C_out flattened to a matrix over all axes "
            f"but the last), got shape {tuple(w.shape)}; a vector or scalar has no spectral norm to divide by"
        )


def init_spectral_state(key: Array, w: Array, dtype: Any = jnp.float32) -> Array:
    """The initial power-iteration vector ``u`` of :func:`spectral_normalize` for the kernel ``w``: shape
    ``(1, C_out)`` with ``C_out = w.shape[-1]``, entries ``N(0, 1)`` — the shape, distribution and dtype of
    ``flax.linen.SpectralNorm``'s ``'…/u'`` variable (its scale is irrelevant: the first iteration normalizes it).

    Formula: ``u ~ N(0, I)`` of shape ``(1, C_out)``; nothing is reduced.

    Reference: Miyato, Kataoka, Koyama & Yoshida (2018), Spectral Normalization for Generative Adversarial
    Networks.

    Args:
        key: a PRNG key.
        w: the kernel, rank ≥ 2 (only its last axis is used).
        dtype: the dtype of ``u``.

    Returns:
        ``u`` of shape ``(1, w.shape[-1])``.

    Raises:
        ValueError: if ``w`` has rank < 2.
        TypeError: if ``w`` is not a real float array.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> u = jaxnorm.init_spectral_state(jax.random.key(0), jnp.ones((3, 3, 4, 8)))
        >>> print(u.shape, u.dtype)
        (1, 8) float32
    """
    w = jnp.asarray(w)
    _check_kernel("init_spectral_state", w)
    return jax.random.normal(key, (1, w.shape[-1]), dtype)


def spectral_normalize(
    w: Array,
    u: Array,
    *,
    n_power_iterations: int = 1,
    train: bool = True,
    epsilon: float = 1e-12,
    sigma: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Spectral normalization (Miyato et al. 2018): ``w/σ(W)``, σ the largest singular value of ``W``, the kernel
    seen as a matrix (every axis but the last flattened × the last: ``(…·C_in) × C_out``, as
    ``flax.linen.SpectralNorm``), so that the normalized layer is 1-Lipschitz as a linear map of its flattened
    input patch.

    σ is estimated by power iteration whose vector ``u`` (``1×C_out``, from :func:`init_spectral_state`) is state
    carried from call to call: ``n_power_iterations`` times ``v = n(u Wᵀ)``, ``u = n(v W)`` with
    ``n(x) = x/√(Σx² + ε)``; then ``σ = v W uᵀ`` with ``u``, ``v`` under ``stop_gradient`` (Miyato et al.'s
    Algorithm 1: the gradient sees ``∂σ/∂W = vᵀu``). Because ``W`` moves little per step, one iteration per step
    (the default) tracks σ. ``σ = 0`` (a zero kernel) divides by 1 instead of giving NaN.

    Returns ``(w/σ, new_u, σ)``, ``w/σ`` in ``w``'s dtype (computed in float32 or wider), ``new_u`` in ``u``'s.

    * ``train=True``: ``new_u`` is the iterated vector (store it).
    * ``train=False``: the state does not move (``new_u`` is ``u``). With ``sigma=None`` the same iterations run
      from the stored ``u`` (deterministic given the state) and give σ — the semantics of ``flax.linen.SpectralNorm``
      with ``update_stats=False``. With ``sigma`` (e.g. the σ stored at the last training step) nothing is iterated
      and the kernel is ``w/sigma``.

    Reduces over: the whole kernel (one σ per kernel, through the matrix products of the power iteration).

    Reference: Miyato, Kataoka, Koyama & Yoshida (2018), Spectral Normalization for Generative Adversarial
    Networks.

    Args:
        w: the kernel, rank ≥ 2 (``in×out`` or ``…×C_in×C_out``).
        u: the power-iteration vector, shape ``(1, C_out)``.
        n_power_iterations: the number of iterations per call, a positive int.
        train: True to return the iterated ``u``, False to keep it.
        epsilon: ε ≥ 0 of the vector normalization ``n``.
        sigma: in eval only, a stored σ to divide by instead of iterating.

    Returns:
        ``(w/σ, new_u, σ)``.

    Raises:
        ValueError: if ``w`` has rank < 2, ``u`` does not have shape ``(1, C_out)``, ``n_power_iterations`` is not a
            positive int, ``sigma`` is given with ``train=True`` or is not a scalar, or ``epsilon`` is negative.
        TypeError: if ``w`` or ``u`` is not a real float array, or ``epsilon`` is not a Python number.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> import jaxnorm
        >>> w = jnp.diag(jnp.array([3.0, 1.0]))
        >>> u = jaxnorm.init_spectral_state(jax.random.key(0), w)
        >>> w_sn, u, sigma = jaxnorm.spectral_normalize(w, u, n_power_iterations=20)
        >>> print(round(float(sigma), 4), [round(v, 4) for v in jnp.diag(w_sn).tolist()])
        3.0 [1.0, 0.3333]
    """
    w = jnp.asarray(w)
    _check_kernel("spectral_normalize", w)
    u = jnp.asarray(u)
    _real_kernel("spectral_normalize", "power-iteration vector u", u)
    want = (1, w.shape[-1])
    if tuple(u.shape) != want:
        raise ValueError(
            f"spectral_normalize: u has shape {tuple(u.shape)} but the kernel of shape {tuple(w.shape)} needs "
            f"{want} (1 × its last axis); make a fresh one with jaxnorm.init_spectral_state(key, w)"
        )
    n = n_power_iterations
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"spectral_normalize: n_power_iterations must be a positive int, got {n!r}")
    epsilon = check_epsilon("spectral_normalize", epsilon)
    dt = _stat_dtype(w)
    mat = w.astype(dt).reshape(-1, w.shape[-1])
    if sigma is not None:
        if train:
            raise ValueError(
                "spectral_normalize: sigma= replaces the power iteration in eval only; pass "
                "train=False with it, or drop it in training (σ then comes from u)"
            )
        s = jnp.asarray(sigma, dt)
        if s.ndim:
            raise ValueError(f"spectral_normalize: sigma must be a scalar, got shape {tuple(s.shape)}")
        return (mat / jnp.where(s != 0, s, 1)).reshape(w.shape).astype(w.dtype), u, s

    m = lax.stop_gradient(mat)

    def step(_, uv):
        v_ = _l2_normalize_rows(uv[0] @ m.T, epsilon)
        return _l2_normalize_rows(v_ @ m, epsilon), v_

    u_it, v = lax.fori_loop(0, n, step, (lax.stop_gradient(u.astype(dt)), jnp.zeros((1, m.shape[0]), dt)))
    s = ((v @ mat) @ u_it.T)[0, 0]  # the live kernel: the gradient of σ w.r.t. W is vᵀu
    out = (mat / jnp.where(s != 0, s, 1)).reshape(w.shape).astype(w.dtype)
    return out, (u_it.astype(u.dtype) if train else u), s


def dyt(x: Array, alpha: Array, scale: Array | None = None, bias: Array | None = None) -> Array:
    """Dynamic Tanh (Zhu, Chen, He, LeCun & Liu 2025, "Transformers without Normalization"):
    ``y = γ ⊙ tanh(α·x) + β``, elementwise.

    A drop-in replacement for layer norm without statistics: nothing is reduced over any axis. ``α`` is a learnable
    scalar (the paper initializes it at 0.5; any shape that broadcasts against ``x`` is accepted) that sets how soon
    ``tanh`` squashes large activations, which mimics the S-shaped input-output maps of trained layer norms; ``γ``,
    ``β`` are per channel on the last axis (shape ``(C,)``; None = 1 and 0). Computed in float32 for bf16/fp16
    input (float64 stays float64), returned in ``x``'s dtype.

    Reference: Zhu, Chen, He, LeCun & Liu (2025), Transformers without Normalization.

    Args:
        x: the input, any float dtype.
        alpha: α, a scalar (or any shape that broadcasts against ``x``).
        scale: γ, per channel on the last axis, or None for 1.
        bias: β, per channel on the last axis, or None for 0.

    Returns:
        ``y`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``alpha``, ``scale`` or ``bias`` does not broadcast against ``x``.
        TypeError: if ``x`` is not a float array, or a parameter is complex.

    Examples:
        >>> import jax.numpy as jnp
        >>> import jaxnorm
        >>> y = jaxnorm.dyt(jnp.array([[0.0, 2.0, -100.0]]), jnp.array(0.5))
        >>> print([round(v, 4) for v in y[0].tolist()])
        [0.0, 0.7616, -1.0]
    """
    x = _input("dyt", x)
    for pname, p in (("alpha", alpha), ("scale", scale), ("bias", bias)):
        if p is None:
            continue
        if jnp.issubdtype(jnp.result_type(p), jnp.complexfloating):
            raise TypeError(f"dyt: {pname} is complex ({jnp.result_type(p)}); cast to a float dtype first")
        try:
            jnp.broadcast_shapes(jnp.shape(p), x.shape)
        except ValueError:
            c = x.shape[-1] if x.ndim else 1
            want = "a scalar, shape ()" if pname == "alpha" else f"one value per channel, shape ({c},)"
            raise ValueError(
                f"dyt: {pname} of shape {tuple(jnp.shape(p))} does not broadcast against the input of "
                f"shape {tuple(x.shape)}; pass {want}"
            ) from None
    dt = _stat_dtype(x)
    y = jnp.tanh(jnp.asarray(alpha, dt) * x.astype(dt))
    if scale is not None:
        y = y * jnp.asarray(scale, dt)
    if bias is not None:
        y = y + jnp.asarray(bias, dt)
    return y.astype(x.dtype)
