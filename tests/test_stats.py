"""The statistics module on cases with known answers: Student and bootstrap intervals, paired differences, Wilson
intervals, success rates that count diverged and chance-level runs, censored reach times (Kaplan–Meier), verdicts."""

import math

import numpy as np
import pytest

from jaxnorm import stats


def test_t_interval_of_a_known_sample():
    ci = stats.mean_ci([1, 2, 3, 4, 5])
    # 3 ± t(4, 0.975) · s/√5 = 3 ± 2.776445 · 1.581139 / 2.236068
    assert ci.estimate == 3 and ci.n == 5 and ci.method == "t"
    assert ci.low == pytest.approx(1.036757, abs=1e-5) and ci.high == pytest.approx(4.963243, abs=1e-5)
    assert ci.excludes_zero() == 1
    ci90 = stats.mean_ci([1, 2, 3, 4, 5], level=0.9)
    assert ci90.high - ci90.low < ci.high - ci.low


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


def test_binomial_noise_floor_of_a_test_set():
    assert stats.binomial_se(0.983, 360) == pytest.approx(0.00681, abs=2e-5)  # digits' 360 test images
    assert stats.binomial_se(0.9, 10_000) == pytest.approx(0.003)


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
