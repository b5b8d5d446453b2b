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
    "MAGNITUDE_NOT_REPRODUCED",
    "VERDICTS",
    "Interval",
    "binomial_se",
    "compare",
    "crossed_bootstrap_ci",
    "equivalence_verdict",
    "fisher_exact",
    "holm",
    "kaplan_meier_median",
    "magnitude_verdict",
    "mean_ci",
    "paired_differences",
    "ratio_ci",
    "reach_time",
    "seeds_for_power",
    "signed_rank",
    "success_rate",
    "t_test_p",
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
      ``{'differences', 'interval', 'verdict', 'text', 'p'}``; ``text`` is one line with the numbers, ``p`` the
      one-sided p-value of the paired t test in ``direction`` (:func:`t_test_p`; for Holm over a family).

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
    p = t_test_p(list(diffs.values()), direction=direction)
    return {"differences": diffs, "interval": ci, "verdict": v, "text": text, "p": p}


def t_test_p(values, *, direction: str, null: float = 0.0) -> float:
    """The p-value of the one-sample t test of ``mean(values) = null``, e.g. on paired per-seed differences (the
    test behind :func:`mean_ci`'s t interval: the one-sided p is below α exactly when the level ``1 − 2α``
    interval excludes ``null`` on that side).

    Formula: ``t = (x̄ − null) / (s / √n)``, ``s`` the standard deviation with ddof=1, referred to Student's t with
    ``n − 1`` degrees of freedom: ``P(T ≥ t)`` for ``'greater'``, ``P(T ≤ t)`` for ``'less'``, ``2·P(T ≥ |t|)`` for
    ``'two-sided'``. Zero spread: 0 when every value lies beyond ``null`` on the tested side, else 1.

    Reduces over: the values (seeds).

    Args:
      values: the finite values, at least 2 (a mapping's values, or a sequence).
      direction: ``'greater'`` (the alternative: mean > null), ``'less'`` or ``'two-sided'``.
      null: the mean under the null hypothesis (e.g. a paper's effect, to test against its magnitude).

    Returns:
      The p-value in [0, 1].

    Raises:
      ValueError: fewer than 2 values, a non-finite one, an unknown ``direction``.

    Examples:
    >>> from jaxnorm.stats import t_test_p
    >>> round(t_test_p([0.1, 0.3, 0.2, 0.4], direction='greater'), 4)
    0.0152
    """
    where = "t_test_p"
    _check_direction(where, direction)
    x = _finite(where, list(values.values()) if isinstance(values, Mapping) else values)
    if x.size < 2:
        raise ValueError(f"{where}: need at least 2 values (seeds), got {x.size}")
    diff, sd = float(x.mean()) - null, float(x.std(ddof=1))
    if sd == 0.0:
        beyond = {"greater": diff > 0, "less": diff < 0, "two-sided": diff != 0}[direction]
        return 0.0 if beyond else 1.0
    t = diff / (sd / math.sqrt(x.size))
    df = x.size - 1
    if direction == "greater":
        return float(_st.t.sf(t, df))
    if direction == "less":
        return float(_st.t.cdf(t, df))
    return float(min(1.0, 2 * _st.t.sf(abs(t), df)))


def holm(p_values, *, alpha: float = 0.05):
    """Holm's step-down adjustment of a family of p-values (the family-wise error rate held at ``alpha``).

    Formula: with the ``m`` p-values sorted ascending, ``p_(1) ≤ … ≤ p_(m)``, the adjusted value of the ``i``-th is
    ``max_(j ≤ i) min(1, (m − j + 1)·p_(j))``; a hypothesis is rejected when its adjusted value is ≤ ``alpha``
    (the same as Holm's sequential rule: reject while ``p_(i) ≤ alpha/(m − i + 1)``, stop at the first that is not).

    Reduces over: the family (every p-value given).

    Reference: Holm (1979), A Simple Sequentially Rejective Multiple Test Procedure.

    Args:
      p_values: a sequence of p-values in [0, 1], or a mapping ``{claim: p}``.
      alpha: the family-wise error rate, in (0, 1).

    Returns:
      ``(adjusted, reject)`` in the input's structure: two lists, or two dicts keyed like ``p_values``.

    Raises:
      ValueError: no p-values, a p-value outside [0, 1] or NaN, ``alpha`` outside (0, 1).

    Examples:
    >>> from jaxnorm.stats import holm
    >>> adjusted, reject = holm([0.01, 0.04, 0.03, 0.005])
    >>> [round(p, 3) for p in adjusted], reject
    ([0.03, 0.06, 0.06, 0.02], [True, False, False, True])
    """
    keys = list(p_values) if isinstance(p_values, Mapping) else None
    p = np.asarray([p_values[k] for k in keys] if keys is not None else list(p_values), np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("holm: no p-values")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"holm: p-values must be in [0, 1], got {p.tolist()}")
    if not 0 < alpha < 1:
        raise ValueError(f"holm: alpha must be in (0, 1), e.g. 0.05, got {alpha!r}")
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    reject = adjusted <= alpha
    if keys is not None:
        return {k: float(a) for k, a in zip(keys, adjusted)}, {k: bool(r) for k, r in zip(keys, reject)}
    return [float(a) for a in adjusted], [bool(r) for r in reject]


def _check_direction(where: str, direction: str) -> str:
    if direction not in (*DIRECTIONS, "two-sided"):
        raise ValueError(f"{where}: direction must be 'greater', 'less' or 'two-sided', got {direction!r}")
    return direction


def fisher_exact(successes_a: int, n_a: int, successes_b: int, n_b: int, *, direction: str = "two-sided") -> float:
    """Fisher's exact test of two success counts (diverged or chance-level runs, runs that reached a target): the
    right test where outcomes are all-or-nothing, which a t interval over 0/1 outcomes is not.

    Formula: conditional on the margins of the 2×2 table ``[[s_b, n_b − s_b], [s_a, n_a − s_a]]``, ``s_b`` is
    hypergeometric; ``'greater'`` (the claim: b's rate > a's) sums the probabilities of tables with at least the
    observed ``s_b``, ``'less'`` at most, ``'two-sided'`` every table no more probable than the observed one.

    Reference: Fisher (1935), The Logic of Inductive Inference.

    Args:
      successes_a: successes of arm a, ``0 ≤ successes_a ≤ n_a``.
      n_a: runs of arm a (positive).
      successes_b: successes of arm b.
      n_b: runs of arm b (positive).
      direction: ``'greater'``, ``'less'`` or ``'two-sided'``.

    Returns:
      The p-value.

    Raises:
      ValueError: counts out of range, an unknown ``direction``.

    Examples:
    >>> from jaxnorm.stats import fisher_exact
    >>> round(fisher_exact(6, 10, 10, 10), 3), round(fisher_exact(6, 10, 10, 10, direction='greater'), 3)
    (0.087, 0.043)
    """
    _check_direction("fisher_exact", direction)
    for s, n, arm in ((successes_a, n_a, "a"), (successes_b, n_b, "b")):
        if n <= 0 or not 0 <= s <= n:
            raise ValueError(f"fisher_exact: arm {arm} needs 0 <= successes <= n and n > 0, got {s} of {n}")
    table = [[successes_b, n_b - successes_b], [successes_a, n_a - successes_a]]
    return float(_st.fisher_exact(table, alternative=direction).pvalue)


def signed_rank(a: Mapping, b: Mapping, *, direction: str = "two-sided") -> dict:
    """Wilcoxon's signed-rank test of the per-seed differences ``b_s − a_s``: for skewed or heavy-tailed outcomes
    (drift, reach times), where a t interval's normality is not credible.

    Formula: rank ``|d_s|`` (zero differences dropped, ties given their mean rank), ``W⁺ = Σ_(d_s > 0) rank_s``;
    the p-value is exact (all ``2ⁿ`` sign patterns) without ties or zeros, else from the normal approximation;
    the location estimate is the Hodges–Lehmann median of the Walsh averages ``(d_i + d_j)/2, i ≤ j``.

    Reduces over: the seeds both arms ran.

    Reference: Wilcoxon (1945), Individual Comparisons by Ranking Methods; Hodges & Lehmann (1963), Estimates of
    Location Based on Rank Tests.

    Args:
      a: ``{seed: outcome}`` of the first arm.
      b: ``{seed: outcome}`` of the second arm.
      direction: ``'greater'`` (the claim: b > a), ``'less'`` or ``'two-sided'``.

    Returns:
      ``{'p', 'statistic', 'estimate', 'n', 'differences'}``.

    Raises:
      ValueError: no shared seed, a non-finite outcome, every difference zero, an unknown ``direction``.

    Examples:
    >>> from jaxnorm.stats import signed_rank
    >>> r = signed_rank(dict.fromkeys(range(6), 0.0), {s: s + 1.0 for s in range(6)}, direction='greater')
    >>> round(r['p'], 4), r['statistic'], r['estimate']
    (0.0156, 21.0, 3.5)
    """
    _check_direction("signed_rank", direction)
    diffs = paired_differences(a, b)
    d = _finite("signed_rank", list(diffs.values()))
    if not np.any(d != 0):
        raise ValueError(f"signed_rank: all {d.size} differences are zero; there is nothing to rank")
    res = _st.wilcoxon(d, alternative=direction, zero_method="wilcox")
    nonzero = d[d != 0]
    w_plus = float(_st.rankdata(np.abs(nonzero))[nonzero > 0].sum())  # scipy's two-sided statistic is min(W⁺, W⁻)
    walsh = (d[:, None] + d[None, :])[np.triu_indices(d.size)] / 2
    return {
        "p": float(res.pvalue),
        "statistic": w_plus,
        "estimate": float(np.median(walsh)),
        "n": int(d.size),
        "differences": diffs,
    }


def crossed_bootstrap_ci(
    correct_a: Mapping, correct_b: Mapping, *, level: float = 0.95, num_resamples: int = 4000, seed: int = 0
) -> Interval:
    """The mean paired accuracy difference with an interval that holds both sources of error: the seeds and the
    finite test set every seed is scored on.

    Formula: ``D[s, i] = b_s(i) − a_s(i)``, the per-example difference (1/0 correctness, or any per-example score)
    of seed ``s`` on test example ``i``; the estimate is ``mean(D)``. Each resample draws seeds and test examples
    independently with replacement (multinomial weights ``u`` over the ``S`` seeds and ``v`` over the ``n``
    examples, the same examples for every seed and both arms, as the test set is shared) and takes
    ``uᵀ D v / (S n)`` (summed over the drawn examples, so ``v`` is never formed); the interval is the
    ``(1 ± level)/2`` percentiles. A seed-only interval (:func:`compare`) treats the test set as fixed and leaves
    out its sampling error, ``≈ sd_i(mean_s D[s, i]) / √n``.

    Reduces over: the seeds both arms ran and the test examples.

    Reference: Owen (2007), The Pigeonhole Bootstrap; Efron & Tibshirani (1993), An Introduction to the Bootstrap.

    Args:
      correct_a: ``{seed: per-example scores}`` of arm a (equal lengths, the same test examples in the same order).
      correct_b: the same for arm b.
      level: the confidence level in (0, 1).
      num_resamples: bootstrap resamples (seeded: the same numbers every call).
      seed: the bootstrap's seed.

    Returns:
      An :class:`Interval` (``method='crossed bootstrap'``, ``n`` the number of seeds).

    Raises:
      ValueError: no shared seed, per-example arrays of different lengths or empty, non-finite scores, a bad
        ``level``.

    Examples:
    >>> import numpy as np
    >>> from jaxnorm.stats import crossed_bootstrap_ci
    >>> rng = np.random.default_rng(0)
    >>> a = {s: rng.random(2000) < 0.90 for s in range(5)}
    >>> b = {s: rng.random(2000) < 0.92 for s in range(5)}
    >>> ci = crossed_bootstrap_ci(a, b)
    >>> ci.low < 0.02 < ci.high, ci.method
    (True, 'crossed bootstrap')
    """
    where = "crossed_bootstrap_ci"
    level = _check_level(where, level)
    common = sorted(set(correct_a) & set(correct_b))
    if not common:
        raise ValueError(f"{where}: the arms share no seed (a: {sorted(correct_a)}, b: {sorted(correct_b)})")
    sizes = sorted({np.size(correct_a[s]) for s in common} | {np.size(correct_b[s]) for s in common})
    if len(sizes) != 1 or sizes[0] == 0:
        raise ValueError(
            f"{where}: every seed of both arms must score the same, non-empty test set; got per-example lengths {sizes}"
        )
    rows = [_finite(where, correct_b[s]) - _finite(where, correct_a[s]) for s in common]
    d = np.stack(rows)  # S × n
    num_seeds, n = d.shape
    rng = np.random.default_rng(seed)
    est = np.empty(num_resamples)
    chunk = max(1, min(num_resamples, 2**22 // max(n, 1)))
    for start in range(0, num_resamples, chunk):
        r = min(chunk, num_resamples - start)
        # uᵀ D v as a sum over drawn indices: the seeds' weights u (counts of S draws), then the n drawn examples
        # read off u D directly; v's counts are never formed (the same distribution; with numpy's multinomial over
        # n = 10 000 categories one interval of 10 seeds took 3.8 s, with these draws 0.6 s)
        u = np.apply_along_axis(np.bincount, 1, rng.integers(0, num_seeds, size=(r, num_seeds)), minlength=num_seeds)
        examples = rng.integers(0, n, size=(r, n))
        est[start : start + r] = np.take_along_axis(u @ d, examples, axis=1).sum(axis=1) / (num_seeds * n)
    lo, hi = np.quantile(est, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(d.mean()), float(lo), float(hi), num_seeds, level, "crossed bootstrap")


MAGNITUDE_NOT_REPRODUCED = "magnitude not reproduced"


def ratio_ci(
    numerator: Mapping, denominator: Mapping, *, level: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> Interval | None:
    """The ratio of two paired means, ``mean(numerator) / mean(denominator)`` over the keys (seeds) both share, with
    a percentile bootstrap interval that resamples the keys together (the pairing kept).

    Formula: ``R = Σ_s a_s / Σ_s b_s``; each resample draws the shared keys with replacement and recomputes R. When
    more than ``(1 − level)/2`` of the resampled denominators are ≤ 0 the ratio is unbounded and the interval is
    ``(−inf, inf)``; otherwise it is the resamples' central ``level`` quantiles (those with a denominator ≤ 0 left
    out). Reduces over: the shared keys.

    Reference: Efron & Tibshirani (1993), An Introduction to the Bootstrap (§13, the percentile interval; the ratio
    of means, §10).

    Args:
      numerator: ``{key: value}``, e.g. per-seed differences.
      denominator: ``{key: value}``; its mean must be positive.
      level: the confidence level.
      num_resamples: bootstrap resamples.
      seed: the resampling seed (the interval is reproducible).

    Returns:
      An :class:`Interval` (method ``'bootstrap'``), or None with fewer than 2 shared keys or a denominator mean
      ≤ 0 (no ratio to speak of).

    Raises:
      ValueError: a non-finite value, or a level outside (0, 1).

    Examples:
    >>> from jaxnorm.stats import ratio_ci
    >>> r = ratio_ci({0: 1.0, 1: 2.0, 2: 3.0}, {0: 4.0, 1: 4.0, 2: 4.0})
    >>> round(r.estimate, 4), r.low >= 0.25, r.high <= 0.75
    (0.5, True, True)
    """
    level = _check_level("ratio_ci", level)
    common = sorted(set(numerator) & set(denominator))
    if len(common) < 2:
        return None
    a = _finite("ratio_ci", [numerator[k] for k in common])
    b = _finite("ratio_ci", [denominator[k] for k in common])
    if not b.mean() > 0:
        return None
    idx = np.random.default_rng(seed).integers(0, len(common), (num_resamples, len(common)))
    den = b[idx].mean(axis=1)
    ratio = np.where(den > 0, a[idx].mean(axis=1) / np.where(den > 0, den, 1.0), np.nan)
    tail = (1.0 - level) / 2
    if np.mean(np.isnan(ratio)) > tail:
        lo, hi = -math.inf, math.inf
    else:
        lo, hi = np.nanquantile(ratio, [tail, 1.0 - tail])
    return Interval(float(a.mean() / b.mean()), float(lo), float(hi), len(common), level, "bootstrap")


def magnitude_verdict(interval: Interval, direction: str, paper_effect: float | None = None) -> str:
    """The verdict of a directional claim judged against the paper's own effect size as well as against zero.

    Formula, for ``direction='greater'`` (mirror for ``'less'``), with ``E`` the paper's effect on the interval's
    scale (e.g. a log ratio when the interval is of log ratios):

    - ``'fails'``: the interval lies below 0 (the opposite direction);
    - ``'magnitude not reproduced'``: the interval lies below ``E`` (``high < E``), whether it excludes 0 (a
      smaller effect in the paper's direction) or not (a null that excludes the paper's size);
    - ``'holds'``: it lies above 0 and reaches ``E`` (or beyond: a larger effect in the same direction);
    - ``'inconclusive'``: it contains 0 and ``E`` alike.

    Without ``E`` it is :func:`verdict`.

    Args:
      interval: the :class:`Interval` of the difference ``b − a`` (or its log ratio).
      direction: ``'greater'`` or ``'less'``, the paper's direction.
      paper_effect: the paper's effect on the same scale, in ``direction`` (positive for ``'greater'``), or None.

    Returns:
      ``'holds'``, ``'inconclusive'``, ``'fails'`` or ``'magnitude not reproduced'``.

    Raises:
      ValueError: an unknown ``direction``; a ``paper_effect`` that is not in ``direction``.

    Examples:
    >>> from jaxnorm.stats import Interval, magnitude_verdict
    >>> import math
    >>> null = Interval(0.0, math.log(0.95), math.log(1.03), 10, 0.95, 't')   # a ratio in [0.95, 1.03]
    >>> magnitude_verdict(null, 'greater', math.log(6.3)), magnitude_verdict(null, 'greater')
    ('magnitude not reproduced', 'inconclusive')
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"magnitude_verdict: direction must be one of {DIRECTIONS}, got {direction!r}")
    if paper_effect is None:
        return verdict(interval, direction)
    sign = 1.0 if direction == "greater" else -1.0
    if not sign * paper_effect > 0:
        raise ValueError(
            f"magnitude_verdict: the paper's effect must lie in the claim's direction ({direction}), got "
            f"{paper_effect!r}; pass the effect on the interval's scale (a log ratio for ratios)"
        )
    lo, hi = sorted((sign * interval.low, sign * interval.high))
    if hi < 0:
        return "fails"
    if hi < sign * paper_effect:
        return MAGNITUDE_NOT_REPRODUCED
    return "holds" if lo > 0 else "inconclusive"


def seeds_for_power(
    sd: float, effect: float, *, level: float = 0.95, power: float = 0.8, equivalence: bool = False, max_seeds=10_000
) -> int:
    """The number of seeds a paired comparison needs, from a pilot's standard deviation of the per-seed differences.

    Formula, with ``α = (1 − level)/2`` (each side of a two-sided ``level`` interval) and ``t_q`` Student's
    quantile on ``n − 1`` degrees of freedom:

    - directional (``equivalence=False``): the smallest ``n ≥ 2`` with ``P(interval excludes 0) ≥ power`` when the
      true mean difference is ``effect``: ``1 − F_nct(t_(1−α); n − 1, effect·√n/sd) ≥ power`` (noncentral t, exact);
    - equivalence (``equivalence=True``, ``effect`` the margin, true difference 0): the smallest ``n`` with
      ``√n·margin/sd ≥ t_(1−α) + t_(1−(1−power)/2)``, the two one-sided tests' normal-theory bound (Chow, Shao &
      Wang (2008), Sample Size Calculations in Clinical Research, §3.2.3).

    Reference: Cohen (1988), Statistical Power Analysis for the Behavioral Sciences.

    Args:
      sd: the standard deviation of the per-seed differences (a pilot's estimate; positive).
      effect: the difference to detect (directional) or the margin (equivalence); positive.
      level: the interval's confidence level.
      power: the probability of the verdict wanted, in (0, 1).
      equivalence: size an equivalence test instead of a directional one.
      max_seeds: give up beyond this many.

    Returns:
      An int ``n ≥ 2``.

    Raises:
      ValueError: non-positive ``sd`` or ``effect``; ``level`` or ``power`` outside (0, 1); more than ``max_seeds``
        needed.

    Examples:
    >>> from jaxnorm.stats import seeds_for_power
    >>> seeds_for_power(1.0, 1.0), seeds_for_power(1.0, 1.0, equivalence=True)
    (10, 13)
    """
    where = "seeds_for_power"
    level = _check_level(where, level)
    if not (sd > 0 and effect > 0):
        raise ValueError(f"{where}: sd and effect must be positive, got sd={sd!r}, effect={effect!r}")
    if not 0 < power < 1:
        raise ValueError(f"{where}: power must be in (0, 1), e.g. 0.8, got {power!r}")
    alpha = (1 - level) / 2
    for n in range(2, int(max_seeds) + 1):
        t_crit = _st.t.ppf(1 - alpha, n - 1)
        if equivalence:
            ok = math.sqrt(n) * effect / sd >= t_crit + _st.t.ppf(1 - (1 - power) / 2, n - 1)
        else:
            ok = 1 - _st.nct.cdf(t_crit, n - 1, effect * math.sqrt(n) / sd) >= power
        if ok:
            return n
    raise ValueError(
        f"{where}: more than {max_seeds} seeds needed (sd={sd}, effect={effect}); the design cannot "
        "meet this: take a larger effect or margin, or reduce the variance"
    )
