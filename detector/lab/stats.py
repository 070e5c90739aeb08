"""The statistics of a report: paired differences over seeds with their Student-t intervals and
p-values, Holm's adjustment over a family of comparisons, the trend of a paired difference
along a numeric axis (seeds as blocks), and what a spread lets a number of seeds detect.

Every function works on ``seed -> value`` mappings, so seeds pair up by their number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev

from scipy import stats as scipy_stats

CONFIDENCE = 0.95
POWER = 0.8  # of the detectable-difference figures


@dataclass(frozen=True)
class Difference:
    """mean(condition - baseline) over paired seeds, its 95% interval and two-sided p-value
    (None with one pair), and the standard deviation of the per-seed differences."""

    mean: float
    low: float | None
    high: float | None
    pairs: int
    p: float | None = None
    sd: float | None = None

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def t_quantile(pairs: int, confidence: float = CONFIDENCE) -> float:
    """Student-t quantile of a two-sided ``confidence`` interval from ``pairs`` values (4.30 for 3)."""
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, pairs - 1))


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      confidence: float = CONFIDENCE) -> Difference | None:
    """Student-t interval and paired t-test of the per-seed differences; None when no seed is in both."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    centre = mean(diffs)
    if len(diffs) < 2:
        return Difference(centre, None, None, 1)
    sd = stdev(diffs)
    se = sd / math.sqrt(len(diffs))
    half = t_quantile(len(diffs), confidence) * se
    if se > 0:
        p = float(2 * scipy_stats.t.sf(abs(centre) / se, len(diffs) - 1))
    else:  # every seed differs by the same amount
        p = 0.0 if centre != 0 else 1.0
    return Difference(centre, centre - half, centre + half, len(diffs), p, sd)


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment of a family of p-values (None: not tested, left out of the
    family): the k-th smallest of m is multiplied by m - k + 1, made monotone, capped at 1."""
    tested = sorted((p, key) for key, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = dict.fromkeys(p_values)
    running = 0.0
    for rank, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[key] = running
    return adjusted


@dataclass(frozen=True)
class Trend:
    """Slope of a paired difference against a numeric axis, seeds as blocks, with its 95%
    interval and two-sided p-value; ``df`` its residual degrees of freedom."""

    slope: float
    low: float
    high: float
    p: float
    df: int


def paired_trend(differences: dict[float, dict[int, float]], confidence: float = CONFIDENCE) -> Trend | None:
    """``differences[x][seed]``: the paired difference of a seed at axis value x (a noise level).
    Least squares of difference = seed's own offset + slope * x (a fixed effect per seed, so a
    seed that is better at every x does not pass for a trend). None without at least two x
    values for two seeds and one residual degree of freedom."""
    by_seed: dict[int, list[tuple[float, float]]] = {}
    for x, per_seed in differences.items():
        for seed, value in per_seed.items():
            by_seed.setdefault(seed, []).append((x, value))
    blocks = [points for points in by_seed.values() if len({x for x, _ in points}) >= 2]
    observations = sum(len(points) for points in blocks)
    df = observations - len(blocks) - 1
    if len(blocks) < 2 or df < 1:
        return None
    centred = [(x - mean(px for px, _ in points), y - mean(py for _, py in points))
               for points in blocks for x, y in points]
    sxx = sum(x * x for x, _ in centred)
    slope = sum(x * y for x, y in centred) / sxx
    residual = sum((y - slope * x) ** 2 for x, y in centred) / df
    se = math.sqrt(residual / sxx)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * scipy_stats.t.sf(abs(slope) / se, df)) if se > 0 else (0.0 if slope != 0 else 1.0)
    return Trend(slope, slope - half, slope + half, p, df)


def detectable_difference(sd: float, pairs: int, alpha: float = 1 - CONFIDENCE, power: float = POWER) -> float:
    """The paired difference that ``pairs`` seeds with this spread of differences detect at
    level ``alpha`` (two-sided) with probability ``power``: (t_{1-alpha/2} + t_power) * sd / sqrt(n)."""
    df = pairs - 1
    return (float(scipy_stats.t.ppf(1 - alpha / 2, df)) + float(scipy_stats.t.ppf(power, df))) * sd / math.sqrt(pairs)


def seeds_to_detect(difference: float, sd: float, alpha: float = 1 - CONFIDENCE, power: float = POWER,
                    most: int = 1000) -> int | None:
    """The fewest seeds whose detectable difference (same spread) is at most ``difference``;
    None beyond ``most``."""
    if sd == 0:
        return 2
    for pairs in range(2, most + 1):
        if detectable_difference(sd, pairs, alpha, power) <= difference:
            return pairs
    return None


def interval_text(low: float, high: float, digits: int = 3) -> str:
    """``[+0.012, +0.031]``, with more digits (up to 5) where 3 would round a bound that does
    not touch 0 to +-0.000, so an interval that excludes 0 never reads as touching it."""
    while digits < 5 and (low > 0 or high < 0) and round(min(abs(low), abs(high)), digits) == 0:
        digits += 1
    return f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def p_text(p: float) -> str:
    """A p-value in three decimals, below 0.001 as "< 0.001"."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
