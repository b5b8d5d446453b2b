"""Pure normalization transforms: batch, layer, instance, group, RMS, batch renorm, ℓp batch norm.

Every function here is a pure JAX function of its inputs: no hidden state, explicit statistics in and out, safe
under ``jit``, ``vmap``, ``grad`` and ``pmap``/``shard_map``. Arrays are channels-last (``N…C``) like Flax.

Statistics are always reduced in float32 (or wider), whatever the input dtype, and computed in one pass over ``x``
as sums of ``x`` and ``x²`` (shifted by a constant per channel for accuracy), which is both the fastest form and the
form that combines exactly across devices: per-device sums and counts are added with ``psum``.

Normalized output: ``x̂ = (x − μ)/√(σ² + ε)``, ``y = γ·x̂ + β``, with σ² the biased variance (Ioffe & Szegedy 2015).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
BatchStats = dict  # {'mean': (C,), 'var': (C,), 'count': ()} -- see init_batch_stats

CONVENTIONS = ("flax", "pytorch")
_DEFAULT = object()  # sentinel: "momentum not given", whose default depends on the convention
_DEFAULT_MOMENTUM = {"flax": 0.99, "pytorch": 0.1}


# --------------------------------------------------------------------------------------------------------------------
# checks (static: shapes, names, numbers) -- raised eagerly, before tracing goes any further


def _axes(ndim: int, axes: int | Sequence[int]) -> tuple[int, ...]:
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for an input of rank {ndim}")
        out.append(a % ndim)
    return tuple(sorted(set(out)))


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown batch-norm convention {convention!r}; valid: {', '.join(map(repr, CONVENTIONS))} "
            "('flax': running = m·running + (1−m)·batch, biased variance; "
            "'pytorch': momentum is the update weight, unbiased running variance)"
        )


def _resolve_momentum(momentum: Any, convention: str) -> float | None:
    if momentum is _DEFAULT:
        return _DEFAULT_MOMENTUM[convention]
    if momentum is not None and not isinstance(momentum, jax.core.Tracer) and not 0.0 <= float(momentum) <= 1.0:
        raise ValueError(f"momentum must be in [0, 1] (or None for a cumulative average), got {momentum}")
    return momentum


def _check_stats(name: str, stats: Mapping[str, Array], num_features: int) -> None:
    if not isinstance(stats, Mapping) or not {"mean", "var"} <= set(stats):
        got = sorted(stats) if isinstance(stats, Mapping) else type(stats).__name__
        raise ValueError(
            f"{name}: stats must be a dict with 'mean', 'var' and 'count' (got {got}); "
            f"create them with jaxnorm.init_batch_stats({num_features})"
        )
    for k in ("mean", "var"):
        if tuple(jnp.shape(stats[k])) != (num_features,):
            raise ValueError(
                f"{name}: stats[{k!r}] has shape {tuple(jnp.shape(stats[k]))} but the input has {num_features} "
                f"channels on its feature axis; create matching stats with jaxnorm.init_batch_stats({num_features})"
            )


def _check_affine(name: str, x: Array, scale: Array | None, bias: Array | None) -> None:
    for pname, p in (("scale", scale), ("bias", bias)):
        if p is None:
            continue
        try:
            jnp.broadcast_shapes(jnp.shape(p), x.shape)
        except ValueError:
            raise ValueError(
                f"{name}: {pname} of shape {tuple(jnp.shape(p))} does not broadcast against the input of shape "
                f"{tuple(x.shape)}; pass one value per channel, shape ({x.shape[-1]},)"
            ) from None


def _per_channel(p, feat_shape):
    """A 1-D per-channel parameter reshaped to broadcast along the feature axis (other shapes pass through)."""
    return jnp.reshape(p, feat_shape) if p is not None and jnp.ndim(p) == 1 else p


def _check_rank(name: str, x: Array, min_ndim: int, what: str) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"{name}: expected an input of rank >= {min_ndim} ({what}), got shape {tuple(x.shape)}")


def _stat_dtype(x: Array):
    # float32 statistics for bf16/fp16 inputs; float64 stays float64
    return jnp.promote_types(x.dtype, jnp.float32)


# --------------------------------------------------------------------------------------------------------------------
# moments


def _psum(tree, axis_name, axis_index_groups=None, fn=lax.psum):
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


def _expand_mask(mask: Array | None, x: Array) -> Array | None:
    """A mask aligned with the leading axes of ``x`` (e.g. shape (N,)) broadcast to ``x``'s rank."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim > x.ndim:
        raise ValueError(f"mask of shape {tuple(mask.shape)} has more axes than the input {tuple(x.shape)}")
    if mask.ndim < x.ndim:
        if tuple(mask.shape) != tuple(x.shape[: mask.ndim]):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} must match the leading axes of the input {tuple(x.shape)} "
                f"(e.g. shape ({x.shape[0]},) for one flag per example)"
            )
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
    return mask


def _sums(x: Array, axes: tuple[int, ...], shift: Array | None, mask: Array | None):
    """Σ(x−k), Σ(x−k)² and the count over ``axes`` in float32, ``k`` a per-feature shift (no gradient)."""
    dt = _stat_dtype(x)
    xs = x.astype(dt)
    if shift is not None:
        xs = xs - shift
    if mask is None:
        n = math.prod(x.shape[a] for a in axes)
        count = jnp.asarray(n, dt)
        s1 = jnp.sum(xs, axes)
        s2 = jnp.sum(xs * xs, axes)
    else:
        m = jnp.broadcast_to(mask, x.shape).astype(dt)
        xm = xs * m
        count = jnp.sum(m, axes)
        s1 = jnp.sum(xm, axes)
        s2 = jnp.sum(xm * xs, axes)
    return s1, s2, count


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

    ``μ = Σx/n``, ``σ² = Σx²/n − μ²`` computed in one float32 pass (shifted by ``shift``, a per-feature constant
    that carries no gradient, to avoid cancellation). With ``axis_name`` the per-device sums and counts are combined
    with one ``psum``, so uneven or masked shards give exactly the global statistics. ``mask`` (aligned with the
    leading axes of ``x``, e.g. shape (N,)) drops padded examples from the statistics.

    Returns ``{'mean', 'var', 'count'}`` with ``count`` the number of values per feature (global with ``axis_name``).
    """
    feat = _axes(x.ndim, axis)
    red = tuple(i for i in range(x.ndim) if i not in feat)
    mask = _expand_mask(mask, x)
    if shift is not None:
        shift = lax.stop_gradient(jnp.asarray(shift, _stat_dtype(x)))
        shift = shift.reshape([x.shape[i] if i in feat else 1 for i in range(x.ndim)])
    s1, s2, count = _sums(x, red, shift, mask)
    if axis_name is not None:
        s1, s2, count = _psum((s1, s2, count), axis_name, axis_index_groups)
    safe = jnp.maximum(count, 1.0)
    m1 = s1 / safe
    var = jnp.maximum(s2 / safe - m1 * m1, 0.0)
    mean = m1 if shift is None else m1 + shift.reshape(m1.shape)
    return {"mean": mean, "var": var, "count": count}


def _normalize(x, scale, bias, mean, var, epsilon):
    """``y = (x − μ)·(1/√(σ²+ε))·γ + β``, one elementwise pass over ``x``.

    ``mean``/``var`` and ``scale``/``bias`` must already broadcast against ``x`` (from the right). Written with the
    small per-feature factors applied one by one rather than pre-multiplied (``x·a + b``): XLA then keeps each
    broadcast inside the consumer's fusion, where a pre-multiplied ``a`` shared with the backward pass gets
    materialized at full size (one extra write of ``x``'s size on CPU); it also avoids ``x·a − μ·a`` cancelling
    when ``|μ| ≫ σ``."""
    r = lax.rsqrt(var + epsilon)
    dt = r.dtype
    y = (x.astype(dt) - mean) * r
    if scale is not None:
        y = y * jnp.asarray(scale, dt)
    if bias is not None:
        y = y + jnp.asarray(bias, dt)
    return y.astype(x.dtype)


# --------------------------------------------------------------------------------------------------------------------
# the training-mode core shared by every norm: statistics and normalized output in one function with a hand-written
# JVP. Differentiating the plain formula makes XLA keep ``x − μ`` (or ``x − shift``) and broadcast factors as
# full-size temporaries shared by the forward and backward passes; the JVP below is linear in ẋ through two
# reductions only (Σẋ, Σx·ẋ), so reverse mode (its transpose) is the textbook
# ``∂L/∂x = (γ/σ)(g − mean(g) − x̂·mean(g·x̂))``: two reductions and one elementwise pass, nothing else written.
# A custom_jvp (not custom_vjp) keeps forward mode, jvp-of-grad (Hessian-vector products) and higher orders working.


class _Spec(NamedTuple):
    """Static description of one normalization: which values share a statistic and how it is formed."""

    axes: tuple[int, ...]  # reduced axes (keepdims)
    groups: int | None  # group norm: channels (last axis) combined in this many groups
    axis_name: Any  # psum the sums and counts across devices
    axis_index_groups: Any  # hashable (tuple of tuples) or None
    center: bool  # subtract the mean (False: RMS norm)
    centered_var: bool  # σ² = mean((x−μ)²) (False: the raw second moment mean(x²))
    epsilon: float


def _spec(axes, *, groups=None, axis_name=None, axis_index_groups=None, center=True, centered_var=True,
          epsilon=1e-5) -> _Spec:
    aig = None if axis_index_groups is None else tuple(tuple(int(i) for i in g) for g in axis_index_groups)
    return _Spec(tuple(axes), groups, axis_name, aig, bool(center), bool(centered_var), float(epsilon))


def _stat_sum(t, spec: _Spec, mask):
    """Σ of ``t`` (times ``mask``) over the values sharing a statistic, keep-shaped (not yet psum-ed)."""
    if mask is not None:
        t = t * mask
    s = jnp.sum(t, spec.axes, keepdims=True)
    g = spec.groups
    if g is not None and g < s.shape[-1]:  # group norm: combine the C/G channels of each group (small arrays)
        lead, cg = s.shape[:-1], s.shape[-1] // g
        s = jnp.sum(s.reshape(lead + (g, cg)), -1, keepdims=True)
        s = jnp.broadcast_to(s, lead + (g, cg)).reshape(lead + (g * cg,))
    return s


def _stat_psum(tree, spec: _Spec):
    aig = None if spec.axis_index_groups is None else [list(g) for g in spec.axis_index_groups]
    return _psum(tree, spec.axis_name, aig)


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def _norm_core(x, scale, bias, shift, mask, spec: _Spec):
    """``(y, μ, σ², count)``: ``y = (x − μ)·γ/√(σ² + ε) + β`` in the statistics dtype (``x`` unchanged when not
    ``spec.center``), μ, σ² and count keep-shaped (count a scalar without ``mask``). ``shift`` (no gradient) is a
    per-feature constant subtracted before squaring; ``mask`` (no gradient) is in the statistics dtype."""
    dt = _stat_dtype(x)
    xf = x.astype(dt)
    if mask is None:
        n = math.prod(x.shape[a] for a in spec.axes)
        if spec.groups is not None:
            n *= x.shape[-1] // spec.groups
        count = jnp.asarray(n, dt)
    else:
        count = _stat_sum(jnp.broadcast_to(mask, x.shape), spec, None)
    xs = xf - shift if (shift is not None and spec.centered_var) else xf
    want_mean = spec.center or spec.centered_var
    s1 = _stat_sum(xf, spec, mask) if want_mean else None
    s2 = _stat_sum(xs * xs, spec, mask)
    s1, s2, count = _stat_psum((s1, s2, count), spec)
    safe = jnp.maximum(count, 1.0)
    mean = s1 / safe if want_mean else jnp.zeros_like(s2)
    if spec.centered_var:
        d = mean if shift is None else mean - shift  # xs was shifted: Σ(x−k)²/n − (μ−k)²
        var = jnp.maximum(s2 / safe - d * d, 0.0)
    else:
        var = s2 / safe
    r = lax.rsqrt(var + spec.epsilon)
    y = ((xf - mean) if spec.center else xf) * r
    if scale is not None:
        y = y * jnp.asarray(scale, dt)
    if bias is not None:
        y = y + jnp.asarray(bias, dt)
    return y, mean, var, count


@_norm_core.defjvp
def _norm_core_jvp(spec: _Spec, primals, tangents):
    x, scale, bias, shift, mask = primals
    xd, sd, bd = tangents[:3]
    y, mean, var, count = _norm_core(x, scale, bias, shift, mask, spec)
    dt = y.dtype
    xf, xdf = x.astype(dt), xd.astype(dt)
    safe = jnp.maximum(count, 1.0)
    want_mean = spec.center or spec.centered_var
    sums = (_stat_sum(xdf, spec, mask) if want_mean else None, _stat_sum(xf * xdf, spec, mask))
    md, mx = _stat_psum(sums, spec)
    md = md / safe if want_mean else jnp.zeros_like(mean)  # μ̇ = mean(ẋ)
    q = mx / safe - mean * md if spec.centered_var else mx / safe  # σ̇²/2
    r = lax.rsqrt(var + spec.epsilon)
    sr = r if scale is None else r * jnp.asarray(scale, dt)
    # ẏ = ẋ·γr + x·w + u: w the coefficient of x, u a per-statistic constant
    w = -(sr * r * r) * q
    if scale is not None:
        w = w + r * jnp.asarray(sd, dt)
    yd = xdf * sr + xf * w
    u = -(sr * md) - mean * w if spec.center else None
    if bias is not None:
        u = jnp.asarray(bd, dt) if u is None else u + jnp.asarray(bd, dt)
    if u is not None:
        yd = yd + u
    return (y, mean, var, count), (yd, md, 2.0 * q, jnp.zeros_like(count))


def _mask_for(mask, x):
    m = _expand_mask(mask, x)
    return None if m is None else lax.stop_gradient(m.astype(_stat_dtype(x)))


# --------------------------------------------------------------------------------------------------------------------
# batch norm


def init_batch_stats(num_features: int, dtype=jnp.float32) -> BatchStats:
    """Fresh running statistics for ``num_features`` channels: mean 0, var 1, count 0 (the number of batches seen)."""
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

    - ``convention='flax'``: ``r ← m·r + (1−m)·stat`` with the biased variance (``m`` = momentum, default 0.99);
    - ``convention='pytorch'``: ``r ← (1−p)·r + p·stat`` with the unbiased variance ``n/(n−1)·σ²``
      (``p`` = momentum, default 0.1), as ``torch.nn.BatchNorm``;
    - ``momentum=None``: the cumulative average over all batches so far, ``r ← r + (stat − r)/k`` at the k-th batch.
    """
    _check_convention(convention)
    count = stats.get("count", jnp.zeros((), jnp.int32)) + 1
    rdt = stats["mean"].dtype
    if convention == "pytorch":
        var = var * (n / jnp.maximum(n - 1.0, 1.0))
    if momentum is None:
        w = 1.0 / count.astype(jnp.float32)
    elif convention == "pytorch":
        w = momentum
    else:
        w = 1.0 - momentum
    new_mean = stats["mean"] + w * (mean.astype(rdt) - stats["mean"])
    new_var = stats["var"] + w * (var.astype(rdt) - stats["var"])
    return {"mean": new_mean.astype(rdt), "var": new_var.astype(stats["var"].dtype), "count": count}


def _ghost_view(x: Array, mask, virtual_batch_size: int):
    n = x.shape[0]
    if virtual_batch_size <= 0 or n % virtual_batch_size:
        raise ValueError(
            f"batch_norm: virtual_batch_size={virtual_batch_size} must be a positive divisor of the batch size {n}; "
            f"choose e.g. {next(d for d in range(min(max(virtual_batch_size, 1), n), 0, -1) if n % d == 0)}"
        )
    g = n // virtual_batch_size
    xg = x.reshape((g, virtual_batch_size) + x.shape[1:])
    if mask is not None:
        mask = jnp.broadcast_to(mask, x.shape[: mask.ndim]).reshape((g, virtual_batch_size) + mask.shape[1:])
    return xg, mask


def batch_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    stats: BatchStats,
    *,
    train: bool,
    momentum: float | None = _DEFAULT,  # type: ignore[assignment]
    epsilon: float = 1e-5,
    axis: int = -1,
    axis_name: str | None = None,
    axis_index_groups: Any = None,
    mask: Array | None = None,
    convention: str = "flax",
    virtual_batch_size: int | None = None,
) -> tuple[Array, BatchStats]:
    """Batch normalization (Ioffe & Szegedy 2015): ``y = γ·(x − μ_B)/√(σ²_B + ε) + β``.

    Statistics are per channel (``axis``), reduced over the batch and all spatial axes. ``train=True`` normalizes
    with the batch statistics and returns updated running statistics (see :func:`update_running_stats` for the
    ``convention`` and ``momentum`` options: default Flax's decay 0.99, PyTorch's update weight 0.1, ``None`` for a
    cumulative average); ``train=False`` normalizes with the running (or population) statistics and returns
    ``stats`` unchanged.

    Options: ``axis_name`` synchronizes the statistics across devices by adding per-device sums and counts
    (``psum``), exact for uneven shards; ``mask`` (shape (N,) or aligned with ``x``'s leading axes) drops padded
    examples from the statistics; ``virtual_batch_size`` normalizes each consecutive group of that many examples
    with its own statistics ("ghost" batch norm, Hoffer et al. 2017) and updates the running statistics with their
    average. Statistics are float32 for bf16/fp16 input; the output has the input's dtype.

    Returns ``(y, new_stats)``.
    """
    _check_convention(convention)
    momentum = _resolve_momentum(momentum, convention)
    x = jnp.asarray(x)
    feat = _axes(x.ndim, axis)
    if len(feat) != 1:
        raise ValueError(f"batch_norm: axis must name one feature axis, got {axis}")
    fax = feat[0]
    c = x.shape[fax]
    _check_stats("batch_norm", stats, c)
    _check_affine("batch_norm", x, scale, bias)
    feat_shape = [x.shape[i] if i == fax else 1 for i in range(x.ndim)]
    scale, bias = _per_channel(scale, feat_shape), _per_channel(bias, feat_shape)

    if not train:
        mean = stats["mean"].astype(_stat_dtype(x)).reshape(feat_shape)
        var = stats["var"].astype(_stat_dtype(x)).reshape(feat_shape)
        return _normalize(x, scale, bias, mean, var, epsilon), stats

    per_channel = x.size // c
    if mask is None and axis_name is None and per_channel <= 1:
        raise ValueError(
            f"batch_norm: expected more than 1 value per channel in training, got input shape {tuple(x.shape)} "
            "(PyTorch refuses this too: the batch variance of one value is 0). Use a batch of at least 2, "
            "train=False, or a per-example norm such as layer_norm/group_norm"
        )
    mask = _mask_for(mask, x)
    shift = lax.stop_gradient(stats["mean"].astype(_stat_dtype(x)).reshape(feat_shape))

    if virtual_batch_size is not None:
        if axis_name is not None:
            raise ValueError(
                "batch_norm: virtual_batch_size and axis_name cannot be combined: ghost batches are per-device "
                "already; pass axis_name=None (per-device statistics) or drop virtual_batch_size"
            )
        if fax == 0:
            raise ValueError("batch_norm: virtual batches split axis 0, which must then not be the feature axis")
        xg, mg = _ghost_view(x, mask, virtual_batch_size)
        # ghost batches along a new leading axis: the feature axis moves to fax + 1; statistics per (ghost, feature)
        spec = _spec([i for i in range(xg.ndim) if i not in (0, fax + 1)], epsilon=epsilon)
        y, mean, var, n = _norm_core(xg, scale, bias, shift, mg, spec)
        y = y.reshape(x.shape)
        mean, var = mean.mean(0).reshape(c), var.mean(0).reshape(c)
        n = n.mean(0).reshape(c) if jnp.ndim(n) else n
    else:
        spec = _spec([i for i in range(x.ndim) if i != fax], axis_name=axis_name,
                     axis_index_groups=axis_index_groups, epsilon=epsilon)
        y, mean, var, n = _norm_core(x, scale, bias, shift, mask, spec)
        mean, var = mean.reshape(c), var.reshape(c)
        n = n.reshape(c) if jnp.ndim(n) else n
    y = y.astype(x.dtype)

    new_stats = update_running_stats(
        stats, lax.stop_gradient(mean), lax.stop_gradient(var), lax.stop_gradient(n),
        momentum=momentum, convention=convention,
    )
    return y, new_stats


def population_stats(moments: Iterable[Any]) -> Any:
    """Population statistics from the batch moments of many training minibatches (Ioffe & Szegedy 2015, §3.1).

    ``E[x] = E_B[μ_B]`` and ``Var[x] = E_B[m/(m−1)·σ²_B]`` with ``m`` the number of values per channel in batch B
    (for a fixed batch size this is the seeds' ``m/(m−1)·E_B[σ²_B]``). ``moments`` yields pytrees whose leaves
    come in dicts ``{'mean', 'var', 'count'}`` (as returned by :func:`batch_moments`, one per layer), computed
    with the parameters fixed. Returns the same tree of ``{'mean', 'var', 'count'}`` running statistics, with
    ``count`` the number of batches averaged, ready to use with ``train=False``.
    """
    total, k = None, 0
    for tree in moments:
        unb = _map_stats(lambda s: {
            "mean": jnp.asarray(s["mean"], jnp.float32),
            "var": jnp.asarray(s["var"], jnp.float32)
            * (s["count"] / jnp.maximum(jnp.asarray(s["count"], jnp.float32) - 1.0, 1.0)),
        }, tree)
        total = unb if total is None else jax.tree.map(jnp.add, total, unb)
        k += 1
    if total is None:
        raise ValueError("population_stats: the iterator of batch moments was empty; pass at least one batch")
    return _map_stats(lambda s: {"mean": s["mean"] / k, "var": s["var"] / k,
                                 "count": jnp.asarray(k, jnp.int32)}, total)


def _is_stats(node) -> bool:
    return isinstance(node, Mapping) and "mean" in node and "var" in node


def _map_stats(fn, tree):
    """Apply ``fn`` to every ``{'mean', 'var', ...}`` dict in a nested dict ``tree``."""
    if _is_stats(tree):
        return fn(tree)
    if isinstance(tree, Mapping):
        return {k: _map_stats(fn, v) for k, v in tree.items()}
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
    the last kernel axis) and ``b' = a·(b − E[x]) + β``. Returns ``(W', b')``; the folded layer needs no BN.
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
    (and with a bias on the folded layers). Equal to the unfolded network in eval mode.
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
    Invariant to re-scaling the incoming weights and to re-scaling a single example (up to ε).
    """
    x = jnp.asarray(x)
    _check_rank("layer_norm", x, 2, "a batch axis and at least one feature axis")
    _check_affine("layer_norm", x, scale, bias)
    red = tuple(range(1, x.ndim)) if axes is None else _axes(x.ndim, axes)
    y = _norm_core(x, scale, bias, None, _mask_for(mask, x), _spec(red, epsilon=epsilon))[0]
    return y.astype(x.dtype)


def rms_norm(
    x: Array,
    scale: Array | None = None,
    *,
    epsilon: float = 1e-5,
    axes: int | Sequence[int] | None = None,
) -> Array:
    """RMS normalization (Zhang & Sennrich 2019): ``y = γ·x/√(mean(x²) + ε)``, no mean subtraction.

    The mean square is over ``axes`` (default every non-batch axis, like :func:`layer_norm`; ``axes=-1`` for
    Flax's ``nn.RMSNorm()`` default).
    """
    x = jnp.asarray(x)
    _check_rank("rms_norm", x, 2, "a batch axis and at least one feature axis")
    _check_affine("rms_norm", x, scale, None)
    red = tuple(range(1, x.ndim)) if axes is None else _axes(x.ndim, axes)
    spec = _spec(red, center=False, centered_var=False, epsilon=epsilon)
    return _norm_core(x, scale, None, None, None, spec)[0].astype(x.dtype)


def _resolve_groups(name: str, channels: int, num_groups: int | None, group_size: int | None) -> int:
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{name}: give exactly one of num_groups and group_size (got num_groups={num_groups}, "
            f"group_size={group_size}); e.g. num_groups=32 (Wu & He's default), or group_size=16"
        )
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    if group_size is not None:
        if not isinstance(group_size, int) or group_size <= 0 or channels % group_size:
            raise ValueError(
                f"{name}: {channels} channels are not divisible by group_size={group_size}; choose a divisor of "
                f"{channels}: {divisors}"
            )
        return channels // group_size
    if not isinstance(num_groups, int) or num_groups <= 0 or channels % num_groups:
        near = min(divisors, key=lambda d: (abs(d - (num_groups if isinstance(num_groups, int) else 1)), -d))
        raise ValueError(
            f"{name}: {channels} channels are not divisible by num_groups={num_groups}; choose a divisor of "
            f"{channels} such as {near} (divisors: {divisors})"
        )
    return num_groups


def group_norm(
    x: Array,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    num_groups: int | None = None,
    group_size: int | None = None,
    epsilon: float = 1e-5,
    mask: Array | None = None,
) -> Array:
    """Group normalization (Wu & He 2018): per example, μ and σ² over the spatial axes and the C/G channels of
    each of the G groups; ``y = γ·(x − μ)/√(σ² + ε) + β`` with per-channel γ, β.

    Give exactly one of ``num_groups`` (G; Wu & He use 32) or ``group_size`` (C/G). G = 1 is layer norm
    over (H, W, C); G = C is instance norm. Computed from per-(example, channel) sums over space combined per group,
    so ``x`` is read in its natural channels-last layout (no ``…×G×C/G`` reshape of the activations).
    """
    x = jnp.asarray(x)
    _check_rank("group_norm", x, 2, "N×…×C")
    _check_affine("group_norm", x, scale, bias)
    c = x.shape[-1]
    g = _resolve_groups("group_norm", c, num_groups, group_size)
    spec = _spec(range(1, x.ndim - 1), groups=g, epsilon=epsilon)  # per-(example, channel) sums, then per group
    return _norm_core(x, scale, bias, None, _mask_for(mask, x), spec)[0].astype(x.dtype)


def instance_norm(
    x: Array,
    scale: Array | None = None,
    bias: Array | None = None,
    *,
    epsilon: float = 1e-5,
    mask: Array | None = None,
) -> Array:
    """Instance normalization (Ulyanov et al. 2016): per example and channel, μ and σ² over the spatial axes;
    ``y = γ·(x − μ)/√(σ² + ε) + β``. Needs at least one spatial axis (``N×…×C`` with rank ≥ 3)."""
    x = jnp.asarray(x)
    _check_rank("instance_norm", x, 3, "N×spatial…×C; an N×C input has nothing to normalize per instance")
    _check_affine("instance_norm", x, scale, bias)
    spec = _spec(range(1, x.ndim - 1), epsilon=epsilon)
    return _norm_core(x, scale, bias, None, _mask_for(mask, x), spec)[0].astype(x.dtype)


def weight_standardize(kernel: Array, *, epsilon: float = 1e-5) -> Array:
    """Weight standardization (Qiao et al. 2019) of a Dense/Conv kernel ``…×C_in×C_out``: each output channel's
    weights are shifted to mean 0 and scaled to variance 1 over all other axes, ``Ŵ = (W − μ)/√(σ² + ε)``.
    Pairs with group norm for small-batch training."""
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"weight_standardize: expected a kernel of rank >= 2 (…×C_in×C_out), got {kernel.shape}")
    axes = tuple(range(kernel.ndim - 1))
    dt = _stat_dtype(kernel)
    k = kernel.astype(dt)
    mean = jnp.mean(k, axes, keepdims=True)
    var = jnp.var(k, axes, keepdims=True)
    return ((k - mean) * lax.rsqrt(var + epsilon)).astype(kernel.dtype)


# --------------------------------------------------------------------------------------------------------------------
# batch renorm and ℓp batch norm


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
    axis_name: str | None = None,
    mask: Array | None = None,
) -> tuple[Array, BatchStats]:
    """Batch renormalization (Ioffe 2017). In training,
    ``x̂ = (x − μ_B)/σ_B · r + d`` with ``r = sg(clip(σ_B/σ, 1/r_max, r_max))``,
    ``d = sg(clip((μ_B − μ)/σ, −d_max, d_max))``, ``σ_B = √(σ²_B + ε)``, ``σ = √(Var + ε)`` from the running
    statistics and ``sg`` stop-gradient; ``y = γ·x̂ + β``. In eval, the running statistics as in batch norm.
    r_max = 1, d_max = 0 is batch norm. Running statistics update with Flax's convention (``momentum`` decay).
    """
    x = jnp.asarray(x)
    c = x.shape[-1]
    _check_stats("batch_renorm", stats, c)
    _check_affine("batch_renorm", x, scale, bias)
    if r_max < 1 or d_max < 0:
        raise ValueError(f"batch_renorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
    feat_shape = [1] * (x.ndim - 1) + [c]
    if not train:
        return batch_norm(x, scale, bias, stats, train=False, epsilon=epsilon)
    if mask is None and axis_name is None and x.size // c <= 1:
        raise ValueError(f"batch_renorm: expected more than 1 value per channel in training, got {tuple(x.shape)}")
    dt = _stat_dtype(x)
    shift = lax.stop_gradient(stats["mean"].astype(dt).reshape(feat_shape))
    spec = _spec(range(x.ndim - 1), axis_name=axis_name, epsilon=epsilon)
    mk = _mask_for(mask, x)
    # the batch statistics first (no gradient: r and d are constants), then the core with the affine map
    # (x̂·r + d)·γ + β = x̂·(r·γ) + (d·γ + β) folded into its scale and bias; XLA merges the two calls' identical
    # reductions, and the gradient w.r.t. γ, β flows through the small per-channel products
    _, mean, var, n = _norm_core(lax.stop_gradient(x), None, None, shift, mk, spec)
    mean, var = mean.reshape(c), var.reshape(c)
    sigma_b = jnp.sqrt(var + epsilon)
    sigma = jnp.sqrt(stats["var"].astype(dt) + epsilon)
    r = jnp.clip(sigma_b / sigma, 1.0 / r_max, r_max)
    d = jnp.clip((mean - stats["mean"].astype(dt)) / sigma, -d_max, d_max)
    g = jnp.ones((c,), dt) if scale is None else jnp.asarray(scale, dt).reshape(c)
    beta = jnp.zeros((c,), dt) if bias is None else jnp.asarray(bias, dt).reshape(c)
    y = _norm_core(x, (r * g).reshape(feat_shape), (d * g + beta).reshape(feat_shape), shift, mk, spec)[0]
    n = n.reshape(c) if jnp.ndim(n) else n
    new_stats = update_running_stats(stats, lax.stop_gradient(mean), lax.stop_gradient(var),
                                     lax.stop_gradient(n), momentum=momentum)
    return y.astype(x.dtype), new_stats


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
    axis_name: str | None = None,
    mask: Array | None = None,
) -> tuple[Array, BatchStats]:
    """ℓp batch normalization (Santurkar et al. 2018, §3.3): subtract the batch mean and divide by the batch
    average ℓp norm of the activations *before* the mean shift, per channel:
    ``s = (mean_b |a_b|^p)^(1/p)`` for p = 1, 2, and ``s = max_b |a_b|`` for p = ∞ (``'inf'``, our reading);
    ``y = γ·(x − μ_B)/√(s² + ε) + β``. Reduced over the batch and spatial axes. The running statistics keep
    μ in ``'mean'`` and s² in ``'var'`` (Flax convention), which eval mode uses.
    """
    x = jnp.asarray(x)
    if p in (float("inf"), "inf", math.inf):
        p = "inf"
    if p not in LP_NORMS:
        raise ValueError(f"lp_batch_norm: p must be one of 1, 2, 'inf' (Santurkar et al.), got {p!r}")
    c = x.shape[-1]
    _check_stats("lp_batch_norm", stats, c)
    _check_affine("lp_batch_norm", x, scale, bias)
    if not train:
        return batch_norm(x, scale, bias, stats, train=False, epsilon=epsilon)
    feat_shape = [1] * (x.ndim - 1) + [c]
    red = tuple(range(x.ndim - 1))
    if p == 2:  # s² = mean(x²): the core's raw-second-moment form, with its fused gradient
        spec = _spec(red, axis_name=axis_name, centered_var=False, epsilon=epsilon)
        y, mean, s2, n = _norm_core(x, _per_channel(scale, feat_shape), _per_channel(bias, feat_shape), None,
                                    _mask_for(mask, x), spec)
        n = n.reshape(c) if jnp.ndim(n) else n
        new_stats = update_running_stats(stats, lax.stop_gradient(mean.reshape(c)), lax.stop_gradient(s2.reshape(c)),
                                         lax.stop_gradient(n), momentum=momentum)
        return y.astype(x.dtype), new_stats
    dt = _stat_dtype(x)
    xf = x.astype(dt)
    mk = _expand_mask(mask, x)
    m = batch_moments(x, mask=mask, axis_name=axis_name, shift=stats["mean"])
    ax = jnp.abs(xf) if mk is None else jnp.abs(xf) * jnp.broadcast_to(mk, x.shape).astype(dt)
    if p == "inf":
        s = _psum(jnp.max(ax, red), axis_name, fn=lax.pmax)
    else:
        sp = _psum(jnp.sum(ax**p if p != 1 else ax, red), axis_name)
        s = (sp / jnp.maximum(m["count"], 1.0)) ** (1.0 / p)
    s2 = s * s
    y = _normalize(x, _per_channel(scale, feat_shape), _per_channel(bias, feat_shape),
                   m["mean"].reshape(feat_shape), s2.reshape(feat_shape), epsilon)
    new_stats = update_running_stats(stats, lax.stop_gradient(m["mean"]), lax.stop_gradient(s2),
                                     m["count"], momentum=momentum)
    return y, new_stats


# --------------------------------------------------------------------------------------------------------------------
# noisy batch norm (Santurkar et al. 2018, Algorithm 1)

NOISY_BN_DEFAULTS = {"n_mu": 0.5, "n_sigma": 1.25, "r_mu": 0.1, "r_sigma": 0.1}


def batch_norm_noise(key: Array, shape: Sequence[int], *, n_mu: float = 0.5, n_sigma: float = 1.25,
                     r_mu: float = 0.1, r_sigma: float = 0.1) -> tuple[Array, Array]:
    """The multiplicative and additive noise ``(s, m)`` of Santurkar et al.'s Algorithm 1 for activations of
    ``shape`` (``N×…×C``): per unit j (channel), ``μ_j ~ U(−n_μ, n_μ)``, ``σ_j ~ U(1, n_σ)``; per sample i and unit
    j (every spatial position counts as a sample), ``m_ij ~ U(μ_j − r_μ, μ_j + r_μ)``, ``s_ij ~ N(σ_j, r_σ)``."""
    if n_mu < 0 or n_sigma < 1 or r_mu < 0 or r_sigma < 0:
        raise ValueError(f"noisy batch norm: need n_mu >= 0, n_sigma >= 1, r_mu >= 0, r_sigma >= 0; got "
                         f"n_mu={n_mu}, n_sigma={n_sigma}, r_mu={r_mu}, r_sigma={r_sigma}")
    c = shape[-1]
    k_mu, k_sigma, k_m, k_s = jax.random.split(key, 4)
    mu = jax.random.uniform(k_mu, (c,), jnp.float32, -n_mu, n_mu)
    sigma = jax.random.uniform(k_sigma, (c,), jnp.float32, 1.0, n_sigma)
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
    The paper's constants are the defaults: n_μ = 0.5, n_σ = 1.25, r_μ = r_σ = 0.1."""
    y, new_stats = batch_norm(x, scale, bias, stats, train=train, **batch_norm_kwargs)
    if not train:
        return y, new_stats
    if key is None:
        raise ValueError("noisy_batch_norm: train=True needs key= (a new PRNG key every step), or train=False")
    s, m = batch_norm_noise(key, y.shape, n_mu=n_mu, n_sigma=n_sigma, r_mu=r_mu, r_sigma=r_sigma)
    return (y.astype(jnp.float32) * s + m).astype(y.dtype), new_stats
