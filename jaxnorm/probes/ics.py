"""Internal covariate shift, Santurkar et al. (2018) Definition 2.1."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from jaxnorm import _checks
from jaxnorm.probes import _common as C
from jaxnorm.probes import operators as O


def _top_level_names(where: str, params) -> list:
    if not isinstance(params, Mapping) or not params:
        raise ValueError(
            f"{where}: params must be a non-empty mapping of layer name → parameters (a Flax 'params' "
            f"collection), got {type(params).__name__}"
        )
    return list(params.keys())


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _sub_jaxpr(eqn):
    """The one inner jaxpr whose inputs are the equation's inputs, position by position (jit, custom_jvp/vjp calls,
    remat, scan), else None (cond, while: their operands do not map one to one)."""
    found = []
    for v in eqn.params.values():
        for j in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(j, jcore.ClosedJaxpr):
                found.append(j.jaxpr)
            elif isinstance(j, jcore.Jaxpr):
                found.append(j)
    if len(found) == 1 and len(found[0].invars) == len(eqn.invars):
        return found[0]
    return None


def layer_order(loss_fn: C.LossFn, params, batch, *, axis_name: str | None = None) -> tuple:
    """The top-level keys of ``params`` in forward order: the order in which the loss first reads each layer.

    Found by tracing ``loss_fn(params, batch)`` to a jaxpr and walking its equations (the inner jaxprs of jit,
    custom_jvp and scan included; nothing runs). Keys the loss never reads come last, in ``params``' order; ties
    (two layers first read by one opaque equation) keep ``params``' order. Why not the dict order: Flax creates
    ``params`` in call order, but every ``jax.tree.map`` (an optimizer update) returns dicts with sorted keys.
    Cached per ``(loss_fn, shapes)``.

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar``.
      params: a non-empty mapping of layer name → parameters.
      batch: one batch (a list of batches or a :func:`jaxnorm.probes.dataset` is refused).
      axis_name: the device axis name the loss uses (``pmean``, ``psum``), bound to one device while tracing.

    Returns:
      A tuple of the keys.

    Raises:
      ValueError: ``params`` is not a non-empty mapping; ``batch`` is a list of batches or a data set (pass one
        batch).

    Examples:

    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                 # a two-layer linear model, 'body' then 'head'
    ...     h = batch['x'] @ params['body']
    ...     return jnp.mean((h @ params['head'] - batch['y']) ** 2)
    >>> params = {'head': jnp.array([[1.0], [-1.0]]), 'body': jnp.eye(3, 2)}   # keys not in forward order
    >>> batch = {'x': jnp.arange(12.0).reshape(4, 3) / 10, 'y': jnp.ones((4, 1))}
    >>> jp.layer_order(loss_fn, params, batch)
    ('body', 'head')
    """
    batch = O.as_batch("layer_order", batch, data_set=False)
    names = _top_level_names("layer_order", params)
    pl, pt = jax.tree.flatten(_abstract(params))
    bl, bt = jax.tree.flatten(_abstract(batch))
    return _layer_order(loss_fn, tuple(names), tuple(pl), pt, tuple(bl), bt, axis_name)


@functools.lru_cache(maxsize=64)
def _layer_order(loss_fn, names, param_leaves, param_tree, batch_leaves, batch_tree, axis_name) -> tuple:
    params = jax.tree.unflatten(param_tree, param_leaves)
    batch = jax.tree.unflatten(batch_tree, batch_leaves)
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    leaf_layer = [path[0].key if hasattr(path[0], "key") else path[0] for path, _ in flat]
    axis_env = [(axis_name, 1)] if axis_name is not None else None
    closed = jax.make_jaxpr(loss_fn, axis_env=axis_env)(params, batch)
    env = {v: layer for v, layer in zip(closed.jaxpr.invars[: len(leaf_layer)], leaf_layer)}
    first: dict = {}
    clock = [0]

    def walk(jaxpr, env):
        for eqn in jaxpr.eqns:
            sub = _sub_jaxpr(eqn)
            if sub is not None:
                inner = {
                    iv: env[ov] for ov, iv in zip(eqn.invars, sub.invars) if isinstance(ov, jcore.Var) and ov in env
                }
                if inner:
                    walk(sub, inner)
            else:
                for v in eqn.invars:
                    if isinstance(v, jcore.Var) and v in env and env[v] not in first:
                        first[env[v]] = clock[0]
            clock[0] += 1

    walk(closed.jaxpr, env)
    rank = {n: i for i, n in enumerate(names)}
    return tuple(sorted(names, key=lambda n: (first.get(n, float("inf")), rank[n])))


def _resolve_layers(where: str, params, order, layers, loss_fn, batch, axis_name) -> tuple[tuple, tuple]:
    names = _top_level_names(where, params)
    if order is None:
        order = layer_order(loss_fn, params, batch, axis_name=axis_name)
    else:
        order = tuple(order)
        unknown = [n for n in order if n not in params]
        missing = [n for n in names if n not in order]
        dup = sorted({n for n in order if order.count(n) > 1}, key=str)
        if unknown or missing or dup:
            raise ValueError(
                f"{where}: order must list every top-level parameter key exactly once; "
                f"unknown {unknown}, missing {missing}, repeated {dup}; the keys are {names}"
            )
    if layers is None:
        layers = order
    else:
        if isinstance(layers, str):
            layers = (layers,)
        if not len(layers):
            raise ValueError(f"{where}: layers is empty; name at least one of {list(order)} (or None for all)")
        bad = [n for n in layers if n not in params]
        if bad:
            raise ValueError(
                f"{where}: no layer named {', '.join(map(repr, bad))}; valid layer names (top-level "
                f"parameter keys, forward order) are {list(order)}"
            )
        layers = tuple(n for n in order if n in set(layers))  # reported in forward order, without repeats
    return tuple(order), layers


@functools.partial(
    jax.jit, static_argnames=("loss_fn", "order", "layers", "update_fn", "tx", "chunk", "unroll", "axis_name")
)
def _ics(loss_fn, params, batch, lr, opt_state, *, order, layers, update_fn, tx, chunk, unroll, axis_name):
    C.check_scalar_loss("internal_covariate_shift", loss_fn, params, batch)
    grad = C.grad(loss_fn, axis_name)
    g = grad(params, batch)
    if tx is not None:
        new = optax.apply_updates(params, tx.update(g, opt_state, params)[0])
    elif update_fn is not None:
        new = update_fn(params, g)
    else:
        new = otu.tree_add_scale(params, -jnp.asarray(lr, jnp.float32), g)
    if jax.tree.structure(new) != jax.tree.structure(params):
        raise ValueError(
            "internal_covariate_shift: update_fn(params, grads) must return a pytree shaped like params, "
            f"got {jax.tree.structure(new)} vs {jax.tree.structure(params)}"
        )
    pos = {n: i for i, n in enumerate(order)}
    num = len(order)
    # position (in forward order) of the layer each leaf belongs to
    leaf_pos = jax.tree_util.tree_map_with_path(
        lambda path, _: pos[path[0].key if hasattr(path[0], "key") else path[0]], params
    )

    def per_layer(tree, f):  # per-layer sums of f(leaf, ...) as a vector ordered like `order`
        out = [jnp.zeros((), jnp.float32)] * num
        for i, v in zip(jax.tree.leaves(leaf_pos), jax.tree.leaves(tree)):
            out[i] = out[i] + f(v)
        return jnp.stack(out)

    g_sq = per_layer(g, lambda x: jnp.vdot(x, x).astype(jnp.float32))
    targets = [n for n in layers if pos[n] > 0]  # the first layer has G' = G by definition
    l2 = {n: jnp.zeros((), jnp.float32) for n in layers}
    cos = {n: jnp.ones((), jnp.float32) for n in layers}
    gp_norm = {n: jnp.sqrt(g_sq[pos[n]]) for n in layers}
    if targets:
        cut = np.asarray([pos[t] for t in targets], np.int32)  # variant v: layers before cut[v] take their update

        def shifted(c):
            p = jax.tree.map(lambda w, w_new, i: jnp.where(i < c, w_new, w).astype(w.dtype), params, new, leaf_pos)
            gp = grad(p, batch)
            stats = [
                per_layer(otu.tree_sub(g, gp), lambda x: jnp.vdot(x, x).astype(jnp.float32)),
                per_layer(jax.tree.map(lambda a, b: jnp.vdot(a, b), g, gp), lambda x: x.astype(jnp.float32)),
                per_layer(gp, lambda x: jnp.vdot(x, x).astype(jnp.float32)),
            ]
            return jnp.stack([s[c] for s in stats])  # only layer cut's own entries: (diff², G·G', ‖G'‖²)

        res = C.map_chunked(shifted, jnp.asarray(cut), chunk, unroll)  # (V, 3)
        for v, t in enumerate(targets):
            d2, dot, gp2 = res[v, 0], res[v, 1], res[v, 2]
            l2[t] = jnp.sqrt(d2)
            cos[t] = dot / (jnp.sqrt(g_sq[pos[t]]) * jnp.sqrt(gp2))
            gp_norm[t] = jnp.sqrt(gp2)
    return {
        "l2": l2,
        "cos": cos,
        "grad_norm": {n: jnp.sqrt(g_sq[pos[n]]) for n in layers},
        "grad_norm_shifted": gp_norm,
    }


def internal_covariate_shift(
    loss_fn: C.LossFn,
    params,
    batch,
    *,
    lr=None,
    layers: Sequence | str | None = None,
    order: Sequence | None = None,
    update_fn: Callable | None = None,
    tx: optax.GradientTransformation | None = None,
    opt_state=None,
    chunk: int | str | None = "auto",
    axis_name: str | None = None,
) -> dict:
    """Internal covariate shift of each layer (Santurkar et al. 2018, Definition 2.1) on one batch.

    Formula: layers are the top-level keys of ``params`` in forward order ``W_1 … W_k``; with
    ``W^(t+1) = update(W^t, ∇L(W^t))``, for layer ``i``::

        G  = ∇_(W_i) L(W_1^t, …, W_k^t)
        G′ = ∇_(W_i) L(W_1^(t+1), …, W_(i−1)^(t+1), W_i^t, …, W_k^t)     (the earlier layers already updated)

    and the probe reports ``‖G − G′‖₂`` and ``cos(G, G′)``. The first layer has nothing before it: ``G′ = G``
    (0 and 1 exactly).

    Reduces over: each layer's parameters (the norms and cosines); ``L`` is the loss's own mean over the batch.

    Execution: sequential groups of ``chunk`` points run as straight-line code on CPU for up to 32 groups, else in
    a ``lax.scan`` loop.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization?
    (Definition 2.1, Fig. 3).

    Args:
      loss_fn: ``loss_fn(params, batch) -> scalar`` (see :func:`jaxnorm.probes.model_loss_fn`).
      params: a mapping of layer name → parameter pytree; never modified.
      batch: the second argument of ``loss_fn`` (the same batch for G and G′); one batch: a list of batches or a
        :func:`jaxnorm.probes.dataset` raises a ValueError.
      lr: the SGD step ``W − lr·∇L`` (Santurkar et al. use plain SGD); ignored with ``update_fn`` or ``tx``.
      layers: names of the layers to report (default: all). Every earlier layer in forward order takes its
        update, reported or not.
      order: the forward order as a list of all top-level keys; default: inferred by :func:`layer_order`.
      update_fn: any ``update_fn(params, grads) -> new params`` instead of SGD; part of the compiled program's
        cache key, so keep the same object between calls.
      tx: update with an optax optimizer instead: ``optax.apply_updates(W, tx.update(∇L, opt_state, W)[0])`` (the
        new optimizer state is discarded); the compiled program is cached per ``tx`` object.
      opt_state: the optimizer state for ``tx`` (may change between calls).
      chunk: how the shifted gradients are evaluated, as in :func:`jaxnorm.probes.santurkar_probe` (``'auto'``: one
        at a time on CPU, all in one ``vmap`` on accelerators).
      axis_name: device axis under pmap/shard_map: gradients are ``pmean``'d over it.

    Returns:
      ``{'l2': {layer: ‖G−G′‖}, 'cos': {layer: cos(G, G′)}, 'grad_norm': {layer: ‖G‖}, 'grad_norm_shifted':
      {layer: ‖G′‖}}`` for the reported layers, in forward order. Cost: 1 + (number of reported layers that are
      not first) gradient evaluations.

    Raises:
      ValueError: ``params`` not a non-empty mapping; an ``order`` that does not list every key once; unknown or
        empty ``layers``; both ``tx`` and ``update_fn``; ``tx`` without ``opt_state``; no ``lr`` (without
        ``update_fn``/``tx``) or a non-positive one; a bad ``chunk``; a list of batches or a data set;
        ``update_fn`` returning another structure.

    Examples:

    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> def loss_fn(params, batch):                 # a two-layer linear model, 'body' then 'head'
    ...     h = batch['x'] @ params['body']
    ...     return jnp.mean((h @ params['head'] - batch['y']) ** 2)
    >>> params = {'head': jnp.array([[1.0], [-1.0]]), 'body': jnp.eye(3, 2)}   # keys not in forward order
    >>> batch = {'x': jnp.arange(12.0).reshape(4, 3) / 10, 'y': jnp.ones((4, 1))}
    >>> ics = jp.internal_covariate_shift(loss_fn, params, batch, lr=0.1)
    >>> list(ics['l2'])                                       # forward order
    ['body', 'head']
    >>> float(ics['l2']['body']), float(ics['cos']['body'])   # the first layer: G′ = G
    (0.0, 1.0)
    >>> bool(ics['l2']['head'] > 0)
    True
    """
    unroll = C.knob("unroll")
    where = "internal_covariate_shift"
    batch = O.as_batch(where, batch, data_set=False)
    order, layers = _resolve_layers(where, params, order, layers, loss_fn, batch, axis_name)
    if tx is not None and update_fn is not None:
        raise ValueError(f"{where}: pass tx= (with opt_state=) or update_fn=, not both")
    if tx is not None and opt_state is None:
        raise ValueError(f"{where}: tx= needs the optimizer state opt_state= (e.g. state.opt_state or tx.init(params))")
    if tx is not None or update_fn is not None:
        lr = None
    else:
        if lr is None:
            raise ValueError(f"{where}: pass lr= (the SGD update W − lr·∇L of Definition 2.1) or update_fn=")
        if _checks.is_concrete(lr) and not float(lr) > 0:
            raise ValueError(f"{where}: lr must be positive, got {float(lr)!r}")
        if not isinstance(lr, jax.Array):
            lr = np.float32(lr)
    chunk = C.check_chunk(where, chunk)
    return _ics(
        loss_fn,
        params,
        batch,
        lr,
        opt_state if tx is not None else None,
        order=order,
        layers=layers,
        update_fn=update_fn,
        tx=tx,
        chunk=chunk,
        unroll=unroll,
        axis_name=axis_name,
    )
