"""Sharpness at the edge of stability: the top Hessian eigenvalue beside the optimizer's stability threshold.

Gradient descent on a quadratic with curvature λ diverges once ``λ > 2/η``; Cohen et al. (2021) found that full-batch
training raises the sharpness ``λ_max(H)`` until it reaches ``2/η`` and then hovers there ("the edge of stability").
So a smoothness measurement that reads ``β·η ≈ 2`` measures the step size, not the landscape, and every curvature
row here carries its threshold and the ratio to it. For preconditioned methods (Adam, RMSProp) the quantity that
equilibrates is the preconditioned sharpness ``λ_max(P⁻¹H)`` (Cohen et al. 2022).

Cost: one Hessian-vector product per Lanczos step. Warm-started from the previous call's eigenvector (the
top eigenvector moves slowly between tracked steps), a tracked step takes a few products instead of tens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jaxnorm.probes import _common as C
from jaxnorm.probes import operators as O

#: ``'heavy_ball'``: ``v ← g + βv, w ← w − ηv`` (``optax.sgd(momentum=β)``, PyTorch's SGD); ``'nesterov'``: ``v ← g +
#: βv, w ← w − η(g + βv)`` (``optax.sgd(momentum=β, nesterov=True)``); ``'ema'``: ``m ← βm + (1 − β)g, w ← w − ηm``
#: (Adam's first moment).
MOMENTUM_KINDS = ("heavy_ball", "nesterov", "ema")


def stability_threshold(lr: float, *, momentum: float = 0.0, momentum_kind: str = "heavy_ball") -> float:
    """The largest curvature λ on which the optimizer's iteration on a quadratic ``½λw²`` is stable.

    Formula: ``2/η`` for gradient descent; ``(2 + 2β)/η`` for heavy-ball momentum β; ``(2 + 2β)/((1 + 2β)η)`` for
    Nesterov momentum; ``(2 + 2β)/((1 − β)η)`` for EMA momentum (38/η at Adam's β₁ = 0.9, the threshold of the
    preconditioned sharpness). Each is where the iteration's linear recurrence on the quadratic gets an eigenvalue
    of modulus 1 at −1.

    Reference: Cohen et al. (2021), Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability;
    Cohen et al. (2022), Adaptive Gradient Methods at the Edge of Stability.

    Args:
        lr: the step size η > 0.
        momentum: β in [0, 1).
        momentum_kind: ``'heavy_ball'``, ``'nesterov'`` or ``'ema'`` (see ``MOMENTUM_KINDS``).

    Raises:
        ValueError: ``lr`` not a finite positive number, ``momentum`` outside [0, 1), an unknown ``momentum_kind``.

    Examples:
        >>> from jaxnorm.probes import stability_threshold
        >>> [round(stability_threshold(0.1, momentum=b, momentum_kind=k), 6)
        ...  for b, k in [(0.0, 'heavy_ball'), (0.9, 'heavy_ball'), (0.9, 'ema')]]  # 2/η, (2+2β)/η, (2+2β)/((1−β)η)
        [20.0, 38.0, 380.0]
    """
    lr = float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"stability_threshold: lr must be a finite step size > 0, got {lr}")
    if not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"stability_threshold: momentum must be in [0, 1), got {momentum}")
    if momentum_kind not in MOMENTUM_KINDS:
        raise ValueError(f"stability_threshold: momentum_kind must be one of {MOMENTUM_KINDS}, got {momentum_kind!r}")
    b = float(momentum)
    return (2.0 + 2.0 * b) / (lr * {"heavy_ball": 1.0, "nesterov": 1.0 + 2.0 * b, "ema": 1.0 - b}[momentum_kind])


def adam_preconditioner(opt_state, *, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0):
    """Adam's diagonal preconditioner ``P = √(ν̂ + ε_root) + ε`` (a pytree like the parameters) from an optax state.

    Formula: ``ν̂ = ν/(1 − β₂ᵗ)``, ``t`` the state's step count, so that Adam's next step is ``w ← w − η·P⁻¹m̂``
    (``optax.adam``'s ``scale_by_adam``). For RMSProp (``optax.rmsprop``, a ``ScaleByRmsState`` without bias
    correction), ``P = √(ν + ε)`` as ``optax.scale_by_rms`` divides by it; pass that optimizer's ``eps``.

    Reference: Cohen et al. (2022), Adaptive Gradient Methods at the Edge of Stability (the preconditioned sharpness
    ``λ_max(P⁻¹H)``).

    Args:
        opt_state: an optax state holding one ``ScaleByAdamState`` or ``ScaleByRmsState`` (e.g. of
            ``optax.adam(lr)``, ``optax.adamw``, ``optax.chain(..., optax.adam(lr))``, ``optax.rmsprop``).
        b2: Adam's β₂ (the state does not record it).
        eps, eps_root: the optimizer's ε and ε_root.

    Raises:
        ValueError: no Adam or RMSProp state in ``opt_state``, or more than one.
    """
    found = [
        s
        for s in jax.tree.leaves(
            opt_state, is_leaf=lambda s: isinstance(s, (optax.ScaleByAdamState, optax.ScaleByRmsState))
        )
        if isinstance(s, (optax.ScaleByAdamState, optax.ScaleByRmsState))
    ]
    if len(found) != 1:
        raise ValueError(
            f"adam_preconditioner: opt_state holds {len(found)} Adam/RMSProp states (ScaleByAdamState or "
            "ScaleByRmsState); pass the state of an optimizer with exactly one, e.g. optax.adam(lr).init(params)"
        )
    (s,) = found
    if isinstance(s, optax.ScaleByRmsState):
        return jax.tree.map(lambda n: jnp.sqrt(n + eps), s.nu)
    t = jnp.maximum(jnp.asarray(s.count, jnp.float32), 1.0)
    return jax.tree.map(lambda n: jnp.sqrt(n / (1.0 - b2**t) + eps_root) + eps, s.nu)


def _matvec(loss_fn, params, batch, d, v):
    """``D H D v`` on the raveled parameters (``D = diag(d)``; ``D = I`` for the Hessian), ``H v`` the curvature
    probes' own product (:func:`jaxnorm.probes.operators.flat_matvec`)."""
    hvp, _, _ = O.flat_matvec(loss_fn, params, batch, None)
    return d * hvp(d * v)


_jit_matvec = jax.jit(_matvec, static_argnums=(0,))


def _lanczos_top(matvec, v, num_iters, tol):
    """The largest eigenvalue of the symmetric operator ``matvec`` by Lanczos with full reorthogonalization from
    the unit vector ``v``: ``(λ, its Ritz vector, products, converged)``, converged when the Ritz pair's residual
    ``β_j·|s_j|`` (the last Lanczos coefficient times the Ritz vector's last entry) is at most ``tol·|λ|``."""
    basis, alphas, betas = [v], [], []
    lam, last, converged = math.nan, np.ones(1), False
    for j in range(num_iters):
        w = matvec(basis[j])
        alphas.append(float(jnp.vdot(basis[j], w)))
        q = jnp.stack(basis)
        w = w - q.T @ (q @ w)  # full reorthogonalization, twice (Kahan's "twice is enough")
        w = w - q.T @ (q @ w)
        beta = float(jnp.linalg.norm(w))
        theta, s = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        lam, last = float(theta[-1]), s[:, -1]
        if beta * abs(last[-1]) <= tol * max(abs(lam), np.finfo(np.float32).tiny) or beta == 0.0:
            converged = True
            break
        basis.append(w / beta)
        betas.append(beta)
    ritz = jnp.stack(basis[: len(alphas)]).T @ jnp.asarray(last, v.dtype)  # once, for the last Ritz pair
    return lam, ritz / jnp.linalg.norm(ritz), len(alphas), converged


def sharpness(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    lr: float,
    momentum: float = 0.0,
    momentum_kind: str = "heavy_ball",
    preconditioner=None,
    v0=None,
    key: jax.Array | None = None,
    num_iters: int = 50,
    tol: float = 1e-5,
    band: float = 0.1,
) -> dict:
    """The sharpness ``λ_max`` of ``loss_fn`` at ``params`` and where it stands against the stability threshold.

    Formula: Lanczos iteration with full reorthogonalization on ``A = H`` (or ``P^{-½} H P^{-½}``, whose
    eigenvalues are those of ``P⁻¹H``, with ``preconditioner=P``), ``H v`` by forward-over-reverse differentiation,
    started from ``v0`` (a warm start) or a random vector, until the top Ritz pair's residual ``‖Av − λv‖`` is at
    most ``tol·|λ|``. ``ratio = λ / threshold`` with the threshold of :func:`stability_threshold` (``λ·η/2`` for
    gradient descent); the run is at the edge when ``|ratio − 1| ≤ band``; ``ratio > 1`` is above the threshold
    (gradient descent on a quadratic of that curvature diverges).

    ``λ_max`` is the largest (most positive) eigenvalue, also where a negative one dominates in magnitude, as early
    in training; negative only if every eigenvalue is.

    Reduces over: the batch, through ``loss_fn`` (its mean).

    Reference: Cohen et al. (2021), Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability;
    Cohen et al. (2022), Adaptive Gradient Methods at the Edge of Stability.

    Args:
        loss_fn: ``loss_fn(params, batch) -> scalar``.
        params, batch: where to measure.
        lr: the step size η of the step this curvature meets.
        momentum, momentum_kind: see :func:`stability_threshold` (Adam: ``momentum=b1, momentum_kind='ema'``).
        preconditioner: ``P`` (a pytree like ``params``, positive), e.g. :func:`adam_preconditioner`; None for H.
        v0: a start vector (a pytree like ``params``), e.g. the ``eigenvector`` of the previous call: a warm start.
        key: PRNG key of a random start when ``v0`` is None (default ``jax.random.key(0)``).
        num_iters: the most Hessian-vector products (Lanczos steps).
        tol: the relative residual ``‖Av − λv‖/|λ|`` of the top Ritz pair at which to stop.
        band: the half-width of the edge band around ratio 1.

    Returns:
        ``{'lambda_max', 'threshold', 'ratio', 'at_edge', 'above_threshold', 'num_products', 'converged',
        'eigenvector'}``: ``converged`` is False when ``num_iters`` products ended the iteration first (λ is then
        the last Rayleigh quotient); the eigenvector is a pytree like ``params`` (of ``P^{-½}HP^{-½}`` when
        preconditioned) to pass as the next ``v0``.

    Raises:
        ValueError: ``num_iters < 1``, ``tol`` or ``band`` negative, a ``v0`` or ``preconditioner`` that is not
            shaped like ``params``, a non-positive preconditioner, and the errors of :func:`stability_threshold`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.probes import sharpness
        >>> loss_fn = lambda w, batch: 0.5 * jnp.sum(batch['a'] * w ** 2)  # Hessian diag(a)
        >>> out = sharpness(loss_fn, jnp.ones(3), {'a': jnp.array([1.0, 4.0, 2.0])}, lr=0.48)
        >>> round(out['lambda_max'], 3), round(out['ratio'], 3), out['at_edge'], out['above_threshold']
        (4.0, 0.96, True, False)
    """
    threshold = stability_threshold(lr, momentum=momentum, momentum_kind=momentum_kind)
    if not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"sharpness: num_iters must be an int >= 1, got {num_iters!r}")
    if not (tol >= 0 and band >= 0):
        raise ValueError(f"sharpness: tol and band must be >= 0, got tol={tol}, band={band}")
    flat, unravel = ravel_pytree(params)
    n = flat.size
    if preconditioner is None:
        d = jnp.ones((n,), flat.dtype)
    else:
        p = _flat_like("preconditioner", preconditioner, params, n)
        if not bool(jnp.all(p > 0)):
            raise ValueError("sharpness: the preconditioner must be positive everywhere (Adam's √ν̂ + ε is)")
        d = jax.lax.rsqrt(p).astype(flat.dtype)
    if v0 is None:
        v = jax.random.normal(jax.random.key(0) if key is None else key, (n,), flat.dtype)
    else:
        v = _flat_like("v0", v0, params, n).astype(flat.dtype)
    v = v / jnp.maximum(jnp.linalg.norm(v), jnp.finfo(flat.dtype).tiny)
    lam, v, products, converged = _lanczos_top(
        lambda u: _jit_matvec(loss_fn, params, batch, d, u), v, min(num_iters, n), tol
    )
    converged = converged or products == n  # n steps span the whole space: the Ritz values are the eigenvalues
    ratio = lam / threshold
    return {
        "lambda_max": lam,
        "threshold": threshold,
        "ratio": ratio,
        "at_edge": abs(ratio - 1.0) <= band,
        "above_threshold": ratio > 1.0,
        "num_products": products,
        "converged": converged,
        "eigenvector": unravel(v),
    }


def _flat_like(what, tree, params, n):
    try:
        flat = ravel_pytree(tree)[0]
        same = jax.tree.structure(tree) == jax.tree.structure(params)
    except Exception:
        same, flat = False, None
    if not same or flat is None or flat.size != n:
        raise ValueError(f"sharpness: {what} must be a pytree shaped like params ({n} values)")
    return flat


class SharpnessTracker:
    """λ_max every time it is called, warm-started from the previous call's eigenvector: the in-training tracker.

    ``tracker(params, batch, step=...)`` returns the row of :func:`sharpness` with ``step`` and ``lr`` (``lr`` may be
    a schedule ``lr(step)``), without the eigenvector, which the tracker keeps for its next call. Pass
    ``preconditioner=adam_preconditioner(opt_state)`` with ``momentum=b1, momentum_kind='ema'`` for Adam.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.probes import SharpnessTracker
        >>> loss_fn = lambda w, batch: 0.5 * jnp.sum(batch['a'] * w ** 2)
        >>> tracker = SharpnessTracker(loss_fn, lr=0.1)
        >>> rows = [tracker(jnp.ones(3), {'a': jnp.array([1.0, 4.0, 2.0])}, step=s) for s in (0, 10)]
        >>> [round(r['lambda_max'], 3) for r in rows], rows[1]['num_products'] < rows[0]['num_products']
        ([4.0, 4.0], True)
    """

    def __init__(
        self,
        loss_fn: C.LossFn,
        *,
        lr: float | Callable[[Any], Any],
        momentum: float = 0.0,
        momentum_kind: str = "heavy_ball",
        num_iters: int = 50,
        tol: float = 1e-5,
        band: float = 0.1,
        key: jax.Array | None = None,
    ):
        self.loss_fn, self.lr = loss_fn, lr
        self.momentum, self.momentum_kind = momentum, momentum_kind
        self.num_iters, self.tol, self.band, self.key = num_iters, tol, band, key
        self.eigenvector = None
        if not callable(lr):
            stability_threshold(lr, momentum=momentum, momentum_kind=momentum_kind)  # fail at construction

    def __call__(self, params, batch, *, step: int = 0, preconditioner=None) -> dict:
        lr = float(self.lr(step)) if callable(self.lr) else float(self.lr)
        out = sharpness(
            self.loss_fn,
            params,
            batch,
            lr=lr,
            momentum=self.momentum,
            momentum_kind=self.momentum_kind,
            preconditioner=preconditioner,
            v0=self.eigenvector,
            key=self.key,
            num_iters=self.num_iters,
            tol=self.tol,
            band=self.band,
        )
        self.eigenvector = out.pop("eigenvector")
        return {"step": int(step), "lr": lr, "preconditioned": preconditioner is not None, **out}
