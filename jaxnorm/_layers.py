"""What the three layer families (:mod:`jaxnorm.nn`, :mod:`jaxnorm.nnx`, :mod:`jaxnorm.eqx`) share: the train/eval
flag merging and checking, and the batch-norm momentum option.

Each family names its switch its own way (linen ``train``, NNX ``use_running_average`` / ``deterministic`` /
``update_stats``, Equinox ``inference``); :func:`mode` merges the layer's value with the call's, checks it, and
returns the ``train`` flag the pure functions take, with error messages in the family's own names. Imports no
Flax or Equinox.
"""

from __future__ import annotations

from typing import Any

from jaxnorm._checks import check_momentum, check_train

# what a flag set to True means, for the error messages
_MEANING = {
    "train": "True for training mode, False for eval",
    "use_running_average": "True for eval with the running statistics, False for training with batch statistics",
    "deterministic": "True for eval without randomness, False for training",
    "update_stats": "True in training (store the new statistics), False in eval",
    "inference": "True for inference, False for training",
}

# the flags whose True means "not training"
_NEGATED = frozenset({"use_running_average", "deterministic", "inference"})


def _describe(value: Any) -> str:
    dt, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    return f"{value!r} ({type(value).__name__}" + (f", dtype {dt}, shape {shape})" if dt is not None else ")")


def check_flag(layer: str, flag: str, value: Any):
    """``value`` as a Python bool, or a traced boolean scalar passed through (as :func:`jaxnorm._checks.check_train`
    accepts); anything else is a TypeError that names ``flag``, the layer's own argument."""
    try:
        return check_train(layer, value)
    except TypeError:
        raise TypeError(
            f"{layer}: {flag} must be a Python bool ({_MEANING.get(flag, 'True or False')}) or a traced boolean "
            f"scalar, got {_describe(value)}; pass {flag}=True or {flag}=False"
        ) from None


def merge(layer: str, flag: str, attr: Any, call: Any, *, exclusive: bool = False, missing: str | None = None):
    """The flag's value from the layer's attribute ``attr`` and the call's argument ``call``.

    ``exclusive=True`` (linen, ``flax.linen.merge_param``'s rule and messages): exactly one of the two must be
    given. Otherwise (NNX, Equinox) the call's value wins over the attribute's. When neither is given and
    ``missing`` is a hint, a ValueError names the flag and the hint; with no hint None goes on to the check.
    """
    if exclusive:
        if attr is None and call is None:
            raise ValueError(f'Parameter "{flag}" must be passed to the constructor or at call time.')
        if attr is not None and call is not None:
            raise ValueError(
                f'Parameter "{flag}" was passed to the constructor and at call time. Should be passed just once.'
            )
    value = attr if call is None else call
    if value is None and missing is not None:
        raise ValueError(f"{layer}: no {flag} was given; {missing}")
    return value


def mode(layer: str, flag: str, attr: Any, call: Any, *, exclusive: bool = False, missing: str | None = None):
    """``train`` for the pure functions from the layer's flag (see :func:`merge`), checked by :func:`check_flag`:
    a Python bool, or a traced boolean scalar (the pure functions then pick the mode with ``lax.cond``). Flags that
    mean "not training" (``use_running_average``, ``deterministic``, ``inference``) are negated."""
    value = check_flag(layer, flag, merge(layer, flag, attr, call, exclusive=exclusive, missing=missing))
    if flag not in _NEGATED:
        return value
    if isinstance(value, bool):
        return not value
    import jax.numpy as jnp  # a traced flag

    return jnp.logical_not(value)


def static_mode(layer: str, flag: str, attr: Any, call: Any, *, traced: str, **kw) -> bool:
    """:func:`mode` for a flag that must be a Python bool (it decides what is stored or drawn); a traced value is
    the TypeError ``f"{layer}: {traced}"``."""
    train = mode(layer, flag, attr, call, **kw)
    if not isinstance(train, bool):
        raise TypeError(f"{layer}: {traced}")
    return train


def check_batch_momentum(layer: str, momentum: Any):
    """A batch norm's ``momentum`` as given: ``'auto'``, None (a cumulative average), or a number in [0, 1]."""
    return momentum if _is_auto(momentum) else check_momentum(layer, momentum)


def momentum_option(layer: str, momentum: Any) -> dict:
    """The ``momentum`` keyword for :func:`jaxnorm.batch_norm`: none for ``'auto'`` (the pure function's default
    for the convention: 0.99 for ``'flax'``, 0.1 for ``'pytorch'``), else ``{'momentum': momentum}``, checked."""
    return {} if _is_auto(momentum) else {"momentum": check_momentum(layer, momentum)}


def _is_auto(momentum: Any) -> bool:
    return isinstance(momentum, str) and momentum == "auto"
