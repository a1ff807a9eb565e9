"""Small statistics for studies: Student-t intervals, paired differences, Spearman correlation,
the paired t-test, multiplicity corrections (Holm, Bonferroni), the minimum detectable effect at
80 % power and the paired hierarchical bootstrap.

tests/test_study_stats.py checks every function against scipy.stats' own (t.interval, the
interval of ttest_rel, spearmanr) on fixed samples, Holm against a hand-computed table and the
power against scipy's noncentral t. See docs/study.md for how a study uses them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


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


def paired_t_p(diffs) -> float | None:
    """Two-sided p of the paired t-test on per-seed differences (scipy's ttest_1samp against 0, the
    same as ttest_rel on the two sides); None with fewer than 2 values or no spread."""
    from scipy import stats

    diffs = [float(d) for d in diffs]
    if len(diffs) < 2 or max(diffs) == min(diffs):
        return None
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def holm(pvalues: list) -> list:
    """Holm's step-down adjusted p-values, m = len(pvalues); a None (untestable) counts in m, sorts
    last and stays None."""
    m = len(pvalues)
    order = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    adjusted, running = [None] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bonferroni(pvalues: list) -> list:
    """p * m, capped at 1 (None stays None)."""
    return [None if p is None else min(1.0, len(pvalues) * p) for p in pvalues]


CORRECTIONS = {"holm": holm, "bonferroni": bonferroni}  # a recipe's `correction` (family-wise, within a family)


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true mean difference a two-sided paired t-test at level `alpha` detects with
    probability `power`, for n pairs whose differences have standard deviation `sd` (exact, from the
    noncentral t); None for n < 2 or sd = 0."""
    from scipy import optimize, stats

    if n < 2 or not sd > 0:
        return None
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)

    def short(delta):  # power at noncentrality delta, minus the target
        nc = delta * math.sqrt(n) / sd
        return stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc) - power  # both tails (cdf(-c) is nan far out)

    hi = sd
    while short(hi) < 0:
        hi *= 2
    return float(optimize.brentq(short, 0.0, hi, xtol=1e-12 * sd))


def hierarchical_bootstrap(diffs, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                           confidence: float = CONFIDENCE) -> list[float] | None:
    """Percentile interval of the mean paired difference, resampling seeds (rows) with replacement
    and then, within each drawn seed, its items (columns) with replacement. `diffs` [seeds, items]:
    per seed and test item, correct(arm) - correct(reference) (the same items in every row). None
    with fewer than 2 seeds or no items."""
    import numpy as np

    d = np.asarray(diffs, dtype=np.float64)  # [n_seeds, n_items]
    if d.ndim != 2 or d.shape[0] < 2 or d.shape[1] == 0:
        return None
    n_seeds, n_items = d.shape
    rng = np.random.default_rng(seed)
    totals = np.zeros(resamples)
    for _ in range(n_seeds):  # one drawn seed per slot, its items redrawn for every resample
        rows = rng.integers(n_seeds, size=resamples)  # [resamples]
        items = rng.integers(n_items, size=(resamples, n_items))  # [resamples, n_items]
        totals += d[rows[:, None], items].mean(axis=1)
    means = totals / n_seeds
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]
