"""Loss landscapes: slices along filter-normalized random directions (Li et al. 2018, "Visualizing the Loss Landscape
of Neural Nets"), the line between two parameter vectors (Goodfellow, Vinyals & Saxe 2015, "Qualitatively
characterizing neural network optimization problems") and the surface spanned by a training trajectory's top-2 PCA
directions (Li et al. 2018, §7).

Random directions leave the biases and normalization parameters (leaves of rank ≤ 1) at zero by default: Li et al.'s
"ignore biasbn", which the loss-landscape code's users needed to avoid NaN surfaces (a perturbed BN scale near 0 or
a shift of the norm of the weights makes batch norm's output blow up); ``include_1d=True`` perturbs them too."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax.tree_utils as otu
from jax.flatten_util import ravel_pytree

from jaxnorm import _checks
from jaxnorm.probes import _common as C
from jaxnorm.probes import operators as O


@functools.partial(jax.jit, static_argnames=("include_1d", "epsilon"))
def filter_normalize(direction, params, *, include_1d: bool = False, epsilon: float = 1e-10):
    """Li et al.'s filter normalization of ``direction`` against ``params``.

    Formula: for kernels (leaves of rank ≥ 2; Flax layout, the LAST axis indexes the output filters: conv
    ``(kh, kw, in, out)``, dense ``(in, out)``) each filter is rescaled to the norm of the weights' filter,
    ``d_j ← d_j / (‖d_j‖ + ε) · ‖w_j‖``. Leaves of rank ≤ 1 (biases, norm scales and shifts) become zero (Li et
    al.'s "ignore biasbn"), or with ``include_1d=True`` the whole leaf is rescaled to the norm of the weight leaf.

    Reduces over: every axis of a kernel but the last (each filter's norm); the whole leaf for rank ≤ 1.

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets.

    Args:
      direction: a pytree of the structure of ``params``.
      params: the parameter pytree whose filter norms the direction takes.
      include_1d: rescale the leaves of rank ≤ 1 instead of zeroing them.
      epsilon: added to each filter norm of the direction.

    Returns:
      A pytree shaped like ``direction``.

    Examples:
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.ones(2)}   # filter norms 5 and 1
    >>> d = jp.filter_normalize({'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}, params)
    >>> print(jnp.round(jnp.linalg.norm(d['kernel'], axis=0), 4), d['bias'])
    [5. 1.] [0. 0.]
    """

    def one(d, w):
        d32, w32 = d.astype(jnp.float32), w.astype(jnp.float32)
        if jnp.ndim(w) <= 1:
            if not include_1d:
                return jnp.zeros_like(d)
            return (d32 / (jnp.linalg.norm(d32) + epsilon) * jnp.linalg.norm(w32)).astype(d.dtype)
        axes = tuple(range(jnp.ndim(w) - 1))
        dn = jnp.sqrt(jnp.sum(d32**2, axis=axes, keepdims=True))
        wn = jnp.sqrt(jnp.sum(w32**2, axis=axes, keepdims=True))
        return (d32 / (dn + epsilon) * wn).astype(d.dtype)

    return jax.tree.map(one, direction, params)


@functools.partial(jax.jit, static_argnames=("include_1d",))
def filter_normalized_direction(key: jax.Array, params, *, include_1d: bool = False):
    """A Gaussian random direction shaped like ``params``, filter-normalized (:func:`filter_normalize`).

    Formula: ``d = filter_normalize(z, params)`` with ``z ~ 𝒩(0, I)`` (one draw of the total size cut into the
    leaves).

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets.

    Args:
      key: PRNG key.
      params: the parameter pytree.
      include_1d: perturb the leaves of rank ≤ 1 too (rescaled to their weight leaf's norm) instead of zeroing them.

    Returns:
      A pytree shaped like ``params``.

    Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.ones(2)}
    >>> d = jp.filter_normalized_direction(jax.random.key(0), params)
    >>> print(jnp.round(jnp.linalg.norm(d['kernel'], axis=0), 4), d['bias'])
    [5. 1.] [0. 0.]
    """
    return filter_normalize(C.tree_normal_like(key, params), params, include_1d=include_1d)


def _span(where: str, span) -> tuple[float, float]:
    lo, hi = (-float(span), float(span)) if np.ndim(span) == 0 else tuple(float(s) for s in span)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(
            f"{where}: span must be a positive number s (the range [−s, s]) or a pair lo < hi, got {span!r}"
        )
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
        if C.structure(d) != jax.tree.structure(params):
            raise ValueError(
                f"{where}: a direction must be a pytree shaped like params, got {jax.tree.structure(d)}"
                f" vs {jax.tree.structure(params)}"
            )
    return directions


@functools.partial(jax.jit, static_argnames=("loss_fn", "chunk", "unroll", "axis_name"))
def _slice(loss_fn, params, batch, dirs, coords, *, chunk, unroll, axis_name):
    """The loss at ``params + Σᵢ cᵢ dᵢ`` for every row ``c`` of ``coords``. ``chunk='auto'`` (the default of the
    slices): one point at a time on CPU, where a vmap over weights turns each convolution into a slower grouped one
    (and holds the activations of every point at once), all in one vmap on accelerators. Sequential points run in a
    ``lax.scan`` unless ``unroll``: forward passes do not slow down in loops on XLA:CPU, and unrolling would cost
    compile time per point."""
    C.check_scalar_loss("loss_slice", loss_fn, params, batch)
    unroll = False if unroll is None else unroll
    value = C.loss_value(loss_fn, axis_name)

    def at(c):  # c: (num_dirs,) coordinates
        p = params
        for i, d in enumerate(dirs):
            p = otu.tree_add_scale(p, c[i], d)
        return value(p, batch)

    return C.map_chunked(at, coords, chunk, unroll)


def loss_slice_1d(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    key: jax.Array | None = None,
    direction=None,
    steps: int = 25,
    span=1.0,
    include_1d: bool = False,
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """The loss along a filter-normalized random direction: a 1-D slice of the landscape.

    Formula: ``L(w + α·d)`` for ``steps`` values of ``α`` evenly spaced over ``span``, with
    ``d = filter_normalized_direction(key, params)`` or the given ``direction``.

    Execution: sequential groups of ``chunk`` points run in a ``lax.scan`` loop (forward passes do not slow down in
    loops on XLA:CPU, and unrolling would cost compile time per point).

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``, one batch (the same at every point); a list of batches or a
        :func:`jaxnorm.probes.dataset` raises a ValueError.
      key: PRNG key of the random direction (or pass ``direction``).
      direction: a pytree shaped like ``params``, used as is.
      steps: the number of points.
      span: ``s`` for ``[−s, s]``, or a pair ``(lo, hi)``.
      include_1d: perturb biases and normalization parameters too (zero in the direction by default).
      chunk: points evaluated at once: ``'auto'`` (default: one at a time on CPU, all in one ``vmap`` on
        accelerators), ``None`` (one vmap) or an int (groups of that many; bounds memory).
      axis_name: inside ``pmap``/``shard_map``, the device axis: the losses are ``pmean``'d over it.

    Returns:
      ``{'alphas' (steps,), 'losses' (steps,)}``.

    Raises:
      ValueError: ``steps`` not a positive int; a bad ``span``; neither ``key`` nor ``direction``; a direction not
        shaped like ``params``; a list of batches or a data set.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                     # 0.5·s·‖W‖²: 13 at W below
    ...     return 0.5 * batch['s'] * jnp.sum(params['kernel'] ** 2)
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.zeros(2)}
    >>> batch = {'s': jnp.float32(1.0)}
    >>> sl = jp.loss_slice_1d(loss_fn, params, batch, direction=params, steps=3)   # L((1 + α)·W) = 13·(1 + α)²
    >>> print(sl['alphas'], sl['losses'])
    [-1.  0.  1.] [ 0. 13. 52.]
    """
    unroll = C.knob("unroll")
    where = "loss_slice_1d"
    batch = O.as_batch(where, batch, data_set=False)
    steps = _checks.check_positive_int(where, "steps", steps)
    lo, hi = _span(where, span)
    (d,) = _directions(where, key, params, direction, 1, include_1d)
    alphas = jnp.linspace(lo, hi, steps, dtype=jnp.float32)
    losses = _slice(
        loss_fn,
        params,
        batch,
        (d,),
        alphas[:, None],
        chunk=C.check_chunk(where, chunk),
        unroll=unroll,
        axis_name=axis_name,
    )
    return {"alphas": alphas, "losses": losses}


def loss_slice_2d(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    key: jax.Array | None = None,
    directions=None,
    steps: int | tuple[int, int] = 25,
    span=1.0,
    include_1d: bool = False,
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """The loss on the plane of two filter-normalized random directions: a 2-D surface of the landscape.

    Formula: ``L(w + α·d₁ + β·d₂)`` on a ``steps × steps`` grid over ``span`` in both directions, ``d₁, d₂``
    independent filter-normalized random directions drawn from ``jax.random.split(key)`` (nearly orthogonal in high
    dimension) or the given pair.

    Execution: sequential groups of ``chunk`` points run in a ``lax.scan`` loop (forward passes do not slow down in
    loops on XLA:CPU, and unrolling would cost compile time per point).

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``, one batch (the same at every point); a list of batches or a
        :func:`jaxnorm.probes.dataset` raises a ValueError.
      key: PRNG key of the random directions (or pass ``directions``).
      directions: a pair of pytrees shaped like ``params``, used as is.
      steps: the grid size ``S`` or a pair ``(Sα, Sβ)``.
      span: ``s`` for ``[−s, s]``, or a pair ``(lo, hi)``; the same for both axes.
      include_1d: perturb biases and normalization parameters too.
      chunk: points evaluated at once: ``'auto'`` (default: one at a time on CPU, all in one ``vmap`` on
        accelerators), ``None`` (one vmap) or an int (groups of that many; bounds memory).
      axis_name: inside ``pmap``/``shard_map``, the device axis: the losses are ``pmean``'d over it.

    Returns:
      ``{'alphas' (Sα,), 'betas' (Sβ,), 'losses' (Sα, Sβ)}`` with
      ``losses[i, j] = L(w + alphas[i]·d₁ + betas[j]·d₂)``.

    Raises:
      ValueError: ``steps`` not positive ints; a bad ``span``; neither ``key`` nor ``directions``; directions not
        two pytrees shaped like ``params``; a list of batches or a data set.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                     # 0.5·s·‖W‖²: 13 at W below
    ...     return 0.5 * batch['s'] * jnp.sum(params['kernel'] ** 2)
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.zeros(2)}
    >>> batch = {'s': jnp.float32(1.0)}
    >>> surf = jp.loss_slice_2d(loss_fn, params, batch, key=jax.random.key(0), steps=(3, 5))
    >>> surf['losses'].shape, round(float(surf['losses'][1, 2]), 3)       # the centre is w itself
    ((3, 5), 13.0)
    """
    unroll = C.knob("unroll")
    where = "loss_slice_2d"
    batch = O.as_batch(where, batch, data_set=False)
    sa, sb = (steps, steps) if isinstance(steps, int) or np.ndim(steps) == 0 else tuple(steps)
    sa, sb = _checks.check_positive_int(where, "steps", sa), _checks.check_positive_int(where, "steps", sb)
    lo, hi = _span(where, span)
    dirs = _directions(where, key, params, directions, 2, include_1d)
    alphas = jnp.linspace(lo, hi, sa, dtype=jnp.float32)
    betas = jnp.linspace(lo, hi, sb, dtype=jnp.float32)
    coords = jnp.stack(jnp.meshgrid(alphas, betas, indexing="ij"), -1).reshape(-1, 2)
    losses = _slice(
        loss_fn, params, batch, dirs, coords, chunk=C.check_chunk(where, chunk), unroll=unroll, axis_name=axis_name
    )
    return {"alphas": alphas, "betas": betas, "losses": losses.reshape(sa, sb)}


def interpolate(
    loss_fn: C.LossFn,
    params_a,
    params_b,
    batch,
    *,
    steps: int = 25,
    span=(-0.5, 1.5),
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """The loss on the line through two parameter vectors, e.g. the initialization and the trained weights.

    Formula: ``L((1 − α)·a + α·b)`` for ``steps`` values of ``α`` evenly spaced over ``span`` (``α = 0`` is ``a``,
    ``α = 1`` is ``b``). Every leaf is interpolated, biases and normalization parameters included.

    Execution: sequential groups of ``chunk`` points run in a ``lax.scan`` loop (forward passes do not slow down in
    loops on XLA:CPU, and unrolling would cost compile time per point).

    Reference: Goodfellow, Vinyals & Saxe (2015), Qualitatively Characterizing Neural Network Optimization Problems.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params_a: the parameters at ``α = 0``.
      params_b: the parameters at ``α = 1`` (same structure and shapes).
      batch: the second argument of ``loss_fn``, one batch (the same at every point); a list of batches or a
        :func:`jaxnorm.probes.dataset` raises a ValueError.
      steps: the number of points.
      span: ``(lo, hi)`` (default ``(−0.5, 1.5)``) or ``s`` for ``[−s, s]``.
      chunk: points evaluated at once: ``'auto'`` (default: one at a time on CPU, all in one ``vmap`` on
        accelerators), ``None`` (one vmap) or an int (groups of that many; bounds memory).
      axis_name: inside ``pmap``/``shard_map``, the device axis: the losses are ``pmean``'d over it.

    Returns:
      ``{'alphas' (steps,), 'losses' (steps,)}``.

    Raises:
      ValueError: the two parameter pytrees differ in structure or shapes; ``steps`` not a positive int; a bad
        ``span``; a list of batches or a data set.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                     # 0.5·s·‖W‖²: 13 at W below
    ...     return 0.5 * batch['s'] * jnp.sum(params['kernel'] ** 2)
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.zeros(2)}
    >>> batch = {'s': jnp.float32(1.0)}
    >>> zeros = jax.tree.map(jnp.zeros_like, params)
    >>> line = jp.interpolate(loss_fn, zeros, params, batch, steps=5)          # 13·α²
    >>> print(line['alphas'], line['losses'])
    [-0.5  0.   0.5  1.   1.5] [ 3.25  0.    3.25 13.   29.25]
    """
    unroll = C.knob("unroll")
    where = "interpolate"
    batch = O.as_batch(where, batch, data_set=False)
    if C.structure(params_a) != jax.tree.structure(params_b):
        raise ValueError(
            f"{where}: params_a and params_b must have the same structure, got "
            f"{jax.tree.structure(params_a)} vs {jax.tree.structure(params_b)}"
        )
    shapes = [(np.shape(a), np.shape(b)) for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b))]
    bad = [sa for sa, sb in shapes if sa != sb]
    if bad:
        raise ValueError(
            f"{where}: params_a and params_b differ in leaf shapes ({bad[0]} vs the other's); "
            "interpolate between parameters of the same model"
        )
    steps = _checks.check_positive_int(where, "steps", steps)
    lo, hi = _span(where, span)
    d = jax.tree.map(lambda a, b: b - a, params_a, params_b)
    alphas = jnp.linspace(lo, hi, steps, dtype=jnp.float32)
    losses = _slice(
        loss_fn,
        params_a,
        batch,
        (d,),
        alphas[:, None],
        chunk=C.check_chunk(where, chunk),
        unroll=unroll,
        axis_name=axis_name,
    )
    return {"alphas": alphas, "losses": losses}


def trajectory_pca(trajectory, *, center=None) -> dict:
    """The top-2 PCA directions of a training trajectory and each point's coordinates in them.

    Formula: the rows ``θ_t − θ_c`` (``θ_c`` the last point, or ``center``) of the flattened parameter vectors, their
    two leading right singular vectors ``d₁, d₂`` (unit vectors) and the coordinates ``(θ_t − θ_c)·dᵢ``, computed
    through the ``T × T`` Gram matrix (memory ``T × n``, no ``n × n`` matrix).

    Reduces over: the ``T`` points of the trajectory.

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets (§7).

    Args:
      trajectory: a sequence of at least 3 parameter pytrees (checkpoints of one run).
      center: the point ``θ_c`` (default: the last one).

    Returns:
      ``{'directions': (d₁, d₂), 'coords' (T, 2), 'explained_variance' (2,)}``: the directions shaped like the
      parameters; the fraction of the rows' squared norm each direction captures.

    Raises:
      ValueError: fewer than 3 points; points of different sizes; a trajectory spanning fewer than 2 directions.

    Examples:
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> path = [{'w': jnp.array([2.0, 0.0, 0.0])}, {'w': jnp.array([0.0, 1.0, 0.0])}, {'w': jnp.zeros(3)}]
    >>> pca = jp.trajectory_pca(path)
    >>> pca['coords'].shape, [round(float(v), 3) for v in pca['explained_variance']]
    ((3, 2), [0.8, 0.2])
    """
    points = list(trajectory)
    if len(points) < 3:
        raise ValueError(
            f"trajectory_pca: needs at least 3 parameter vectors (2 directions from the differences to "
            f"the center), got {len(points)}"
        )
    flats = [ravel_pytree(p)[0].astype(jnp.float32) for p in points]
    sizes = {f.size for f in flats}
    if len(sizes) != 1:
        raise ValueError(f"trajectory_pca: the points have different sizes {sorted(sizes)}: use one model's params")
    _, unravel = ravel_pytree(points[-1])
    c = flats[-1] if center is None else ravel_pytree(center)[0].astype(jnp.float32)
    m = jnp.stack(flats) - c
    m64 = np.asarray(m, np.float64)
    # the Gram matrix in float64: in float32 its rounding alone (~1e-7·s₀²) would give a line a second direction of
    # ~3e-4·s₀; float32 points on a line keep ~1e-7·s₀ of rounding off it, far below the 1e-4 cut
    evals, evecs = np.linalg.eigh(m64 @ m64.T)
    order = np.argsort(evals)[::-1][:2]
    s = np.sqrt(np.maximum(evals[order], 0.0))
    if not s[1] > 1e-4 * max(s[0], 1e-30):
        raise ValueError(
            f"trajectory_pca: the trajectory spans fewer than 2 directions (all points on a line or equal: the "
            f"second direction's spread is {s[1] / max(s[0], 1e-30):.1e} of the first's, below 1e-4); use "
            "checkpoints from more of the run"
        )
    dirs = (m.T @ jnp.asarray(evecs[:, order] / s, jnp.float32)).T  # (2, n), unit rows
    coords = m @ dirs.T
    return {
        "directions": tuple(unravel(d) for d in dirs),
        "coords": coords,
        "explained_variance": jnp.asarray(s**2 / max(float(np.sum(evals.clip(0))), 1e-30), jnp.float32),
    }


def trajectory_surface(
    loss_fn: C.LossFn,
    trajectory,
    batch,
    *,
    steps: int | tuple[int, int] = 21,
    margin: float = 0.25,
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """The loss on the plane spanned by a training trajectory's top-2 PCA directions.

    Formula: ``L(θ_c + α·d₁ + β·d₂)`` on a ``steps × steps`` grid covering the trajectory's coordinates
    (:func:`trajectory_pca`) plus ``margin`` of their range on each side, ``θ_c`` the last point.

    Execution: sequential groups of ``chunk`` points run in a ``lax.scan`` loop (forward passes do not slow down in
    loops on XLA:CPU, and unrolling would cost compile time per point).

    Reference: Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the Loss Landscape of Neural Nets (§7).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      trajectory: a sequence of at least 3 parameter pytrees.
      batch: the second argument of ``loss_fn``, one batch (the same at every point); a list of batches or a
        :func:`jaxnorm.probes.dataset` raises a ValueError.
      steps: the grid size ``S`` or a pair ``(Sα, Sβ)``.
      margin: the fraction of the trajectory's extent added on each side (≥ 0).
      chunk: points evaluated at once: ``'auto'`` (default: one at a time on CPU, all in one ``vmap`` on
        accelerators), ``None`` (one vmap) or an int (groups of that many; bounds memory).
      axis_name: inside ``pmap``/``shard_map``, the device axis: the losses are ``pmean``'d over it.

    Returns:
      ``{'alphas', 'betas', 'losses' (Sα, Sβ), 'coords' (T, 2), 'explained_variance'}``: ``losses[i, j]`` at
      ``θ_c + alphas[i]·d₁ + betas[j]·d₂``; the path is ``coords``.

    Raises:
      ValueError: ``steps`` not positive ints; a negative ``margin``; a trajectory :func:`trajectory_pca` refuses;
        a list of batches or a data set.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                     # 0.5·s·‖W‖²: 13 at W below
    ...     return 0.5 * batch['s'] * jnp.sum(params['kernel'] ** 2)
    >>> params = {'kernel': jnp.array([[3.0, 0.0], [4.0, 1.0]]), 'bias': jnp.zeros(2)}
    >>> batch = {'s': jnp.float32(1.0)}
    >>> path = [jax.tree.map(lambda x: c * x, params) for c in (0.0, 0.5, 1.0)]
    >>> path[1]['bias'] = jnp.ones(2)
    >>> surf = jp.trajectory_surface(loss_fn, path, batch, steps=4)
    >>> surf['losses'].shape, surf['coords'].shape
    ((4, 4), (3, 2))
    """
    unroll = C.knob("unroll")
    where = "trajectory_surface"
    batch = O.as_batch(where, batch, data_set=False)
    sa, sb = (steps, steps) if isinstance(steps, int) or np.ndim(steps) == 0 else tuple(steps)
    sa, sb = _checks.check_positive_int(where, "steps", sa), _checks.check_positive_int(where, "steps", sb)
    if not margin >= 0:
        raise ValueError(f"{where}: margin must be >= 0 (a fraction of the trajectory's extent), got {margin!r}")
    points = list(trajectory)
    pca = trajectory_pca(points)
    center = points[-1]
    coords = np.asarray(pca["coords"])
    axes = []
    for i, num in enumerate((sa, sb)):
        lo, hi = float(coords[:, i].min()), float(coords[:, i].max())
        pad = margin * max(hi - lo, 1e-6)
        axes.append(jnp.linspace(lo - pad, hi + pad, num, dtype=jnp.float32))
    grid = jnp.stack(jnp.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    losses = _slice(
        loss_fn,
        center,
        batch,
        pca["directions"],
        grid,
        chunk=C.check_chunk(where, chunk),
        unroll=unroll,
        axis_name=axis_name,
    )
    return {
        "alphas": axes[0],
        "betas": axes[1],
        "losses": losses.reshape(sa, sb),
        "coords": pca["coords"],
        "explained_variance": pca["explained_variance"],
    }
