"""Probes on a Flax model and a training state: the loss-function builder and the training loop's probe step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxnorm.losses import LOSSES, per_example_loss
from jaxnorm.probes.operators import SplitLoss


def _unpack(batch, where="model_loss_fn"):
    """``(x, y, mask)`` of a batch, the inputs of masked-out rows replaced by zeros: padding may hold anything (NaN
    included), and a NaN input would reach the loss and every gradient through ``0 · NaN`` even with weight 0."""
    if isinstance(batch, Mapping):
        missing = [k for k in ("x", "y") if k not in batch]
        if missing:
            raise ValueError(
                f"{where}: the batch needs keys 'x' and 'y' (and optionally 'mask'), missing "
                f"{missing}; got keys {sorted(batch)}"
            )
        x, y, mask = batch["x"], batch["y"], batch.get("mask")
    elif isinstance(batch, Sequence) and len(batch) in (2, 3):
        x, y, mask = tuple(batch) + (None,) * (3 - len(batch))
    else:
        raise ValueError(
            f"{where}: the batch must be a dict with 'x', 'y' (and optionally 'mask') or a tuple "
            f"(x, y) / (x, y, mask), got {type(batch).__name__}"
        )
    if mask is not None:
        keep = jnp.asarray(mask).astype(bool).reshape((-1,) + (1,) * (jnp.ndim(x) - 1))
        x = jnp.where(keep, x, jnp.zeros((), jnp.asarray(x).dtype))
    return x, y, mask


def _check_loss(where, loss):
    if not callable(loss) and loss not in LOSSES:
        raise ValueError(f"{where}: loss must be one of {LOSSES} or a callable, got {loss!r}")


def model_state_loss_fn(
    model, *, train: bool = True, loss: str | Callable = "cross_entropy", axis_name: str | None = None
) -> SplitLoss:
    """The loss of a Flax linen model with its state as an input: ``loss_fn(params, inputs) -> scalar``.

    Formula: ``inputs = {'batch', 'batch_stats', 'dropout_key'}`` and ``loss_fn(params, inputs) = Σ_i m_i ℓ(f(x_i),
    y_i) / Σ_i m_i`` (``m`` the batch's mask, all ones by default), the model applied as :func:`model_loss_fn`
    does. One ``loss_fn`` serves every training step: the probes' compiled programs are cached per ``loss_fn``
    object, so stand-alone probe calls with new states do not recompile.

    Reduces over: the valid examples of the batch (the masked mean).

    Args:
      model: a Flax linen module called as ``model.apply(variables, x, train=...)``.
      train: batch statistics and dropout (True) or running statistics and no dropout (False).
      loss: ``'cross_entropy'`` (integer labels), ``'mse'`` (``‖f(x) − y‖²`` per example) or
        ``loss(outputs, y) -> per-example losses``.
      axis_name: the device axis: the loss returned is the device's share ``Σ_local ℓ·mask / Σ_devices mask ×
        num_devices``, so the probes' ``pmean`` gives the global mean over valid examples (use with the probes'
        ``axis_name``).

    Returns:
      A :class:`jaxnorm.probes.SplitLoss` (also usable with the GGN and Fisher operators). ``batch_stats`` may be
      ``{}`` and ``dropout_key`` ``None``.

    Raises:
      ValueError: an unknown ``loss``; at call time, a batch that is neither ``{'x', 'y'[, 'mask']}`` nor
        ``(x, y[, mask])``.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import jaxnorm.nn
    >>> import jaxnorm.probes as jp
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train=True):
    ...         return nn.Dense(3)(jaxnorm.nn.BatchNorm()(x, train=train))
    >>> batch = {'x': jnp.arange(24.0).reshape(8, 3) / 10, 'y': jnp.array([0, 1, 2, 0, 1, 2, 0, 1])}
    >>> model = Net()
    >>> variables = model.init(jax.random.key(0), batch['x'], train=False)
    >>> loss_fn = jp.model_state_loss_fn(model)
    >>> inputs = {'batch': batch, 'batch_stats': variables['batch_stats'], 'dropout_key': None}
    >>> s = jp.santurkar_probe(loss_fn, variables['params'], inputs, etas=[0.1, 0.2])
    >>> s['losses'].shape
    (2,)
    """
    _check_loss("model_state_loss_fn", loss)

    def outputs_fn(params, inputs):
        x, _, _ = _unpack(inputs["batch"])
        batch_stats, dropout_key = inputs.get("batch_stats"), inputs.get("dropout_key")
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
        if train:
            rngs = {"dropout": dropout_key} if dropout_key is not None else None
            outputs, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        else:
            outputs = model.apply(variables, x, train=False)
        return outputs

    def loss_fn(params, inputs):
        _, y, mask = _unpack(inputs["batch"])
        return _mean_loss(outputs_fn(params, inputs), y, mask, loss, axis_name)

    return _split(outputs_fn, loss, loss_fn, axis_name, lambda inputs: _unpack(inputs["batch"])[1:])


def _split(outputs_fn, loss, loss_fn, axis_name, targets) -> SplitLoss:
    """The loss as a :class:`SplitLoss` (its value computed by ``loss_fn`` as before: no number changes), so the
    GGN and Fisher operators can reach the model's outputs."""
    return SplitLoss(outputs_fn, loss, targets=targets, value_fn=loss_fn, axis_name=axis_name)


def _mean_loss(outputs, y, mask, loss, axis_name):
    """The mean loss over the valid examples (with ``axis_name``: this device's share of the global mean)."""
    per_example = (loss(outputs, y) if callable(loss) else per_example_loss(outputs, y, loss)).astype(jnp.float32)
    w = jnp.ones_like(per_example) if mask is None else mask.astype(jnp.float32)
    total = jnp.sum(w)
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name) / jax.lax.psum(1.0, axis_name)
    return jnp.sum(per_example * w) / jnp.maximum(total, 1e-12)


def model_loss_fn(
    model,
    batch_stats=None,
    dropout_key: jax.Array | None = None,
    *,
    train: bool = True,
    loss: str | Callable = "cross_entropy",
    axis_name: str | None = None,
) -> Callable:
    """The loss of a Flax linen model, ``loss_fn(params, batch) -> scalar``: the input every probe takes.

    Formula: ``L(params) = Σ_i m_i ℓ(f(params, x_i), y_i) / Σ_i m_i`` over the batch (``m`` its mask, all ones by
    default; masked-out inputs are replaced by zeros). ``train=True`` (the Santurkar setting) applies
    ``model.apply({'params', 'batch_stats'}, x, train=True, mutable=['batch_stats'], rngs={'dropout':
    dropout_key})``: batch norm normalizes with the statistics of each probed point's own activations, and the
    updated running statistics are DISCARDED, so probing never changes the training state. ``dropout_key`` is one
    FIXED key: every point a probe evaluates sees the same dropout masks. ``train=False`` uses the running
    statistics and no dropout.

    Reduces over: the valid examples of the batch (the masked mean).

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? (the
    probes' train-mode loss).

    Args:
      model: a Flax linen module called as ``model.apply(variables, x, train=...)``.
      batch_stats: the model's running statistics (``None`` or ``{}`` for none).
      dropout_key: the fixed dropout key (needed in train mode when the model has dropout).
      train: see above.
      loss: ``'cross_entropy'`` (integer labels), ``'mse'`` (``‖f(x) − y‖²`` per example) or
        ``loss(outputs, y) -> per-example losses``.
      axis_name: the device axis: the loss returned is the device's share ``Σ_local ℓ·mask / Σ_devices mask ×
        num_devices``, so the probes' ``pmean`` gives the global mean over valid examples (use with the probes'
        ``axis_name``). Batch norm then normalizes with per-device statistics unless the model syncs them
        (``axis_name='batch'``).

    Returns:
      A :class:`jaxnorm.probes.SplitLoss` taking batches ``{'x', 'y'[, 'mask']}`` or ``(x, y[, mask])``. Each
      new ``model_loss_fn`` is a new function for ``jax.jit`` (the probes compile anew); for repeated calls use
      :func:`model_state_loss_fn` or :func:`make_probe_fn`.

    Raises:
      ValueError: an unknown ``loss``; at call time, a batch that is neither a dict with ``'x'`` and ``'y'`` nor a
        tuple ``(x, y[, mask])``.

    Examples:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import jaxnorm.nn
    >>> import jaxnorm.probes as jp
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train=True):
    ...         return nn.Dense(3)(jaxnorm.nn.BatchNorm()(x, train=train))
    >>> batch = {'x': jnp.arange(24.0).reshape(8, 3) / 10, 'y': jnp.array([0, 1, 2, 0, 1, 2, 0, 1])}
    >>> model = Net()
    >>> variables = model.init(jax.random.key(0), batch['x'], train=False)
    >>> loss_fn = jp.model_loss_fn(model, variables['batch_stats'])
    >>> loss_fn(variables['params'], batch).shape, isinstance(loss_fn, jp.SplitLoss)
    ((), True)
    >>> vals, _ = jp.hessian_top_eigenvalues(loss_fn, variables['params'], batch, key=jax.random.key(1),
    ...                                      method='lanczos', num_iters=10)
    >>> bool(vals[0] > 0)
    True
    """
    _check_loss("model_loss_fn", loss)
    inner = model_state_loss_fn(model, train=train, loss=loss, axis_name=axis_name)

    def inputs(batch):
        return {"batch": batch, "batch_stats": batch_stats, "dropout_key": dropout_key}

    return _split(
        lambda params, batch: inner.outputs(params, inputs(batch)),
        loss,
        lambda params, batch: inner(params, inputs(batch)),
        axis_name,
        lambda b: _unpack(b)[1:],
    )


def nnx_loss_fn(
    model, *, train: bool = True, loss: str | Callable = "cross_entropy", axis_name: str | None = None
) -> tuple[Callable, Any]:
    """``(loss_fn, params)`` for a Flax NNX model: ``loss_fn(params, batch) -> scalar`` is what every probe takes.

    Formula: the masked mean loss ``Σ_i m_i ℓ(f(params, x_i), y_i) / Σ_i m_i`` as in :func:`model_loss_fn`. The
    model is split once, ``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``; ``loss_fn`` merges
    ``params`` (the argument the probes perturb) with the fixed ``rest`` into a fresh copy, so probing never changes
    the model. ``train=True``: every ``use_running_average`` and ``deterministic`` is False (batch statistics; the
    updated running statistics discarded; the dropout streams restart from their state at this call, a fixed key);
    ``train=False``: running statistics, no dropout.

    Reduces over: the valid examples of the batch (the masked mean).

    Args:
      model: an ``nnx.Module`` called as ``model(x)``.
      train: see above.
      loss: ``'cross_entropy'`` (integer labels), ``'mse'`` (``‖f(x) − y‖²`` per example) or
        ``loss(outputs, y) -> per-example losses``.
      axis_name: the device axis: the loss returned is the device's share ``Σ_local ℓ·mask / Σ_devices mask ×
        num_devices``, so the probes' ``pmean`` gives the global mean over valid examples (use with the probes'
        ``axis_name``).

    Returns:
      ``(loss_fn, params)``: a :class:`jaxnorm.probes.SplitLoss` and the ``nnx.State`` of the model's
      ``nnx.Param`` leaves.

    Raises:
      ValueError: an unknown ``loss``; at call time, a batch of another format.

    Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> import jaxnorm.probes as jp
    >>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    >>> loss_fn, params = jp.nnx_loss_fn(model, loss='mse')
    >>> batch = {'x': jnp.ones((4, 3)), 'y': jnp.zeros((4, 2))}
    >>> tr = jp.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=24, method='hutch++')
    >>> round(float(tr['trace']), 3)      # mean ‖Wx + b‖² with x = 1: 2 per weight and bias, 8 of them
    16.0
    """
    from flax import nnx

    _check_loss("nnx_loss_fn", loss)
    view = nnx.view(model, use_running_average=not train, deterministic=not train, raise_if_not_found=False)
    graphdef, params, *others = nnx.split(view, nnx.Param, ...)
    (rest,) = others  # two filters: exactly one state besides the parameters

    def outputs_fn(params, batch):
        x, _, _ = _unpack(batch, "nnx_loss_fn")
        # copy=True: a merged module's updates (running statistics, rng counts) must not write into ``rest``
        return nnx.merge(graphdef, params, rest, copy=True)(x)

    def loss_fn(params, batch):
        _, y, mask = _unpack(batch, "nnx_loss_fn")
        return _mean_loss(outputs_fn(params, batch), y, mask, loss, axis_name)

    return _split(outputs_fn, loss, loss_fn, axis_name, lambda b: _unpack(b, "nnx_loss_fn")[1:]), params


def eqx_loss_fn(
    model,
    state=None,
    dropout_key: jax.Array | None = None,
    *,
    train: bool = True,
    loss: str | Callable = "cross_entropy",
    batch_axis: str = "batch",
    axis_name: str | None = None,
) -> tuple[Callable, Any]:
    """``(loss_fn, params)`` for an Equinox model called per example: ``loss_fn(params, batch) -> scalar``.

    Formula: the masked mean loss ``Σ_i m_i ℓ(f(params, x_i), y_i) / Σ_i m_i`` as in :func:`model_loss_fn`, with
    ``params, static = eqx.partition(model, eqx.is_inexact_array)`` and the outputs
    ``jax.vmap(model, axis_name=batch_axis)`` over ``batch['x']`` (``model(x, state, *, key) -> (y, state)`` with
    ``state`` fixed and the new state discarded, or ``model(x, *, key) -> y`` when ``state`` is None).
    ``train=True``: ``eqx.nn.inference_mode(model, False)`` (batch statistics; dropout with the per-example keys
    ``jax.random.split(dropout_key, n)`` of one FIXED key); ``train=False``: inference mode.

    Reduces over: the valid examples of the batch (the masked mean).

    Args:
      model: an Equinox module (build stateful ones with ``eqx.nn.make_with_state``).
      state: its ``eqx.nn.State``, or None for a stateless model.
      dropout_key: the fixed dropout key (None: the model is called with ``key=None``).
      train: see above.
      loss: ``'cross_entropy'`` (integer labels), ``'mse'`` (``‖f(x) − y‖²`` per example) or
        ``loss(outputs, y) -> per-example losses``.
      batch_axis: the name of the vmapped example axis (the ``axis_name`` of ``eqx.nn.BatchNorm``).
      axis_name: the device axis: the loss returned is the device's share ``Σ_local ℓ·mask / Σ_devices mask ×
        num_devices``, so the probes' ``pmean`` gives the global mean over valid examples (use with the probes'
        ``axis_name``).

    Returns:
      ``(loss_fn, params)``: a :class:`jaxnorm.probes.SplitLoss` and the model's inexact-array leaves.

    Raises:
      ValueError: an unknown ``loss``; at call time, a batch of another format.

    Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import equinox as eqx
    >>> import jaxnorm.probes as jp
    >>> model = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    >>> loss_fn, params = jp.eqx_loss_fn(model, loss='mse')
    >>> batch = {'x': jnp.ones((4, 3)), 'y': jnp.zeros((4, 2))}
    >>> tr = jp.hessian_trace(loss_fn, params, batch, key=jax.random.key(0), num_samples=24, method='hutch++')
    >>> round(float(tr['trace']), 3)      # mean ‖Wx + b‖² with x = 1: 2 per weight and bias, 8 of them
    16.0
    """
    import equinox as eqx

    _check_loss("eqx_loss_fn", loss)
    params, static = eqx.partition(eqx.nn.inference_mode(model, not train), eqx.is_inexact_array)
    key = dropout_key if train else None
    leaves, treedef = jax.tree.flatten(state)

    def outputs_fn(params, batch):
        x, _, _ = _unpack(batch, "eqx_loss_fn")
        m = eqx.combine(params, static)
        st = jax.tree.unflatten(treedef, leaves)  # a fresh State object: Equinox refuses a State used before

        def one(xi, ki):
            kw = {} if ki is None else {"key": ki}
            return m(xi, st, **kw)[0] if state is not None else m(xi, **kw)

        keys = None if key is None else jax.random.split(key, x.shape[0])
        return jax.vmap(one, axis_name=batch_axis, in_axes=(0, None if keys is None else 0))(x, keys)

    def loss_fn(params, batch):
        _, y, mask = _unpack(batch, "eqx_loss_fn")
        return _mean_loss(outputs_fn(params, batch), y, mask, loss, axis_name)

    return _split(outputs_fn, loss, loss_fn, axis_name, lambda b: _unpack(b, "eqx_loss_fn")[1:]), params


def activation_percentiles_fn(
    model, *, unit: int = 0, percentiles=(15.0, 50.0, 85.0), train: bool = True, layers=None
) -> Callable:
    """A jitted function giving percentiles of one unit's activation input over the batch, per sown layer.

    Formula: ``fn(variables, x, dropout_key) -> {'<layer>/p<q>': percentile_q(a[..., unit])}`` for every input the
    model sows as ``intermediates/<layer>`` (the zoo's MLP sows ``preact_{i}``, the input of its i-th activation) or
    the named ``layers``. Train mode uses the batch's statistics (what the activation sees in training) and discards
    the updated running statistics.

    Reduces over: every axis of the sown activation but the last (the examples, and positions for a conv).

    Reference: Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by Reducing Internal
    Covariate Shift (Fig. 1b,c: the {15, 50, 85}th percentiles of one sigmoid's input over training).

    Args:
      model: a Flax linen module that sows its activation inputs with ``self.sow('intermediates', name, a)``.
      unit: the unit (last-axis index).
      percentiles: the percentiles ``q`` in [0, 100].
      train: batch statistics (True) or running statistics (False).
      layers: the sown names to report (default: all, sorted).

    Returns:
      ``fn(variables, x, dropout_key) -> dict`` of float32 scalars. It raises a ValueError (at its first call)
      when the model sows none of ``layers`` or ``unit`` is out of range.

    Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import jaxnorm.probes as jp
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train=True):
    ...         a = nn.Dense(2)(x)
    ...         self.sow('intermediates', 'preact_0', a)
    ...         return nn.sigmoid(a)
    >>> x = jnp.linspace(-1.0, 1.0, 30).reshape(10, 3)
    >>> variables = Net().init(jax.random.key(0), x)
    >>> fn = jp.activation_percentiles_fn(Net())
    >>> sorted(fn({'params': variables['params']}, x, jax.random.key(1)))
    ['preact_0/p15', 'preact_0/p50', 'preact_0/p85']
    """

    @jax.jit
    def fn(variables, x, dropout_key):
        if train:
            _, state = model.apply(
                variables, x, train=True, mutable=["batch_stats", "intermediates"], rngs={"dropout": dropout_key}
            )
        else:
            _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
        sown = state.get("intermediates", {})
        names = sorted(sown) if layers is None else list(layers)
        missing = [n for n in names if n not in sown]
        if missing or not names:
            raise ValueError(
                f"activation_percentiles: the model sows {sorted(sown)} in 'intermediates', not "
                f"{missing or 'anything'}; use a model that sows its activation inputs (the MLP)"
            )
        out = {}
        for name in names:
            v = sown[name][0]
            if not 0 <= unit < v.shape[-1]:
                raise ValueError(f"activation_percentiles: unit={unit} but {name} has {v.shape[-1]} units")
            col = v.reshape(-1, v.shape[-1])[:, unit].astype(jnp.float32)
            for q in percentiles:
                out[f"{name}/p{q:g}"] = jnp.percentile(col, q)
        return out

    return fn
