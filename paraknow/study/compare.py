"""The declared comparisons of a study, each with its statistics and one of four verdicts.

Per comparison (ARM vs REFERENCE, in a family; ../shared/SPEC.md section 11, docs/study.md):
  n               paired seeds (a control's single evaluation stands for every seed)
  diff, ci95      mean paired difference of test accuracy, paired-t 95 % interval
  p               two-sided paired t-test
  p_adjusted      the recipe's correction (Holm by default) within the family
  ci95_adjusted   paired-t interval at level 1 - 0.05/m, m = the family's size
  bootstrap_ci95  seeds, then test items within the paired predictions (None without predictions)
  mde80           smallest difference detectable at 80 % power at level 0.05/m, from the paired SD
  verdict         better | worse (p_adjusted < 0.05, by the sign of diff); equivalent (ci95_adjusted
                  inside +-equivalence_margin); inconclusive otherwise, and always when n < 3, the
                  differences have no spread, or the arms' seeds or swept rates differ
  reason          why, in words
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

from .stats import ALPHA, CORRECTIONS, hierarchical_bootstrap, mde, mean_interval, paired_t_p

MIN_SEEDS = 3
VERDICTS = ("better", "worse", "equivalent", "inconclusive")


@dataclass
class Comparison:
    arm: str
    reference: str
    family: str
    n: int
    diff: float | None
    ci95: list[float] | None
    p: float | None
    p_adjusted: float | None
    ci95_adjusted: list[float] | None
    bootstrap_ci95: list[float] | None
    mde80: float | None
    verdict: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ArmData:
    """What the comparisons need of one arm: its selected record per seed (seed None for a control),
    the finished rates per seed of its sweep, and its per-item correctness per seed ({id: bool})."""
    by_seed: dict
    rates: dict
    items: dict


def signed_points(x: float | None) -> str:
    """A difference of accuracy fractions in signed percentage points ("-" for None)."""
    return "-" if x is None else f"{100 * x:+.1f}"


def signed_interval(ci) -> str:
    return "-" if not ci else f"[{signed_points(ci[0])}, {signed_points(ci[1])}]"


def _pair(arm: ArmData, ref: ArmData) -> list:
    """The seeds both sides have (a control's None pairs with every seed of the other side)."""
    a, r = set(arm.by_seed), set(ref.by_seed)
    if None in a and None in r:
        return [None]
    if None in a or None in r:
        return sorted((r if None in a else a) - {None})
    return sorted(a & r)


def _value(data: ArmData, seed):
    return data.by_seed[None if None in data.by_seed else seed]["test_accuracy"]


def _item_diffs(arm: ArmData, ref: ArmData, seeds: list) -> list[list[int]] | None:
    """[seeds, items]: correct(arm) - correct(reference) on the items every paired cell scored."""
    rows = []
    for seed in seeds:
        a = arm.items.get(None if None in arm.items else seed)
        r = ref.items.get(None if None in ref.items else seed)
        if a is None or r is None:
            return None
        rows.append((a, r))
    common = sorted(set.intersection(*(set(a) & set(r) for a, r in rows)), key=str) if rows else []
    return [[int(a[i]) - int(r[i]) for i in common] for a, r in rows] if common else None


def _degenerate(name: str, ref_name: str, arm: ArmData, ref: ArmData, seeds: list, diffs: list) -> str | None:
    """Why the comparison cannot give better/worse/equivalent, or None."""
    own = {side: sorted(s for s in d.by_seed if s is not None) for side, d in ((name, arm), (ref_name, ref))}
    if own[name] and own[ref_name] and own[name] != own[ref_name]:
        return f"unequal seeds: {name} has {own[name]}, {ref_name} {own[ref_name]}"
    for side, data in ((name, arm), (ref_name, ref)):
        counts = {s: data.rates.get(s, 0) for s in seeds if s is not None}
        if counts and min(counts.values()) < max(counts.values()):
            short = [s for s, c in counts.items() if c < max(counts.values())]
            return (f"unequal swept rates: {side} has {min(counts.values())} of {max(counts.values())} "
                    f"rates finished on seed(s) {short}")
    if len(diffs) < MIN_SEEDS:
        return f"only {len(diffs)} paired seed(s); {MIN_SEEDS} are needed"
    if max(diffs) == min(diffs):
        return f"the paired differences have no spread (all {signed_points(diffs[0])} points)"
    return None


def _one(name, ref_name, family, m, arm: ArmData, ref: ArmData) -> tuple[Comparison, str | None]:
    seeds = _pair(arm, ref)
    diffs = [_value(arm, s) - _value(ref, s) for s in seeds]
    est = mean_interval(diffs)
    adjusted = mean_interval(diffs, 1 - ALPHA / m)
    sd = statistics.stdev(diffs) if len(diffs) > 1 else None
    items = _item_diffs(arm, ref, seeds)
    comp = Comparison(arm=name, reference=ref_name, family=family, n=len(diffs), diff=est.mean,
                      ci95=est.interval, p=paired_t_p(diffs), p_adjusted=None, ci95_adjusted=adjusted.interval,
                      bootstrap_ci95=hierarchical_bootstrap(items) if items else None,
                      mde80=mde(sd, len(diffs), ALPHA / m) if sd else None, verdict="inconclusive", reason="")
    return comp, _degenerate(name, ref_name, arm, ref, seeds, diffs)


def _decide(c: Comparison, degenerate: str | None, m: int, correction: str, margin: float) -> None:
    family = f"{m} {c.family} comparison{'s' if m > 1 else ''}, {correction}"
    if degenerate:
        c.verdict, c.reason = "inconclusive", degenerate
    elif c.p_adjusted is not None and c.p_adjusted < ALPHA:
        c.verdict = "better" if c.diff > 0 else "worse"
        c.reason = f"{signed_points(c.diff)} points, adjusted p = {c.p_adjusted:.3g} < {ALPHA:g} ({family})"
    elif c.ci95_adjusted and -margin < c.ci95_adjusted[0] and c.ci95_adjusted[1] < margin:
        c.verdict = "equivalent"
        c.reason = (f"the {100 * (1 - ALPHA / m):.4g} % interval {signed_interval(c.ci95_adjusted)} lies inside "
                    f"+-{100 * margin:g} points ({family})")
    else:
        c.verdict = "inconclusive"
        detectable = "" if c.mde80 is None else f"; minimum detectable effect {100 * c.mde80:.1f} points"
        c.reason = (f"{signed_points(c.diff)} points, adjusted p = {c.p_adjusted:.3g}, neither a difference nor "
                    f"inside +-{100 * margin:g} points ({family}){detectable}")


def _left_out(name, ref_name, family, arm: ArmData, ref: ArmData, reason: str) -> Comparison:
    """A comparison outside its family's correction (its arm duplicates another): the raw numbers only."""
    c, _ = _one(name, ref_name, family, 1, arm, ref)
    c.ci95_adjusted, c.mde80, c.verdict, c.reason = None, None, "inconclusive", reason
    return c


def compare_all(comparisons: dict, data: dict[str, ArmData], correction: str, margin: float,
                left_out: dict[str, str] | None = None) -> list[Comparison]:
    """Every declared comparison ({family: [[arm, reference], ...]}) with its verdict; `data` holds
    each arm's ArmData. The correction runs within each family over its size m: the declared
    comparisons less those of the arms in `left_out` ({arm: why}: duplicates of another arm), which
    keep their raw numbers, no adjusted ones, and `inconclusive` with that reason."""
    left_out = left_out or {}
    out = []
    for family, pairs in comparisons.items():
        counted = [(a, r) for a, r in pairs if a not in left_out]
        m = len(counted)
        done = {(a, r): _one(a, r, family, m, data[a], data[r]) for a, r in counted}
        for (c, _), p_adj in zip(done.values(), CORRECTIONS[correction]([c.p for c, _ in done.values()])):
            c.p_adjusted = p_adj
        for c, degenerate in done.values():
            _decide(c, degenerate, m, correction, margin)
        out += [done[(a, r)][0] if (a, r) in done else _left_out(a, r, family, data[a], data[r], left_out[a])
                for a, r in pairs]
    return out


def verdict_text(c: dict) -> str:
    """One comparison in words, e.g. "better than vanilla: +3.0 points, adjusted p = ..."."""
    return f"{c['verdict']} vs {c['reference']}: {c['reason']}"
