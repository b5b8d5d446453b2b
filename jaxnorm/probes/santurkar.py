"""The landscape probes of Santurkar et al. (2018), "How does batch normalization help optimization?" (§3.2,
Fig. 4): loss variation, gradient predictiveness and effective β-smoothness along the gradient (or a random
direction)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu

from jaxnorm import _checks
from jaxnorm.probes import _common as C
from jaxnorm.probes import operators as O

#: The default step-size grid, in units of the learning rate: 8 points spaced geometrically over [0.5, 4]
#: (0.5, 0.67, 0.91, 1.22, 1.64, 2.21, 2.97, 4.0). Santurkar et al. give only the range; the geometric spacing,
#: this library's choice, gives every octave the same number of points.
DEFAULT_ETA_MULTIPLIERS: tuple[float, ...] = tuple(0.5 * 8.0 ** (i / 7) for i in range(8))

DIRECTIONS = ("gradient", "random")


def eta_grid(lr, low: float = 0.5, high: float = 4.0, num: int = 8, spacing: str = "geometric") -> jax.Array:
    """A grid of step sizes for :func:`santurkar_probe`, in units of the learning rate.

    Formula: ``η_i = lr·m_i`` for ``num`` multipliers ``m_i`` spaced ``'geometric'``-ally
    (``low·(high/low)^(i/(num−1))``) or ``'linear'``-ly over ``[low, high]``.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? ([0.5, 4]
    for the VGG, [0.01, 30] for the deep linear network).

    Args:
      lr: the learning rate (a scalar).
      low: the smallest multiplier (positive).
      high: the largest multiplier (finite, at least ``low``).
      num: the number of points (a positive int).
      spacing: ``'geometric'`` (default) or ``'linear'``.

    Returns:
      A ``(num,)`` float32 array.

    Raises:
      ValueError: ``num`` not a positive int; not ``0 < low ≤ high < inf``; an unknown ``spacing``.

    Examples:
    >>> import jaxnorm.probes as jp
    >>> [round(float(e), 4) for e in jp.eta_grid(0.1, num=4)]       # lr · [0.5, 1, 2, 4]
    [0.05, 0.1, 0.2, 0.4]
    >>> jp.eta_grid(1e-6, 0.01, 30, num=10).shape                   # the deep linear network's grid
    (10,)
    """
    _checks.check_positive_int("eta_grid", "num", num)
    if not (0 < low <= high and math.isfinite(high)):
        raise ValueError(f"eta_grid: need 0 < low ≤ high < inf, got low={low!r}, high={high!r}")
    if spacing == "geometric":
        m = np.geomspace(low, high, num)
    elif spacing == "linear":
        m = np.linspace(low, high, num)
    else:
        raise ValueError(f"eta_grid: spacing must be 'geometric' or 'linear', got {spacing!r}")
    return jnp.asarray(lr, jnp.float32) * jnp.asarray(m, jnp.float32)


def _check_etas(etas, lr) -> None:
    where = "santurkar_probe"
    if etas is None:
        if lr is None:
            raise ValueError(
                f"{where}: pass lr= (the default grid is lr × {DEFAULT_ETA_MULTIPLIERS[0]:g}…"
                f"{DEFAULT_ETA_MULTIPLIERS[-1]:g}, 8 points) or an explicit etas= grid"
            )
        if jnp.ndim(lr) != 0:
            raise ValueError(f"{where}: lr must be a scalar, got shape {jnp.shape(lr)}")
        if _checks.is_concrete(lr):
            v = float(lr)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{where}: lr must be a positive finite number (the grid is lr × [0.5, 4]), got {v!r}")
        return
    shape = jnp.shape(etas)
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(
            f"{where}: etas must be a non-empty 1-D grid of step sizes, got shape {shape}; e.g. "
            "etas=jaxnorm.probes.eta_grid(lr) (8 points in [0.5, 4]·lr)"
        )
    if _checks.is_concrete(etas):
        e = np.asarray(etas, np.float64)
        bad = e[~(np.isfinite(e) & (e > 0))]
        if bad.size:
            raise ValueError(
                f"{where}: step sizes must be positive and finite, got {bad.tolist()} in a grid of "
                f"{e.size}; use e.g. etas=eta_grid(lr, 0.5, 4) (w(η) = w − η·d with η > 0)"
            )


def _value_and_grad(loss_fn, axis_name):
    """``(params, batch) -> (loss, grads)``; for a :func:`jaxnorm.probes.dataset` the averages over its batches
    (the data-set loss and its gradient, one batch's activations at a time)."""
    vg = C.value_and_grad(loss_fn, axis_name)
    return lambda params, batch: O.mean_over_batches(lambda b: vg(params, b), batch)


def _direction(g, key, direction):
    g_norm = otu.tree_norm(g)
    if direction == "gradient":
        return g, g_norm, g_norm
    z = C.tree_normal_like(key, g)
    d = otu.tree_scale(g_norm / otu.tree_norm(z), z)
    return d, g_norm, otu.tree_norm(d)


@functools.partial(jax.jit, static_argnames=("loss_fn", "direction", "chunk", "unroll", "axis_name"))
def _probe(loss_fn, params, batch, etas, lr, key, *, direction, chunk, unroll, axis_name):
    C.check_scalar_loss("santurkar_probe", loss_fn, params, O.first_batch(batch))
    if etas is None:
        etas = jnp.asarray(lr, jnp.float32) * jnp.asarray(DEFAULT_ETA_MULTIPLIERS, jnp.float32)
    vg = _value_and_grad(loss_fn, axis_name)
    loss, g = vg(params, batch)
    d, g_norm, d_norm = _direction(g, key, direction)

    def at(eta):
        loss_eta, g_eta = vg(otu.tree_add_scale(params, -eta, d), batch)
        return loss_eta, otu.tree_norm(otu.tree_sub(g_eta, g))

    losses, grad_changes = C.map_chunked(at, etas, chunk, unroll)
    return _summary(etas, losses, grad_changes, loss, g_norm, d_norm)


def _summary(etas, losses, grad_changes, loss, g_norm, d_norm) -> dict:
    etas32 = jnp.asarray(etas, jnp.float32)
    return {
        "etas": etas32,
        "losses": losses,
        "grad_changes": grad_changes,
        "loss": loss,
        "grad_norm": g_norm,
        "direction_norm": d_norm,
        "loss_min": jnp.min(losses),
        "loss_max": jnp.max(losses),
        "grad_change_min": jnp.min(grad_changes),
        "grad_change_max": jnp.max(grad_changes),
        "beta_smoothness": jnp.max(grad_changes / (etas32 * d_norm)),
    }


# host loop: ONE compiled program of ``group`` straight-line evaluations, called ⌈(K + 1) / group⌉ times (its compile
# time does not grow with K; straight-line evaluations share the batch's work, which separate calls cannot)


@functools.partial(jax.jit, static_argnames=("loss_fn", "direction", "axis_name"))
def _host_group(loss_fn, params, batch, d, g, etas, first, key, *, direction, axis_name):
    """``L(w − η d)`` and ``‖∇L(w − η d) − g‖`` for each η of ``etas``, one after another. On the ``first`` call
    ``etas[0] = 0`` and ``d = 0``: that evaluation is ``w`` itself, whose gradient becomes ``g`` and defines ``d`` for
    the rest (a select, so the first and the later calls are one program)."""
    vg = _value_and_grad(loss_fn, axis_name)
    losses, changes = [], []
    for i in range(etas.shape[0]):
        loss_i, g_i = vg(otu.tree_add_scale(params, -etas[i], d), batch)
        if i == 0:
            d_i, g_norm, d_norm = _direction(g_i, key, direction)
            pick = functools.partial(jax.tree.map, lambda a, b: jnp.where(first, a, b))
            g, d = pick(g_i, g), pick(d_i, d)
        losses.append(loss_i)
        changes.append(otu.tree_norm(otu.tree_sub(g_i, g)))
    return jnp.stack(losses), jnp.stack(changes), g, d, g_norm, d_norm


_jit_summary = jax.jit(_summary)


def _probe_host(loss_fn, params, batch, etas, lr, key, *, direction, group, axis_name):
    C.check_scalar_loss("santurkar_probe", loss_fn, params, O.first_batch(batch))
    if etas is None:
        etas = np.float32(lr) * np.asarray(DEFAULT_ETA_MULTIPLIERS, np.float32)
    etas = np.asarray(etas, np.float32)
    # w itself (η = 0), then the K step sizes; the last call is padded with repeats of the last η (discarded)
    calls = -(-(etas.size + 1) // group)
    todo = np.concatenate([[0.0], etas, np.repeat(etas[-1:], calls * group - etas.size - 1)]).astype(np.float32)
    zeros = jax.tree.map(jnp.zeros_like, params)
    d, g, losses, changes = zeros, zeros, [], []
    for c in range(calls):
        out = _host_group(
            loss_fn,
            params,
            batch,
            d,
            g,
            todo[c * group : (c + 1) * group],
            np.bool_(c == 0),
            key,
            direction=direction,
            axis_name=axis_name,
        )
        losses.append(out[0])
        changes.append(out[1])
        if c == 0:
            _, _, g, d, g_norm, d_norm = out
    losses, changes = jnp.concatenate(losses), jnp.concatenate(changes)
    k = etas.size
    return _jit_summary(etas, losses[1 : k + 1], changes[1 : k + 1], losses[0], g_norm, d_norm)


LOOPS = ("auto", "device", "host")


def santurkar_probe(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    lr=None,
    etas=None,
    direction: str = "gradient",
    key: jax.Array | None = None,
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """Santurkar et al.'s landscape probes at ``w = params``: loss variation, gradient predictiveness, β-smoothness.

    Formula: with ``g = ∇L(w)``, a direction ``d`` (``'gradient'``: ``d = g``; ``'random'``: a Gaussian direction
    scaled to ``‖d‖ = ‖g‖``) and ``w(η) = w − η·d`` for every step size ``η`` of the grid:

    * loss variation: ``L(w(η))``, summarized by the band ``[min_η, max_η]``;
    * gradient predictiveness: ``‖∇L(w(η)) − g‖₂``, and its band;
    * effective β-smoothness: ``β = max_η ‖∇L(w(η)) − g‖₂ / ‖η·d‖₂``.

    Reduces over: the step sizes (the bands and ``β``); ``L`` is the loss's own mean over the batch, or the average
    over the batches of a data set (the data-set landscape).

    Execution: called eagerly on CPU with ``chunk='auto'``, a host loop calling one compiled value-and-gradient
    evaluation ``K + 1`` times (it compiles in about one ``value_and_grad``'s time and runs within 1.2× of ``K``
    separate calls); traced (``jit``, ``pmap``), on an accelerator or with ``chunk`` set, one program of the
    ``K + 1`` evaluations (on CPU straight-line code for up to 32 groups, else a ``lax.scan``).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? (§3.2,
    Fig. 4).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure. For a Flax model build it with
        :func:`jaxnorm.probes.model_loss_fn` (train mode: batch norm uses the batch's statistics and its updated
        running statistics are discarded; dropout uses one FIXED key, so every ``w(η)`` sees the same masks and the
        probe measures the landscape, not dropout noise).
      params: the parameter pytree ``w``; never modified (nothing is donated).
      batch: the second argument of ``loss_fn`` (the same batch at every ``η``; a tuple such as ``(x, y)`` is one
        batch), or a data set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays)
        or :func:`jaxnorm.probes.dataset` of them, which are the same: ``L`` and ``∇L`` are then the averages over
        its batches.
      lr: the learning rate; the default grid is ``lr × DEFAULT_ETA_MULTIPLIERS`` (8 points geometrically spaced in
        ``[0.5, 4]·lr``). May be a traced scalar (a schedule's value inside a jitted step).
      etas: an explicit 1-D grid of absolute step sizes (positive), e.g. ``eta_grid(lr, 0.01, 30)``; overrides lr.
      direction: ``'gradient'`` (the paper's probe) or ``'random'`` (the paper's remark: random directions behave
        similarly).
      key: PRNG key of the random direction (use the same key on every device under pmap).
      chunk: how many step sizes are evaluated at once: ``None`` all ``K`` in one ``vmap`` (batched weights: one
        wide program); an int ``c``: groups of ``c`` vmapped evaluations one after another (memory of ``c``
        evaluations); ``'auto'`` (default): 1 on CPU (where a vmap over weights turns convolutions into slower
        grouped convolutions) and None on accelerators.
      axis_name: inside ``pmap``/``shard_map``, the device axis: losses and gradients are ``pmean``'d over it (the
        loss_fn returns the device-local mean; with equal shards the result equals the global-batch probe).

    Returns:
      A dict of arrays: ``etas`` (K,), ``losses`` (K,), ``grad_changes`` (K,), ``loss`` ``L(w)``, ``grad_norm``
      ``‖g‖``, ``direction_norm`` ``‖d‖``, ``loss_min``, ``loss_max``, ``grad_change_min``, ``grad_change_max``,
      ``beta_smoothness``. Cost: ``K + 1`` value-and-gradient evaluations; the compiled program is cached per
      ``(loss_fn, shapes, direction, chunk, axis_name)``, so pass the same ``loss_fn`` object to avoid
      recompiling (see :func:`jaxnorm.probes.model_state_loss_fn`). Safe inside ``jit``, ``pmap`` and
      ``shard_map``.

    Raises:
      ValueError: unknown ``direction``; neither ``lr`` nor ``etas``; a non-positive or non-scalar
        ``lr``; an empty, non-1-D or non-positive ``etas``; ``direction='random'`` without ``key``; a bad
        ``chunk``; a list of batches of unequal shapes; ``loss_fn`` not a scalar.

    Examples:
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: ∇L(w(η)) − g = −η·A·g
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> s = jp.santurkar_probe(loss_fn, params, batch, lr=0.1)
    >>> s['losses'].shape
    (8,)
    >>> round(float(s['beta_smoothness']), 4)          # ‖A·g‖ / ‖g‖ ≤ λ_max = 3
    2.9749
    """
    unroll = C.knob("unroll")
    loop = C.knob("loop")
    group = C.knob("group")
    batch = O.as_batch("santurkar_probe", batch)
    if direction not in DIRECTIONS:
        raise ValueError(f"santurkar_probe: direction must be one of {DIRECTIONS}, got {direction!r}")
    _check_etas(etas, lr)
    if direction == "random":
        C.check_key("santurkar_probe", key, "direction='random'")
    chunk = C.check_chunk("santurkar_probe", chunk)
    if etas is not None and not isinstance(etas, jax.Array):
        etas = np.asarray(etas, np.float32)
    if lr is not None and not isinstance(lr, jax.Array):
        lr = np.float32(lr)  # python ints and floats share one compiled program
    _checks.check_choice("santurkar_probe loop", loop, LOOPS)
    if loop == "auto":
        eager_cpu = C.on_cpu() and axis_name is None and _checks.is_concrete((params, batch, etas, lr, key))
        loop = "host" if eager_cpu and chunk == "auto" and unroll is None else "device"
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 1:
        raise ValueError(
            f"santurkar_probe: group must be a positive int (evaluations per compiled call of "
            f"loop='host'), got {group!r}"
        )
    if loop == "host":
        if not _checks.is_concrete((params, batch, etas, lr, key)):
            raise ValueError(
                "santurkar_probe: loop='host' runs a Python loop of compiled evaluations and cannot be "
                "traced (inside jit/pmap/vmap); use loop='device'"
            )
        return _probe_host(
            loss_fn,
            params,
            batch,
            etas,
            None if etas is not None else lr,
            key if direction == "random" else None,
            direction=direction,
            group=group,
            axis_name=axis_name,
        )
    return _probe(
        loss_fn,
        params,
        batch,
        etas,
        None if etas is not None else lr,
        key if direction == "random" else None,
        direction=direction,
        chunk=chunk,
        unroll=unroll,
        axis_name=axis_name,
    )
