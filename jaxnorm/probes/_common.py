"""Shared helpers of the probes: the random direction, device reductions, chunked maps, argument checks."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jax.tree_util import PyTreeDef

from jaxnorm import _checks

PyTree = Any
LossFn = Callable[[PyTree, PyTree], jax.Array]


def tree_normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    """Standard normal entries shaped like ``tree``: ONE float32 draw of the total size, cut into the leaves (and
    cast to their dtypes).

    Not ``optax.tree_utils.tree_random_like``, which draws once per leaf (other numbers for the same key) and
    compiles to a larger program (see benchmarks/ for the figures)."""
    flat, unravel = ravel_pytree(tree)
    return unravel(jax.random.normal(key, flat.shape, jnp.float32).astype(flat.dtype))


# ---- the loss and its gradient, averaged over a device axis --------------------------------------------------------


def pmean(tree: PyTree, axis_name: str | None) -> PyTree:
    return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def value_and_grad(loss_fn: LossFn, axis_name: str | None = None) -> Callable:
    """``(params, batch) -> (loss, grads)``; with ``axis_name`` both are ``pmean``'d over the devices of the axis (the
    loss_fn returns its device-local mean, so the result is the global mean for equal shards)."""

    def f(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        return pmean((loss, grads), axis_name)

    return f


def loss_value(loss_fn: LossFn, axis_name: str | None = None) -> Callable:
    return lambda params, batch: pmean(loss_fn(params, batch), axis_name)


def grad(loss_fn: LossFn, axis_name: str | None = None) -> Callable:
    return lambda params, batch: pmean(jax.grad(loss_fn)(params, batch), axis_name)


# ---- checks ---------------------------------------------------------------------------------------------------------


def structure(tree: PyTree) -> PyTreeDef:
    """``jax.tree.structure(tree)``, annotated: jax's own stub leaves its return type unresolved for type checkers,
    so comparing two structures would not type-check."""
    return jax.tree.structure(tree)


def check_scalar_loss(where: str, loss_fn: LossFn, params: PyTree, batch: PyTree) -> None:
    """A ValueError unless ``loss_fn(params, batch)`` is a real scalar (checked abstractly: nothing runs)."""
    try:
        out = jax.eval_shape(loss_fn, params, batch)
    except TypeError:  # eval_shape refuses some exotic inputs; the jitted call will surface real errors
        return
    if not hasattr(out, "shape") or structure(out).num_leaves != 1:
        raise ValueError(
            f"{where}: loss_fn(params, batch) must return one scalar array, got {out!r}; "
            "return only the loss (drop aux outputs, e.g. `lambda p, b: f(p, b)[0]`)"
        )
    if out.shape != ():
        raise ValueError(
            f"{where}: loss_fn(params, batch) must return a scalar, got shape {tuple(out.shape)} "
            f"({out.dtype}); reduce it, e.g. `jnp.mean(per_example_losses)`"
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(f"{where}: loss_fn must return a floating scalar to be differentiated, got {out.dtype}")


def check_key(where: str, key, what: str) -> jax.Array:
    if key is None:
        raise ValueError(
            f"{where}: {what} needs a PRNG key; pass key=jax.random.key(0) (the same key on every "
            "device under pmap, so all devices draw the same vectors)"
        )
    return key


#: Sequential groups up to this many are unrolled into straight-line code on CPU (see :func:`map_chunked`).
MAX_UNROLL = 32


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def resolve_chunk(chunk):
    """``'auto'``: 1 (one evaluation at a time) on CPU, None (all at once in one vmap) on accelerators."""
    if isinstance(chunk, str):
        return 1 if on_cpu() else None
    return chunk


def map_chunked(f: Callable, xs, chunk, unroll: bool | None = None):
    """``[f(x) for x in xs]`` stacked, inside one compiled program.

    * ``chunk=None`` (or ≥ len(xs)): one ``vmap`` over all of xs.
    * ``chunk=c``: groups of ``c`` vmapped evaluations (``c = 1``: plain calls), the groups one after another
      (bounded memory: one group lives at once).
    * ``chunk='auto'``: 1 on CPU, None elsewhere.

    Sequential groups run as straight-line code (``unroll=True``) or in a ``lax.scan`` loop (``unroll=False``). The
    default unrolls on CPU when there are at most ``MAX_UNROLL`` groups: XLA:CPU runs convolution gradients inside
    loop bodies several times slower than outside (jax-ml/jax#12868), while unrolled
    code costs compile time proportional to the number of groups.
    """
    chunk = resolve_chunk(chunk)
    n = jax.tree.leaves(xs)[0].shape[0]
    if chunk is None or chunk >= n:
        return jax.vmap(f)(xs)
    groups, rem = divmod(n, chunk)
    body = f if chunk == 1 else jax.vmap(f)
    head = jax.tree.map(
        lambda x: x[: groups * chunk].reshape((groups, chunk) + x.shape[1:]) if chunk > 1 else x[:groups], xs
    )
    if unroll is None:
        unroll = on_cpu() and groups <= MAX_UNROLL
    if unroll:
        outs = [body(jax.tree.map(lambda x, i=i: x[i], head)) for i in range(groups)]
        ys = jax.tree.map(lambda *o: jnp.stack(o), *outs)
    else:
        ys = jax.lax.scan(lambda c, x: (c, body(x)), None, head)[1]
    if chunk > 1:
        ys = jax.tree.map(lambda y: y.reshape((groups * chunk,) + y.shape[2:]), ys)
    if rem:
        tail = jax.vmap(f)(jax.tree.map(lambda x: x[groups * chunk :], xs))
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, tail)
    return ys


def check_chunk(where: str, chunk):
    if chunk is None or chunk == "auto":
        return chunk
    return _checks.check_positive_int(where, "chunk", chunk)


# The probes choose their execution plan themselves (see each probe's docstring): a host loop of compiled steps when
# called eagerly on CPU, one program when traced or on an accelerator, straight-line code for up to MAX_UNROLL groups
# on CPU. Tests and benchmarks force a plan with `execution(...)`; it is not public API.
_EXECUTION: contextvars.ContextVar[dict] = contextvars.ContextVar("jaxnorm_probes_execution", default={})  # noqa: B039
KNOBS = {"loop": "auto", "unroll": None, "group": 1}


@contextlib.contextmanager
def execution(**knobs) -> Iterator[None]:
    """Force the probes' execution plan inside the block: ``loop`` (``'auto'``, ``'host'``, ``'device'``),
    ``unroll`` (None, True, False) and ``group`` (the Santurkar host loop's evaluations per call)."""
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise ValueError(f"execution: unknown knobs {unknown}; choose from {sorted(KNOBS)}")
    token = _EXECUTION.set({**_EXECUTION.get(), **knobs})
    try:
        yield
    finally:
        _EXECUTION.reset(token)


def knob(name: str):
    """The execution plan's ``name`` in force (its automatic default outside :func:`execution`)."""
    return _EXECUTION.get().get(name, KNOBS[name])


def planned(fn: Callable, **knobs) -> Callable:
    """``fn`` called under :func:`execution` with ``knobs`` (tests and benchmarks compare the plans)."""

    def call(*args, **kwargs):
        with execution(**knobs):
            return fn(*args, **kwargs)

    return call
