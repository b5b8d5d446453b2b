"""Invariance properties of normalization methods, measured (Ba et al. 2016, §5.1 and Table 1).

A dense layer ``a = x W`` (``x``: N×D inputs, ``W``: D×H, column ``w_h`` the incoming weights of unit ``h``) followed by
a normalization ``y = norm(a)``. Each transformation changes the weights or the data; the normalized output is
invariant when ``y`` does not change (up to the ε in the denominator):

- weight matrix re-scaling ``W → δW``;
- weight matrix re-centering ``W → W + γ 1ᵀ`` (the same vector γ added to every unit's incoming weights, so every
  summed input of one example shifts by the same ``xᵀγ``);
- weight vector re-scaling ``w_1 → δ w_1`` (one unit);
- dataset re-scaling ``x → δx`` (every example), dataset re-centering ``x → x + γ``;
- single training case re-scaling ``x_1 → δ x_1`` (one example).

Ba et al.'s Table 1: batch norm is invariant to all but weight matrix re-centering and single-case re-scaling; layer
norm to all but weight vector re-scaling and dataset re-centering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnorm import norms as _norms

TRANSFORMS = (
    "weight_matrix_rescaling",
    "weight_matrix_recentering",
    "weight_vector_rescaling",
    "dataset_rescaling",
    "dataset_recentering",
    "single_case_rescaling",
)

# Ba et al. (2016), Table 1 (True = invariant)
PAPER_TABLE = {
    "batch": (True, False, True, True, True, False),
    "layer": (True, True, False, True, False, True),
}


def _norm_fn(name: str, num_groups: int, epsilon: float):
    if name == "batch":
        return lambda a: _norms.batch_norm(
            a, None, None, _norms.init_batch_stats(a.shape[-1]), train=True, epsilon=epsilon
        )[0]
    if name == "layer":
        return lambda a: _norms.layer_norm(a, epsilon=epsilon)
    if name == "group":
        return lambda a: _norms.group_norm(a, num_groups=num_groups, epsilon=epsilon)
    if name == "rms":
        return lambda a: _norms.rms_norm(a, epsilon=epsilon)
    raise ValueError(f"norm_invariances: unknown norm {name!r}; choose from batch, layer, group, rms")


def transform(name: str, x: jax.Array, w: jax.Array, *, key: jax.Array, delta: float = 3.7):
    """``(x', W')``: the inputs and weights after the transformation ``name`` (one of ``TRANSFORMS``)."""
    gamma = jax.random.normal(key, (x.shape[-1],), x.dtype)
    if name == "weight_matrix_rescaling":
        return x, delta * w
    if name == "weight_matrix_recentering":
        return x, w + gamma[:, None]
    if name == "weight_vector_rescaling":
        return x, w.at[:, 0].multiply(delta)
    if name == "dataset_rescaling":
        return delta * x, w
    if name == "dataset_recentering":
        return x + gamma, w
    if name == "single_case_rescaling":
        return x.at[0].multiply(delta), w
    raise ValueError(f"transform: unknown transformation {name!r}; choose from {TRANSFORMS}")


def norm_invariances(
    norms=("batch", "layer", "group", "rms"),
    *,
    key: jax.Array | None = None,
    n: int = 64,
    d: int = 32,
    h: int = 16,
    num_groups: int = 4,
    delta: float = 3.7,
    epsilon: float = 1e-10,
) -> dict[str, dict[str, float]]:
    """Measures which weight and data transformations each normalization's output is invariant to.

    Formula: for a dense layer ``a = x W`` (``x``: N×D, ``W``: D×H) followed by ``y = norm(a)``, and each
    transformation of ``INVARIANCE_TRANSFORMS`` giving ``(x′, W′)``, the change ``max_i |y′_i − y_i|`` with
    ``y′ = norm(x′ W′)``. The outputs have unit scale: a change of order 1 means "not invariant", one near float32
    round-off means invariant.

    Reduces over: every entry of the N×H output (the maximum).

    Reference: Ba, Kiros & Hinton (2016), Layer Normalization (§5.1, Table 1).

    Args:
      norms: names among ``'batch'``, ``'layer'``, ``'group'``, ``'rms'``.
      key: PRNG key of the data, weights and transformations (default ``jax.random.key(0)``).
      n: examples N.
      d: inputs D.
      h: units H.
      num_groups: groups of group norm.
      delta: the re-scaling factor δ.
      epsilon: the normalizations' ε, tiny so that it does not blur the answer.

    Returns:
      ``{norm: {transform: max change}}`` of Python floats.

    Raises:
      ValueError: an unknown norm name.

    Examples:
    >>> import jaxnorm.probes as jp
    >>> table = jp.norm_invariances(('batch', 'layer'), n=16, d=8, h=4)
    >>> {t: table['batch'][t] < 1e-4 for t in ('weight_matrix_rescaling', 'single_case_rescaling')}
    {'weight_matrix_rescaling': True, 'single_case_rescaling': False}
    >>> {t: table['layer'][t] < 1e-4 for t in ('weight_vector_rescaling', 'single_case_rescaling')}
    {'weight_vector_rescaling': False, 'single_case_rescaling': True}
    """
    key = jax.random.key(0) if key is None else key
    kx, kw, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d), jnp.float32) + 0.5
    w = jax.random.normal(kw, (d, h), jnp.float32) / jnp.sqrt(d)
    out = {}
    for name in norms:
        f = _norm_fn(name, num_groups, epsilon)
        y = f(x @ w)
        row = {}
        for t in TRANSFORMS:
            x2, w2 = transform(t, x, w, key=kt, delta=delta)
            row[t] = float(jnp.max(jnp.abs(f(x2 @ w2) - y)))
        out[name] = row
    return out
