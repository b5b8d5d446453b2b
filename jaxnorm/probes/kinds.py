"""The probe kinds of the training loop: one registry entry per kind, with its defaults, the options it accepts,
the config keys that set them and the rows it writes (like :func:`jaxnorm.lab.models.register_norm` for norms).

:func:`make_probe_fn` runs the kinds a config names; :func:`register_probe` adds one. A kind is a function
``run(call, options) -> rows`` over a :class:`ProbeCall` (the loss, the parameters, the batch, the step's learning
rate, a key and the kind's memory between calls), so a new landscape measurement needs no edit of the loop.
"""

from __future__ import annotations

import dataclasses
import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from jaxnorm.probes import curvature as _curv
from jaxnorm.probes import ics as _ics
from jaxnorm.probes import landscape as _land
from jaxnorm.probes import santurkar as _sant
from jaxnorm.probes import sharpness as _sharp
from jaxnorm.probes.model import activation_percentiles_fn, model_state_loss_fn

# The keys of one probe call, split from its key in this order (a kind names the one it draws from).
KEY_SLOTS = ("dropout", "direction", "eigen", "trace", "slice")


@dataclasses.dataclass
class ProbeCall:
    """What one probe kind sees at one probe call.

    ``loss_fn`` is the model's :func:`model_state_loss_fn` (one object for every call, so programs are cached),
    ``inputs = {'batch', 'batch_stats', 'dropout_key'}`` its second argument, ``lr`` the step's learning rate
    (``None`` when ``make_probe_fn`` got none), ``key`` the kind's own key, ``memory`` a dict the kind keeps between
    calls (the sharpness probe's warm start), ``setup`` what the kind's ``setup`` built once."""

    loss_fn: Any
    params: Any
    inputs: dict
    state: Any
    batch: Mapping
    key: jax.Array
    lr: Any
    tx: Any
    axis_name: str | None
    memory: dict
    setup: Any = None


@dataclasses.dataclass(frozen=True)
class ProbeKind:
    """A registered probe kind.

    Attributes:
      name: the kind's name in ``probes=`` and ``probes.kinds``.
      run: ``run(call: ProbeCall, options: dict) -> dict`` of rows named ``'<prefix>/<quantity>'``.
      options: the keyword options the kind accepts (``make_probe_fn``'s ``options[name]``); others are refused.
      defaults: option values used when the caller sets none.
      fields: the rows it writes (``<layer>`` stands for each probed layer).
      config_keys: ``{'<key under probes.>': option}``: the training config keys that set an option.
      needs_lr: ``needs_lr(options, tx) -> bool``: whether the kind needs ``lr`` with these options.
      key: which of the call's keys the kind draws from (one of ``KEY_SLOTS``, or ``'own'``: a key folded from its
        name).
      eager_only: the kind runs a host loop and refuses traced parameters (under ``jit``/``pmap``).
      setup: ``setup(model, train, options) -> object`` built once per ``make_probe_fn`` (``ProbeCall.setup``).
    """

    name: str
    run: Callable[[ProbeCall, dict], dict]
    options: tuple[str, ...]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fields: tuple[str, ...] = ()
    config_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    needs_lr: Callable[[Mapping, Any], bool] = lambda options, tx: False
    key: str = "own"
    eager_only: bool = False
    setup: Callable | None = None


_REGISTRY: dict[str, ProbeKind] = {}


def probe_names() -> tuple[str, ...]:
    """The registered probe kinds, built-in ones first, in registration order."""
    return tuple(_REGISTRY)


def probe_kind(name: str) -> ProbeKind:
    """The registry entry of ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown probe kind {name!r}; choose from {probe_names()} or add one with register_probe")
    return _REGISTRY[name]


def register_probe(
    name: str,
    run: Callable[[ProbeCall, dict], dict],
    *,
    options: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
    fields: Sequence[str] = (),
    config_keys: Mapping[str, str] | None = None,
    needs_lr: Callable[[Mapping, Any], bool] | bool = False,
    key: str = "own",
    eager_only: bool = False,
    setup: Callable | None = None,
    overwrite: bool = False,
) -> ProbeKind:
    """Add a probe kind to the registry (see :class:`ProbeKind` for the fields); returns its entry.

    Raises:
      ValueError: an empty or taken name (without ``overwrite``), a default or config key for an option the kind
        does not accept, or an unknown ``key``.

    Examples:
    >>> import jax
    >>> import jaxnorm.probes as jp
    >>> def grad_norm(call, options):
    ...     g = jax.grad(call.loss_fn)(call.params, call.inputs)
    ...     return {'grad/norm': jax.numpy.sqrt(sum(jax.numpy.vdot(x, x) for x in jax.tree.leaves(g)))}
    >>> _ = jp.register_probe('grad_norm', grad_norm, fields=('grad/norm',))
    >>> 'grad_norm' in jp.probe_names()
    True
    >>> _ = jp.unregister_probe('grad_norm')
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_probe: name must be a non-empty string, got {name!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"register_probe: {name!r} is already registered; pass overwrite=True to replace it")
    options = tuple(options)
    defaults = dict(defaults or {})
    config_keys = dict(config_keys or {})
    stray = sorted(set(defaults) - set(options)) + sorted(set(config_keys.values()) - set(options))
    if stray:
        raise ValueError(f"register_probe: {name!r} has defaults or config keys for {stray}, not among its options")
    if key not in KEY_SLOTS + ("own",):
        raise ValueError(f"register_probe: key must be one of {KEY_SLOTS + ('own',)}, got {key!r}")
    lr_rule = needs_lr if callable(needs_lr) else (lambda opts, tx, _v=bool(needs_lr): _v)
    kind = ProbeKind(name, run, options, defaults, tuple(fields), config_keys, lr_rule, key, eager_only, setup)
    _REGISTRY[name] = kind
    return kind


def unregister_probe(name: str) -> ProbeKind:
    """Remove a probe kind (the inverse of :func:`register_probe`); returns its entry."""
    return _REGISTRY.pop(probe_kind(name).name)


def _accepts(fn: Callable, *, without: Sequence[str] = ()) -> tuple[str, ...]:
    """The options of a probe function ``fn(loss_fn, params, batch, ...)``, less those the kind sets itself."""
    params = list(inspect.signature(fn).parameters.values())[3:]
    return tuple(p.name for p in params if p.name not in ("axis_name", *without))


# ---- the built-in kinds ------------------------------------------------------------------------------------------


def _santurkar(name):
    def run(call: ProbeCall, kw: dict) -> dict:
        if name == "santurkar_random":
            kw.setdefault("key", call.key)
        if "etas" not in kw:
            kw["lr"] = call.lr
        res = _sant.santurkar_probe(call.loss_fn, call.params, call.inputs, axis_name=call.axis_name, **kw)
        return {f"{name}/{k}": v for k, v in res.items()}

    return run


_SANTURKAR_FIELDS = (
    "etas",
    "losses",
    "grad_changes",
    "loss",
    "grad_norm",
    "direction_norm",
    "loss_min",
    "loss_max",
    "grad_change_min",
    "grad_change_max",
    "beta_smoothness",
)


def _ics_run(call: ProbeCall, kw: dict) -> dict:
    if call.tx is not None and "update_fn" not in kw:
        kw.setdefault("tx", call.tx)
        kw.setdefault("opt_state", call.state.opt_state)
    elif "update_fn" not in kw:
        kw["lr"] = call.lr
    res = _ics.internal_covariate_shift(call.loss_fn, call.params, call.inputs, axis_name=call.axis_name, **kw)
    return {f"ics/{q}/{layer}": v for q, per_layer in res.items() for layer, v in per_layer.items()}


def _top_eigenvalues(call: ProbeCall, kw: dict) -> dict:
    vals, _ = _curv.hessian_top_eigenvalues(
        call.loss_fn, call.params, call.inputs, key=call.key, axis_name=call.axis_name, **kw
    )
    return {"hessian/top_eigenvalues": vals, "hessian/top_eigenvalue": vals[0]}


def _trace(call: ProbeCall, kw: dict) -> dict:
    res = _curv.hessian_trace(call.loss_fn, call.params, call.inputs, key=call.key, axis_name=call.axis_name, **kw)
    return {"hessian/trace": res["trace"], "hessian/trace_std_error": res["std_error"]}


def _directional(call: ProbeCall, kw: dict) -> dict:
    c = _curv.directional_curvature(call.loss_fn, call.params, call.inputs, axis_name=call.axis_name, **kw)
    return {"hessian/directional_curvature": c}


def _density(call: ProbeCall, kw: dict) -> dict:
    res = _curv.hessian_spectral_density(
        call.loss_fn, call.params, call.inputs, key=call.key, axis_name=call.axis_name, **kw
    )
    return {"hessian/density_grid": res["grid"], "hessian/density": res["density"]}


def _percentiles_setup(model, train, kw):
    return activation_percentiles_fn(model, train=train, **kw)


def _percentiles(call: ProbeCall, kw: dict) -> dict:
    stats = call.state.batch_stats
    variables = {"params": call.params, **({"batch_stats": stats} if stats else {})}
    res = call.setup(variables, call.batch["x"], call.inputs["dropout_key"])
    return {f"activations/{k}": v for k, v in res.items()}


def _slice_1d(call: ProbeCall, kw: dict) -> dict:
    res = _land.loss_slice_1d(call.loss_fn, call.params, call.inputs, key=call.key, axis_name=call.axis_name, **kw)
    return {"slice_1d/alphas": res["alphas"], "slice_1d/losses": res["losses"]}


def _slice_2d(call: ProbeCall, kw: dict) -> dict:
    res = _land.loss_slice_2d(call.loss_fn, call.params, call.inputs, key=call.key, axis_name=call.axis_name, **kw)
    return {f"slice_2d/{k}": res[k] for k in ("alphas", "betas", "losses")}


def _sharpness(call: ProbeCall, kw: dict) -> dict:
    pre = kw.pop("preconditioner", None)
    b2, eps = kw.pop("b2"), kw.pop("eps")
    if pre not in (None, "adam"):
        raise ValueError(f"make_probe_fn: sharpness preconditioner must be None or 'adam', got {pre!r}")
    if pre == "adam":
        kw["preconditioner"] = _sharp.adam_preconditioner(call.state.opt_state, b2=b2, eps=eps)
    res = _sharp.sharpness(
        call.loss_fn, call.params, call.inputs, lr=call.lr, v0=call.memory.get("eigenvector"), key=call.key, **kw
    )
    call.memory["eigenvector"] = res.pop("eigenvector")
    return {f"sharpness/{k}": v for k, v in res.items()}


def _santurkar_needs_lr(kw, tx):
    return "etas" not in kw


for _name in ("santurkar", "santurkar_random"):
    register_probe(
        _name,
        _santurkar(_name),
        options=_accepts(_sant.santurkar_probe, without=("lr",)),
        defaults={"direction": "random"} if _name == "santurkar_random" else {},
        fields=tuple(f"{_name}/{f}" for f in _SANTURKAR_FIELDS),
        needs_lr=_santurkar_needs_lr,
        key="direction",
    )
register_probe(
    "ics",
    _ics_run,
    options=_accepts(_ics.internal_covariate_shift, without=("lr",)),
    fields=("ics/l2/<layer>", "ics/cos/<layer>", "ics/grad_norm/<layer>", "ics/grad_norm_shifted/<layer>"),
    config_keys={"ics_layers": "layers"},
    needs_lr=lambda kw, tx: tx is None and "update_fn" not in kw,
)
register_probe(
    "top_eigenvalues",
    _top_eigenvalues,
    options=_accepts(_curv.hessian_top_eigenvalues, without=("key",)),
    defaults={"num_iters": 20},
    fields=("hessian/top_eigenvalues", "hessian/top_eigenvalue"),
    key="eigen",
)
register_probe(
    "hessian_trace",
    _trace,
    options=_accepts(_curv.hessian_trace, without=("key",)),
    defaults={"num_samples": 10},
    fields=("hessian/trace", "hessian/trace_std_error"),
    key="trace",
)
register_probe(
    "directional_curvature",
    _directional,
    options=_accepts(_curv.directional_curvature),
    fields=("hessian/directional_curvature",),
)
register_probe(
    "spectral_density",
    _density,
    options=_accepts(_curv.hessian_spectral_density, without=("key",)),
    defaults={"num_lanczos_steps": 20, "num_points": 200},
    fields=("hessian/density_grid", "hessian/density"),
    key="eigen",
)
register_probe(
    "loss_slice_1d",
    _slice_1d,
    options=_accepts(_land.loss_slice_1d, without=("key",)),
    fields=("slice_1d/alphas", "slice_1d/losses"),
    key="slice",
)
register_probe(
    "loss_slice_2d",
    _slice_2d,
    options=_accepts(_land.loss_slice_2d, without=("key",)),
    defaults={"steps": 11},
    fields=("slice_2d/alphas", "slice_2d/betas", "slice_2d/losses"),
    key="slice",
)
register_probe(
    "activation_percentiles",
    _percentiles,
    options=("unit", "percentiles", "layers"),
    fields=("activations/<layer>/p<q>",),
    setup=_percentiles_setup,
)
register_probe(
    "sharpness",
    _sharpness,
    # a tracked step: a residual of 3e-2·|λ| (λ within about 1e-3·|λ|²/gap, always within 3e-2·|λ|; measured
    # within 0.4 % at 1.4 products a step) or 20 products; benchmarks/probes.py --only sharpness_tol: the trade-off
    options=_accepts(_sharp.sharpness, without=("lr", "v0", "key")) + ("b2", "eps"),
    defaults={"num_iters": 20, "tol": 3e-2, "b2": 0.999, "eps": 1e-8},
    fields=tuple(
        f"sharpness/{f}"
        for f in ("lambda_max", "threshold", "ratio", "at_edge", "above_threshold", "num_products", "converged")
    ),
    needs_lr=True,
    key="eigen",
    eager_only=True,
)
BUILT_IN = probe_names()


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
    every step, so nothing recompiles). See the probes for their formulas and references, and
    :func:`register_probe` to add a kind.

    Call it eagerly (each probe is a compiled program cached across calls: one ``loss_fn`` serves every step; on CPU
    the eigenvalue iteration then runs as a host loop, see :func:`hessian_top_eigenvalues`) or ``jax.jit`` it (one
    program); under ``pmap``/``shard_map`` pass ``axis_name`` and map it (it is traced there).

    ``state`` is a :class:`jaxnorm.lab.train.steps.TrainState` (``step``, ``params``, ``batch_stats``, ``opt_state``),
    never modified; ``batch`` is ``{'x', 'y'[, 'mask']}``; ``key`` a PRNG key for this probe call: one fixed dropout
    key for every evaluation (folded with the device index under ``axis_name``) and the random vectors (the same on
    all devices).

    Args:
      probes: names from :func:`probe_names` (``PROBES`` holds the built-in ones): ``'santurkar'`` (along the
        gradient), ``'santurkar_random'``, ``'ics'``, ``'top_eigenvalues'``, ``'hessian_trace'``,
        ``'directional_curvature'``, ``'spectral_density'``, ``'loss_slice_1d'``, ``'loss_slice_2d'`` (an 11 × 11
        filter-normalized surface by default), ``'activation_percentiles'`` (see :func:`activation_percentiles_fn`),
        ``'sharpness'`` (λ_max against the stability threshold, :func:`jaxnorm.probes.sharpness`, warm-started from
        the previous call's eigenvector; eager calls only).
      lr: the learning rate (a float or a schedule ``lr(step)``): the Santurkar grid ``[0.5, 4]·lr`` and the ICS
        SGD update.
      tx: if given, ICS updates the earlier layers with this optimizer's step from ``state.opt_state`` instead of SGD.
      loss, train, axis_name: as in :func:`model_loss_fn` (``axis_name`` is also the axis of the probes' ``pmean``).
      options: per-probe keyword arguments, e.g. ``{'santurkar': {'chunk': 2}, 'ics': {'layers': ['conv_1']},
        'top_eigenvalues': {'k': 2, 'num_iters': 20}, 'hessian_trace': {'num_samples': 10}}``; for
        ``'sharpness'``: ``momentum``, ``momentum_kind``, ``band``, ``num_iters`` (20), ``tol`` (3e-2) and
        ``preconditioner='adam'`` (P from ``state.opt_state``, with ``b2``, ``eps``). Each kind's accepted options
        and defaults are in its registry entry (``probe_kind(name).options``).

    Returns metrics named ``'<probe>/<quantity>'`` (each kind's ``fields``): ``santurkar/loss_min``,
    ``santurkar/beta_smoothness``, …, ``santurkar/losses`` (K,); ``ics/l2/<layer>``, ``ics/cos/<layer>``,
    ``ics/grad_norm/<layer>``; ``hessian/top_eigenvalues`` (k,), ``hessian/top_eigenvalue``, ``hessian/trace``,
    ``hessian/directional_curvature``; ``hessian/density_grid``, ``hessian/density`` (stochastic Lanczos quadrature);
    ``slice_1d/alphas``, ``slice_1d/losses``; ``slice_2d/alphas``, ``slice_2d/betas``, ``slice_2d/losses`` (Sα, Sβ);
    ``activations/<layer>/p15`` (…/p50, …/p85); ``sharpness/lambda_max``, ``sharpness/threshold``,
    ``sharpness/ratio``, ``sharpness/at_edge``, ``sharpness/above_threshold``, ``sharpness/num_products``,
    ``sharpness/converged``; with ``lr``, the step-size context of the Santurkar and ICS rows: ``santurkar/lr``,
    ``santurkar/beta_eta`` (β·η, about 2 at the edge of stability for gradient descent),
    ``santurkar/rel_grad_change`` (‖Δg‖/‖g‖), ``santurkar/lambda_eta_half`` (λ_max·η/2), ``ics/lr`` and
    ``ics/sharpness_ratio`` (the last two of each with the ``'sharpness'`` probe in the same call).

    Raises:
      ValueError: unknown or no ``probes``; ``options`` for a probe not in ``probes`` or an option the probe does
        not accept; a probe that needs ``lr`` (Santurkar without ``etas``, ICS without ``tx`` or ``update_fn``,
        sharpness) without it.

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
    bad = [p for p in probes if p not in _REGISTRY]
    if bad or not probes:
        raise ValueError(
            f"make_probe_fn: unknown probes {bad}; choose from {probe_names()}"
            if bad
            else f"make_probe_fn: probes is empty; choose from {probe_names()}"
        )
    given = {k: dict(v) for k, v in (options or {}).items()}
    unknown = [k for k in given if k not in probes]
    if unknown:
        raise ValueError(f"make_probe_fn: options given for {unknown}, which are not among probes={probes}")
    kinds = {name: _REGISTRY[name] for name in probes}
    for name, kw in given.items():
        stray = sorted(set(kw) - set(kinds[name].options))
        if stray:
            raise ValueError(
                f"make_probe_fn: options[{name!r}] has {stray}, which the {name!r} probe does not take; it "
                f"takes {sorted(kinds[name].options)}"
            )
    kw_of = {name: {**kinds[name].defaults, **given.get(name, {})} for name in probes}
    needs_lr = [name for name in probes if kinds[name].needs_lr(kw_of[name], tx)]
    if needs_lr and lr is None:
        raise ValueError(
            f"make_probe_fn: probes {needs_lr} need lr= (a float or a schedule lr(step)): the Santurkar "
            "grid is [0.5, 4]·lr, ICS takes an SGD step of lr and the sharpness threshold is 2/lr"
        )
    loss_fn = model_state_loss_fn(model, train=train, loss=loss, axis_name=axis_name)  # one function: cached
    built = {name: k.setup(model, train, kw_of[name]) for name, k in kinds.items() if k.setup is not None}
    memory: dict = {name: {} for name in probes}  # kept between calls (the sharpness probe's eigenvector)

    def probe_fn(state, batch, key) -> dict:
        keys = dict(zip(KEY_SLOTS, jax.random.split(key, len(KEY_SLOTS))))
        if axis_name is not None:
            keys["dropout"] = jax.random.fold_in(keys["dropout"], jax.lax.axis_index(axis_name))
        inputs = {"batch": batch, "batch_stats": state.batch_stats, "dropout_key": keys["dropout"]}
        step_lr = lr(state.step) if callable(lr) else lr
        traced = axis_name is not None or any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(state.params))
        out: dict = {}
        for name, kind in kinds.items():
            if kind.eager_only and traced:
                raise ValueError(
                    f"make_probe_fn: the {name!r} probe is a host loop (for 'sharpness': Hessian-vector products "
                    "that stop when λ converges, its eigenvector kept between calls); call probe_fn eagerly, "
                    "outside jit/pmap/shard_map"
                )
            own = keys[kind.key] if kind.key != "own" else jax.random.fold_in(key, zlib.crc32(name.encode()))
            call = ProbeCall(
                loss_fn, state.params, inputs, state, batch, own, step_lr, tx, axis_name, memory[name], built.get(name)
            )
            out.update(kind.run(call, dict(kw_of[name])))
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
