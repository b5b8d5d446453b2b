"""The statistics module on cases with known answers: Student and bootstrap intervals, paired differences, Wilson
intervals, success rates that count diverged and chance-level runs, censored reach times (Kaplan–Meier), verdicts."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jaxnorm import stats


def test_t_interval_of_a_known_sample():
    ci = stats.mean_ci([1, 2, 3, 4, 5])
    # 3 ± t(4, 0.975) · s/√5 = 3 ± 2.776445 · 1.581139 / 2.236068
    assert ci.estimate == 3 and ci.n == 5 and ci.method == "t"
    assert ci.low == pytest.approx(1.036757, abs=1e-5) and ci.high == pytest.approx(4.963243, abs=1e-5)
    assert ci.excludes_zero() == 1
    ci90 = stats.mean_ci([1, 2, 3, 4, 5], level=0.9)
    assert ci90.high - ci90.low < ci.high - ci.low


@pytest.mark.parametrize(
    "low, high, side",
    [(0.1, 0.9, 1), (0.0, 0.9, 0), (-0.9, -0.1, -1), (-0.9, 0.0, 0), (-0.9, 0.5, 0), (-2.0, -1.5, -1), (1.5, 2.0, 1)],
)
def test_an_interval_excludes_zero_only_strictly(low, high, side):
    """+1 above zero, −1 below, 0 when zero is inside or an end (an end at 0 does not exclude it)."""
    ci = stats.Interval((low + high) / 2, low, high, 5, 0.95, "t")
    assert ci.excludes_zero() == side


def test_bootstrap_interval_agrees_with_t_on_normal_data_and_is_seeded():
    x = np.random.default_rng(0).normal(2.0, 1.0, 400)
    t, b = stats.mean_ci(x), stats.mean_ci(x, method="bootstrap")
    assert b.low == pytest.approx(t.low, abs=0.02) and b.high == pytest.approx(t.high, abs=0.02)
    assert stats.mean_ci(x, method="bootstrap") == b


def test_paired_comparison_with_a_known_interval_and_its_verdicts():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 2.0, 1: 2.5, 2: 4.0, 3: 9.0}  # seed 3 has no partner: left out
    assert stats.paired_differences(a, b) == {0: 1.0, 1: 0.5, 2: 1.0}
    out = stats.compare(a, b, direction="greater")
    ci = out["interval"]
    # mean 5/6, s = 0.288675, t(2, 0.975) = 4.302653: half-width 0.717109
    assert ci.estimate == pytest.approx(5 / 6) and ci.low == pytest.approx(0.116224, abs=1e-5)
    assert ci.high == pytest.approx(1.550443, abs=1e-5)
    assert out["verdict"] == "holds" and "→ holds" in out["text"]
    assert stats.compare(a, b, direction="less")["verdict"] == "fails"
    big = stats.compare(a, b, direction="greater", criterion=lambda c: c.estimate > 1.0)
    assert big["verdict"] == "inconclusive" and "criterion not met" in big["text"]
    noisy = stats.compare({0: 0, 1: 0, 2: 0}, {0: 1, 1: -1, 2: 0.5}, direction="greater")
    assert noisy["verdict"] == "inconclusive"  # no difference shown is not "equal"
    with pytest.raises(ValueError, match=r"the arms share no seed \(a: \[0\], b: \[1\]\)"):
        stats.paired_differences({0: 1}, {1: 2})


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    iv = lambda lo, hi: stats.Interval((lo + hi) / 2, lo, hi, 5, 0.95, "t")  # noqa: E731
    assert stats.equivalence_verdict(iv(-0.2, 0.3), 0.5) == "holds"
    assert stats.equivalence_verdict(iv(-0.2, 0.6), 0.5) == "inconclusive"  # straddles the margin
    assert stats.equivalence_verdict(iv(-3.0, 3.0), 0.5) == "inconclusive"  # wide: nothing shown either way
    assert stats.equivalence_verdict(iv(0.5, 0.9), 0.5) == "fails"
    assert stats.equivalence_verdict(iv(-2.0, -0.7), 0.5) == "fails"
    # a real paired sample: differences 0.1 ± small noise over 6 seeds are equivalent within 0.5
    out = stats.compare({s: 1.0 for s in range(6)}, {s: 1.1 + 0.01 * (-1) ** s for s in range(6)}, direction="greater")
    assert stats.equivalence_verdict(out["interval"], 0.5) == "holds"
    with pytest.raises(ValueError, match="margin must be positive"):
        stats.equivalence_verdict(iv(-0.1, 0.1), 0.0)


def test_wilson_interval_and_success_rate_count_diverged_and_chance_runs():
    lo, hi = stats.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert stats.wilson_interval(0, 5)[0] == 0.0 and stats.wilson_interval(5, 5)[1] == 1.0
    r = stats.success_rate([0.95, float("nan"), 0.1, 0.97, float("inf")], chance=0.1, margin=0.02)
    assert (r["successes"], r["n"], r["diverged"], r["at_chance"]) == (2, 5, 2, 1)
    assert r["rate"] == 0.4 and (r["low"], r["high"]) == pytest.approx(stats.wilson_interval(2, 5))


def test_success_rate_and_wilson_interval_at_their_edges():
    # chance and margin: a run exactly at chance + margin is stuck at chance; the default margin is 0
    assert stats.success_rate([0.5, 0.51], chance=0.25, margin=0.25)["successes"] == 1
    assert stats.success_rate([0.15, 0.5], chance=0.1)["successes"] == 2
    r = stats.success_rate([0.2, 0.3])  # no chance level: only divergence fails
    assert (r["successes"], r["at_chance"], r["diverged"]) == (2, 0, 0)
    r = stats.success_rate([0.9, 0.95, float("nan")], level=0.5)  # diverged runs are failures, never successes
    assert (r["successes"], r["diverged"]) == (2, 1) and (r["low"], r["high"]) == pytest.approx(
        stats.wilson_interval(2, 3, 0.5)
    )
    assert stats.success_rate([0.9])["successes"] == 1  # one run is a sample
    with pytest.raises(ValueError, match="^success_rate: no runs$"):
        stats.success_rate([])
    with pytest.raises(ValueError, match="^success_rate: level must be in"):
        stats.success_rate([0.9], level=1.5)
    assert stats.wilson_interval(1, 1)[1] == 1.0  # one run is allowed
    assert stats.wilson_interval(2, 2, 0.5)[1] == 1.0  # its upper bound rounds to 1 + 2⁻⁵² there: capped at 1
    for k, n in ((6, 5), (-1, 5), (0, 0)):
        with pytest.raises(ValueError, match=rf"^wilson_interval: need 0 <= successes <= n and n > 0, got {k} of {n}$"):
            stats.wilson_interval(k, n)


def test_kaplan_meier_median_multiplies_the_survival_and_stops_at_one_half():
    # six runs all reaching the target at steps 1…6: S = 5/6, 4/6, 3/6 = ½ at step 3, which is the median
    assert stats.kaplan_meier_median([1, 2, 3, 4, 5, 6], [True] * 6) == 3.0
    assert stats.kaplan_meier_median([100, 200, 300, 400], [0, 1, 1, 0]) == 300.0  # 0/1 flags, not indices
    assert stats.kaplan_meier_median([7], [True]) == 7.0
    for times, flags in (([], []), ([1, 2], [True])):
        with pytest.raises(
            ValueError,
            match=rf"^kaplan_meier_median: need equal, non-empty times and flags, got {len(times)} and {len(flags)}$",
        ):
            stats.kaplan_meier_median(times, flags)


def test_binomial_noise_floor_of_a_test_set():
    assert stats.binomial_se(0.983, 360) == pytest.approx(0.00681, abs=2e-5)  # digits' 360 test images
    assert stats.binomial_se(0.9, 10_000) == pytest.approx(0.003)
    # the edges of its domain: a perfect or null accuracy has no spread; one example is allowed; outside is an error
    assert stats.binomial_se(0.0, 50) == 0.0 and stats.binomial_se(1.0, 50) == 0.0
    assert stats.binomial_se(0.5, 1) == pytest.approx(0.5)
    for acc, n in ((1.1, 10), (-0.1, 10), (0.5, 0), (0.5, -3)):
        with pytest.raises(ValueError, match="binomial_se: need 0 <= accuracy <= 1 and num_test > 0"):
            stats.binomial_se(acc, n)


def test_reach_times_with_censoring_and_the_kaplan_meier_median():
    assert stats.reach_time([10, 20, 30], [0.5, 0.9, 0.95], 0.9) == (20, True)
    assert stats.reach_time([10, 20, 30], [0.5, float("nan"), 0.8], 0.9) == (30, False)  # censored at the end
    assert stats.reach_time([10, 20], [2.0, 0.4], 0.5, higher_is_better=False) == (20, True)
    # S(2) = 4/5, S(3) = 4/5 · 3/4 = 0.6 (the run censored at 3 is still at risk there), S(5) = 0.6 · 1/2 = 0.3
    assert stats.kaplan_meier_median([2, 3, 3, 5, 8], [True, True, False, True, False]) == 5
    assert stats.kaplan_meier_median([5, 10, 10], [True, False, False]) == math.inf  # fewer than half reached it


def test_bad_inputs_are_one_clear_error():
    with pytest.raises(ValueError, match="1 of 3 values are NaN or infinite"):
        stats.mean_ci([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match="at least 2 values, got 1"):
        stats.mean_ci([1.0])
    with pytest.raises(ValueError, match="method must be 't' or 'bootstrap'"):
        stats.mean_ci([1.0, 2.0], method="z")
    with pytest.raises(ValueError, match="direction must be one of"):
        stats.verdict(stats.mean_ci([1.0, 2.0]), "up")
    with pytest.raises(ValueError, match="level must be in"):
        stats.mean_ci([1.0, 2.0], level=95)


# ---------------------------------------------------------------------------------------------------------------------
# multiplicity, exact and rank tests, the crossed bootstrap, magnitude verdicts and seed counts: each against a
# reference computed another way (Holm's sequential rule, hypergeometric and sign-pattern enumerations, analytic
# standard errors, Monte Carlo)


def _holm_sequential(p, alpha):
    """Holm's rule as the paper states it: reject in ascending order while p_(i) <= alpha/(m - i + 1)."""
    order, m, reject = np.argsort(p, kind="stable"), len(p), [False] * len(p)
    for i, j in enumerate(order):
        if p[j] > alpha / (m - i):
            break
        reject[j] = True
    return reject


def test_t_test_p_is_the_dual_of_the_t_interval_and_matches_scipy():
    rng = np.random.default_rng(3)
    for n in (2, 3, 7, 20):
        x = rng.normal(0.3, 1.0, n)
        for alpha in (0.01, 0.05, 0.2):
            ci = stats.mean_ci(x, level=1 - 2 * alpha)  # its bounds are where the one-sided p equals alpha
            assert stats.t_test_p(x, direction="greater", null=ci.low) == pytest.approx(alpha, rel=1e-9)
            assert stats.t_test_p(x, direction="less", null=ci.high) == pytest.approx(alpha, rel=1e-9)
        for direction in ("greater", "less", "two-sided"):
            ref = scipy_stats.ttest_1samp(x, 0.25, alternative=direction).pvalue
            assert stats.t_test_p(x, direction=direction, null=0.25) == pytest.approx(ref, rel=1e-12)
    assert stats.t_test_p({0: 0.2, 1: 0.2}, direction="greater") == 0.0  # no spread, beyond the null
    assert stats.t_test_p([0.2, 0.2], direction="less") == 1.0
    assert stats.compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.5, 1: 2.1, 2: 3.7}, direction="greater")["p"] == (
        pytest.approx(scipy_stats.ttest_1samp([0.5, 0.1, 0.7], 0, alternative="greater").pvalue)
    )
    with pytest.raises(ValueError, match="at least 2 values"):
        stats.t_test_p([0.1], direction="greater")
    with pytest.raises(ValueError, match="direction"):
        stats.t_test_p([0.1, 0.2], direction="bigger")


def test_holm_adjusted_values_reject_exactly_what_the_sequential_rule_rejects():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = list(rng.uniform(0, 0.1, rng.integers(1, 9)) ** rng.uniform(0.5, 2))
        adjusted, _ = stats.holm(p)
        for alpha in (0.01, 0.02, 0.05, 0.1):
            assert [a <= alpha for a in adjusted] == _holm_sequential(p, alpha), (p, alpha)
            assert stats.holm(p, alpha=alpha)[1] == _holm_sequential(p, alpha)
    # the textbook case, and a dict keeps its keys; Bonferroni's m·p would keep 0.04 at 0.16, Holm lifts it to 0.06
    adj, rej = stats.holm({"w": 0.01, "x": 0.04, "y": 0.03, "z": 0.005})
    assert adj == pytest.approx({"w": 0.03, "x": 0.06, "y": 0.06, "z": 0.02}) and rej == {
        "w": True,
        "x": False,
        "y": False,
        "z": True,
    }
    assert stats.holm([0.9, 0.8])[0] == [1.0, 1.0]  # capped at 1
    for bad, msg in (([], "no p-values"), ([0.1, 1.5], r"in \[0, 1\]"), ([float("nan")], r"in \[0, 1\]")):
        with pytest.raises(ValueError, match=msg):
            stats.holm(bad)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\)"):
        stats.holm([0.1], alpha=5)


def _hypergeometric_p(sa, na, sb, nb, direction):
    """Fisher's p from the hypergeometric probabilities of s_b given the margins, by math.comb."""
    total, k = na + nb, sa + sb

    def prob(x):
        return math.comb(nb, x) * math.comb(na, k - x) / math.comb(total, k)

    xs = range(max(0, k - na), min(nb, k) + 1)
    if direction == "greater":
        return sum(prob(x) for x in xs if x >= sb)
    if direction == "less":
        return sum(prob(x) for x in xs if x <= sb)
    return sum(prob(x) for x in xs if prob(x) <= prob(sb) * (1 + 1e-7))


@pytest.mark.parametrize("direction", ["two-sided", "greater", "less"])
def test_fisher_exact_equals_the_hypergeometric_sum(direction):
    for sa, na, sb, nb in [(6, 10, 10, 10), (10, 10, 6, 10), (0, 5, 5, 5), (3, 7, 4, 9), (2, 12, 9, 11), (4, 4, 4, 4)]:
        got = stats.fisher_exact(sa, na, sb, nb, direction=direction)
        assert got == pytest.approx(_hypergeometric_p(sa, na, sb, nb, direction), rel=1e-9), (sa, na, sb, nb)
    # the review's case: all 10 BN runs succeed, 6 of 10 standard ones: p ≈ 0.087 two-sided
    assert stats.fisher_exact(6, 10, 10, 10) == pytest.approx(0.0867, abs=5e-4)


def test_fisher_exact_refuses_impossible_counts():
    with pytest.raises(ValueError, match="arm b needs 0 <= successes <= n"):
        stats.fisher_exact(1, 5, 6, 5)
    with pytest.raises(ValueError, match="direction must be"):
        stats.fisher_exact(1, 5, 2, 5, direction="up")


def test_signed_rank_is_exact_over_every_sign_pattern_and_its_estimate_is_hodges_lehmann():
    import itertools

    rng = np.random.default_rng(1)
    d = rng.normal(0.4, 1.0, 9)
    a = {s: float(rng.normal()) for s in range(9)}
    b = {s: a[s] + d[s] for s in range(9)}
    ranks = np.argsort(np.argsort(np.abs(d))) + 1.0
    w = float(ranks[d > 0].sum())
    null = np.array([ranks[np.array(signs, bool)].sum() for signs in itertools.product([0, 1], repeat=9)])
    want = {"greater": np.mean(null >= w), "less": np.mean(null <= w)}
    want["two-sided"] = min(1.0, 2 * min(want.values()))
    for direction, p in want.items():
        r = stats.signed_rank(a, b, direction=direction)
        assert r["p"] == pytest.approx(p, rel=1e-9) and r["statistic"] == w, direction
    walsh = [(d[i] + d[j]) / 2 for i in range(9) for j in range(i, 9)]
    assert r["estimate"] == pytest.approx(np.median(walsh), rel=1e-12) and r["n"] == 9
    with pytest.raises(ValueError, match="all 3 differences are zero"):
        stats.signed_rank({0: 1.0, 1: 2.0, 2: 3.0}, {0: 1.0, 1: 2.0, 2: 3.0})


def test_crossed_bootstrap_holds_the_test_sets_error_and_the_seeds():
    rng = np.random.default_rng(2)
    n = 3000
    # every seed the same per-example differences: only the test set varies, sd = sd(d)/√n
    shared = rng.choice([-1.0, 0.0, 0.0, 1.0], n, p=[0.05, 0.45, 0.45, 0.05])
    a = {s: np.zeros(n) for s in range(4)}
    ci = stats.crossed_bootstrap_ci(a, {s: shared for s in range(4)}, num_resamples=4000)
    half = 1.959964 * shared.std() / math.sqrt(n)
    assert ci.estimate == pytest.approx(shared.mean()) and ci.method == "crossed bootstrap" and ci.n == 4
    # the percentile half-width within 6% (Monte Carlo error of 4000 resamples ~ 2%)
    assert (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.06)
    seed_only = stats.mean_ci([float(shared.mean())] * 4 + [float(shared.mean()) + 1e-12])
    assert seed_only.high - seed_only.low < 1e-9 < ci.high - ci.low  # what a seed-only interval leaves out
    # seed effects only (each seed shifts every example by the same amount): the seed bootstrap's spread,
    # sd_s / √S, with the test-set term zero
    shifts = rng.normal(0.0, 0.05, 40)
    b = {s: np.full(n, shifts[s]) for s in range(40)}
    ci = stats.crossed_bootstrap_ci({s: np.zeros(n) for s in range(40)}, b, num_resamples=4000)
    assert (ci.high - ci.low) / 2 == pytest.approx(1.959964 * shifts.std() / math.sqrt(40), rel=0.08)
    assert stats.crossed_bootstrap_ci(a, b, seed=3) == stats.crossed_bootstrap_ci(a, b, seed=3)  # seeded


def test_crossed_bootstrap_refuses_unpaired_test_sets():
    with pytest.raises(ValueError, match=r"same, non-empty test set; got per-example lengths \[3, 4\]"):
        stats.crossed_bootstrap_ci({0: np.zeros(3)}, {0: np.zeros(4)})
    with pytest.raises(ValueError, match="share no seed"):
        stats.crossed_bootstrap_ci({0: np.zeros(3)}, {1: np.zeros(3)})


@pytest.mark.parametrize(
    ("low", "high", "want"),
    [
        (0.5, 2.5, "holds"),  # above 0 and reaching the paper's 2.0
        (2.5, 3.0, "holds"),  # larger than the paper's
        (0.5, 1.5, "magnitude not reproduced"),  # the paper's direction, a smaller effect
        (-0.2, 1.5, "magnitude not reproduced"),  # a null that excludes the paper's size
        (-0.2, 2.5, "inconclusive"),
        (-1.0, -0.1, "fails"),
        # the boundaries: touching 0 is not below it, reaching E exactly is reaching it, a low bound of 0 contains 0
        (-1.0, 0.0, "magnitude not reproduced"),
        (-0.5, 0.5, "magnitude not reproduced"),
        (0.5, 2.0, "holds"),
        (0.0, 2.5, "inconclusive"),
    ],
)
def test_magnitude_verdict_against_the_papers_effect(low, high, want):
    ci = stats.Interval((low + high) / 2, low, high, 10, 0.95, "t")
    assert stats.magnitude_verdict(ci, "greater", 2.0) == want
    mirrored = stats.Interval(-(low + high) / 2, -high, -low, 10, 0.95, "t")
    assert stats.magnitude_verdict(mirrored, "less", -2.0) == want
    assert stats.magnitude_verdict(ci, "greater") == stats.verdict(ci, "greater")


def test_magnitude_verdict_refuses_a_paper_effect_against_its_direction():
    ci = stats.Interval(0.0, -1.0, 1.0, 5, 0.95, "t")
    with pytest.raises(ValueError, match="must lie in the claim's direction"):
        stats.magnitude_verdict(ci, "greater", -2.0)


def _simulated_rate(n, mean, sd, margin=None, sims=20000, seed=0):
    """How often a t interval (95%) of n normal differences excludes 0 above, or lies inside ±margin."""
    x = np.random.default_rng(seed).normal(mean, sd, (sims, n))
    m, half = x.mean(1), scipy_stats.t.ppf(0.975, n - 1) * x.std(1, ddof=1) / math.sqrt(n)
    if margin is None:
        return np.mean(m - half > 0)
    return np.mean((m - half > -margin) & (m + half < margin))


@pytest.mark.parametrize(("sd", "effect"), [(1.0, 1.0), (0.02, 0.015), (3.0, 1.2)])
def test_seeds_for_power_reach_the_power_and_one_fewer_does_not(sd, effect):
    n = stats.seeds_for_power(sd, effect)
    assert _simulated_rate(n, effect, sd) >= 0.8 - 0.01  # Monte Carlo error of 20000 runs ~ 0.003
    assert _simulated_rate(n - 1, effect, sd) < 0.8 + 0.01 or n == 2
    m = stats.seeds_for_power(sd, effect, equivalence=True)
    assert _simulated_rate(m, 0.0, sd, margin=effect) >= 0.8 - 0.01  # the bound is conservative, never short


def test_seeds_for_power_can_be_two():
    assert stats.seeds_for_power(1.0, 30.0) == 2 and _simulated_rate(2, 30.0, 1.0) >= 0.79


def test_seeds_for_power_refuses_what_no_design_meets():
    with pytest.raises(ValueError, match="more than 50 seeds needed"):
        stats.seeds_for_power(1.0, 0.01, max_seeds=50)
    with pytest.raises(ValueError, match="sd and effect must be positive"):
        stats.seeds_for_power(0.0, 1.0)
    with pytest.raises(ValueError, match=r"power must be in \(0, 1\)"):
        stats.seeds_for_power(1.0, 1.0, power=80)


# ---------------------------------------------------------------------------------------------------------------------
# edge cases found by mutation testing (mutmut): each against a hand computation or an independent reference


def test_t_test_p_with_zero_spread_is_decided_by_which_side_of_the_null_the_values_lie():
    # every value equal: no spread, so the p-value is 0 when they lie beyond the null on the tested side, else 1
    for values, null, want in (
        ([0.2, 0.2], 0.2, {"greater": 1.0, "less": 1.0, "two-sided": 1.0}),  # on the null: no evidence
        ([0.2, 0.2], 0.0, {"greater": 0.0, "less": 1.0, "two-sided": 0.0}),
        ([1.0, 1.0, 1.0], 0.0, {"greater": 0.0, "less": 1.0, "two-sided": 0.0}),
        ([-1.0, -1.0], 0.0, {"greater": 1.0, "less": 0.0, "two-sided": 0.0}),
    ):
        for direction, p in want.items():
            assert stats.t_test_p(values, direction=direction, null=null) == p, (values, null, direction)


def test_t_test_p_errors_name_the_function_and_the_count():
    with pytest.raises(ValueError, match=r"^t_test_p: need at least 2 values \(seeds\), got 1"):
        stats.t_test_p([0.1], direction="greater")
    with pytest.raises(ValueError, match=r"^t_test_p: direction must be 'greater', 'less' or 'two-sided', got 'up'"):
        stats.t_test_p([0.1, 0.2], direction="up")
    with pytest.raises(ValueError, match=r"^t_test_p: 1 of 3 values are NaN or infinite"):
        stats.t_test_p([0.1, float("inf"), 0.2], direction="greater")


def test_holm_at_the_edges_of_its_domain():
    # p = 0 and p = 1 are valid p-values; Holm by hand: sorted (0, 1), adjusted (2·0, max(0, 1·1))
    assert stats.holm([0.0, 1.0]) == ([0.0, 1.0], [True, False])
    assert stats.holm([1.0, 0.01]) == ([1.0, 0.02], [False, True])
    # an adjusted value exactly at alpha is rejected: 2 · 0.025 = 0.05 exactly, and 0.025 <= 0.05/2 sequentially
    assert stats.holm([0.025, 0.5], alpha=0.05) == ([0.05, 0.5], [True, False])
    assert stats.holm([0.05])[1] == [True]
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^holm: alpha must be in \(0, 1\), e.g. 0.05, got {alpha!r}$"):
            stats.holm([0.1], alpha=alpha)
    with pytest.raises(ValueError, match=r"^holm: no p-values$"):
        stats.holm({})


def test_holm_takes_a_2d_array_as_one_flattened_family():
    # a 2-D array is one family of four, flattened in C order (the textbook case above)
    adjusted, reject = stats.holm(np.array([[0.01, 0.04], [0.03, 0.005]]))
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02]) and reject == [True, False, False, True]


def test_magnitude_verdict_checks_the_papers_effect_and_direction():
    ci = stats.Interval(0.3, 0.2, 0.4, 5, 0.95, "t")
    assert stats.magnitude_verdict(ci, "greater", 0.5) == "magnitude not reproduced"  # an effect below 1 is valid
    assert stats.magnitude_verdict(ci, "greater", 0.3) == "holds"
    for effect in (0.0, -0.5):  # no effect at all is not an effect in the claim's direction
        with pytest.raises(
            ValueError,
            match=rf"^magnitude_verdict: the paper's effect must lie in the claim's "
            rf"direction \(greater\), got {effect!r}",
        ):
            stats.magnitude_verdict(ci, "greater", effect)
    with pytest.raises(
        ValueError, match=r"^magnitude_verdict: direction must be one of \('greater', 'less'\), got 'up'"
    ):
        stats.magnitude_verdict(ci, "up", 0.5)


def test_compare_passes_level_method_and_criterion_through_and_reports_them():
    a = {0: 1.0, 1: 2.0, 2: 3.0}
    b = {0: 2.0, 1: 2.5, 2: 4.0}  # differences 1, 0.5, 1: mean 5/6, s = 0.288675
    out = stats.compare(a, b, direction="greater")
    assert out["differences"] == {0: 1.0, 1: 0.5, 2: 1.0}
    # the one-line text, formatted by hand: 5/6 → +0.8333, 0.116224 → +0.1162, 1.550443 → +1.55
    assert out["text"] == "b − a = +0.8333 [+0.1162, +1.55] (95% t, n=3) → holds"
    ci90 = stats.compare(a, b, direction="greater", level=0.9)["interval"]
    half = scipy_stats.t.ppf(0.95, 2) * 0.28867513 / math.sqrt(3)  # 2.919986 · s/√3 = 0.486664
    assert ci90.level == 0.9 and ci90.low == pytest.approx(5 / 6 - half, abs=1e-6)
    boot = stats.compare(a, b, direction="greater", method="bootstrap")["interval"]
    # a bootstrap interval of means never leaves the data's range [0.5, 1]; the t interval here does
    assert boot.method == "bootstrap" and 0.5 <= boot.low <= boot.high <= 1.0
    met = stats.compare(a, b, direction="greater", criterion=lambda ci: ci.estimate > 0.5)
    assert met["verdict"] == "holds" and "criterion" not in met["text"]
    unmet = stats.compare(a, b, direction="greater", criterion=lambda ci: ci.estimate > 1.0)
    assert unmet["text"].endswith(" → inconclusive (criterion not met)")


def test_verdict_default_criterion_is_met_and_equivalence_boundaries():
    assert stats.verdict(stats.Interval(0.5, 0.1, 0.9, 5, 0.95, "t"), "greater") == "holds"
    iv = lambda lo, hi: stats.Interval((lo + hi) / 2, lo, hi, 5, 0.95, "t")  # noqa: E731
    # the open interval (−margin, margin): touching a margin is not inside it; wholly outside includes touching it
    assert stats.equivalence_verdict(iv(-0.5, 0.3), 0.5) == "inconclusive"
    assert stats.equivalence_verdict(iv(-0.3, 0.5), 0.5) == "inconclusive"
    assert stats.equivalence_verdict(iv(-0.9, -0.5), 0.5) == "fails"
    assert stats.equivalence_verdict(iv(-0.6, 0.2), 0.5) == "inconclusive"  # straddles −margin


def test_crossed_bootstrap_small_cases_by_hand_and_its_errors():
    # the difference is b − a: a always right, b always wrong gives −1 on every resample
    ci = stats.crossed_bootstrap_ci({0: np.ones(4), 1: np.ones(4)}, {0: np.zeros(4), 1: np.zeros(4)}, num_resamples=50)
    assert (ci.estimate, ci.low, ci.high, ci.n) == (-1.0, -1.0, -1.0, 2)
    one = stats.crossed_bootstrap_ci({0: [1.0]}, {0: [0.0]}, num_resamples=20)  # one test example is a test set
    assert (one.estimate, one.low, one.high) == (-1.0, -1.0, -1.0)
    # the documented defaults: num_resamples=4000, seed=0
    scores = np.random.default_rng(7).random((4, 30))  # continuous per-example scores: every resample counts
    a, b = {s: scores[s] for s in range(2)}, {s: scores[s + 2] for s in range(2)}
    assert stats.crossed_bootstrap_ci(a, b) == stats.crossed_bootstrap_ci(a, b, num_resamples=4000, seed=0)
    where = "^crossed_bootstrap_ci: "
    with pytest.raises(ValueError, match=where + r"level must be in \(0, 1\), e.g. 0.95, got 1.5"):
        stats.crossed_bootstrap_ci(a, b, level=1.5)
    with pytest.raises(ValueError, match=where + r"the arms share no seed \(a: \[0\], b: \[1\]\)"):
        stats.crossed_bootstrap_ci({0: np.zeros(3)}, {1: np.zeros(3)})
    with pytest.raises(ValueError, match=where + r".*got per-example lengths \[0\]"):
        stats.crossed_bootstrap_ci({0: np.zeros(0)}, {0: np.zeros(0)})
    for nan_in in ("a", "b"):
        bad = {0: np.array([0.0, np.nan, 1.0])}
        args = (bad, {0: np.zeros(3)}) if nan_in == "a" else ({0: np.zeros(3)}, bad)
        with pytest.raises(ValueError, match=where + "1 of 3 values are NaN or infinite"):
            stats.crossed_bootstrap_ci(*args)


@pytest.mark.parametrize(("level", "z"), [(0.95, 1.959964), (0.8, 1.281552)])
def test_crossed_bootstrap_is_an_equal_tailed_percentile_interval_of_its_level(level, z):
    """One seed and per-example differences of ±1 in equal numbers: the resampled mean is close to normal with sd
    1/√n about 0, so each end lies z·sd from the estimate, z the normal quantile of (1 + level)/2. The scores come as
    booleans (correct or not), as a report passes them. 20 000 resamples: each end's Monte-Carlo error is about 1%."""
    n = 2000
    right = np.tile([False, True], n // 2)
    ci = stats.crossed_bootstrap_ci({0: ~right}, {0: right}, level=level, num_resamples=20_000)
    assert ci.estimate == 0.0 and ci.level == level and ci.n == 1
    assert ci.low == pytest.approx(-z / math.sqrt(n), rel=0.03)
    assert ci.high == pytest.approx(z / math.sqrt(n), rel=0.03)


@pytest.mark.parametrize("level", [0.0, 1.0, -0.5, 95])
def test_a_level_outside_the_open_unit_interval_is_refused(level):
    """0 and 1 are refused too: a 0% interval is a point, a 100% percentile interval the sample's range."""
    with pytest.raises(ValueError, match=rf"^mean_ci: level must be in \(0, 1\), e.g. 0.95, got {level!r}$"):
        stats.mean_ci([1.0, 2.0, 4.0], level=level)
    assert stats.mean_ci([1.0, 2.0, 4.0], level=0.999).level == 0.999


def test_scores_of_any_shape_are_read_as_one_sample():
    """The statistics read every value of an array-like (a column of per-run values, a nested list) as one sample."""
    assert stats.mean_ci([[1.0, 2.0], [3.0, 5.0]]) == stats.mean_ci([1.0, 2.0, 3.0, 5.0])
    d = np.random.default_rng(3).random(40)
    flat = stats.crossed_bootstrap_ci({0: np.zeros(40)}, {0: d}, num_resamples=200)
    assert stats.crossed_bootstrap_ci({0: np.zeros((40, 1))}, {0: d.reshape(40, 1)}, num_resamples=200) == flat
    with pytest.raises(ValueError, match=r"^mean_ci: no values$"):
        stats.mean_ci([])
    with pytest.raises(ValueError) as err:
        stats.mean_ci([1.0, float("inf"), 2.0])
    assert str(err.value) == (
        "mean_ci: 1 of 3 values are NaN or infinite; count diverged runs with success_rate, or pass their outcome "
        "explicitly"
    )


def test_crossed_bootstrap_on_a_test_set_too_large_for_one_chunk():
    # 4200 examples × 4000 resamples exceed the 2**24-element chunk: drawn in two chunks, still one interval
    rng = np.random.default_rng(5)
    n = 4200
    d = rng.choice([-1.0, 0.0, 1.0], n, p=[0.1, 0.8, 0.1])
    ci = stats.crossed_bootstrap_ci({0: np.zeros(n)}, {0: d}, num_resamples=4000)
    half = 1.959964 * d.std() / math.sqrt(n)  # one seed: only the test set's sampling error
    assert ci.estimate == pytest.approx(d.mean()) and (ci.high - ci.low) / 2 == pytest.approx(half, rel=0.08)


def test_mean_ci_bootstrap_on_a_two_point_sample_by_hand_and_its_errors():
    # resampling [0, 10] twice: means 0, 5, 10 with probabilities 1/4, 1/2, 1/4 (10000 resamples: ±0.005)
    ci = stats.mean_ci([0.0, 10.0], method="bootstrap")
    assert (ci.estimate, ci.low, ci.high, ci.n, ci.method) == (5.0, 0.0, 10.0, 2, "bootstrap")
    # level 0.4: the 30% and 70% quantiles both fall in the middle atom, 5
    narrow = stats.mean_ci([0.0, 10.0], level=0.4, method="bootstrap")
    assert (narrow.low, narrow.high) == (5.0, 5.0)
    x = np.random.default_rng(11).normal(0.0, 1.0, 15)  # the documented defaults: 10_000 resamples, seed 0
    assert stats.mean_ci(x, method="bootstrap") == stats.mean_ci(x, method="bootstrap", num_resamples=10_000, seed=0)
    with pytest.raises(ValueError, match=r"^mean_ci: 1 of 3 values are NaN or infinite"):
        stats.mean_ci([1.0, float("nan"), 2.0])
    with pytest.raises(ValueError, match=r"^mean_ci: level must be in \(0, 1\), e.g. 0.95, got 95"):
        stats.mean_ci([1.0, 2.0], level=95)
    with pytest.raises(ValueError, match=r"^mean_ci: an interval needs at least 2 values, got 1; run more seeds"):
        stats.mean_ci([1.0])


def test_fisher_exact_edge_counts_and_messages():
    # one run per arm: tables [[0, 1], [1, 0]] and [[1, 0], [0, 1]], each with probability 1/2 given the margins
    assert stats.fisher_exact(1, 1, 0, 1, direction="less") == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"^fisher_exact: arm a needs 0 <= successes <= n and n > 0, got 0 of 0"):
        stats.fisher_exact(0, 0, 1, 5)
    with pytest.raises(ValueError, match=r"^fisher_exact: arm a needs 0 <= successes <= n and n > 0, got 6 of 5"):
        stats.fisher_exact(6, 5, 1, 5)
    with pytest.raises(
        ValueError, match=r"^fisher_exact: direction must be 'greater', 'less' or 'two-sided', got 'up'"
    ):
        stats.fisher_exact(1, 5, 2, 5, direction="up")


def test_reach_time_edges():
    assert stats.reach_time([5], [1.0], 0.5) == (5, True)  # a single logged step is a run
    assert stats.reach_time([10, 20], [0.6, 0.5], 0.5, higher_is_better=False) == (20, True)  # reaching = equalling
    for steps, values in (([], []), ([1, 2], [0.1, 0.2, 0.3])):
        with pytest.raises(ValueError, match=rf"^reach_time: need equal, non-empty steps and values, got {len(steps)}"):
            stats.reach_time(steps, values, 0.5)


def test_signed_rank_statistic_by_hand_and_its_errors():
    a = {s: 0.0 for s in range(6)}
    b = {0: 1.0, 1: 2.0, 2: -0.5, 3: 3.0, 4: 0.0, 5: 1.5}  # the zero difference is dropped (Wilcoxon's method)
    res = stats.signed_rank(a, b, direction="greater")
    # |d| ranks of the five non-zero differences: 0.5→1, 1→2, 1.5→3, 2→4, 3→5; W⁺ = 2 + 4 + 5 + 3
    assert res["statistic"] == 14.0 and res["n"] == 6 and res["differences"] == b
    with pytest.raises(ValueError, match="^signed_rank: direction must be"):
        stats.signed_rank(a, b, direction="up")
    with pytest.raises(ValueError, match="^signed_rank: 1 of 6 values are NaN"):
        stats.signed_rank(a, {**b, 3: float("nan")})


@pytest.mark.parametrize(("d", "n80", "n90"), [(0.3, 90, 119), (0.5, 34, 44), (0.8, 15, 19), (1.0, 10, 13)])
def test_seeds_for_power_equals_published_one_sample_t_sizes(d, n80, n90):
    """G*Power's one-sample (paired) t test, two-tailed α = 0.05, effect size d = effect/sd: the total sizes for
    power 0.8 and 0.9 (Faul et al. 2007; Cohen 1988, Table 2.4.1)."""
    assert stats.seeds_for_power(1.0, d) == n80 and stats.seeds_for_power(2.0, 2 * d, power=0.9) == n90

    # where the noncentral t's degrees of freedom decide the size (n − 1, not n + 1): the exact power at n and n − 1
    for d, n in ((0.52, 32), (0.81, 15)):
        assert stats.seeds_for_power(1.0, d) == n
        power = lambda k: scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, k - 1), k - 1, d * math.sqrt(k))  # noqa: E731
        assert power(n) >= 0.8 > power(n - 1)


def test_seeds_for_power_bounds_and_messages():
    # the equivalence bound √n·margin/sd ≥ t(1 − α) + t(1 − (1 − power)/2), df n − 1, at its smallest n
    for sd, margin in (
        (1.0, 0.5),
        (1.0, 1.0),
        (0.7, 0.4),
        (1.0, 0.9),
        (1.0, 1.03),
    ):  # 0.9, 1.03: where df n ± 1 moves it
        m = stats.seeds_for_power(sd, margin, equivalence=True)
        bound = lambda n: scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.9, n - 1)  # noqa: E731
        assert math.sqrt(m) * margin / sd >= bound(m) and math.sqrt(m - 1) * margin / sd < bound(m - 1)
    assert stats.seeds_for_power(1.0, 0.5, max_seeds=34) == 34  # the limit itself is allowed
    with pytest.raises(ValueError, match=r"^seeds_for_power: more than 33 seeds needed \(sd=1.0, effect=0.5\)"):
        stats.seeds_for_power(1.0, 0.5, max_seeds=33)
    with pytest.raises(
        ValueError,
        match=r"^seeds_for_power: more than 10000 seeds needed \(sd=1.0, effect=0.001\); the design cannot meet "
        r"this: take a larger effect or margin, or reduce the variance$",
    ):
        stats.seeds_for_power(1.0, 0.001)
    with pytest.raises(ValueError, match=r"^seeds_for_power: sd and effect must be positive, got sd=1.0, effect=0"):
        stats.seeds_for_power(1.0, 0)
    for p in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"^seeds_for_power: power must be in \(0, 1\), e.g. 0.8, got {p}$"):
            stats.seeds_for_power(1.0, 1.0, power=p)
    with pytest.raises(ValueError, match=r"^seeds_for_power: level must be in \(0, 1\)"):
        stats.seeds_for_power(1.0, 1.0, level=1.5)


def test_ratio_ci_of_paired_means():
    """mean(a)/mean(b) over the shared keys with a bootstrap interval that resamples keys together: exact when the
    ratio is the same for every key, unbounded when the denominator's sign is unclear, None without a ratio."""
    b = {s: 1.0 + s for s in range(8)}
    r = stats.ratio_ci({s: 2.5 * v for s, v in b.items()}, {**b, 99: 5.0})  # key 99 is not shared
    assert (r.estimate, r.low, r.high, r.n, r.method) == (
        pytest.approx(2.5),
        pytest.approx(2.5),
        pytest.approx(2.5),
        8,
        "bootstrap",
    )
    rng = np.random.default_rng(0)
    a = {s: float(v) for s, v in enumerate(rng.normal(1.0, 0.5, 12))}
    d = {s: float(v) for s, v in enumerate(rng.normal(2.0, 0.5, 12))}
    wide, narrow = stats.ratio_ci(a, d), stats.ratio_ci(a, d, level=0.5)
    assert wide.estimate == pytest.approx(np.mean(list(a.values())) / np.mean(list(d.values())))
    assert wide.low < narrow.low < wide.estimate < narrow.high < wide.high
    assert stats.ratio_ci(a, d, seed=1) != wide and stats.ratio_ci(a, d) == wide  # reproducible by its seed
    unclear = stats.ratio_ci(a, {s: 0.1 + (1.0 if s % 2 else -1.0) for s in range(12)})
    assert (unclear.low, unclear.high) == (-math.inf, math.inf)
    assert stats.ratio_ci(a, {s: -1.0 for s in range(12)}) is None
    assert stats.ratio_ci({0: 1.0}, {0: 1.0}) is None
    with pytest.raises(ValueError, match="ratio_ci"):
        stats.ratio_ci({0: 1.0, 1: math.nan}, {0: 1.0, 1: 1.0})
