"""The argument checks shared by every module: names chosen from a list, rates and fractions, positive ints,
traced values, float inputs.

Each check raises eagerly, before tracing goes any further, with a message that says what is wrong, the numbers,
and how to fix it. Imports only jax and numpy, so the pure modules stay free of Flax.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_traced(value: Any) -> bool:
    """True when ``value`` is a JAX tracer (under ``jit``/``grad``/``vmap``): it cannot be checked eagerly."""
    return isinstance(value, jax.core.Tracer)


def is_concrete(tree: Any) -> bool:
    """True when no leaf of ``tree`` is a tracer (the value can be inspected eagerly)."""
    return not any(is_traced(leaf) for leaf in jax.tree.leaves(tree))


def check_choice(kind: str, value: Any, valid: Sequence[str]) -> str:
    """``value`` if it is one of ``valid``, else a ValueError that lists the valid names."""
    if not isinstance(value, str) or value not in valid:
        kinds = kind + ("es" if kind.endswith("s") else "s")
        raise ValueError(f"unknown {kind} {value!r}; valid {kinds}: {', '.join(repr(v) for v in valid)}")
    return value


def check_positive_int(where: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int; ValueError unless it is an int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{where}: {name} must be an int ≥ {minimum}, got {value!r}")
    return int(value)


def check_float_input(name: str, x: Any, what: str = "input") -> None:
    """TypeError unless ``x`` has a real floating dtype (float16/bfloat16/float32/float64).

    Integer and bool inputs would be normalized and cast back to their dtype (−1, 0, 1), complex inputs would run
    with meaningless statistics: both are refused rather than silently answered."""
    dt = jnp.result_type(x)
    if jnp.issubdtype(dt, jnp.floating):
        return
    if jnp.issubdtype(dt, jnp.complexfloating):
        raise TypeError(
            f"{name}: the {what} has complex dtype {dt}; normalization statistics (mean, variance, norms) are "
            "defined here for real values only. Normalize the real and imaginary parts as separate channels "
            "(e.g. jnp.concatenate([x.real, x.imag], -1))"
        )
    raise TypeError(
        f"{name}: the {what} has dtype {dt}, which is not a float dtype; cast to a float dtype first, "
        f"e.g. x.astype(jnp.float32) (an integer or bool result of a normalization would be rounded to −1, 0, 1)"
    )


def check_epsilon(name: str, epsilon: Any) -> float:
    """``epsilon`` as a Python float; ValueError if it is negative or not finite (1/√(σ² + ε) is then NaN/inf)."""
    if is_traced(epsilon):
        raise TypeError(
            f"{name}: epsilon must be a Python number (it is a static part of the computation), "
            "got a traced value; pass a constant such as 1e-5"
        )
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: epsilon must be a number, got {epsilon!r}") from None
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(
            f"{name}: epsilon must be a finite number >= 0 (it keeps 1/√(σ² + ε) finite), got {epsilon}; "
            "use e.g. epsilon=1e-5"
        )
    return eps


def check_train(name: str, train: Any):
    """``train`` as a Python bool, or a traced boolean scalar passed through (the caller branches with
    ``lax.cond``). Anything else (``'no'``, ``1``, ``None``, an array of several flags) is a TypeError: a truthy
    string silently selecting training mode is the bug this prevents."""
    if isinstance(train, (bool, np.bool_)):
        return bool(train)
    dt = getattr(train, "dtype", None)
    shape = getattr(train, "shape", None)
    if dt is not None and shape == () and jnp.issubdtype(dt, jnp.bool_):
        if is_traced(train):
            return train
        return bool(train)
    got = f"{train!r} ({type(train).__name__}"
    got += f", dtype {dt}, shape {shape})" if dt is not None else ")"
    raise TypeError(
        f"{name}: train must be a Python bool (True for training mode, False for eval) or a traced boolean "
        f"scalar, got {got}; pass train=True or train=False"
    )


def check_gaussian_rate(name: str, rate: Any) -> None:
    """ValueError for a static ``rate >= 1`` of Gaussian dropout, whose noise variance rate/(1 − rate) is infinite at 1
    (layers call it at construction, so that eval-only use does not hide it)."""
    if not is_traced(rate) and float(rate) >= 1.0:
        raise ValueError(
            f"{name}: rate must be < 1 (the noise variance rate/(1 − rate) is infinite at 1), got {rate}; "
            "use a rate in [0, 1), e.g. 0.5"
        )


def check_rate(name: str, rate: Any) -> None:
    """ValueError unless a static ``rate`` lies in [0, 1]; a traced rate is clipped where used."""
    if is_traced(rate):
        return
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: rate must be a number in [0, 1], got {rate!r}") from None
    if not 0.0 <= r <= 1.0 or math.isnan(r):
        raise ValueError(
            f"{name}: rate must be in [0, 1] (the probability of dropping a unit), got {rate}; "
            "rate 0 keeps everything, rate 1 drops everything"
        )


def check_groups(name: str, channels: int, num_groups: int | None, group_size: int | None) -> int:
    """The number of groups G of a group norm over ``channels`` channels given exactly one of ``num_groups`` and
    ``group_size``; ValueError naming the divisors of ``channels`` otherwise."""
    if (num_groups is None) == (group_size is None):
        raise ValueError(
            f"{name}: give exactly one of num_groups and group_size (got num_groups={num_groups}, "
            f"group_size={group_size}); e.g. num_groups=32 (Wu & He's default), or group_size=16"
        )
    divisors = [d for d in range(1, channels + 1) if channels % d == 0]
    if group_size is not None:
        if not isinstance(group_size, int) or group_size <= 0 or channels % group_size:
            raise ValueError(
                f"{name}: {channels} channels are not divisible by group_size={group_size}; choose a divisor of "
                f"{channels}: {divisors}"
            )
        return channels // group_size
    if not isinstance(num_groups, int) or num_groups <= 0 or channels % num_groups:
        near = min(divisors, key=lambda d: (abs(d - (num_groups if isinstance(num_groups, int) else 1)), -d))
        raise ValueError(
            f"{name}: {channels} channels are not divisible by num_groups={num_groups}; choose a divisor of "
            f"{channels} such as {near} (divisors: {divisors})"
        )
    return num_groups


def check_momentum(name: str, momentum: Any):
    """``momentum`` if it is None (a cumulative average), traced, or a number in [0, 1]; ValueError otherwise."""
    if momentum is None or is_traced(momentum):
        return momentum
    try:
        m = float(momentum)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: momentum must be a number in [0, 1] or None, got {momentum!r}") from None
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"{name}: momentum must be in [0, 1] (or None for a cumulative average), got {momentum}")
    return momentum


# ---- the autoencoder objective's coefficients (jaxnorm.losses) -----------------------------------------------------


def _check_static(value: Any, where: str, ok, what: str, hint: str) -> None:
    """ValueError unless a static ``value`` is a number with ``ok(value)``; a traced value passes."""
    if is_traced(value):
        return
    v = float(value)
    if math.isnan(v) or not ok(v):
        raise ValueError(f"{where}: {what}, got {value}; {hint}")


def check_rho(rho: Any, where: str = "sparsity_penalty") -> None:
    """ValueError unless a static sparsity target ``rho`` lies strictly inside (0, 1)."""
    _check_static(
        rho,
        where,
        lambda r: 0.0 < r < 1.0,
        "the target activation rho must be strictly inside (0, 1) (a "
        "Bernoulli mean; KL(rho||rho_hat) is undefined or infinite otherwise)",
        "use e.g. rho=0.05",
    )


def check_beta(beta: Any, where: str = "sparsity_penalty") -> None:
    """ValueError unless a static sparsity weight ``beta`` is >= 0."""
    _check_static(
        beta,
        where,
        lambda b: b >= 0.0,
        "the sparsity weight beta must be >= 0",
        "use e.g. beta=3.0, or beta=0 for no sparsity penalty",
    )


def check_fraction(fraction: Any, where: str = "masking_noise") -> None:
    """ValueError unless a static masking fraction lies in [0, 1)."""
    _check_static(
        fraction,
        where,
        lambda f: 0.0 <= f < 1.0,
        "the masking fraction (share of input components set to zero) must be in [0, 1)",
        "0 is no corruption, 0.1-0.5 is usual (1 would zero every input)",
    )


def check_weight_decay(lam: Any, where: str = "weight_decay") -> None:
    """ValueError unless a static weight-decay coefficient is >= 0."""
    _check_static(
        lam, where, lambda v: v >= 0.0, "the weight-decay coefficient must be >= 0", "use e.g. 1e-4, or 0 for none"
    )
