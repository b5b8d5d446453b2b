"""Statistics for results a reviewer would accept: paired differences over shared seeds, confidence intervals (t or
bootstrap), success rates that count diverged and chance-level runs as failures, reach times with censoring, and a
three-way verdict per claim.

Conventions: a run's outcome is one number (final accuracy, steps to a target, …) keyed by its seed; arms of one
experiment share seeds, so a comparison is the per-seed difference ``b_s − a_s`` (the seed's data order and
initialization cancel), never the difference of two unpaired means. Intervals are two-sided at ``level`` (0.95).

A verdict is ``'holds'`` when the interval excludes zero in the paper's direction and the claim's own criterion is
met, ``'fails'`` when it excludes zero the other way, and ``'inconclusive'`` otherwise: the absence of a significant
difference is never read as equivalence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as _st

VERDICTS = ("holds", "inconclusive", "fails")
DIRECTIONS = ("greater", "less")


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    level: float
    method: str

    def excludes_zero(self) -> int:
        """+1 if the whole interval is above zero, −1 if below, 0 if it contains zero."""
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def __str__(self) -> str:
        return f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}] ({100 * self.level:g}% {self.method}, n={self.n})"


def _finite(where: str, x) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{where}: no values")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{where}: {int(np.sum(~np.isfinite(a)))} of {a.size} values are NaN or infinite; count "
                         "diverged runs with success_rate, or pass their outcome explicitly")
    return a


def _check_level(where: str, level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"{where}: level must be in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def mean_ci(x, *, level: float = 0.95, method: str = "t", num_resamples: int = 10_000, seed: int = 0) -> Interval:
    """The mean of ``x`` with a confidence interval: ``'t'``, ``x̄ ± t_{n−1, (1+level)/2} · s/√n`` (Student), or
    ``'bootstrap'``, the percentile interval of the means of ``num_resamples`` resamples with replacement (seeded:
    the same numbers every call). Needs at least 2 values."""
    where = "mean_ci"
    a = _finite(where, x)
    level = _check_level(where, level)
    if a.size < 2:
        raise ValueError(f"{where}: an interval needs at least 2 values, got {a.size}; run more seeds")
    m = float(a.mean())
    if method == "t":
        half = float(_st.t.ppf((1 + level) / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
        return Interval(m, m - half, m + half, a.size, level, "t")
    if method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = a[rng.integers(0, a.size, (num_resamples, a.size))].mean(axis=1)
        lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
        return Interval(m, float(lo), float(hi), a.size, level, "bootstrap")
    raise ValueError(f"{where}: method must be 't' or 'bootstrap', got {method!r}")


def paired_differences(a: Mapping, b: Mapping) -> dict:
    """``{seed: b[seed] − a[seed]}`` over the seeds both arms ran; a ValueError naming the seeds when they share
    none (an unpaired comparison is not what this module makes)."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(f"paired_differences: the arms share no seed (a: {sorted(a)}, b: {sorted(b)}); run both "
                         "arms with the same seeds")
    return {s: float(b[s]) - float(a[s]) for s in common}


def success_rate(outcomes: Sequence[float], *, chance: float | None = None, margin: float = 0.0,
                 level: float = 0.95) -> dict:
    """The fraction of runs that succeeded, with a Wilson score interval. A run fails when its outcome is NaN or
    infinite (diverged) or, with ``chance`` (the chance-level accuracy, e.g. 0.1 for 10 classes), when it is at most
    ``chance + margin`` (stuck at chance): neither is dropped, so a mean over the survivors is never the only
    figure. Returns ``{'successes', 'n', 'diverged', 'at_chance', 'rate', 'low', 'high'}``."""
    a = np.asarray(outcomes, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("success_rate: no runs")
    level = _check_level("success_rate", level)
    diverged = ~np.isfinite(a)
    at_chance = np.zeros_like(diverged) if chance is None else (~diverged & (np.nan_to_num(a) <= chance + margin))
    ok = int(np.sum(~diverged & ~at_chance))
    lo, hi = wilson_interval(ok, a.size, level)
    return {"successes": ok, "n": int(a.size), "diverged": int(diverged.sum()), "at_chance": int(at_chance.sum()),
            "rate": ok / a.size, "low": lo, "high": hi}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (good at small ``n`` and at 0 or ``n`` successes)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(_st.norm.ppf((1 + level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_se(accuracy: float, num_test: int) -> float:
    """The standard error of an accuracy measured on ``num_test`` independent test examples, ``√(p(1−p)/n)``: the
    test set's noise floor (0.0068 at p = 0.983 on digits' 360 test images)."""
    if num_test <= 0 or not 0 <= accuracy <= 1:
        raise ValueError(f"binomial_se: need 0 <= accuracy <= 1 and num_test > 0, got {accuracy}, {num_test}")
    return math.sqrt(accuracy * (1 - accuracy) / num_test)


def reach_time(steps: Sequence[int], values: Sequence[float], target: float, *, higher_is_better: bool = True):
    """``(step, reached)``: the first logged step whose value reaches ``target``, or ``(last step, False)`` when the
    run never does (right-censored at the end of the run; a NaN counts as not reached)."""
    s, v = np.asarray(steps), np.asarray(values, np.float64)
    if s.size == 0 or s.size != v.size:
        raise ValueError(f"reach_time: need equal, non-empty steps and values, got {s.size} and {v.size}")
    hit = (v >= target) if higher_is_better else (v <= target)
    hit &= np.isfinite(v)
    if hit.any():
        return int(s[np.argmax(hit)]), True
    return int(s[-1]), False


def kaplan_meier_median(times: Sequence[float], reached: Sequence[bool]) -> float:
    """The Kaplan–Meier estimate of the median time to an event (reaching a target), with runs that never reached
    it right-censored at their last step: ``inf`` when the survival curve never falls to 0.5 (fewer than half
    reached it), never a mean over the runs that happened to reach it."""
    t = np.asarray(times, np.float64)
    e = np.asarray(reached, bool)
    if t.size == 0 or t.size != e.size:
        raise ValueError(f"kaplan_meier_median: need equal, non-empty times and flags, got {t.size} and {e.size}")
    survival = 1.0
    for u in np.unique(t[e]):
        at_risk = np.sum(t >= u)
        survival *= 1 - np.sum((t == u) & e) / at_risk
        if survival <= 0.5:
            return float(u)
    return math.inf


def verdict(interval: Interval, direction: str, criterion_met: bool = True) -> str:
    """``'holds'`` if the interval excludes zero in ``direction`` (``'greater'``: the paper says b > a) and the
    claim's criterion is met; ``'fails'`` if it excludes zero the other way; else ``'inconclusive'``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"verdict: direction must be one of {DIRECTIONS}, got {direction!r}")
    side = interval.excludes_zero() * (1 if direction == "greater" else -1)
    if side > 0:
        return "holds" if criterion_met else "inconclusive"
    return "fails" if side < 0 else "inconclusive"


def equivalence_verdict(interval: Interval, margin: float) -> str:
    """An equivalence claim ("no difference") with a pre-registered margin (two one-sided tests at the interval's
    level): ``'holds'`` when the whole interval lies inside ``(−margin, margin)``, ``'fails'`` when it lies wholly
    outside, ``'inconclusive'`` otherwise — a non-significant difference alone never makes two arms equal."""
    if not margin > 0:
        raise ValueError(f"equivalence_verdict: the margin must be positive, got {margin!r}")
    if -margin < interval.low and interval.high < margin:
        return "holds"
    if interval.low >= margin or interval.high <= -margin:
        return "fails"
    return "inconclusive"


def compare(a: Mapping, b: Mapping, *, direction: str, level: float = 0.95, method: str = "t",
            criterion=None) -> dict:
    """A paired comparison of two arms (``{seed: outcome}`` each): the per-seed differences ``b − a``, their mean
    with a confidence interval, and the verdict (``criterion(interval) -> bool``, e.g. a minimum effect size, must
    also hold). Returns ``{'differences', 'interval', 'verdict', 'text'}``; ``text`` is one line with the numbers."""
    diffs = paired_differences(a, b)
    ci = mean_ci(list(diffs.values()), level=level, method=method)
    met = True if criterion is None else bool(criterion(ci))
    v = verdict(ci, direction, met)
    text = f"b − a = {ci} → {v}" + ("" if met else " (criterion not met)")
    return {"differences": diffs, "interval": ci, "verdict": v, "text": text}
