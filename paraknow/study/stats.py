"""Small statistics for studies: Student-t intervals, paired differences, Spearman correlation.

tests/test_study_stats.py checks every function against scipy.stats' own (t.interval, the
interval of ttest_rel, spearmanr) on fixed samples. See docs/study.md for how a study uses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, df))


@dataclass
class Estimate:
    """Mean of n values with its Student-t interval (lo/hi None when n < 2)."""
    n: int
    mean: float | None
    lo: float | None = None
    hi: float | None = None

    @property
    def interval(self) -> list[float] | None:
        return None if self.lo is None else [self.lo, self.hi]

    def excludes_zero(self) -> bool:
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def mean_interval(values, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and two-sided Student-t confidence interval (sample standard deviation, n - 1 df)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return Estimate(0, None)
    mean = sum(values) / n
    if n == 1:
        return Estimate(1, mean)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * sd / math.sqrt(n)
    return Estimate(n, mean, mean - half, mean + half)


def paired_difference(a: dict, b: dict, confidence: float = CONFIDENCE) -> Estimate:
    """Mean of the per-key differences a[k] - b[k] over the keys both hold (e.g. seeds), with the
    paired-t interval (the interval of scipy's ttest_rel(a, b))."""
    keys = [k for k in a if k in b]
    return mean_interval([a[k] - b[k] for k in keys], confidence)


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x, y) -> float | None:
    """Spearman rank correlation of paired values (None with fewer than 3 pairs or no spread)."""
    if len(x) != len(y):
        raise ValueError("spearman needs two sequences of the same length")
    if len(x) < 3:
        return None
    rx, ry = _ranks([float(v) for v in x]), _ranks([float(v) for v in y])
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return None
    return cov / math.sqrt(vx * vy)
