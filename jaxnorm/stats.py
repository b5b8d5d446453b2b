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

__all__ = [
    "DIRECTIONS",
    "VERDICTS",
    "Interval",
    "binomial_se",
    "compare",
    "equivalence_verdict",
    "kaplan_meier_median",
    "mean_ci",
    "paired_differences",
    "reach_time",
    "success_rate",
    "verdict",
    "wilson_interval",
]


@dataclasses.dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval.

    Args:
      estimate: the point estimate (e.g. a mean).
      low: the lower bound.
      high: the upper bound.
      n: the number of values behind it.
      level: the confidence level, e.g. 0.95.
      method: how it was computed (``'t'``, ``'bootstrap'``).

    Examples:
    >>> from jaxnorm.stats import Interval
    >>> print(Interval(0.5, 0.1, 0.9, 5, 0.95, 't'))
    +0.5 [+0.1, +0.9] (95% t, n=5)
    """

    estimate: float
    low: float
    high: float
    n: int
    level: float
    method: str

    def excludes_zero(self) -> int:
        """+1 if the whole interval is above zero, −1 if below, 0 if it contains zero.

        Returns:
          An int in {−1, 0, 1}.

        Examples:
        >>> from jaxnorm.stats import Interval
        >>> above, across = Interval(0.5, 0.1, 0.9, 5, 0.95, 't'), Interval(0.1, -0.2, 0.4, 5, 0.95, 't')
        >>> above.excludes_zero(), across.excludes_zero()
        (1, 0)
        """
        return 1 if self.low > 0 else -1 if self.high < 0 else 0

    def __str__(self) -> str:
        return (
            f"{self.estimate:+.4g} [{self.low:+.4g}, {self.high:+.4g}] "
            f"({100 * self.level:g}% {self.method}, n={self.n})"
        )


def _finite(where: str, x) -> np.ndarray:
    a = np.asarray(x, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f"{where}: no values")
    if not np.all(np.isfinite(a)):
        raise ValueError(
            f"{where}: {int(np.sum(~np.isfinite(a)))} of {a.size} values are NaN or infinite; count "
            "diverged runs with success_rate, or pass their outcome explicitly"
        )
    return a


def _check_level(where: str, level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"{where}: level must be in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def mean_ci(x, *, level: float = 0.95, method: str = "t", num_resamples: int = 10_000, seed: int = 0) -> Interval:
    """The mean of ``x`` with a two-sided confidence interval.

    Formula: ``'t'``: ``x̄ ± t_(n−1, (1+level)/2) · s/√n`` (Student; ``s`` the sample standard deviation);
    ``'bootstrap'``: the ``(1 ± level)/2`` quantiles of the means of ``num_resamples`` resamples with replacement
    (seeded: the same numbers every call).

    Reduces over: every value of ``x`` (flattened).

    Reference: Student (1908), The Probable Error of a Mean; Efron & Tibshirani (1993), An Introduction to the
    Bootstrap.

    Args:
      x: the values (at least 2, finite).
      level: the confidence level in (0, 1).
      method: ``'t'`` or ``'bootstrap'``.
      num_resamples: bootstrap resamples.
      seed: the bootstrap's seed.

    Returns:
      An :class:`Interval`.

    Raises:
      ValueError: no values, a NaN or infinite value, fewer than 2 values, ``level`` outside (0, 1), an unknown
        ``method``.

    Examples:
    >>> from jaxnorm.stats import mean_ci
    >>> ci = mean_ci([1.0, 2.0, 3.0])                  # 2 ± t(2, 0.975)·1/√3
    >>> round(ci.estimate, 3), round(ci.low, 3), round(ci.high, 3)
    (2.0, -0.484, 4.484)
    """
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
    """The per-seed differences of two arms, ``{seed: b[seed] − a[seed]}``, over the seeds both ran.

    Formula: ``d_s = b_s − a_s`` for ``s`` in ``seeds(a) ∩ seeds(b)`` (the seed's data order and initialization
    cancel).

    Args:
      a: ``{seed: outcome}`` of the first arm.
      b: ``{seed: outcome}`` of the second arm.

    Returns:
      A dict ``{seed: float}``, sorted by seed.

    Raises:
      ValueError: the arms share no seed.

    Examples:
    >>> from jaxnorm.stats import paired_differences
    >>> d = paired_differences({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.95, 1: 0.9})   # seed 2 ran in one arm only
    >>> {seed: round(v, 3) for seed, v in d.items()}
    {0: 0.05, 1: 0.1}
    """
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError(
            f"paired_differences: the arms share no seed (a: {sorted(a)}, b: {sorted(b)}); run both "
            "arms with the same seeds"
        )
    return {s: float(b[s]) - float(a[s]) for s in common}


def success_rate(
    outcomes: Sequence[float], *, chance: float | None = None, margin: float = 0.0, level: float = 0.95
) -> dict:
    """The fraction of runs that succeeded, with a Wilson score interval; diverged and chance-level runs fail.

    Formula: a run fails when its outcome is NaN or infinite (diverged) or, with ``chance``, at most
    ``chance + margin`` (stuck at chance); ``rate = successes / n`` and ``[low, high]`` is :func:`wilson_interval`.
    No run is dropped, so a mean over the survivors is never the only figure.

    Reduces over: the runs.

    Reference: Wilson (1927), Probable Inference, the Law of Succession, and Statistical Inference.

    Args:
      outcomes: one outcome per run (e.g. final accuracies).
      chance: the chance-level outcome (e.g. 0.1 for 10 classes), or None.
      margin: how far above ``chance`` a run must be to succeed.
      level: the confidence level in (0, 1).

    Returns:
      ``{'successes', 'n', 'diverged', 'at_chance', 'rate', 'low', 'high'}``.

    Raises:
      ValueError: no runs; ``level`` outside (0, 1).

    Examples:
    >>> from jaxnorm.stats import success_rate
    >>> r = success_rate([0.9, float('nan'), 0.1, 0.95], chance=0.1, margin=0.02)
    >>> r['successes'], r['diverged'], r['at_chance'], r['rate']
    (2, 1, 1, 0.5)
    """
    a = np.asarray(outcomes, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("success_rate: no runs")
    level = _check_level("success_rate", level)
    diverged = ~np.isfinite(a)
    at_chance = np.zeros_like(diverged) if chance is None else (~diverged & (np.nan_to_num(a) <= chance + margin))
    ok = int(np.sum(~diverged & ~at_chance))
    lo, hi = wilson_interval(ok, a.size, level)
    return {
        "successes": ok,
        "n": int(a.size),
        "diverged": int(diverged.sum()),
        "at_chance": int(at_chance.sum()),
        "rate": ok / a.size,
        "low": lo,
        "high": hi,
    }


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (good at small ``n`` and at 0 or ``n`` successes).

    Formula: with ``p = successes/n`` and ``z = Φ⁻¹((1 + level)/2)``: centre ``(p + z²/2n)/(1 + z²/n)``, half-width
    ``z·√(p(1−p)/n + z²/4n²)/(1 + z²/n)``, clipped to [0, 1].

    Reference: Wilson (1927), Probable Inference, the Law of Succession, and Statistical Inference.

    Args:
      successes: the number of successes, ``0 ≤ successes ≤ n``.
      n: the number of trials (positive).
      level: the confidence level.

    Returns:
      ``(low, high)``.

    Raises:
      ValueError: ``n ≤ 0`` or ``successes`` outside ``[0, n]``.

    Examples:
    >>> from jaxnorm.stats import wilson_interval
    >>> [round(v, 3) for v in wilson_interval(5, 5)]          # all 5 succeeded: not [1, 1]
    [0.566, 1.0]
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(_st.norm.ppf((1 + level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_se(accuracy: float, num_test: int) -> float:
    """The standard error of an accuracy measured on ``num_test`` independent test examples: the test set's noise floor.

    Formula: ``√(p(1−p)/n)`` with ``p`` the accuracy and ``n = num_test``.

    Args:
      accuracy: the accuracy ``p`` in [0, 1].
      num_test: the number of test examples (positive).

    Returns:
      A float.

    Raises:
      ValueError: ``accuracy`` outside [0, 1] or ``num_test ≤ 0``.

    Examples:
    >>> from jaxnorm.stats import binomial_se
    >>> round(binomial_se(0.983, 360), 4)                     # digits' 360 test images
    0.0068
    """
    if num_test <= 0 or not 0 <= accuracy <= 1:
        raise ValueError(f"binomial_se: need 0 <= accuracy <= 1 and num_test > 0, got {accuracy}, {num_test}")
    return math.sqrt(accuracy * (1 - accuracy) / num_test)


def reach_time(steps: Sequence[int], values: Sequence[float], target: float, *, higher_is_better: bool = True):
    """The first logged step whose value reaches ``target``, or the last step, right-censored, when none does.

    Formula: ``min {s_i : v_i ≥ target}`` (``≤`` when lower is better; a NaN never reaches it).

    Args:
      steps: the logged steps.
      values: the metric at those steps (as many as ``steps``).
      target: the value to reach.
      higher_is_better: whether reaching means ``≥`` (True) or ``≤`` (False).

    Returns:
      ``(step, reached)``: ``(last step, False)`` when the run never reaches the target.

    Raises:
      ValueError: empty inputs or ``steps`` and ``values`` of different lengths.

    Examples:
    >>> from jaxnorm.stats import reach_time
    >>> reach_time([100, 200, 300], [0.5, 0.91, 0.95], 0.9)
    (200, True)
    >>> reach_time([100, 200, 300], [0.5, 0.6, float('nan')], 0.9)
    (300, False)
    """
    s, v = np.asarray(steps), np.asarray(values, np.float64)
    if s.size == 0 or s.size != v.size:
        raise ValueError(f"reach_time: need equal, non-empty steps and values, got {s.size} and {v.size}")
    hit = (v >= target) if higher_is_better else (v <= target)
    hit &= np.isfinite(v)
    if hit.any():
        return int(s[np.argmax(hit)]), True
    return int(s[-1]), False


def kaplan_meier_median(times: Sequence[float], reached: Sequence[bool]) -> float:
    """The Kaplan–Meier estimate of the median time to reach a target, runs that never reached it right-censored.

    Formula: ``S(t) = Π_(u ≤ t) (1 − e_u / r_u)`` over the event times ``u`` (``e_u`` runs reaching the target at
    ``u``, ``r_u`` runs still at risk); the median is the first ``u`` with ``S(u) ≤ 0.5``, ``inf`` when the curve
    never falls to 0.5 (fewer than half reached it) — never a mean over the runs that happened to reach it.

    Reduces over: the runs.

    Reference: Kaplan & Meier (1958), Nonparametric Estimation from Incomplete Observations.

    Args:
      times: each run's reach time, or its last step when it did not reach the target.
      reached: whether each run reached it.

    Returns:
      A float (``math.inf`` when the median is not reached).

    Raises:
      ValueError: empty inputs or inputs of different lengths.

    Examples:
    >>> from jaxnorm.stats import kaplan_meier_median
    >>> kaplan_meier_median([100, 200, 300, 400], [True, True, False, False])
    200.0
    >>> kaplan_meier_median([100, 400, 400], [True, False, False])
    inf
    """
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
    """The three-way verdict of a directional claim from a confidence interval.

    Formula: ``'holds'`` if the interval excludes zero in ``direction`` (``'greater'``: the paper says b > a) and
    the claim's criterion is met (``'inconclusive'`` if it is not); ``'fails'`` if it excludes zero the other way;
    else ``'inconclusive'`` (no significant difference is never read as equivalence).

    Args:
      interval: the :class:`Interval` of the difference ``b − a``.
      direction: ``'greater'`` or ``'less'``.
      criterion_met: the claim's own criterion (e.g. a minimum effect size).

    Returns:
      ``'holds'``, ``'inconclusive'`` or ``'fails'``.

    Raises:
      ValueError: an unknown ``direction``.

    Examples:
    >>> from jaxnorm.stats import Interval, verdict
    >>> ci = Interval(0.5, 0.1, 0.9, 5, 0.95, 't')
    >>> verdict(ci, 'greater'), verdict(ci, 'less'), verdict(ci, 'greater', criterion_met=False)
    ('holds', 'fails', 'inconclusive')
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"verdict: direction must be one of {DIRECTIONS}, got {direction!r}")
    side = interval.excludes_zero() * (1 if direction == "greater" else -1)
    if side > 0:
        return "holds" if criterion_met else "inconclusive"
    return "fails" if side < 0 else "inconclusive"


def equivalence_verdict(interval: Interval, margin: float) -> str:
    """The verdict of an equivalence claim ("no difference") with a pre-registered margin.

    Formula: two one-sided tests at the interval's level: ``'holds'`` when the whole interval lies inside
    ``(−margin, margin)``, ``'fails'`` when it lies wholly outside, ``'inconclusive'`` otherwise.

    Reference: Schuirmann (1987), A Comparison of the Two One-Sided Tests Procedure and the Power Approach for
    Assessing the Equivalence of Average Bioavailability.

    Args:
      interval: the :class:`Interval` of the difference.
      margin: the equivalence margin (positive).

    Returns:
      ``'holds'``, ``'inconclusive'`` or ``'fails'``.

    Raises:
      ValueError: a non-positive ``margin``.

    Examples:
    >>> from jaxnorm.stats import Interval, equivalence_verdict
    >>> equivalence_verdict(Interval(0.0, -0.01, 0.02, 5, 0.95, 't'), 0.05)
    'holds'
    >>> equivalence_verdict(Interval(0.0, -0.1, 0.1, 5, 0.95, 't'), 0.05)
    'inconclusive'
    """
    if not margin > 0:
        raise ValueError(f"equivalence_verdict: the margin must be positive, got {margin!r}")
    if -margin < interval.low and interval.high < margin:
        return "holds"
    if interval.low >= margin or interval.high <= -margin:
        return "fails"
    return "inconclusive"


def compare(a: Mapping, b: Mapping, *, direction: str, level: float = 0.95, method: str = "t", criterion=None) -> dict:
    """A paired comparison of two arms over shared seeds, with its interval and verdict.

    Formula: the per-seed differences ``d_s = b_s − a_s`` (:func:`paired_differences`), their mean with a
    confidence interval (:func:`mean_ci`) and :func:`verdict` in ``direction``, with ``criterion(interval)`` as the
    claim's criterion.

    Reduces over: the seeds both arms ran.

    Args:
      a: ``{seed: outcome}`` of the first arm.
      b: ``{seed: outcome}`` of the second arm.
      direction: ``'greater'`` (the claim: b > a) or ``'less'``.
      level: the confidence level.
      method: ``'t'`` or ``'bootstrap'``.
      criterion: ``criterion(interval) -> bool``, e.g. a minimum effect size; None for none.

    Returns:
      ``{'differences', 'interval', 'verdict', 'text'}``; ``text`` is one line with the numbers.

    Raises:
      ValueError: no shared seed, fewer than 2 of them, a non-finite outcome, a bad ``level``, ``method`` or
        ``direction``.

    Examples:
    >>> from jaxnorm.stats import compare
    >>> res = compare({0: 0.90, 1: 0.91, 2: 0.89}, {0: 0.95, 1: 0.97, 2: 0.94}, direction='greater')
    >>> res['verdict'], round(res['interval'].estimate, 3)
    ('holds', 0.053)
    """
    diffs = paired_differences(a, b)
    ci = mean_ci(list(diffs.values()), level=level, method=method)
    met = True if criterion is None else bool(criterion(ci))
    v = verdict(ci, direction, met)
    text = f"b − a = {ci} → {v}" + ("" if met else " (criterion not met)")
    return {"differences": diffs, "interval": ci, "verdict": v, "text": text}
