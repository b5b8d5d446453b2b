"""Loss-landscape slices along filter-normalized random directions (Li et al. 2018, "Visualizing the Loss Landscape
of Neural Nets")."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from jaxnorm import _checks
from jaxnorm.probes import _common as C


@functools.partial(jax.jit, static_argnames=("include_1d", "epsilon"))
def filter_normalize(direction, params, *, include_1d: bool = False, epsilon: float = 1e-10):
    """Li et al.'s filter normalization of ``direction`` against ``params`` (both pytrees of the same structure).

    * Kernels (leaves of rank ≥ 2; Flax layout, the LAST axis indexes the output filters: conv ``(kh, kw, in, out)``,
      dense ``(in, out)``): each filter ``d[..., j]`` is rescaled to the norm of the weights' filter ``w[..., j]``:
      ``d_j ← d_j / (‖d_j‖ + ε) · ‖w_j‖``.
    * Leaves of rank ≤ 1 (biases, norm scales and shifts): zero by default (Li et al. "ignore biasbn");
      ``include_1d=True`` rescales the whole leaf to the norm of the weight leaf instead.
    """

    def one(d, w):
        d32, w32 = d.astype(jnp.float32), w.astype(jnp.float32)
        if jnp.ndim(w) <= 1:
            if not include_1d:
                return jnp.zeros_like(d)
            return (d32 / (jnp.linalg.norm(d32) + epsilon) * jnp.linalg.norm(w32)).astype(d.dtype)
        axes = tuple(range(jnp.ndim(w) - 1))
        dn = jnp.sqrt(jnp.sum(d32 ** 2, axis=axes, keepdims=True))
        wn = jnp.sqrt(jnp.sum(w32 ** 2, axis=axes, keepdims=True))
        return (d32 / (dn + epsilon) * wn).astype(d.dtype)

    return jax.tree.map(one, direction, params)


@functools.partial(jax.jit, static_argnames=("include_1d",))
def filter_normalized_direction(key: jax.Array, params, *, include_1d: bool = False):
    """A Gaussian random direction shaped like ``params``, filter-normalized (:func:`filter_normalize`)."""
    return filter_normalize(C.tree_normal_like(key, params), params, include_1d=include_1d)


def _span(where: str, span) -> tuple[float, float]:
    lo, hi = (-float(span), float(span)) if np.ndim(span) == 0 else tuple(float(s) for s in span)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{where}: span must be a positive number s (the range [−s, s]) or a pair lo < hi, "
                         f"got {span!r}")
    return lo, hi


def _directions(where, key, params, directions, count, include_1d):
    if directions is None:
        C.check_key(where, key, "the random directions (or pass directions=)")
        keys = (key,) if count == 1 else tuple(jax.random.split(key, count))
        return tuple(filter_normalized_direction(k, params, include_1d=include_1d) for k in keys)
    directions = tuple(directions) if count > 1 else (directions,)
    if len(directions) != count:
        raise ValueError(f"{where}: directions must be {count} pytrees shaped like params, got {len(directions)}")
    for d in directions:
        if jax.tree.structure(d) != jax.tree.structure(params):
            raise ValueError(f"{where}: a direction must be a pytree shaped like params, got {jax.tree.structure(d)}"
                             f" vs {jax.tree.structure(params)}")
    return directions


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "unroll", "axis_name"))
def _slice(loss_fn, params, batch, dirs, coords, *, chunk, unroll, axis_name):
    C.check_scalar_loss("loss_slice", loss_fn, params, batch)
    value = C.loss_value(loss_fn, axis_name)

    def at(c):  # c: (num_dirs,) coordinates
        p = params
        for i, d in enumerate(dirs):
            p = otu.tree_add_scale(p, c[i], d)
        return value(p, batch)

    return C.map_chunked(at, coords, chunk, unroll)


def loss_slice_1d(loss_fn: C.LossFn, params, batch, *, key: jax.Array | None = None, direction=None,
                  steps: int = 25, span=1.0, include_1d: bool = False, chunk: int | str | None = None,
                  unroll: bool | None = None, axis_name: str | None = None) -> dict:
    """``L(w + α·d)`` for ``steps`` values of ``α`` evenly spaced over ``span`` (``s`` → ``[−s, s]``, or ``(lo, hi)``),
    ``d = filter_normalized_direction(key, params, include_1d=include_1d)`` (biases and norm parameters zero unless
    ``include_1d``) or the given ``direction``. All points in one ``vmap`` of forward passes by default; ``chunk``
    and ``unroll`` bound memory as in :func:`jaxnorm.probes.santurkar_probe`.

    Returns ``{'alphas' (steps,), 'losses' (steps,)}``.
    """
    where = "loss_slice_1d"
    steps = _checks.check_positive_int(where, "steps", steps)
    lo, hi = _span(where, span)
    (d,) = _directions(where, key, params, direction, 1, include_1d)
    alphas = jnp.linspace(lo, hi, steps, dtype=jnp.float32)
    losses = _slice(loss_fn, params, batch, (d,), alphas[:, None], chunk=C.check_chunk(where, chunk),
                    unroll=unroll, axis_name=axis_name)
    return {"alphas": alphas, "losses": losses}


def loss_slice_2d(loss_fn: C.LossFn, params, batch, *, key: jax.Array | None = None, directions=None,
                  steps: int | tuple[int, int] = 25, span=1.0, include_1d: bool = False, chunk: int | str | None = None,
                  unroll: bool | None = None, axis_name: str | None = None) -> dict:
    """``L(w + α·d₁ + β·d₂)`` on a ``steps × steps`` grid (or ``(steps_α, steps_β)``) over ``span`` in both
    directions, ``d₁, d₂`` independent filter-normalized random directions drawn from ``jax.random.split(key)``
    (nearly orthogonal in high dimension, as in Li et al.) or the given pair ``directions``.

    Returns ``{'alphas' (Sα,), 'betas' (Sβ,), 'losses' (Sα, Sβ)}`` with ``losses[i, j] = L(w + alphas[i]·d₁ +
    betas[j]·d₂)``. Use ``chunk`` to bound memory: the grid is evaluated ``chunk`` points at a time.
    """
    where = "loss_slice_2d"
    sa, sb = (steps, steps) if np.ndim(steps) == 0 else tuple(steps)
    sa, sb = _checks.check_positive_int(where, "steps", sa), _checks.check_positive_int(where, "steps", sb)
    lo, hi = _span(where, span)
    dirs = _directions(where, key, params, directions, 2, include_1d)
    alphas = jnp.linspace(lo, hi, sa, dtype=jnp.float32)
    betas = jnp.linspace(lo, hi, sb, dtype=jnp.float32)
    coords = jnp.stack(jnp.meshgrid(alphas, betas, indexing="ij"), -1).reshape(-1, 2)
    losses = _slice(loss_fn, params, batch, dirs, coords, chunk=C.check_chunk(where, chunk), unroll=unroll,
                    axis_name=axis_name)
    return {"alphas": alphas, "betas": betas, "losses": losses.reshape(sa, sb)}
