"""The report's statistics against hand-worked numbers and scipy/numpy references."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from detector.lab.stats import (
    detectable_difference,
    holm,
    interval_text,
    paired_difference,
    paired_trend,
    seeds_to_detect,
    t_quantile,
)


def test_the_paired_p_value_is_scipys_paired_t_test():
    values, baseline = {0: 0.71, 1: 0.74, 2: 0.72, 3: 0.78}, {0: 0.70, 1: 0.70, 2: 0.71, 3: 0.72}
    difference = paired_difference(values, baseline)
    reference = scipy_stats.ttest_rel(list(values.values()), list(baseline.values()))
    assert difference.p == pytest.approx(reference.pvalue) and difference.pairs == 4
    assert difference.sd == pytest.approx(np.std([0.01, 0.04, 0.01, 0.06], ddof=1))
    assert paired_difference({0: 0.71, 1: 0.72}, {0: 0.70, 1: 0.71}).p == 0.0  # every seed +0.01: no spread
    assert t_quantile(3) == pytest.approx(4.302653, abs=1e-6)


def test_holm_hand_worked():
    # sorted 0.01, 0.02, 0.04 (m = 3): 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04; untested stays None
    assert holm({"a": 0.04, "b": 0.01, "c": 0.02, "d": None}) == {"a": 0.04, "b": 0.03, "c": 0.04, "d": None}
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # capped at 1
    assert holm({}) == {}


def test_the_trend_with_seeds_as_blocks_equals_least_squares_with_a_dummy_per_seed():
    rng = np.random.default_rng(0)
    levels = (0.0, 0.2, 0.4)
    offsets = {0: 0.01, 1: -0.02, 2: 0.005}  # seed effects shared across levels must not pass for a trend
    differences = {x: {s: offsets[s] - 0.1 * x + rng.normal(0, 0.002) for s in offsets} for x in levels}
    trend = paired_trend(differences)
    rows = [(x, s, differences[x][s]) for x in levels for s in offsets]
    design = np.array([[x] + [float(s == seed) for seed in offsets] for x, s, _ in rows])
    y = np.array([d for _, _, d in rows])
    coefficients, residual, *_ = np.linalg.lstsq(design, y, rcond=None)
    df = len(rows) - design.shape[1]
    se = np.sqrt(residual[0] / df * np.linalg.inv(design.T @ design)[0, 0])
    assert trend.df == df == 5
    assert trend.slope == pytest.approx(coefficients[0]) and trend.slope == pytest.approx(-0.1, abs=0.02)
    assert trend.high - trend.slope == pytest.approx(scipy_stats.t.ppf(0.975, df) * se)
    assert trend.p == pytest.approx(2 * scipy_stats.t.sf(abs(coefficients[0]) / se, df))
    assert paired_trend({0.0: {0: 0.1}, 0.2: {0: 0.2}}) is None  # one seed: no blocks to compare


def test_what_seeds_can_detect():
    # 3 seeds, sd 0.01: (t_0.975,2 + t_0.8,2) * 0.01 / sqrt(3) = (4.3027 + 1.0607) * 0.005774 = 0.03097
    assert detectable_difference(0.01, 3) == pytest.approx(0.03097, abs=1e-4)
    needed = seeds_to_detect(0.01, 0.01)
    assert detectable_difference(0.01, needed) <= 0.01 < detectable_difference(0.01, needed - 1)


def test_intervals_that_exclude_0_never_read_as_touching_it():
    assert interval_text(0.012, 0.031) == "[+0.012, +0.031]"
    assert interval_text(0.0004, 0.004) == "[+0.0004, +0.0040]"
    assert interval_text(-0.00002, 0.01) == "[-0.000, +0.010]"  # it does contain 0
    assert interval_text(-0.004, -0.00004) == "[-0.00400, -0.00004]"
