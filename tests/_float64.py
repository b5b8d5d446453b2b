"""Float64 two-pass references in numpy, independent of jaxnorm: the normalizations and their input gradients.

Each norm is written as a "row view": the values that share one statistic are laid out as one row of a 2-D array,
the mean is ``row.mean()`` and the variance ``((row − mean)²).mean()`` (two passes, float64). The gradient of
``L = Σ ct·y`` is the closed form ``∂L/∂x = r·(g − mean(g) − x̂·mean(g·x̂))`` with ``g = ct·γ`` per row (the seeds' BN
backward identity), and its RMS / ℓ2 counterparts, so nothing here is differentiated by JAX.
"""

from __future__ import annotations

import numpy as np


def rows(shape, kind: str, *, groups: int = 1, axis: int = -1):
    """(to_rows, from_rows) for a channels-``axis`` input of ``shape``: the values of each statistic as one row."""
    nd = len(shape)
    fax = axis % nd
    perm_c = [i for i in range(nd) if i != fax] + [fax]  # channels last
    cl = [shape[i] for i in perm_c]
    n, c = cl[0], cl[-1]
    s = int(np.prod(cl[1:-1])) if nd > 2 else 1

    if kind == "batch":  # per channel over everything else

        def to(a):
            return np.transpose(a, perm_c).reshape(-1, c).T
    elif kind == "layer":  # per example over everything else

        def to(a):
            return np.transpose(a, perm_c).reshape(n, -1)
    elif kind == "instance":  # per (example, channel) over space

        def to(a):
            return np.transpose(np.transpose(a, perm_c).reshape(n, s, c), (0, 2, 1)).reshape(n * c, s)
    elif kind == "group":  # per (example, group) over space and the group's channels

        def to(a):
            b = np.transpose(a, perm_c).reshape(n, s, groups, c // groups)
            return np.transpose(b, (0, 2, 1, 3)).reshape(n * groups, s * (c // groups))
    else:
        raise ValueError(kind)

    def back(r):
        flat = np.zeros(shape)
        t = np.transpose(flat, perm_c)
        if kind == "batch":
            t = r.T.reshape(t.shape)
        elif kind == "layer":
            t = r.reshape(t.shape)
        elif kind == "instance":
            t = np.transpose(r.reshape(n, c, s), (0, 2, 1)).reshape(t.shape)
        else:
            b = r.reshape(n, groups, s, c // groups)
            t = np.transpose(b, (0, 2, 1, 3)).reshape(t.shape)
        return np.transpose(t, np.argsort(perm_c))

    return to, back


def per_channel(p, shape, axis=-1):
    """A per-channel parameter broadcast to the full input shape (None → ones/zeros handled by the caller)."""
    fax = axis % len(shape)
    view = [1] * len(shape)
    view[fax] = shape[fax]
    return np.broadcast_to(np.asarray(p, np.float64).reshape(view), shape)


def norm(x, kind, *, scale=None, bias=None, ct=None, eps=1e-5, groups=1, axis=-1, mode="standard"):
    """Reference output ``y`` (and ``dx`` of ``Σ ct·y`` when ``ct`` is given), the per-row mean and variance.

    ``mode``: 'standard' (x − μ)/√(σ² + ε); 'rms' x/√(mean(x²) + ε); 'lp2' (x − μ)/√(mean(x²) + ε)."""
    x = np.asarray(x, np.float64)
    to, back = rows(x.shape, kind, groups=groups, axis=axis)
    xr = to(x)
    mu = xr.mean(1, keepdims=True)
    var = ((xr - mu) ** 2).mean(1, keepdims=True)
    ms = (xr**2).mean(1, keepdims=True)
    if mode == "standard":
        r = 1 / np.sqrt(var + eps)
        xh = (xr - mu) * r
    elif mode == "rms":
        r = 1 / np.sqrt(ms + eps)
        xh = xr * r
    else:
        r = 1 / np.sqrt(ms + eps)
        xh = (xr - mu) * r
    gam = np.ones(x.shape) if scale is None else per_channel(scale, x.shape, axis)
    bet = np.zeros(x.shape) if bias is None else per_channel(bias, x.shape, axis)
    y = back(xh) * gam + bet
    out = {"y": y, "mean": mu[:, 0], "var": var[:, 0]}
    if ct is not None:
        g = to(np.asarray(ct, np.float64) * gam)
        gm = g.mean(1, keepdims=True)
        if mode == "standard":
            dx = r * (g - gm - xh * (g * xh).mean(1, keepdims=True))
        elif mode == "rms":
            dx = r * (g - xh * (g * xh).mean(1, keepdims=True))
        else:  # y = (x − μ)·r, r = (mean(x²) + ε)^(−1/2): ∂/∂x_j = r(g_j − ḡ) − r³ x_j mean(g·(x − μ))
            dx = r * (g - gm) - r**3 * xr * (g * (xr - mu)).mean(1, keepdims=True)
        out["dx"] = back(dx)
    return out


def rand(shape, seed=0, loc=0.0, scale=1.0):
    """float32 normal inputs, drawn with numpy (no per-shape compilation of jax.random in eager mode)."""
    import jax.numpy as jnp

    return jnp.asarray(loc + scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def close(a, b, tol=1e-5, atol=None):
    """``a`` and ``b`` equal to ``tol`` (relative) and ``atol`` (default ``tol``), compared in float64."""
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol if atol is None else atol
    )


def f64(a):
    return np.asarray(a, np.float64)
