"""Effect sizes and their intervals, on numbers worked out by hand (t quantiles from printed tables)."""

import math

import numpy as np
import pytest

from cft_rl.compare.effects import (
    Interval,
    bootstrap_interval,
    describe,
    detectable_difference,
    difference,
    ema,
    hedges_g,
    mean_interval,
    minimum_detectable_difference,
    t_cdf,
    t_quantile,
    verdict,
    welch_interval,
)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [(0.975, 1, 12.7062), (0.975, 4, 2.7764), (0.95, 10, 1.8125), (0.995, 30, 2.7500), (0.975, 1e6, 1.9600)],
)
def test_t_quantiles_match_the_printed_table(p, df, table):
    assert t_quantile(p, df) == pytest.approx(table, abs=1e-4)
    assert t_quantile(1 - p, df) == pytest.approx(-table, abs=1e-4)


def test_t_cdf_is_symmetric_about_zero():
    assert t_cdf(0.0, 3) == pytest.approx(0.5)
    assert t_cdf(-2.7764, 4) == pytest.approx(0.025, abs=1e-5)
    assert t_cdf(2.7764, 4) == pytest.approx(0.975, abs=1e-5)


def test_welch_with_equal_spreads_is_the_pooled_interval():
    # means 2 and 5, variances 1 and 1: se = sqrt(1/3 + 1/3), df = (2/3)^2 / (2 * (1/3)^2 / 2) = 4
    got = welch_interval([1, 2, 3], [4, 5, 6])
    half = 2.776445 * math.sqrt(2 / 3)
    assert got.diff == pytest.approx(-3)
    assert (got.low, got.high) == pytest.approx((-3 - half, -3 + half), abs=1e-5)
    assert got.significant and got.method == "t"


def test_welch_degrees_of_freedom_follow_welch_satterthwaite():
    # variances 1 and 4 over 3 seeds each: se^2 = 5/3, df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 50/17
    got = welch_interval([1, 2, 3], [2, 4, 6])
    half = t_quantile(0.975, 50 / 17) * math.sqrt(5 / 3)
    assert (got.low, got.high) == pytest.approx((-2 - half, -2 + half), rel=1e-9)
    assert not got.significant  # the interval straddles 0


def test_hedges_g_applies_the_small_sample_correction():
    # pooled sd 1, d = -3, correction 1 - 3 / (4 * 6 - 9) = 0.8
    assert hedges_g([1, 2, 3], [4, 5, 6]) == pytest.approx(-2.4)
    assert hedges_g([1, 1], [2, 2]) is None and hedges_g([1], [2, 3]) is None


def test_bootstrap_is_seeded_and_sees_a_clear_separation():
    a, b = [10, 11, 12, 13], [0, 1, 2, 3]
    first, again = bootstrap_interval(a, b), bootstrap_interval(a, b)
    assert first == again and first.diff == 10 and first.significant
    # resampled means of each arm stay within its own range: the interval lies within [7, 13]
    assert 7 <= first.low <= 10 <= first.high <= 13


def test_identical_arms_are_not_significant():
    same = [0.31, 0.29, 0.35, 0.30, 0.33]
    for method in ("t", "bootstrap"):
        got = difference(same, same, method)
        assert got.diff == 0 and got.low < 0 < got.high and not got.significant


def test_undefined_and_exact_intervals_say_why():
    one = welch_interval([1.0], [2.0, 3.0])
    assert one.low is None and not one.significant and "fewer than 2" in one.note
    flat = welch_interval([1.0, 1.0], [0.5, 0.5])
    assert (flat.low, flat.high) == (0.5, 0.5) and flat.significant and "no spread" in flat.note
    with pytest.raises(ValueError, match="finite"):
        welch_interval([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(ValueError, match="method"):
        difference([1, 2], [1, 2], "z")


def test_ema_is_tensorboards_debiased_average():
    assert ema([1, 2, 3], 0.5) == pytest.approx([1, 5 / 3, 17 / 7])
    assert ema([4, 1, 7], 0.0) == pytest.approx([4, 1, 7])
    assert ema([2.0] * 5, 0.9) == pytest.approx(np.full(5, 2.0))  # a constant curve stays put
    with pytest.raises(ValueError):
        ema([1], 1.0)


def test_the_verdict_line_reads_as_the_issue_asks():
    effects = {
        "probe/entropy": Interval(0.04, 0.01, 0.07, "t"),
        "pass@1": Interval(-0.01, -0.03, 0.01, "t"),
    }
    line = verdict("critical", "full", effects, digits=2)
    assert line == "critical vs full: probe/entropy +0.04 [0.01, 0.07] *; pass@1 -0.01 [-0.03, 0.01]"
    assert "no interval" in describe(Interval(0.1, None, None, "t", "fewer than 2 seeds"), "x")


def test_minimum_detectable_difference_by_hand():
    # sd 1 and 1 over 3 seeds each: SE = sqrt(2/3), df 4; t(0.975, 4) = 2.7764, t(0.80, 4) = 0.9410
    assert minimum_detectable_difference(1, 3, 1, 3) == pytest.approx(
        (2.7764 + 0.9410) * math.sqrt(2 / 3), abs=1e-3
    )
    assert detectable_difference([1, 2, 3], [4, 5, 6]) == pytest.approx(3.0353, abs=1e-3)
    # sd 0.02 over 5 seeds each: SE = 0.02 sqrt(2/5), df 8; t(0.975, 8) = 2.3060, t(0.80, 8) = 0.8889
    assert minimum_detectable_difference(0.02, 5, 0.02, 5) == pytest.approx(3.1949 * 0.012649, abs=1e-5)
    # many seeds: the normal approximation, 1.960 + 0.842 = 2.802 standard errors
    se = math.sqrt(2 / 1e6)
    assert minimum_detectable_difference(1, 10**6, 1, 10**6) == pytest.approx(2.8016 * se, rel=1e-4)
    # more seeds, smaller MDE; a lower power asks less
    assert minimum_detectable_difference(1, 8, 1, 8) < minimum_detectable_difference(1, 4, 1, 4)
    assert minimum_detectable_difference(1, 4, 1, 4, power=0.5) < minimum_detectable_difference(1, 4, 1, 4)


def test_minimum_detectable_difference_is_undefined_without_a_spread():
    assert minimum_detectable_difference(1, 1, 1, 5) is None
    assert minimum_detectable_difference(0, 3, 0, 3) is None
    assert detectable_difference([1.0], [2.0, 3.0]) is None
    with pytest.raises(ValueError, match="power"):
        minimum_detectable_difference(1, 3, 1, 3, power=1.0)


def test_mean_interval_of_paired_rises_by_hand():
    # rises 0.04, 0.05, 0.06: sd 0.01, SE 0.01 / sqrt(3) = 0.005774, t(0.975, 2) = 4.3027
    got = mean_interval([0.04, 0.05, 0.06])
    half = 4.3027 * 0.005774
    assert got["mean"] == pytest.approx(0.05) and got["se"] == pytest.approx(0.005774, abs=1e-6)
    assert (got["low"], got["high"]) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-5)
    assert got["z"] == pytest.approx(8.660, abs=1e-3) and got["n"] == 3 and got["note"] is None
    one = mean_interval([0.1])
    assert one["se"] is None and one["z"] is None and "fewer than 2" in one["note"]
    flat = mean_interval([0.2, 0.2])
    assert (flat["low"], flat["high"], flat["z"]) == (0.2, 0.2, None) and "no spread" in flat["note"]
    with pytest.raises(ValueError, match="finite"):
        mean_interval([])
