"""Curvature of a loss: operator-vector products, top eigenvalues (power iteration with deflation, or Lanczos), the
trace (Hutchinson, Hutch++), the eigenvalue density (stochastic Lanczos quadrature), the curvature along the
gradient, and a per-layer table. Every probe takes ``operator=`` (the Hessian, GGN, true or empirical Fisher),
``params_filter=`` (a parameter subset) and a batch or a :func:`jaxnorm.probes.dataset` of batches (the
data-set average operator); see :mod:`jaxnorm.probes.operators`. Anchors: PyHessian (Yao et al. 2020), Ghorbani et
al. (2019) for the spectral density, Meyer et al. (2021) for Hutch++."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnorm import _checks
from jaxnorm.probes import _common as C
from jaxnorm.probes import operators as O

METHODS = ("power", "lanczos", "subspace")
TRACE_METHODS = ("hutchinson", "hutch++")


def _flat_hvp_fn(loss_fn, params, batch, axis_name, operator="hessian", mask=None):
    """``(matvec, n)`` with ``matvec(v) = M v`` on the raveled (float32) vector of the selected parameters."""
    matvec, n, _ = O.flat_matvec(loss_fn, params, batch, axis_name, operator, mask)
    return matvec, n


def _check(where, loss_fn, params, batch, operator, params_filter):
    """The checks every curvature probe makes; returns ``(batch, mask)``: the batch argument normalized (a list of
    batches made a :func:`dataset`, :func:`jaxnorm.probes.operators.as_batch`) and the static parameter mask."""
    batch = O.as_batch(where, batch)
    O.check_operator(where, operator, loss_fn)
    C.check_scalar_loss(where, loss_fn, params, O.first_batch(batch))
    return batch, O.select(where, params, params_filter)


def _hvp_tree(loss_fn, params, batch, v, *, axis_name, operator, mask):
    """``M v`` for a pytree ``v`` shaped like ``params`` (its leaves outside ``mask`` ignored)."""
    matvec, _, unravel = O.flat_matvec(loss_fn, params, batch, axis_name, operator, mask)
    flat, _ = ravel_pytree(O.split(v, mask)[0])
    return unravel(matvec(flat.astype(jnp.float32)))


_HVP_STATIC = ("loss_fn", "axis_name", "operator", "mask")
_hvp = jax.jit(_hvp_tree, static_argnames=_HVP_STATIC)
_hvp_block = jax.jit(
    lambda loss_fn, params, batch, vs, **kw: jax.vmap(lambda v: _hvp_tree(loss_fn, params, batch, v, **kw))(vs),
    static_argnames=_HVP_STATIC,
)


def hvp(
    loss_fn: C.LossFn,
    params,
    batch,
    v,
    *,
    operator: str = "hessian",
    params_filter=None,
    batched: bool = False,
    axis_name: str | None = None,
):
    """The operator-vector product ``M v``, by default the Hessian-vector product ``H v``.

    Formula: ``H v = ∇_w (∇_w L(w) · v)`` at ``w = params``, by forward-over-reverse differentiation (``jax.jvp`` of
    ``jax.grad``; about the cost of 2–3 gradients, no Hessian materialized). For ``operator='ggn' | 'fisher' |
    'empirical_fisher'``: ``Jᵀ A J v`` with ``J`` the Jacobian of the model's outputs (one ``jvp`` and one
    ``vjp``). With a data set: ``(1/B) Σ_b M_b v``. With ``batched=True``, ``v`` holds ``K`` vectors along a leading
    axis and the ``K`` products ``M v_i`` come from one ``vmap``ped program (a block: what subspace iteration and
    block Hutchinson use; on accelerators it costs less per vector than ``K`` calls).

    Reference: Pearlmutter (1994), Fast Exact Multiplication by the Hessian.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      v: a pytree shaped like ``params`` (with ``batched=True``: with a leading axis of ``K`` vectors); with
        ``params_filter`` its entries outside the block are ignored.
      operator: ``'hessian'`` (default), ``'ggn'``, ``'fisher'`` or ``'empirical_fisher'`` (the last three need a
        :class:`jaxnorm.probes.SplitLoss`, e.g. from :func:`jaxnorm.probes.model_loss_fn`); see
        :mod:`jaxnorm.probes.operators`.
      params_filter: None (all parameters), a list of layer names or a predicate ``f(path, leaf) -> bool``: the
        operator restricted to the selected leaves (the diagonal block ``M_SS``), the others held fixed.
      batched: ``v`` is a block of vectors along a leading axis (the products in one program).
      axis_name: inside ``pmap``/``shard_map``, the device axis: the products are ``pmean``'d over it (the
        global-batch operator for equal shards).

    Returns:
      ``M v``, a pytree shaped like ``params`` (with ``params_filter``: ``M_SS v_S`` on the selected leaves,
      ``None`` for the others); with ``batched=True`` each leaf has the leading axis of ``v``.

    Raises:
      ValueError: ``v`` is not shaped like ``params`` (with ``batched=True``: leaves without one common leading
        axis).
      ValueError: ``loss_fn(params, batch)`` is not a real scalar; ``operator`` is unknown or needs a
        :class:`jaxnorm.probes.SplitLoss` it did not get; ``params_filter`` selects nothing or names a missing
        layer; a list of batches of unequal shapes.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> hv = jp.hvp(loss_fn, params, batch, params)      # A·w
    >>> print(jnp.round(hv['a'], 3), jnp.round(hv['b'], 3))
    [4. 5.] [-0.5]
    >>> block = {'a': jnp.array([[1.0, 0.0], [0.0, 0.0]]), 'b': jnp.array([[0.0], [2.0]])}   # e₁ and 2e₃
    >>> print(jp.hvp(loss_fn, params, batch, block, batched=True)['a'])
    [[2. 1.]
     [0. 0.]]
    """
    if C.structure(v) != jax.tree.structure(params):
        raise ValueError(
            f"hvp: v must be a pytree shaped like params, got {jax.tree.structure(v)} vs {jax.tree.structure(params)}"
        )
    batch, mask = _check("hvp", loss_fn, params, batch, operator, params_filter)
    kw = dict(axis_name=axis_name, operator=operator, mask=mask)
    if batched:
        pairs = [(np.shape(a), np.shape(p)) for a, p in zip(jax.tree.leaves(v), jax.tree.leaves(params), strict=True)]
        if any(len(a) != len(p) + 1 or a[1:] != p for a, p in pairs) or len({a[0] for a, _ in pairs}) != 1:
            raise ValueError(
                "hvp: batched=True needs every leaf of v shaped (K, *leaf.shape) with one K, got shapes "
                f"{[a for a, _ in pairs]} for params shapes {[p for _, p in pairs]}"
            )
        return _hvp_block(loss_fn, params, batch, v, **kw)
    return _hvp(loss_fn, params, batch, v, **kw)


# ---- top eigenvalues -------------------------------------------------------------------------------------------------


def _normalize(v):
    return v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(jnp.float32).tiny)


def _project(v, vecs):
    return v - vecs.T @ (vecs @ v)  # rows of vecs not found yet are zero


def _power_start(key, vecs):
    return _normalize(_project(jax.random.normal(key, (vecs.shape[1],), jnp.float32), vecs))


def _power_step(matvec, vecs, v):
    """One power-iteration step in the orthogonal complement of ``vecs``: ``(P H v / ‖P H v‖, vᵀ P H v)``."""
    w = _project(matvec(v), vecs)
    return _normalize(w), jnp.vdot(v, w)


def _power_finish(matvec, vecs, v):
    v = _normalize(_project(v, vecs))
    return v, jnp.vdot(v, _project(matvec(v), vecs))  # the Rayleigh quotient of the returned vector


def _converged(i, lam, lam_prev, tol):
    return (i >= 2) & (jnp.abs(lam - lam_prev) <= tol * jnp.abs(lam))


def _power(matvec, n, k, num_iters, tol, key):
    """Power iteration with deflation: eigenpair j iterates ``v ← H v / ‖H v‖`` in the orthogonal complement of the
    pairs found before (projected out at every step), until the Rayleigh quotient changes by ≤ tol·|λ|."""
    keys = jax.random.split(key, k)

    def one(j, carry):
        vals, vecs = carry

        def cond(s):
            i, _, lam, lam_prev = s
            return (i < num_iters) & ~_converged(i, lam, lam_prev, tol)

        def body(s):
            i, v, lam, _ = s
            v, lam_new = _power_step(matvec, vecs, v)
            return i + 1, v, lam_new, lam

        init = (0, _power_start(keys[j], vecs), jnp.float32(0), jnp.float32(jnp.inf))
        _, v, _, _ = jax.lax.while_loop(cond, body, init)
        v, lam = _power_finish(matvec, vecs, v)
        return vals.at[j].set(lam), vecs.at[j].set(v)

    return jax.lax.fori_loop(0, k, one, (jnp.zeros((k,), jnp.float32), jnp.zeros((k, n), jnp.float32)))


def _lanczos_init(v0, m):
    v0 = _normalize(v0.astype(jnp.float32))
    return (
        jnp.zeros((m, v0.shape[0]), jnp.float32),
        jnp.zeros((m,), jnp.float32),
        jnp.zeros((m,), jnp.float32),
        v0,
        jnp.zeros_like(v0),
        jnp.float32(0),
    )


def _lanczos_step(matvec, j, carry):
    vecs, alpha, beta, v, v_prev, b_prev = carry
    vecs = vecs.at[j].set(v)
    w = matvec(v)
    a = jnp.vdot(w, v)
    w = w - a * v - b_prev * v_prev
    w = w - vecs.T @ (vecs @ w)  # full reorthogonalization, twice ("twice is enough"): orthogonal in float32
    w = w - vecs.T @ (vecs @ w)
    b = jnp.linalg.norm(w)
    ok = b > 1e-6 * jnp.maximum(jnp.abs(a), 1.0)  # breakdown: an invariant subspace is exhausted
    v_next = jnp.where(ok, w / jnp.where(ok, b, 1.0), 0.0)
    b = jnp.where(ok, b, 0.0)
    return vecs, alpha.at[j].set(a), beta.at[j].set(b), v_next, v, b


def _lanczos(matvec, v0, m):
    """``m`` Lanczos steps from ``v0`` with full reorthogonalization: (alpha (m,), beta (m−1,), V (m, n)) with
    ``T = tridiag(beta, alpha, beta) = V H Vᵀ``. A breakdown (an invariant subspace found early) leaves zero rows."""
    vecs, alpha, beta, *_ = jax.lax.fori_loop(0, m, lambda j, c: _lanczos_step(matvec, j, c), _lanczos_init(v0, m))
    return alpha, beta[: m - 1], vecs


def _tridiag(alpha, beta):
    return jnp.diag(alpha) + jnp.diag(beta, 1) + jnp.diag(beta, -1)


def _ritz(alpha, beta, basis):
    theta, s = jnp.linalg.eigh(_tridiag(alpha, beta))
    return theta, (basis.T @ s).T


def _top_k(params, vals, vecs, k, mask=None):
    idx = jnp.argsort(-jnp.abs(vals))[:k]
    sub, _ = O.split(params, mask)
    _, unravel = ravel_pytree(sub)
    return vals[idx], jax.vmap(lambda v: O.embed(params, mask, unravel(v)))(vecs[idx])


def _block_size(k: int, n: int) -> int:
    """The subspace method's block: ``k + 2`` vectors (two guard vectors: the k-th pair converges as
    ``|λ_(k+3) / λ_k|^i`` instead of ``|λ_(k+1) / λ_k|^i``), at most the parameter count."""
    return min(n, k + 2)


def _orth_rows(m):
    q, _ = jnp.linalg.qr(m.T)
    return q.T


def _rayleigh_ritz(v, w):
    """The Ritz pairs of ``M`` on the row space of ``v`` (orthonormal rows) from ``w = v Mᵀ`` (the rows' products):
    ``T = v wᵀ`` (symmetrized), ``T = S Θ Sᵀ``; returns ``θ`` by ``|θ|`` descending, the Ritz vectors ``Sᵀ v`` and
    their products ``Sᵀ w``, and the next block ``orth(Sᵀ w)``."""
    t = v @ w.T
    theta, s = jnp.linalg.eigh((t + t.T) / 2)
    order = jnp.argsort(-jnp.abs(theta))
    theta, s = theta[order], s[:, order]
    x, mx = s.T @ v, s.T @ w
    return theta, x, _orth_rows(mx)


def _subspace_start(key, b, n):
    return _orth_rows(jax.random.normal(key, (b, n), jnp.float32))


def _subspace(products, n, k, num_iters, tol, key):
    """Block power iteration with Rayleigh–Ritz (subspace iteration): ``V ← orth(M V)`` on a block of
    :func:`_block_size` vectors, the block's products in one call, until the top ``k`` Ritz values change by at most
    ``tol·|θ|``. Returns all the block's Ritz values and vectors (ordered by ``|θ|``)."""
    b = _block_size(k, n)

    def cond(s):
        i, _, theta, prev, _ = s
        return (i < num_iters) & ~((i >= 2) & jnp.all(jnp.abs(theta[:k] - prev[:k]) <= tol * jnp.abs(theta[:k])))

    def body(s):
        i, v, theta, _, _ = s
        new, x, v_next = _rayleigh_ritz(v, products(v))
        return i + 1, v_next, new, theta, x

    zeros = jnp.zeros((b,), jnp.float32)
    init = (0, _subspace_start(key, b, n), zeros, jnp.full((b,), jnp.inf, jnp.float32), jnp.zeros((b, n)))
    _, _, theta, _, x = jax.lax.while_loop(cond, body, init)
    return theta, x


@functools.partial(jax.jit, static_argnames=("loss_fn", "k", "num_iters", "method", "axis_name", "operator", "mask"))
def _top_eig(loss_fn, params, batch, key, tol, *, k, num_iters, method, axis_name, operator, mask):
    matvec, n = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)
    if method == "power":
        vals, vecs = _power(matvec, n, k, num_iters, tol, key)
    elif method == "subspace":
        vals, vecs = _subspace(lambda v: C.map_chunked(matvec, v, "auto"), n, k, num_iters, tol, key)
    else:
        m = min(num_iters, n)
        alpha, beta, basis = _lanczos(matvec, jax.random.normal(key, (n,), jnp.float32), m)
        vals, vecs = _ritz(alpha, beta, basis)
    return _top_k(params, vals, vecs, k, mask)


# host loop: one compiled call per Hessian-vector product (each cached per loss_fn and shapes)

_STATIC = ("loss_fn", "axis_name", "operator", "mask")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_power_step(loss_fn, params, batch, vecs, v, *, axis_name, operator, mask):
    return _power_step(_flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)[0], vecs, v)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_power_finish(loss_fn, params, batch, vecs, v, *, axis_name, operator, mask):
    return _power_finish(_flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)[0], vecs, v)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_lanczos_step(loss_fn, params, batch, j, carry, *, axis_name, operator, mask):
    return _lanczos_step(_flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)[0], j, carry)


_jit_power_start = jax.jit(_power_start)
_jit_lanczos_init = jax.jit(_lanczos_init, static_argnums=(1,))
_jit_top_k = jax.jit(_top_k, static_argnames=("k", "mask"))
_jit_ritz = jax.jit(lambda alpha, beta, basis: _ritz(alpha, beta[:-1], basis))
_jit_subspace_start = jax.jit(_subspace_start, static_argnums=(1, 2))
_jit_rayleigh_ritz = jax.jit(_rayleigh_ritz)


def _top_eig_host(loss_fn, params, batch, key, tol, *, k, num_iters, method, axis_name, operator, mask):
    n = O.size(params, mask)
    kw = dict(axis_name=axis_name, operator=operator, mask=mask)
    if method == "power":
        vals, vecs = jnp.zeros((k,), jnp.float32), jnp.zeros((k, n), jnp.float32)
        for j, kj in enumerate(jax.random.split(key, k)):
            v, lam, lam_prev = _jit_power_start(kj, vecs), None, None
            for i in range(num_iters):
                v, lam_new = _host_power_step(loss_fn, params, batch, vecs, v, **kw)
                lam, lam_prev = lam_new, lam
                if i >= 1 and abs(float(lam) - float(lam_prev)) <= tol * abs(float(lam)):
                    break
            v, lam = _host_power_finish(loss_fn, params, batch, vecs, v, **kw)
            vals, vecs = vals.at[j].set(lam), vecs.at[j].set(v)
    elif method == "subspace":  # the block's products: one compiled program, chunk='auto' rows per call
        v = _jit_subspace_start(key, _block_size(k, n), n)
        prev = None
        for i in range(num_iters):
            w = _block_products(loss_fn, params, batch, v, device=False, chunk="auto", unroll=False, **kw)
            theta, vecs, v = _jit_rayleigh_ritz(v, w)
            top = np.asarray(theta[:k], np.float64)
            if i >= 1 and np.all(np.abs(top - prev) <= tol * np.abs(top)):
                break
            prev = top
        vals = theta
    else:
        m = min(num_iters, n)
        carry = _jit_lanczos_init(jax.random.normal(key, (n,), jnp.float32), m)
        for j in range(m):
            carry = _host_lanczos_step(loss_fn, params, batch, jnp.int32(j), carry, **kw)
        vals, vecs = _jit_ritz(carry[1], carry[2], carry[0])
    return _jit_top_k(params, vals, vecs, k=k, mask=mask)


LOOPS = ("auto", "device", "host")


def hessian_top_eigenvalues(
    loss_fn: C.LossFn,
    params,
    batch,
    k: int = 1,
    *,
    key: jax.Array,
    num_iters: int = 100,
    method: str = "power",
    tol: float = 1e-5,
    operator: str = "hessian",
    params_filter=None,
    axis_name: str | None = None,
):
    """The ``k`` eigenvalues of largest magnitude of the Hessian (or of another operator) and their eigenvectors.

    Formula: power iteration with deflation, ``v ← P M v / ‖P M v‖`` with ``P`` the projection out of the pairs
    already found, until the Rayleigh quotient ``λ = vᵀ M v`` changes by at most ``tol·|λ|``; or Lanczos with full
    reorthogonalization and the top-``k`` Ritz pairs of its tridiagonal matrix; or subspace iteration (block power
    iteration with Rayleigh–Ritz): a block ``V`` of ``b = k + 2`` orthonormal vectors, ``T = V M Vᵀ = S Θ Sᵀ``,
    ``V ← orth(Sᵀ V Mᵀ)``, until the top ``k`` Ritz values change by at most ``tol·|θ|``; the ``b`` products of a
    step are one ``vmap`` of the product on accelerators. Ordered by ``|λ|`` descending, values signed (a negative
    eigenvalue is found where it dominates, as in PyHessian).

    Reduces over: the batch (the loss's own mean), and over the batches of a data set (the average operator).

    Execution: called eagerly on CPU, a host loop of compiled steps (XLA:CPU runs convolution gradients inside loop
    bodies slowly, jax-ml/jax#12868); traced (``jit``, ``pmap``) or on an accelerator, one compiled program.

    Reference: Yao, Gholami, Keutzer & Mahoney (2020), PyHessian: Neural Networks Through the Lens of the Hessian;
    Lanczos (1950), An Iteration Method for the Solution of the Eigenvalue Problem of Linear Differential and
    Integral Operators.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      k: how many eigenpairs (at most the parameter count).
      key: PRNG key of the start vectors (the same key on every device under pmap).
      num_iters: ``'power'``: at most this many products per eigenvalue; ``'lanczos'``: this many steps (clipped to
        the parameter count; needs ``num_iters ≥ k``; stores ``num_iters`` vectors of the parameter size);
        ``'subspace'``: at most this many block steps of ``k + 2`` products each.
      method: ``'power'`` (default; slow when ``|λ_(j+1)/λ_j| ≈ 1``, no convergence for a ``±λ`` pair) or
        ``'lanczos'`` (usually far fewer products for ``k > 1``) or ``'subspace'`` (every pair converges at once,
        at rate ``|λ_(k+3)/λ_j|``; its products run as one batched call on accelerators).
      tol: the relative change of the Rayleigh quotient that stops power iteration (``0`` runs all iterations).
      operator: ``'hessian'`` (default), ``'ggn'``, ``'fisher'`` or ``'empirical_fisher'`` (the last three need a
        :class:`jaxnorm.probes.SplitLoss`, e.g. from :func:`jaxnorm.probes.model_loss_fn`); see
        :mod:`jaxnorm.probes.operators`.
      params_filter: None (all parameters), a list of layer names or a predicate ``f(path, leaf) -> bool``: the
        operator restricted to the selected leaves (the diagonal block ``M_SS``), the others held fixed.
      axis_name: inside ``pmap``/``shard_map``, the device axis: the products are ``pmean``'d over it (the
        global-batch operator for equal shards).

    Returns:
      ``(eigenvalues, eigenvectors)``: a ``(k,)`` float32 array and a pytree shaped like ``params`` with a leading
      axis of ``k`` (unit-norm vectors; ``None`` for leaves outside ``params_filter``).

    Raises:
      ValueError: unknown ``method``; ``k`` or ``num_iters`` not a positive int; ``k`` larger than the
        parameter count; ``method='lanczos'`` with ``num_iters < k``; no ``key``.
      ValueError: ``loss_fn(params, batch)`` is not a real scalar; ``operator`` is unknown or needs a
        :class:`jaxnorm.probes.SplitLoss` it did not get; ``params_filter`` selects nothing or names a missing
        layer; a list of batches of unequal shapes.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> vals, vecs = jp.hessian_top_eigenvalues(loss_fn, params, batch, k=2, key=jax.random.key(0))
    >>> [round(float(v), 3) for v in vals]
    [3.0, 1.0]
    >>> vecs['a'].shape, vecs['b'].shape
    ((2, 2), (2, 1))

    A list of batches is a data set: the eigenvalues of the average Hessian ``(A + 3A)/2 = 2A``.

    >>> vals, _ = jp.hessian_top_eigenvalues(loss_fn, params, [batch, {'A': 3 * batch['A']}], key=jax.random.key(0))
    >>> round(float(vals[0]), 3)
    6.0
    """
    loop = C.knob("loop")
    where = "hessian_top_eigenvalues"
    if method not in METHODS:
        raise ValueError(f"{where}: method must be one of {METHODS}, got {method!r}")
    k = _checks.check_positive_int(where, "k", k)
    num_iters = _checks.check_positive_int(where, "num_iters", num_iters)
    batch, mask = _check(where, loss_fn, params, batch, operator, params_filter)
    n = O.size(params, mask)
    if k > n:
        raise ValueError(
            f"{where}: asked for k={k} eigenvalues but params has only {n} entries (the Hessian is "
            f"{n}×{n}); use k ≤ {n}"
        )
    if method == "lanczos" and num_iters < k:
        raise ValueError(
            f"{where}: method='lanczos' needs num_iters ≥ k Lanczos steps, got num_iters={num_iters} "
            f"for k={k}; use num_iters ≥ {max(2 * k, 20)} for accurate Ritz values"
        )
    C.check_key(where, key, "the start vectors")
    if _resolve_loop(where, loop, params, batch, key, axis_name) == "host":
        return _top_eig_host(
            loss_fn,
            params,
            batch,
            key,
            float(tol),
            k=k,
            num_iters=num_iters,
            method=method,
            axis_name=axis_name,
            operator=operator,
            mask=mask,
        )
    return _top_eig(
        loss_fn,
        params,
        batch,
        key,
        jnp.float32(tol),
        k=k,
        num_iters=num_iters,
        method=method,
        axis_name=axis_name,
        operator=operator,
        mask=mask,
    )


# ---- trace -----------------------------------------------------------------------------------------------------------


def _resolve_loop(where, loop, params, batch, key, axis_name) -> str:
    if loop not in LOOPS:
        raise ValueError(f"{where}: loop must be one of {LOOPS}, got {loop!r}")
    concrete = _checks.is_concrete((params, batch, key))
    if loop == "auto":
        return "host" if (concrete and C.on_cpu() and axis_name is None) else "device"
    if loop == "host" and not concrete:
        raise ValueError(
            f"{where}: loop='host' runs a Python loop of compiled steps and cannot be traced "
            "(inside jit/pmap/vmap); use loop='device'"
        )
    return loop


def _trace_summary(samples, n):
    num = samples.shape[0]
    return {
        "trace": jnp.mean(samples),
        "std_error": jnp.std(samples, ddof=1) / jnp.sqrt(num) if num > 1 else jnp.float32(jnp.nan),
        "num_params": jnp.float32(n),
    }


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "num_samples", "chunk", "unroll", "axis_name", "operator", "mask")
)
def _trace(loss_fn, params, batch, key, *, num_samples, chunk, unroll, axis_name, operator, mask):
    matvec, n = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)
    z = jax.random.rademacher(key, (num_samples, n), jnp.float32)
    samples = C.map_chunked(lambda v: jnp.vdot(v, matvec(v)), z, chunk, unroll)
    return _trace_summary(samples, n)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _host_quadratic_forms(loss_fn, params, batch, z, *, axis_name, operator, mask):
    matvec, _ = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)
    return jax.vmap(lambda v: jnp.vdot(v, matvec(v)))(z)


@functools.partial(jax.jit, static_argnames=_STATIC + ("chunk", "unroll"))
def _products(loss_fn, params, batch, vs, *, axis_name, operator, mask, chunk, unroll):
    """``M vᵢ`` for the rows of ``vs`` (one compiled program; ``chunk`` at a time)."""
    matvec, _ = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)
    return C.map_chunked(matvec, vs, chunk, unroll)


def _block_products(loss_fn, params, batch, vs, *, device, chunk, unroll, **kw):
    """``M vᵢ`` for the rows of ``vs``: on the device, one program (``chunk`` rows at a time, see
    :func:`jaxnorm.probes._common.map_chunked`); on the host, groups of ``chunk`` rows, each one call of the same
    compiled program (the last group padded with zero rows, so that every call has one shape)."""
    if device:
        return _products(loss_fn, params, batch, vs, chunk=chunk, unroll=unroll, **kw)
    rows = vs.shape[0]
    size = min(C.resolve_chunk(chunk) or rows, rows)
    pad = -rows % size
    if pad:
        vs = jnp.concatenate([vs, jnp.zeros((pad,) + vs.shape[1:], vs.dtype)])
    parts = [
        _products(loss_fn, params, batch, vs[i : i + size], chunk=None, unroll=False, **kw)
        for i in range(0, rows + pad, size)
    ]
    return jnp.concatenate(parts)[:rows]


_jit_rademacher = jax.jit(lambda key, num, n: jax.random.rademacher(key, (num, n), jnp.float32), static_argnums=(1, 2))
_jit_trace_summary = jax.jit(_trace_summary, static_argnums=(1,))


def _hutch_pp(products, key, n, num_samples):
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1) with ``num_samples`` products in all: ``k =
    num_samples // 3`` Rademacher vectors ``S`` sketch the top of the spectrum, ``Q = qr(M S)``; the trace is
    ``tr(Qᵀ M Q)`` exactly plus Hutchinson's estimate, from the remaining ``num_samples − 2k`` vectors ``G``, of
    the trace of the deflated ``(I − QQᵀ) M (I − QQᵀ)``. Its variance falls as ``1/m²`` for a matrix with a decaying
    spectrum (Hutchinson's: ``1/m``). ``std_error`` is that of the Hutchinson part."""
    k = num_samples // 3
    k_s, k_g = jax.random.split(key)
    s_vecs = jax.random.rademacher(k_s, (k, n), jnp.float32)
    q, _ = jnp.linalg.qr(products(s_vecs).T)  # n × k, orthonormal columns spanning M S
    exact = jnp.sum(q.T * products(q.T))  # tr(Qᵀ M Q)
    g = jax.random.rademacher(k_g, (num_samples - 2 * k, n), jnp.float32)
    g = g - (g @ q) @ q.T
    samples = jnp.sum(g * products(g), axis=1)
    out = _trace_summary(samples, n)
    out["trace"] = exact + out["trace"]
    return out


def hessian_trace(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    key: jax.Array,
    num_samples: int = 100,
    method: str = "hutchinson",
    chunk: int | str | None = 1,
    operator: str = "hessian",
    params_filter=None,
    axis_name: str | None = None,
) -> dict:
    """An estimate of the trace of the Hessian (or of another operator) from ``num_samples`` operator-vector products.

    Formula: Hutchinson's estimator ``tr M ≈ (1/m) Σ_i z_iᵀ M z_i`` over Rademacher vectors ``z_i`` (unbiased;
    variance ``2 Σ_(i≠j) M_ij²`` per sample). Hutch++: ``k = m // 3`` vectors ``S`` sketch the top of the spectrum,
    ``Q = qr(M S)``; then ``tr M = tr(Qᵀ M Q) + tr((I − QQᵀ) M (I − QQᵀ))``, the first term exact and the second by
    Hutchinson from the remaining ``m − 2k`` vectors (far less variance when a few eigenvalues dominate).

    Reduces over: the ``num_samples`` probe vectors (and the batches of a data set: the average operator).

    Execution: called eagerly on CPU, a host loop of compiled steps (XLA:CPU runs convolution gradients inside loop
    bodies slowly, jax-ml/jax#12868); traced (``jit``, ``pmap``) or on an accelerator, one compiled program.

    Reference: Hutchinson (1989), A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
    Smoothing Splines; Meyer, Musco, Musco & Woodruff (2021), Hutch++: Optimal Stochastic Trace Estimation.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      key: PRNG key of the Rademacher vectors (the same key gives the same vectors on the host and in one program).
      num_samples: the number of products ``m`` (``'hutch++'``: at least 3).
      method: ``'hutchinson'`` (default) or ``'hutch++'``.
      chunk: products run at once (a ``vmap``): 1 (default, sequential), an int, ``None`` (all at once) or
        ``'auto'`` (1 on CPU, all on accelerators).
      operator: ``'hessian'`` (default), ``'ggn'``, ``'fisher'`` or ``'empirical_fisher'`` (the last three need a
        :class:`jaxnorm.probes.SplitLoss`, e.g. from :func:`jaxnorm.probes.model_loss_fn`); see
        :mod:`jaxnorm.probes.operators`.
      params_filter: None (all parameters), a list of layer names or a predicate ``f(path, leaf) -> bool``: the
        operator restricted to the selected leaves (the diagonal block ``M_SS``), the others held fixed.
      axis_name: inside ``pmap``/``shard_map``, the device axis: the products are ``pmean``'d over it (the
        global-batch operator for equal shards).

    Returns:
      ``{'trace', 'std_error', 'num_params'}``: the estimate, the standard error of the mean of its stochastic
      part (NaN for one sample) and the operator's dimension, float32 scalars.

    Raises:
      ValueError: ``num_samples`` not a positive int; unknown ``method``; ``'hutch++'`` with ``num_samples < 3``; no
        ``key``; a bad ``chunk``.
      ValueError: ``loss_fn(params, batch)`` is not a real scalar; ``operator`` is unknown or needs a
        :class:`jaxnorm.probes.SplitLoss` it did not get; ``params_filter`` selects nothing or names a missing
        layer; a list of batches of unequal shapes.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> tr = jp.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=9, method='hutch++')
    >>> round(float(tr['trace']), 3), int(tr['num_params'])    # tr A = 4.5 (exact: the sketch spans all 3 dims)
    (4.5, 3)
    >>> tr = jp.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=200)
    >>> bool(abs(tr['trace'] - 4.5) < 4 * tr['std_error'])
    True
    """
    unroll = C.knob("unroll")
    loop = C.knob("loop")
    where = "hessian_trace"
    num_samples = _checks.check_positive_int(where, "num_samples", num_samples)
    method = _checks.check_choice("trace method", method, TRACE_METHODS)
    if method == "hutch++" and num_samples < 3:
        raise ValueError(
            f"{where}: method='hutch++' splits num_samples into three parts, got num_samples="
            f"{num_samples}; use num_samples ≥ 3 (≥ 30 for a useful sketch)"
        )
    C.check_key(where, key, "the Rademacher probes")
    chunk = C.check_chunk(where, chunk)
    batch, mask = _check(where, loss_fn, params, batch, operator, params_filter)
    n = O.size(params, mask)
    kw = dict(axis_name=axis_name, operator=operator, mask=mask)
    device = _resolve_loop(where, loop, params, batch, key, axis_name) == "device"
    if method == "hutch++":

        def products(vs):
            return _block_products(loss_fn, params, batch, vs, device=device, chunk=chunk, unroll=unroll, **kw)

        return _hutch_pp(products, key, n, num_samples)
    if device:
        return _trace(loss_fn, params, batch, key, num_samples=num_samples, chunk=chunk, unroll=unroll, **kw)
    z = _jit_rademacher(key, num_samples, n)
    size = num_samples if C.resolve_chunk(chunk) is None else C.resolve_chunk(chunk)
    parts = [_host_quadratic_forms(loss_fn, params, batch, z[i : i + size], **kw) for i in range(0, num_samples, size)]
    return _jit_trace_summary(jnp.concatenate(parts), n)


# ---- spectral density --------------------------------------------------------------------------------------------


def _nodes_weights(alpha, beta):
    theta, s = jnp.linalg.eigh(_tridiag(alpha, beta))
    return theta, s[0] ** 2


@functools.partial(jax.jit, static_argnames=("num_points",))
def _broaden(nodes, weights, sigma, *, num_points):
    lo, hi = jnp.min(nodes), jnp.max(nodes)
    width = jnp.where(sigma > 0, sigma, 0.01 * jnp.maximum(hi - lo, 1e-3 * jnp.maximum(jnp.abs(hi), 1.0)))
    grid = jnp.linspace(lo - 6 * width, hi + 6 * width, num_points)
    gauss = jnp.exp(-0.5 * ((grid[:, None] - nodes.reshape(-1)[None, :]) / width) ** 2) / (width * jnp.sqrt(2 * jnp.pi))
    density = gauss @ weights.reshape(-1) / nodes.shape[0]
    return {"grid": grid, "density": density, "nodes": nodes, "weights": weights, "sigma": width}


@functools.partial(
    jax.jit,
    static_argnames=(
        "loss_fn",
        "num_lanczos_steps",
        "num_runs",
        "num_points",
        "chunk",
        "axis_name",
        "operator",
        "mask",
    ),
)
def _density(
    loss_fn, params, batch, key, sigma, *, num_lanczos_steps, num_runs, num_points, chunk, axis_name, operator, mask
):
    matvec, n = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)
    m = min(num_lanczos_steps, n)

    def run(v0):
        alpha, beta, _ = _lanczos(matvec, v0, m)
        return _nodes_weights(alpha, beta)

    v0 = jax.random.rademacher(key, (num_runs, n), jnp.float32)
    nodes, weights = C.map_chunked(run, v0, chunk, False)
    return _broaden(nodes, weights, sigma, num_points=num_points)


_jit_nodes_weights = jax.jit(lambda alpha, beta: _nodes_weights(alpha, beta[:-1]))


def hessian_spectral_density(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    key: jax.Array,
    num_lanczos_steps: int = 30,
    num_runs: int = 1,
    num_points: int = 1000,
    sigma: float | None = None,
    chunk: int | str | None = 1,
    operator: str = "hessian",
    params_filter=None,
    axis_name: str | None = None,
) -> dict:
    """The eigenvalue density of the Hessian (or of another operator) by stochastic Lanczos quadrature.

    Formula: each of ``num_runs`` runs starts Lanczos from a normalized Rademacher vector ``v``; the ``m × m``
    tridiagonal matrix of ``m = num_lanczos_steps`` steps gives nodes ``θ_j`` (its eigenvalues) and weights ``τ_j``
    (the squared first components of its eigenvectors, summing to 1), the Gauss quadrature of ``vᵀ f(M) v``. The
    density is ``φ(t) = (1/runs) Σ_runs Σ_j τ_j 𝒩(t; θ_j, σ²)``; its mean ``Σ τ θ`` estimates ``tr M / n``.

    Reduces over: the ``num_runs`` runs (and the batches of a data set: the average operator).

    Execution: called eagerly on CPU, a host loop of compiled steps (XLA:CPU runs convolution gradients inside loop
    bodies slowly, jax-ml/jax#12868); traced (``jit``, ``pmap``) or on an accelerator, one compiled program.

    Reference: Ghorbani, Krishnan & Xiao (2019), An Investigation into Neural Net Optimization via Hessian
    Eigenvalue Density; Lin, Saad & Yang (2016), Approximating Spectral Densities of Large Matrices.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      key: PRNG key of the start vectors (the same key gives the same result on the host and in one program).
      num_lanczos_steps: Lanczos steps per run (clipped to the parameter count).
      num_runs: independent start vectors.
      num_points: points of the output grid (at least 2); the grid spans the nodes ± 6σ.
      sigma: the Gaussian broadening σ (positive); default 1% of the node range.
      chunk: in one program (traced or on an accelerator): runs at once (1 by default; ``None``: all in one vmap).
      operator: ``'hessian'`` (default), ``'ggn'``, ``'fisher'`` or ``'empirical_fisher'`` (the last three need a
        :class:`jaxnorm.probes.SplitLoss`, e.g. from :func:`jaxnorm.probes.model_loss_fn`); see
        :mod:`jaxnorm.probes.operators`.
      params_filter: None (all parameters), a list of layer names or a predicate ``f(path, leaf) -> bool``: the
        operator restricted to the selected leaves (the diagonal block ``M_SS``), the others held fixed.
      axis_name: inside ``pmap``/``shard_map``, the device axis: the products are ``pmean``'d over it (the
        global-batch operator for equal shards).

    Returns:
      ``{'grid' (num_points,), 'density' (num_points,), 'nodes' (runs, m), 'weights' (runs, m), 'sigma'}``; the
      density integrates to 1 over the grid.

    Raises:
      ValueError: ``num_lanczos_steps``, ``num_runs`` or ``num_points`` not a positive int (``num_points < 2``); a
        non-positive ``sigma``; no ``key``; a bad ``chunk``.
      ValueError: ``loss_fn(params, batch)`` is not a real scalar; ``operator`` is unknown or needs a
        :class:`jaxnorm.probes.SplitLoss` it did not get; ``params_filter`` selects nothing or names a missing
        layer; a list of batches of unequal shapes.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> d = jp.hessian_spectral_density(loss_fn, params, batch, key=jax.random.key(0), num_lanczos_steps=3,
    ...                                 num_runs=4, num_points=400)
    >>> d['nodes'].shape, d['density'].shape
    ((4, 3), (400,))
    >>> round(float(jnp.sum(d['density']) * (d['grid'][1] - d['grid'][0])), 2)     # ∫ φ = 1
    1.0
    >>> round(float(jnp.max(d['nodes'])), 3)                                        # λ_max of A
    3.0
    """
    loop = C.knob("loop")
    where = "hessian_spectral_density"
    m = _checks.check_positive_int(where, "num_lanczos_steps", num_lanczos_steps)
    runs = _checks.check_positive_int(where, "num_runs", num_runs)
    pts = _checks.check_positive_int(where, "num_points", num_points, minimum=2)
    if sigma is not None and not sigma > 0:
        raise ValueError(f"{where}: sigma (the Gaussian broadening) must be positive, got {sigma!r}")
    C.check_key(where, key, "the Lanczos start vectors")
    chunk = C.check_chunk(where, chunk)
    sigma = jnp.float32(0.0 if sigma is None else sigma)
    batch, mask = _check(where, loss_fn, params, batch, operator, params_filter)
    if _resolve_loop(where, loop, params, batch, key, axis_name) == "device":
        return _density(
            loss_fn,
            params,
            batch,
            key,
            sigma,
            num_lanczos_steps=m,
            num_runs=runs,
            num_points=pts,
            chunk=chunk,
            axis_name=axis_name,
            operator=operator,
            mask=mask,
        )
    n = O.size(params, mask)
    m = min(m, n)
    v0 = _jit_rademacher(key, runs, n)
    nodes, weights = [], []
    for r in range(runs):
        carry = _jit_lanczos_init(v0[r], m)
        for j in range(m):
            carry = _host_lanczos_step(
                loss_fn, params, batch, jnp.int32(j), carry, axis_name=axis_name, operator=operator, mask=mask
            )
        theta, w = _jit_nodes_weights(carry[1], carry[2])
        nodes.append(theta)
        weights.append(w)
    return _broaden(jnp.stack(nodes), jnp.stack(weights), sigma, num_points=pts)


# ---- directional curvature ---------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=_STATIC)
def _directional(loss_fn, params, batch, direction, *, axis_name, operator, mask):
    matvec, _, _ = O.flat_matvec(loss_fn, params, batch, axis_name, operator, mask)
    if direction is None:
        d, _ = ravel_pytree(O.sub_grad(loss_fn, params, batch, axis_name, mask))
    else:
        d, _ = ravel_pytree(O.split(direction, mask)[0])
    d = d.astype(jnp.float32)
    return jnp.vdot(d, matvec(d)) / jnp.vdot(d, d)


def directional_curvature(
    loss_fn: C.LossFn,
    params,
    batch,
    direction=None,
    *,
    operator: str = "hessian",
    params_filter=None,
    axis_name: str | None = None,
):
    """The curvature of the loss along a direction, by default along the gradient.

    Formula: ``c = dᵀ M d / ‖d‖²`` (``M`` the Hessian by default), with ``d = g = ∇L(w)`` unless ``direction`` is
    given: the curvature a gradient step sees (a step ``−η g`` decreases the loss to second order iff
    ``η < 2/c``). With ``params_filter`` both are restricted to the selected leaves. One gradient and one
    operator-vector product.

    Reduces over: the batches of a data set (the average gradient and operator).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?
    (§3.2, the curvature along the gradient).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: the parameter pytree ``w``.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      direction: a pytree shaped like ``params``; default the gradient.
      operator: ``'hessian'`` (default), ``'ggn'``, ``'fisher'`` or ``'empirical_fisher'`` (the last three need a
        :class:`jaxnorm.probes.SplitLoss`, e.g. from :func:`jaxnorm.probes.model_loss_fn`); see
        :mod:`jaxnorm.probes.operators`.
      params_filter: None (all parameters), a list of layer names or a predicate ``f(path, leaf) -> bool``: the
        operator restricted to the selected leaves (the diagonal block ``M_SS``), the others held fixed.
      axis_name: inside ``pmap``/``shard_map``, the device axis: the products are ``pmean``'d over it (the
        global-batch operator for equal shards).

    Returns:
      A float32 scalar.

    Raises:
      ValueError: ``direction`` is not shaped like ``params``.
      ValueError: ``loss_fn(params, batch)`` is not a real scalar; ``operator`` is unknown or needs a
        :class:`jaxnorm.probes.SplitLoss` it did not get; ``params_filter`` selects nothing or names a missing
        layer; a list of batches of unequal shapes.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> c = jp.directional_curvature(loss_fn, params, batch)        # g = A·w = (4, 5, −0.5)
    >>> round(float(c), 4)                                          # gᵀAg / gᵀg = 122.125 / 41.25
    2.9606
    >>> e = {'a': jnp.array([1.0, 1.0]), 'b': jnp.array([0.0])}     # the top eigenvector of A
    >>> round(float(jp.directional_curvature(loss_fn, params, batch, e)), 4)
    3.0
    """
    if direction is not None and C.structure(direction) != jax.tree.structure(params):
        raise ValueError("directional_curvature: direction must be a pytree shaped like params")
    batch, mask = _check("directional_curvature", loss_fn, params, batch, operator, params_filter)
    return _directional(loss_fn, params, batch, direction, axis_name=axis_name, operator=operator, mask=mask)


# ---- per-layer table -------------------------------------------------------------------------------------------------


def layer_names(params) -> list[str]:
    """The top-level keys of ``params`` that hold parameters, sorted with their numbers as numbers.

    ``conv_2`` comes before ``conv_10``. These are the layers of a Flax ``params`` dict; the order of the computation
    is :func:`jaxnorm.probes.layer_order`'s.

    Args:
      params: a parameter pytree (a mapping of layer name → parameters).

    Returns:
      A list of strings.

    Examples:
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> jp.layer_names({'head': jnp.ones(2), 'conv_10': {'kernel': jnp.ones(3)}, 'conv_2': {'kernel': jnp.ones(3)}})
    ['conv_2', 'conv_10', 'head']
    """
    seen = []
    for p in O.leaf_paths(params):
        top = p.split("/")[0]
        if top not in seen:
            seen.append(top)
    return sorted(seen, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


@functools.partial(jax.jit, static_argnames=_STATIC + ("segments", "chunk"))
def _layer_forms(loss_fn, params, batch, z, *, axis_name, operator, mask, segments, chunk):
    """``[z_lᵀ (M z)_l]_l`` for each row ``z`` of ``z``: the per-layer parts of ``zᵀ M z`` (``segments``: each
    layer's ``(start, stop)`` in the raveled vector). For Rademacher ``z``, part ``l`` is an unbiased estimate of
    ``tr M_ll`` (the cross terms have mean zero)."""
    matvec, _ = _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, mask)

    def one(v):
        hv = matvec(v)
        return jnp.stack([jnp.vdot(v[a:b], hv[a:b]) for a, b in segments])

    return C.map_chunked(one, z, chunk)


# Trace vectors whose whole-model products one host call computes on an accelerator (a vmap; on CPU one at a time:
# XLA:CPU runs a vmap of convolutions with per-row kernels slowly). Bounds the (block, n) vectors in memory.
_LAYER_BLOCK = 8
_LAYER_TOL = 1e-5  # hessian_top_eigenvalues' default: the relative change of λ that stops a layer


@functools.partial(jax.jit, static_argnames=("loss_fn", "axis_name", "operator", "masks"))
def _layer_products(loss_fn, params, batch, vs, *, axis_name, operator, masks):
    """``(M_ll v_l)_l``: each layer's diagonal block times its vector, all in one program. Each product is the
    operator restricted to the layer's parameters (the others held fixed), so the tangent enters at the layer and
    no gradient is formed for the others: cheaper than a whole-model product with a zero-padded vector."""
    return tuple(
        _flat_hvp_fn(loss_fn, params, batch, axis_name, operator, m)[0](v) for m, v in zip(masks, vs, strict=True)
    )


def _layer_power_host(loss_fn, params, batch, key, segments, masks, n, num_iters, *, axis_name, operator):
    """Power iteration on every layer's diagonal block at once, as a host loop of one compiled program (all the
    layers' block products, :func:`_layer_products`); a layer's vector freezes when its Rayleigh quotient changes by
    ≤ 1e-5·|λ| (as :func:`hessian_top_eigenvalues`), and its value is the Rayleigh quotient of its last vector.
    Returns the (L,) float64 eigenvalues."""
    start = np.asarray(jax.random.normal(key, (n,), jnp.float32))
    vs = [start[a:b] / max(np.linalg.norm(start[a:b]), np.finfo(np.float32).tiny) for a, b in segments]
    kw = dict(axis_name=axis_name, operator=operator, masks=masks)

    def products():
        return [np.asarray(w) for w in _layer_products(loss_fn, params, batch, tuple(vs), **kw)]

    lam = np.zeros(len(segments))
    done = np.zeros(len(segments), bool)
    for i in range(num_iters):
        if done.all():
            break
        for j, w in enumerate(products()):
            if done[j]:
                continue
            new = float(np.dot(vs[j].astype(np.float64), w))
            vs[j] = w / max(np.linalg.norm(w), np.finfo(np.float32).tiny)
            done[j] = i >= 1 and abs(new - lam[j]) <= _LAYER_TOL * abs(new)
            lam[j] = new
    return np.array([np.dot(v.astype(np.float64), w) for v, w in zip(vs, products(), strict=True)])


@functools.partial(jax.jit, static_argnames=("loss_fn", "axis_name", "operator", "masks", "segments", "num_iters"))
def _layer_power_device(loss_fn, params, batch, key, *, segments, masks, num_iters, axis_name, operator):
    """:func:`_layer_power_host` as one program (a ``while_loop`` over the steps; traceable)."""
    start = jax.random.normal(key, (max(b for _, b in segments),), jnp.float32)

    def products(vs):
        return _layer_products(loss_fn, params, batch, vs, axis_name=axis_name, operator=operator, masks=masks)

    def cond(s):
        i, _, _, done = s
        return (i < num_iters) & ~jnp.all(done)

    def body(s):
        i, vs, lam, done = s
        ws = products(vs)
        new = jnp.stack([jnp.vdot(v, w) for v, w in zip(vs, ws, strict=True)])
        stop = (i >= 1) & (jnp.abs(new - lam) <= _LAYER_TOL * jnp.abs(new))
        vs = tuple(jnp.where(done[j], v, _normalize(w)) for j, (v, w) in enumerate(zip(vs, ws, strict=True)))
        return i + 1, vs, jnp.where(done, lam, new), done | stop

    v0 = tuple(_normalize(start[a:b]) for a, b in segments)
    init = (0, v0, jnp.zeros((len(segments),), jnp.float32), jnp.zeros((len(segments),), bool))
    _, vs, _, _ = jax.lax.while_loop(cond, body, init)
    return jnp.stack([jnp.vdot(v, w) for v, w in zip(vs, products(vs), strict=True)])


def curvature_per_layer(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    key: jax.Array,
    layers=None,
    num_iters: int = 20,
    num_samples: int = 20,
    operator: str = "hessian",
    axis_name: str | None = None,
) -> dict:
    """A per-layer curvature table: each layer's top eigenvalue and trace of its diagonal block.

    Formula: for each layer ``l``, the top eigenvalue of the block ``M_ll`` (the operator restricted to the layer's
    parameters, the others fixed; power iteration, at most ``num_iters`` block products) and ``tr M_ll`` from ONE
    Hutchinson run on the whole operator: for Rademacher ``z``, ``z_lᵀ (M z)_l`` estimates ``tr M_ll``, so the
    layers' traces cost no more than the model's and sum to its estimate exactly. Every layer's power iteration
    advances together: one compiled program holds all the layers' block products (each enters the tangent at its
    layer, so it costs less than a whole-model product), whatever the number of layers.

    Reduces over: the ``num_samples`` Rademacher vectors (and the batches of a data set: the average operator).

    Execution: called on CPU, a host loop of one compiled program of every layer's products; on an accelerator,
    the power iteration as one compiled program. The table is host numbers: the function is not traceable.

    Reference: Hutchinson (1989), A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
    Smoothing Splines; Yao, Gholami, Keutzer & Mahoney (2020), PyHessian: Neural Networks Through the Lens of the
    Hessian.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``, pure.
      params: a mapping of layer name → parameters.
      batch: the second argument of ``loss_fn``: one batch (a tuple such as ``(x, y)`` is one batch), or a data
        set: a plain ``list`` of batches (of Mappings, or of one pytree structure and not arrays) or
        :func:`jaxnorm.probes.dataset` of them, which are the same: the operator is then the average
        ``M = (1/B) Σ_b M_b`` over its ``B`` batches.
      key: PRNG key of the start and Rademacher vectors (the same for every layer, so two runs compare layer by
        layer).
      layers: the layer names (default :func:`layer_names` of ``params``).
      num_iters: power-iteration products per layer at most.
      num_samples: Hutchinson samples for the traces.
      operator: as in :func:`hessian_top_eigenvalues`.
      axis_name: as in :func:`hessian_top_eigenvalues`.

    Returns:
      ``{layer: {'top_eigenvalue', 'trace', 'trace_std_error', 'num_params'}}`` of float32 scalars.

    Raises:
      ValueError: a name in ``layers`` is not a layer of ``params`` or its leaves are not contiguous;
        ``num_samples`` not a positive int; no ``key``; ``loss_fn`` not scalar; a bad ``operator``.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                    # 0.5·wᵀAw: its Hessian is A
    ...     w = jnp.concatenate([params['a'], params['b']])
    ...     return 0.5 * w @ batch['A'] @ w
    >>> params = {'a': jnp.array([1.0, 2.0]), 'b': jnp.array([-1.0])}
    >>> batch = {'A': jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]])}   # eigenvalues 3, 1, 0.5
    >>> table = jp.curvature_per_layer(loss_fn, params, batch, key=jax.random.key(0), num_samples=8)
    >>> {name: round(float(row['top_eigenvalue']), 3) for name, row in table.items()}   # blocks [[2, 1], [1, 2]], [0.5]
    {'a': 3.0, 'b': 0.5}
    >>> int(table['a']['num_params']), int(table['b']['num_params'])
    (2, 1)
    """
    loop = C.knob("loop")
    where = "curvature_per_layer"
    names = layer_names(params) if layers is None else list(layers)
    batch, mask = _check(where, loss_fn, params, batch, operator, None)
    num_samples = _checks.check_positive_int(where, "num_samples", num_samples)
    C.check_key(where, key, "the start and Rademacher vectors")
    paths = O.leaf_paths(params)
    sizes = [int(np.prod(np.shape(x))) for x in jax.tree.leaves(params)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    segments, counts = [], []
    for name in names:
        idx = [i for i, p in enumerate(paths) if O.in_layer(p, name)]
        if not idx:
            raise ValueError(f"{where}: {name!r} is not a layer of params; its layers are {layer_names(params)}")
        if idx != list(range(idx[0], idx[-1] + 1)):  # ravel order keeps a top-level key's leaves together
            raise ValueError(f"{where}: the leaves of {name!r} are not contiguous in params; name top-level keys")
        segments.append((int(starts[idx[0]]), int(starts[idx[-1] + 1])))
        counts.append(int(starts[idx[-1] + 1] - starts[idx[0]]))
    k_eig, k_trace = jax.random.split(key)
    n = int(starts[-1])
    z = _jit_rademacher(k_trace, num_samples, n)
    kw = dict(axis_name=axis_name, operator=operator, mask=mask)
    masks = tuple(O.select(where, params, [name]) for name in names)  # each layer's leaves: its diagonal block
    if _resolve_loop(where, loop, params, batch, key, axis_name) == "host":
        # one compiled product program serves every layer and the traces: rows of `block` vectors at a time
        block = 1 if C.on_cpu() else _LAYER_BLOCK
        w = np.asarray(_block_products(loss_fn, params, batch, z, device=False, chunk=block, unroll=False, **kw))
        zw = np.asarray(z, np.float64) * w
        forms64 = np.stack([zw[:, a:b].sum(axis=1) for a, b in segments], axis=1)
        vals = _layer_power_host(
            loss_fn, params, batch, k_eig, segments, masks, n, num_iters, axis_name=axis_name, operator=operator
        )
    else:
        segs = tuple(segments)
        forms64 = np.asarray(_layer_forms(loss_fn, params, batch, z, chunk=1, segments=segs, **kw), np.float64)
        vals = _layer_power_device(
            loss_fn,
            params,
            batch,
            k_eig,
            segments=segs,
            masks=masks,
            num_iters=num_iters,
            axis_name=axis_name,
            operator=operator,
        )
    table = {}
    for j, name in enumerate(names):
        col = forms64[:, j]
        table[name] = {
            "top_eigenvalue": jnp.float32(vals[j]),
            "trace": jnp.float32(col.mean()),
            "trace_std_error": jnp.float32(col.std(ddof=1) / np.sqrt(len(col)) if len(col) > 1 else np.nan),
            "num_params": jnp.float32(counts[j]),
        }
    return table
