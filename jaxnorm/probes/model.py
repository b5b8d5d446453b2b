"""Probes on a Flax model and a training state: the loss-function builder and the training loop's probe step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnorm.losses import LOSSES, per_example_loss
from jaxnorm.probes import curvature as _curv
from jaxnorm.probes import ics as _ics
from jaxnorm.probes import landscape as _land
from jaxnorm.probes import santurkar as _sant
from jaxnorm.probes import sharpness as _sharp
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


PROBES = (
    "santurkar",
    "santurkar_random",
    "ics",
    "top_eigenvalues",
    "hessian_trace",
    "directional_curvature",
    "spectral_density",
    "loss_slice_1d",
    "loss_slice_2d",
    "activation_percentiles",
    "sharpness",
)


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


def _not_requested(*args):
    """Stands in for a probe function that was not requested (never called)."""
    raise AssertionError("a probe that was not requested was called")


def make_probe_fn(
    model,
    *,
    probes: Sequence[str] = ("santurkar",),
    lr: float | Callable | None = None,
    tx: optax.GradientTransformation | None = None,
    loss: str | Callable = "cross_entropy",
    train: bool = True,
    axis_name: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable:
    """A probe step for the training loop: ``probe_fn(state, batch, key) -> dict`` of named arrays.

    The training loop calls it every N steps on the current batch, BEFORE the train step on that batch (so ``g`` is
    the gradient that step takes); each probe runs on :func:`model_state_loss_fn` of the model (one ``loss_fn`` for
    every step, so nothing recompiles). See the probes for their formulas and references.

    Call it eagerly (each probe is a compiled program cached across calls: one ``loss_fn`` serves every step; on CPU
    the eigenvalue iteration then runs as a host loop, see :func:`hessian_top_eigenvalues`) or ``jax.jit`` it (one
    program); under ``pmap``/``shard_map`` pass ``axis_name`` and map it (it is traced there).

    ``state`` is a :class:`jaxnorm.lab.train.steps.TrainState` (``step``, ``params``, ``batch_stats``, ``opt_state``),
    never modified; ``batch`` is ``{'x', 'y'[, 'mask']}``; ``key`` a PRNG key for this probe call: one fixed dropout
    key for every evaluation (folded with the device index under ``axis_name``) and the random vectors (the same on
    all devices).

    Args:
      probes: names from ``PROBES``: ``'santurkar'`` (along the gradient), ``'santurkar_random'``, ``'ics'``,
        ``'top_eigenvalues'``, ``'hessian_trace'``, ``'directional_curvature'``, ``'spectral_density'``,
        ``'loss_slice_1d'``, ``'loss_slice_2d'`` (an 11 × 11 filter-normalized surface by default),
        ``'activation_percentiles'`` (see :func:`activation_percentiles_fn`), ``'sharpness'`` (λ_max against the
        stability threshold, :func:`jaxnorm.probes.sharpness`, warm-started from the previous call's eigenvector;
        eager calls only).
      lr: the learning rate (a float or a schedule ``lr(step)``): the Santurkar grid ``[0.5, 4]·lr`` and the ICS
        SGD update.
      tx: if given, ICS updates the earlier layers with this optimizer's step from ``state.opt_state`` instead of SGD.
      loss, train, axis_name: as in :func:`model_loss_fn` (``axis_name`` is also the axis of the probes' ``pmean``).
      options: per-probe keyword arguments, e.g. ``{'santurkar': {'chunk': 2}, 'ics': {'layers': ['conv_1']},
        'top_eigenvalues': {'k': 2, 'num_iters': 20}, 'hessian_trace': {'num_samples': 10}}``; for
        ``'sharpness'``: ``momentum``, ``momentum_kind``, ``band``, ``num_iters`` (20), ``tol`` (1e-3) and
        ``preconditioner='adam'`` (P from ``state.opt_state``, with ``b2``, ``eps``).

    Returns metrics named ``'<probe>/<quantity>'``: ``santurkar/loss_min``, ``santurkar/beta_smoothness``, …,
    ``santurkar/losses`` (K,); ``ics/l2/<layer>``, ``ics/cos/<layer>``, ``ics/grad_norm/<layer>``;
    ``hessian/top_eigenvalues`` (k,), ``hessian/top_eigenvalue``, ``hessian/trace``,
    ``hessian/directional_curvature``; ``hessian/density_grid``, ``hessian/density`` (stochastic Lanczos quadrature);
    ``slice_1d/alphas``, ``slice_1d/losses``; ``slice_2d/alphas``, ``slice_2d/betas``, ``slice_2d/losses`` (Sα, Sβ);
    ``activations/<layer>/p15`` (…/p50, …/p85); ``sharpness/lambda_max``, ``sharpness/threshold``,
    ``sharpness/ratio``, ``sharpness/at_edge``, ``sharpness/above_threshold``, ``sharpness/num_products``,
    ``sharpness/converged``; with ``lr``, the step-size context of the Santurkar and ICS rows: ``santurkar/lr``,
    ``santurkar/beta_eta`` (β·η, about 2 at the edge of stability for gradient descent),
    ``santurkar/rel_grad_change`` (‖Δg‖/‖g‖), ``santurkar/lambda_eta_half`` (λ_max·η/2), ``ics/lr`` and
    ``ics/sharpness_ratio`` (the last two of each with the ``'sharpness'`` probe in the same call).

    Raises:
      ValueError: unknown or no ``probes``; ``options`` for a probe not in ``probes``; a Santurkar or ICS probe
        without ``lr`` (and without ``etas``, ``tx`` or ``update_fn``).

    Examples:
    >>> import types
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import jaxnorm.nn
    >>> import jaxnorm.probes as jp
    >>> class Net(nn.Module):
    ...     @nn.compact
    ...     def __call__(self, x, train=True):
    ...         return nn.Dense(3, name='head')(jaxnorm.nn.BatchNorm(name='norm')(x, train=train))
    >>> batch = {'x': jnp.arange(24.0).reshape(8, 3) / 10, 'y': jnp.array([0, 1, 2, 0, 1, 2, 0, 1])}
    >>> variables = Net().init(jax.random.key(0), batch['x'], train=False)
    >>> state = types.SimpleNamespace(step=0, params=variables['params'], batch_stats=variables['batch_stats'],
    ...                               opt_state=None)
    >>> probe_fn = jp.make_probe_fn(Net(), probes=('santurkar', 'ics'), lr=0.1,
    ...                             options={'santurkar': {'etas': [0.05, 0.1]}})
    >>> metrics = probe_fn(state, batch, jax.random.key(1))
    >>> metrics['santurkar/losses'].shape, sorted(k for k in metrics if k.startswith('ics/l2'))
    ((2,), ['ics/l2/head', 'ics/l2/norm'])
    """
    probes = tuple(probes)
    bad = [p for p in probes if p not in PROBES]
    if bad or not probes:
        raise ValueError(
            f"make_probe_fn: unknown probes {bad}; choose from {PROBES}"
            if bad
            else f"make_probe_fn: probes is empty; choose from {PROBES}"
        )
    options = {k: dict(v) for k, v in (options or {}).items()}
    unknown = [k for k in options if k not in probes]
    if unknown:
        raise ValueError(f"make_probe_fn: options given for {unknown}, which are not among probes={probes}")
    needs_lr = [
        p
        for p in probes
        if (p.startswith("santurkar") and "etas" not in options.get(p, {}))
        or p == "sharpness"
        or (p == "ics" and tx is None and "update_fn" not in options.get(p, {}))
    ]
    if needs_lr and lr is None:
        raise ValueError(
            f"make_probe_fn: probes {needs_lr} need lr= (a float or a schedule lr(step)): the Santurkar "
            "grid is [0.5, 4]·lr and ICS takes an SGD step of lr"
        )
    loss_fn = model_state_loss_fn(model, train=train, loss=loss, axis_name=axis_name)  # one function: cached
    percentiles_fn: Callable = (
        activation_percentiles_fn(model, train=train, **options.get("activation_percentiles", {}))
        if "activation_percentiles" in probes
        else _not_requested
    )

    warm: dict = {"eigenvector": None}  # the sharpness probe's last eigenvector: its next call's start

    def probe_fn(state, batch, key) -> dict:
        k_drop, k_dir, k_eig, k_trace, k_slice = jax.random.split(key, 5)
        if axis_name is not None:
            k_drop = jax.random.fold_in(k_drop, jax.lax.axis_index(axis_name))
        inputs = {"batch": batch, "batch_stats": state.batch_stats, "dropout_key": k_drop}
        step_lr = lr(state.step) if callable(lr) else lr
        params = state.params
        out = {}
        for name in probes:
            kw = dict(options.get(name, {}))
            if name in ("santurkar", "santurkar_random"):
                if name == "santurkar_random":
                    kw.setdefault("direction", "random")
                    kw.setdefault("key", k_dir)
                if "etas" not in kw:
                    kw["lr"] = step_lr
                res = _sant.santurkar_probe(loss_fn, params, inputs, axis_name=axis_name, **kw)
                out.update({f"{name}/{k}": v for k, v in res.items()})
            elif name == "ics":
                if tx is not None and "update_fn" not in kw:
                    kw.setdefault("tx", tx)
                    kw.setdefault("opt_state", state.opt_state)
                elif "update_fn" not in kw:
                    kw["lr"] = step_lr
                res = _ics.internal_covariate_shift(loss_fn, params, inputs, axis_name=axis_name, **kw)
                for q, per_layer in res.items():
                    out.update({f"ics/{q}/{layer}": v for layer, v in per_layer.items()})
            elif name == "top_eigenvalues":
                kw.setdefault("num_iters", 20)
                vals, _ = _curv.hessian_top_eigenvalues(loss_fn, params, inputs, key=k_eig, axis_name=axis_name, **kw)
                out["hessian/top_eigenvalues"] = vals
                out["hessian/top_eigenvalue"] = vals[0]
            elif name == "hessian_trace":
                kw.setdefault("num_samples", 10)
                res = _curv.hessian_trace(loss_fn, params, inputs, key=k_trace, axis_name=axis_name, **kw)
                out["hessian/trace"] = res["trace"]
                out["hessian/trace_std_error"] = res["std_error"]
            elif name == "directional_curvature":
                out["hessian/directional_curvature"] = _curv.directional_curvature(
                    loss_fn, params, inputs, axis_name=axis_name, **kw
                )
            elif name == "spectral_density":
                kw.setdefault("num_lanczos_steps", 20)
                kw.setdefault("num_points", 200)
                res = _curv.hessian_spectral_density(loss_fn, params, inputs, key=k_eig, axis_name=axis_name, **kw)
                out["hessian/density_grid"], out["hessian/density"] = res["grid"], res["density"]
            elif name == "activation_percentiles":
                res = percentiles_fn(
                    {"params": params, **({"batch_stats": state.batch_stats} if state.batch_stats else {})},
                    batch["x"],
                    k_drop,
                )
                out.update({f"activations/{k}": v for k, v in res.items()})
            elif name == "loss_slice_1d":
                res = _land.loss_slice_1d(loss_fn, params, inputs, key=k_slice, axis_name=axis_name, **kw)
                out["slice_1d/alphas"], out["slice_1d/losses"] = res["alphas"], res["losses"]
            elif name == "sharpness":
                if axis_name is not None or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
                    raise ValueError(
                        "make_probe_fn: the 'sharpness' probe is a host loop of Hessian-vector products (it stops "
                        "when λ converges and keeps its eigenvector between calls); call probe_fn eagerly, "
                        "outside jit/pmap/shard_map"
                    )
                kw.setdefault("num_iters", 20)  # a tracked step: λ to 0.1 % or 20 products, whichever comes first
                kw.setdefault("tol", 1e-3)
                pre = kw.pop("preconditioner", None)
                b2, eps = kw.pop("b2", 0.999), kw.pop("eps", 1e-8)
                if pre not in (None, "adam"):
                    raise ValueError(f"make_probe_fn: sharpness preconditioner must be None or 'adam', got {pre!r}")
                if pre == "adam":
                    kw["preconditioner"] = _sharp.adam_preconditioner(state.opt_state, b2=b2, eps=eps)
                assert step_lr is not None  # checked above: the sharpness probe needs lr
                res = _sharp.sharpness(loss_fn, params, inputs, lr=step_lr, v0=warm["eigenvector"], key=k_eig, **kw)
                warm["eigenvector"] = res.pop("eigenvector")
                out.update({f"sharpness/{k}": v for k, v in res.items()})
            elif name == "loss_slice_2d":
                kw.setdefault("steps", 11)
                res = _land.loss_slice_2d(loss_fn, params, inputs, key=k_slice, axis_name=axis_name, **kw)
                out.update({f"slice_2d/{k}": res[k] for k in ("alphas", "betas", "losses")})
        return {**out, **_step_size_context(out, step_lr)}

    return probe_fn


def _step_size_context(out: dict, lr) -> dict:
    """The step size beside the landscape rows, so that a smoothness or ICS figure can be read against the edge of
    stability (Cohen et al. 2021): ``santurkar/beta_eta`` (β·η; ≈ 2 at the edge for gradient descent),
    ``santurkar/rel_grad_change`` (‖Δg‖/‖g‖), ``santurkar/lambda_eta_half`` (λ_max·η/2, with the sharpness probe),
    ``<probe>/lr`` and ``ics/sharpness_ratio`` (λ_max over the optimizer's threshold, with the sharpness probe)."""
    ctx: dict = {}
    if lr is None:
        return ctx
    lam = out.get("sharpness/lambda_max")
    if "santurkar/beta_smoothness" in out:
        ctx["santurkar/lr"] = lr
        ctx["santurkar/beta_eta"] = out["santurkar/beta_smoothness"] * lr
        ctx["santurkar/rel_grad_change"] = out["santurkar/grad_change_max"] / out["santurkar/grad_norm"]
        if lam is not None:
            ctx["santurkar/lambda_eta_half"] = lam * lr / 2
    if any(k.startswith("ics/") for k in out):
        ctx["ics/lr"] = lr
        if lam is not None:
            ctx["ics/sharpness_ratio"] = out["sharpness/ratio"]
    return ctx
