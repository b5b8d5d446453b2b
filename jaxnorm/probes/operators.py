"""The curvature operators the probes iterate on: the Hessian, the generalized Gauss–Newton (GGN) and the true and
empirical Fisher, of one batch or averaged over a data set, on all parameters or a subset.

* **Operators** (``operator=``), with ``L(w) = Σ_i c_i ℓ(f(w, x_i), y_i)`` (``c_i = mask_i / Σ mask``), outputs
  ``z_i = f(w, x_i)`` and ``J_i = ∂z_i/∂w``:

  - ``'hessian'``: ``H = ∇²_w L`` (forward-over-reverse differentiation).
  - ``'ggn'``: ``G = Σ_i c_i J_iᵀ ∇²_z ℓ_i J_i`` (Schraudolph 2002; Martens 2020, §8): the Hessian without the
    term of the model's own second derivatives; positive semi-definite for a convex ℓ; ``G = H`` for a model
    linear in ``w`` under least squares.
  - ``'fisher'`` (true Fisher): ``F = Σ_i c_i J_iᵀ E_{y~p(y|z_i)}[∇_z log p ∇_z log pᵀ] J_i``, in closed form:
    ``diag(p) − p pᵀ`` with ``p = softmax(z)`` for cross-entropy, ``2 I`` for ``'mse'`` (``‖z − y‖²`` is the
    negative log-likelihood of a Gaussian with variance ½). Equals the GGN for both (canonical links; Martens
    2020, §9.2), computed independently of it.
  - ``'empirical_fisher'``: ``F̂ = Σ_i c_i ∇_w ℓ_i ∇_w ℓ_iᵀ``, the gradient outer products at the observed labels
    (Kunstner et al. 2019 on why it is not the Fisher).

  The GGN and Fisher need the loss split as ``ℓ(f(w, x))``: the loss functions of :func:`model_loss_fn`,
  :func:`model_state_loss_fn`, :func:`nnx_loss_fn` and :func:`eqx_loss_fn` are :class:`SplitLoss` objects; build one
  for any model with ``SplitLoss(outputs_fn, 'cross_entropy')``.
* **Data sets** (:func:`dataset`): a batch argument made of ``B`` equal-shaped batches stacked along a leading axis.
  Every curvature probe given one uses the average operator ``M = (1/B) Σ_b M_b`` (PyHessian's data-loader mode):
  each product runs the batches one after another (the activations of one batch live at a time). Arrays sharded
  along their batch axis over a mesh of ``AxisType.Auto`` axes (``NamedSharding(mesh, P(None, 'batch'))``, the
  mesh of jaxnorm's ``parallel='global'``) make each batch's product run on all the devices (global-view ``jit``;
  XLA inserts the reductions).
* **Parameter subsets** (``params_filter=``): the operator restricted to the selected leaves (the diagonal block
  ``M_SS``), the others held fixed: a list of layer names (a leaf is selected when its path, keys joined by ``/``,
  is a name or starts with ``name/``) or a predicate ``f(path, leaf) -> bool``. Eigenvectors come back shaped like
  ``params`` with ``None`` for the leaves left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxnorm.losses import per_example_loss
from jaxnorm.probes import _common as C

OPERATORS = ("hessian", "ggn", "fisher", "empirical_fisher")


# ---- data sets -------------------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class Dataset:
    """A data set for the probes: ``B`` batches of equal shapes stacked along a leading axis.

    A probe given a ``Dataset`` as its batch averages over its batches: the curvature probes use the average
    operator ``M = (1/B) Σ_b M_b`` and :func:`jaxnorm.probes.santurkar_probe` the average loss and gradient, one
    batch's activations at a time. Build it with :func:`dataset` (or pass a plain list of batches, which the probes
    turn into one). A pytree: it passes through ``jax.jit``.

    Args:
      stacked: the pytree of one batch whose arrays have the batch index as their leading axis (``B × …``).

    Examples:
    >>> import numpy as np
    >>> import jaxnorm.probes as jp
    >>> ds = jp.Dataset({'x': np.zeros((3, 8, 2)), 'y': np.zeros((3, 8))})
    >>> ds, ds.num_batches, ds.batch(0)['x'].shape
    (Dataset(3 batches), 3, (8, 2))
    """

    def __init__(self, stacked):
        self.stacked = stacked

    @property
    def num_batches(self) -> int:
        """The number of batches ``B`` (the leading axis of the stacked arrays).

        Returns:
          An int.
        """
        return int(jax.tree.leaves(self.stacked)[0].shape[0])

    def batch(self, b: int):
        """Batch ``b``: every stacked array indexed at ``b`` along its leading axis.

        Args:
          b: the batch index, ``0 ≤ b < num_batches``.

        Returns:
          A pytree shaped like one batch.
        """
        return jax.tree.map(lambda x: x[b], self.stacked)

    def tree_flatten(self):
        return (self.stacked,), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(children[0])

    def __repr__(self):
        return f"Dataset({self.num_batches} batches)"


def dataset(batches: Iterable | Any, *, stacked: bool = False) -> Dataset:
    """A :class:`Dataset` of ``batches``: the data-set form of a probe's batch argument.

    Formula: ``stacked = tree_map(stack, *batches)``; a probe then averages over the batches, ``(1/B) Σ_b f(batch_b)``
    (the curvature probes: the operator; :func:`jaxnorm.probes.santurkar_probe`: the loss and gradient). A plain
    ``list`` of batches passed to a probe is turned into ``dataset(list)``, with the same result. Device arrays stay
    on their devices; host arrays stay on the host until a probe's program takes them.

    Reference: Yao, Gholami, Keutzer & Mahoney (2020), PyHessian: Neural Networks Through the Lens of the Hessian
    (its data-loader mode).

    Args:
      batches: a list (or any iterable) of batches of equal structure and shapes; or, with ``stacked=True``, one
        pytree whose arrays already have the batch index as their leading axis (e.g. device arrays sharded along
        axis 1).
      stacked: whether ``batches`` is already stacked.

    Returns:
      A :class:`Dataset`.

    Raises:
      ValueError: no batches; batches of different structures or shapes (a short last batch: drop it, or pad it
        and mark the padding in a ``'mask'``); with ``stacked=True``, a scalar leaf or leaves with different
        numbers of batches.

    Examples:
    >>> import numpy as np
    >>> import jaxnorm.probes as jp
    >>> batches = [{'x': np.ones((8, 2)), 'y': np.zeros(8)} for _ in range(4)]
    >>> ds = jp.dataset(batches)
    >>> ds, ds.stacked['x'].shape
    (Dataset(4 batches), (4, 8, 2))
    """
    if stacked:
        leaves = jax.tree.leaves(batches)
        if not leaves or any(np.ndim(x) == 0 for x in leaves):
            raise ValueError("dataset(stacked=True): every array needs a leading batch-index axis")
        sizes = {np.shape(x)[0] for x in leaves}
        if len(sizes) != 1:
            raise ValueError(f"dataset(stacked=True): the arrays have different numbers of batches {sorted(sizes)}")
        return Dataset(batches)
    items = list(batches)
    if not items:
        raise ValueError("dataset: no batches given; pass a list of at least one batch")
    first = jax.tree.structure(items[0])
    shapes = [tuple(np.shape(x) for x in jax.tree.leaves(b)) for b in items]
    for i, (b, s) in enumerate(zip(items, shapes)):
        if C.structure(b) != first or s != shapes[0]:
            raise ValueError(
                f"dataset: batch {i} has shapes {s}, batch 0 {shapes[0]}: the batches must have equal "
                "shapes (drop the short last batch, or pad it and mark the padding in a 'mask')"
            )
    # device arrays stay on the devices (a host copy would travel again with every compiled call); host arrays
    # stay on the host until a probe's program takes them
    stack = lambda *xs: jnp.stack(xs) if any(isinstance(x, jax.Array) for x in xs) else np.stack(xs)  # noqa: E731
    return Dataset(jax.tree.map(stack, *items))


def _is_batch_list(batch) -> bool:
    """Whether ``batch`` is a plain ``list`` that can only mean a data set: its elements all Mappings, or all of one
    pytree structure and not arrays (a ``list`` of arrays, like every ``tuple``, stays one batch)."""
    if type(batch) is not list or not batch:
        return False
    if all(isinstance(b, Mapping) for b in batch):
        return True
    if any(isinstance(b, (jax.Array, np.ndarray, np.generic, int, float, complex)) for b in batch):
        return False
    first = jax.tree.structure(batch[0])
    return all(C.structure(b) == first for b in batch[1:])


def as_batch(where: str, batch, *, data_set: bool = True):
    """The ``batch`` argument of a probe, normalized: a plain ``list`` of batches (see :func:`_is_batch_list`)
    becomes ``dataset(batch)``. With ``data_set=False`` (a probe that evaluates one batch) a list of batches or a
    :class:`Dataset` raises a ValueError."""
    is_list = _is_batch_list(batch)
    if not data_set and (is_list or isinstance(batch, Dataset)):
        what = f"a list of {len(batch)} batches" if is_list else repr(batch)
        raise ValueError(
            f"{where}: got {what}, but {where} evaluates one batch and cannot average over a data set; "
            "pass one batch (e.g. batches[0]); the probes that average over a data set (the curvature "
            "probes, santurkar_probe) take a list of batches or jp.dataset(batches)"
        )
    return dataset(batch) if is_list else batch


def first_batch(batch):
    """One batch (the first of a :class:`Dataset`): what shape checks evaluate."""
    return batch.batch(0) if isinstance(batch, Dataset) else batch


def mean_over_batches(f: Callable, batch):
    """``f(batch)``, or for a :class:`Dataset` ``(1/B) Σ_b f(batch_b)`` with one batch's ``f`` at a time:
    straight-line code on CPU up to ``C.MAX_UNROLL`` batches (XLA:CPU runs convolution gradients in loop bodies
    several times slower, jax-ml/jax#12868), a ``lax.scan`` otherwise."""
    if not isinstance(batch, Dataset):
        return f(batch)
    n = batch.num_batches
    if C.on_cpu() and n <= C.MAX_UNROLL:
        total = f(batch.batch(0))
        for b in range(1, n):
            total = jax.tree.map(jnp.add, total, f(batch.batch(b)))
    else:
        first = f(batch.batch(0))
        rest = jax.tree.map(lambda x: x[1:], batch.stacked)
        total, _ = jax.lax.scan(lambda acc, b: (jax.tree.map(jnp.add, acc, f(b)), None), first, rest)
    return jax.tree.map(lambda t: t / n, total)


# ---- losses split into model outputs and a loss of the outputs -------------------------------------------------------


class SplitLoss:
    """A loss split into the model's outputs and a loss of the outputs, for the GGN and Fisher operators.

    Formula: ``loss_fn(params, batch) = Σ_i c_i ℓ(z_i, y_i)`` with outputs ``z = outputs_fn(params, batch)``
    (examples on the leading axis) and weights ``c_i = mask_i / Σ mask`` (the masked mean). The GGN is then
    ``Σ_i c_i J_iᵀ ∇²_z ℓ_i J_i`` with ``J_i = ∂z_i/∂w``; see :mod:`jaxnorm.probes.operators`.

    Reduces over: the examples of the batch (the leading axis of the outputs), weighted by ``c_i``.

    Reference: Schraudolph (2002), Fast Curvature Matrix-Vector Products for Second-Order Gradient Descent;
    Martens (2020), New Insights and Perspectives on the Natural Gradient Method.

    Args:
      outputs_fn: ``outputs_fn(params, batch) -> z``.
      loss: ``'cross_entropy'`` (integer labels), ``'mse'`` or ``loss(z, y) -> per-example losses``.
      targets: ``targets(batch) -> (y, mask or None)``; default ``batch['y']`` and ``batch.get('mask')`` for a
        dict, or ``(x, y[, mask])``.
      value_fn: the loss value as the caller computes it (default: the masked mean above); kept so that wrapping
        an existing loss changes no number.
      axis_name: inside ``pmap``/``shard_map``, the device axis: the weights are the device's share of the global
        mean, as in :func:`jaxnorm.probes.model_loss_fn`.

    Examples:
    >>> import jax.numpy as jnp
    >>> import jaxnorm.probes as jp
    >>> loss_fn = jp.SplitLoss(lambda w, b: b['x'] @ w, 'mse')      # least squares: the GGN is the Hessian
    >>> batch = {'x': jnp.array([[1.0, 0.0], [1.0, 1.0]]), 'y': jnp.zeros((2,))}
    >>> w = jnp.array([1.0, -1.0])
    >>> round(float(loss_fn(w, batch)), 3)                          # mean of (1², 0²)
    0.5
    >>> g = jp.hvp(loss_fn, w, batch, jnp.array([1.0, 0.0]), operator='ggn')
    >>> h = jp.hvp(loss_fn, w, batch, jnp.array([1.0, 0.0]))
    >>> print(g, h)
    [2. 1.] [2. 1.]
    """

    def __init__(
        self,
        outputs_fn: Callable,
        loss: str | Callable = "cross_entropy",
        *,
        targets: Callable | None = None,
        value_fn: Callable | None = None,
        axis_name: str | None = None,
    ):
        self.outputs = outputs_fn
        self.loss = loss
        self.targets = targets or _targets
        self.axis_name = axis_name
        self._value = value_fn

    def weights(self, batch):
        """The weight ``c_i`` of each example in the loss.

        Formula: ``c_i = mask_i / Σ mask`` (all ones without a mask); under ``axis_name`` the device's share
        ``mask_i · D / Σ_devices mask`` (``D`` devices).

        Args:
          batch: one batch.

        Returns:
          A float32 array of shape ``(examples,)``.
        """
        y, mask = self.targets(batch)
        w = jnp.ones((np.shape(y)[0],), jnp.float32) if mask is None else mask.astype(jnp.float32)
        total = jnp.sum(w)
        if self.axis_name is not None:
            total = jax.lax.psum(total, self.axis_name) / jax.lax.psum(1.0, self.axis_name)
        return w / jnp.maximum(total, 1e-12)

    def per_example(self, outputs, batch):
        """The per-example losses ``ℓ(z_i, y_i)`` of ``outputs``, as float32.

        Args:
          outputs: the model's outputs ``z`` (examples on the leading axis).
          batch: the batch (its targets).

        Returns:
          A float32 array of shape ``(examples,)``.
        """
        y, _ = self.targets(batch)
        out = self.loss(outputs, y) if callable(self.loss) else per_example_loss(outputs, y, self.loss)
        return out.astype(jnp.float32)

    def output_loss(self, outputs, batch):
        """The loss as a function of the outputs, ``Σ_i c_i ℓ(z_i, y_i)`` (whose Hessian in ``z`` the GGN takes).

        Args:
          outputs: the model's outputs ``z``.
          batch: the batch (its targets and mask).

        Returns:
          A float32 scalar.
        """
        return jnp.sum(self.per_example(outputs, batch) * self.weights(batch))

    def __call__(self, params, batch):
        """The loss ``loss_fn(params, batch)``: ``value_fn`` if given, else ``output_loss(outputs_fn(params, batch))``.

        Args:
          params: the parameters.
          batch: one batch.

        Returns:
          A scalar.
        """
        if self._value is not None:
            return self._value(params, batch)
        return self.output_loss(self.outputs(params, batch), batch)


def _targets(batch):
    if isinstance(batch, dict):
        return batch["y"], batch.get("mask")
    return batch[1], batch[2] if len(batch) > 2 else None


def check_operator(where: str, operator: str, loss_fn) -> str:
    if operator not in OPERATORS:
        raise ValueError(f"{where}: operator must be one of {OPERATORS}, got {operator!r}")
    if operator != "hessian" and not isinstance(loss_fn, SplitLoss):
        raise ValueError(
            f"{where}: operator={operator!r} needs the loss split into model outputs and a loss of them; pass a "
            "jaxnorm.probes.SplitLoss(outputs_fn, 'cross_entropy') (model_loss_fn, model_state_loss_fn, nnx_loss_fn "
            f"and eqx_loss_fn return one), got {type(loss_fn).__name__}"
        )
    if operator == "fisher" and loss_fn.loss not in ("cross_entropy", "mse"):
        raise ValueError(
            f"{where}: operator='fisher' (the true Fisher) has a closed form for the 'cross_entropy' and "
            f"'mse' losses only, got loss={loss_fn.loss!r}; use operator='ggn' or 'empirical_fisher'"
        )
    return operator


def _output_operator(loss_fn: SplitLoss, operator: str, z, batch):
    """``u ↦ A u`` on the outputs ``z`` of one batch, ``A`` the operator's output-space matrix (block-diagonal over
    examples, each block weighted by ``c_i``)."""
    if operator == "ggn":
        g = jax.grad(lambda zz: loss_fn.output_loss(zz, batch))
        return lambda u: jax.jvp(g, (z,), (u,))[1]
    c = loss_fn.weights(batch)
    cw = lambda a: a * c.reshape((-1,) + (1,) * (a.ndim - 1))  # noqa: E731
    if operator == "empirical_fisher":  # Σ c_i e_i (e_i · u_i), e_i = ∇_z ℓ_i at the observed label
        e = jax.grad(lambda zz: jnp.sum(loss_fn.per_example(zz, batch)))(z)
        axes = tuple(range(1, z.ndim))
        return lambda u: cw(e * jnp.sum(e * u, axis=axes, keepdims=True))
    if loss_fn.loss == "mse":
        return lambda u: cw(2.0 * u)
    p = jax.nn.softmax(z.astype(jnp.float32), axis=-1)
    return lambda u: cw(p * u - p * jnp.sum(p * u, axis=-1, keepdims=True)).astype(z.dtype)


# ---- parameter subsets -----------------------------------------------------------------------------------------------


def leaf_paths(params) -> list[str]:
    """Each leaf's path, its keys joined by ``/`` (``conv_0/kernel``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [jax.tree_util.keystr(p, simple=True, separator="/") for p, _ in flat]


def in_layer(path: str, name: str) -> bool:
    """Whether the leaf at ``path`` belongs to the layer (or sub-tree) ``name``: the path is it or starts with it."""
    return path == name or path.startswith(name + "/")


def select(where: str, params, params_filter) -> tuple[bool, ...] | None:
    """The static mask of leaves ``params_filter`` selects (None: all); a ValueError when it selects none or names a
    layer ``params`` does not have."""
    if params_filter is None:
        return None
    paths = leaf_paths(params)
    leaves = jax.tree.leaves(params)
    if callable(params_filter):
        mask = tuple(bool(params_filter(p, x)) for p, x in zip(paths, leaves))
    else:
        names = [params_filter] if isinstance(params_filter, str) else list(params_filter)
        missing = [n for n in names if not any(in_layer(p, n) for p in paths)]
        if missing:
            tops = sorted({p.split("/")[0] for p in paths})
            raise ValueError(f"{where}: params_filter names {missing}, which are not in params; its layers are {tops}")
        mask = tuple(any(in_layer(p, n) for n in names) for p in paths)
    if not any(mask):
        raise ValueError(
            f"{where}: params_filter selects none of the {len(paths)} parameter leaves "
            f"({paths[:4]}{' …' if len(paths) > 4 else ''})"
        )
    return None if all(mask) else mask


def split(params, mask):
    """``(sub, merge)``: the selected leaves as a list and ``merge(sub) -> params`` with the others fixed."""
    leaves, treedef = jax.tree.flatten(params)
    if mask is None:
        return leaves, treedef.unflatten
    sub = [x for x, m in zip(leaves, mask) if m]

    def merge(s):
        it = iter(s)
        return treedef.unflatten([next(it) if m else x for x, m in zip(leaves, mask)])

    return sub, merge


def embed(params, mask, sub_leaves):
    """The selected leaves put back in ``params``' structure, ``None`` for the others."""
    leaves, treedef = jax.tree.flatten(params)
    it = iter(sub_leaves)
    return treedef.unflatten([next(it) if (mask is None or m) else None for m in (mask or [True] * len(leaves))])


def size(params, mask) -> int:
    """The number of selected parameters (the operator's dimension)."""
    leaves = jax.tree.leaves(params)
    return sum(int(np.prod(np.shape(x))) for x, m in zip(leaves, mask or (True,) * len(leaves)) if m)


# ---- the operator as a matrix-vector product ------------------------------------------------------------------------


def flat_matvec(loss_fn, params, batch, axis_name, operator: str = "hessian", mask=None):
    """``(matvec, n, unravel)``: ``matvec(v) = M v`` on the raveled (float32) vector of the selected parameters, of
    size ``n``, ``M`` the operator of ``batch`` (averaged over a :class:`Dataset`); ``unravel(v)`` gives a pytree
    shaped like ``params`` (``None`` for leaves not selected). With ``axis_name`` the product is ``pmean``'d."""
    sub, merge = split(params, mask)
    flat, unravel_sub = ravel_pytree(sub)

    def one(v_tree, b):
        if operator == "hessian":
            g = jax.grad(lambda s: loss_fn(merge(s), b))
            return jax.jvp(g, (sub,), (v_tree,))[1]
        f = lambda s: loss_fn.outputs(merge(s), b)  # noqa: E731
        z, f_vjp = jax.vjp(f, sub)
        u = jax.jvp(f, (sub,), (v_tree,))[1]
        return f_vjp(_output_operator(loss_fn, operator, z, b)(u))[0]

    def matvec(v):
        v_tree = unravel_sub(v.astype(flat.dtype))
        out = mean_over_batches(lambda b: one(v_tree, b), batch)
        out, _ = ravel_pytree(C.pmean(out, axis_name))
        return out.astype(jnp.float32)

    return matvec, flat.size, lambda v: embed(params, mask, unravel_sub(v.astype(flat.dtype)))


def sub_grad(loss_fn, params, batch, axis_name, mask=None):
    """The gradient of the (data-set average) loss with respect to the selected leaves, as a list."""
    sub, merge = split(params, mask)
    g = mean_over_batches(lambda b: jax.grad(lambda s: loss_fn(merge(s), b))(sub), batch)
    return C.pmean(g, axis_name)
