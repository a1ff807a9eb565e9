"""Study statistics against scipy.stats on fixed samples: mean intervals, paired
differences (ttest_rel's interval), Spearman; the learning-rate selection rule (verdicts: test_study_verdicts.py)."""
import pytest
from scipy import stats as sps

from paraknow.study.stats import mean_interval, paired_difference, spearman
from paraknow.study.sweep import LR_SELECTIONS, default_sweep, select_lr

SAMPLES = [[0.62], [0.51, 0.55], [0.12, 0.18, 0.15], [0.31, 0.35, 0.29, 0.40, 0.33],
           [0.8, 0.82, 0.79, 0.85, 0.81, 0.78, 0.9, 0.77]]


@pytest.mark.parametrize("values", SAMPLES)
def test_mean_interval_matches_scipy_t_interval(values):
    est = mean_interval(values)
    assert est.n == len(values) and est.mean == pytest.approx(sum(values) / len(values))
    if len(values) == 1:
        assert est.interval is None  # n = 1: no interval, not a zero-width one
        return
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=sps.tmean(values), scale=sps.sem(values))
    assert est.interval == pytest.approx([lo, hi], rel=1e-10)


def test_paired_difference_matches_ttest_rel_interval():
    a = {0: 0.31, 1: 0.40, 2: 0.28, 3: 0.36, 4: 0.45}
    b = {0: 0.25, 1: 0.33, 2: 0.30, 3: 0.29, 4: 0.37, 7: 0.99}  # seed 7 has no partner: left out
    est = paired_difference(a, b)
    seeds = sorted(a)
    ci = sps.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert est.n == 5
    assert est.mean == pytest.approx(sum(a[s] - b[s] for s in seeds) / 5)
    assert est.interval == pytest.approx([ci.low, ci.high], rel=1e-10)
    # pairing matters: the unpaired interval of the same numbers is wider
    unpaired = sps.ttest_ind([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(0.95)
    assert est.hi - est.lo < unpaired.high - unpaired.low


@pytest.mark.parametrize("x,y", [([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]), ([0.3, 0.1, 0.1, 0.9], [2, 1, 3, 4]),
                                 ([1, 2, 3], [3, 2, 1]), ([0.5, 0.2, 0.7, 0.7, 0.1, 0.4], [10, 3, 8, 9, 1, 9])])
def test_spearman_matches_scipy(x, y):
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic, rel=1e-12)


def test_spearman_needs_three_pairs_and_spread():
    assert spearman([1, 2], [2, 1]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def _cell(lr, val_acc, val_loss, test_acc, state="finished"):
    return {"arm": "a", "seed": 0, "lr": lr, "state": state, "val_accuracy": val_acc, "val_loss": val_loss,
            "test_accuracy": test_acc, "test_loss": 1.0}


def test_lr_selection_uses_validation_not_test():
    cells = [_cell(1e-4, 0.30, 1.0, 0.60), _cell(1e-3, 0.50, 1.2, 0.20), _cell(1e-2, 0.40, 0.9, 0.90)]
    assert select_lr(cells)["lr"] == 1e-3  # the best test accuracy (1e-2) is not chosen


def test_lr_selection_ties_go_to_lower_val_loss_then_smaller_lr():
    cells = [_cell(1e-2, 0.5, 1.1, 0.1), _cell(1e-3, 0.5, 0.8, 0.2), _cell(1e-4, 0.5, 0.9, 0.9)]
    assert select_lr(cells)["lr"] == 1e-3
    cells = [_cell(3e-3, 0.5, 0.8, 0.1), _cell(1e-3, 0.5, 0.8, 0.2)]
    assert select_lr(cells)["lr"] == 1e-3


def test_lr_selection_ignores_unfinished_cells():
    cells = [_cell(1e-4, 0.9, 0.1, 0.9, state="failed"), _cell(1e-3, 0.2, 1.0, 0.2)]
    assert select_lr(cells)["lr"] == 1e-3
    assert select_lr([_cell(1e-4, None, None, None, state="running")]) is None



def _seeded(seed, lr, val_acc, val_loss=1.0, state="finished"):
    return {**_cell(lr, val_acc, val_loss, 0.5, state), "seed": seed}


def test_per_arm_selection_keeps_one_rate_for_every_seed():
    # seed 0 alone would pick 1e-3, seed 1 alone 1e-2; over both, 1e-3 has the best mean (0.55 vs 0.5)
    cells = {0: [_seeded(0, 1e-3, 0.8), _seeded(0, 1e-2, 0.3)],
             1: [_seeded(1, 1e-3, 0.3), _seeded(1, 1e-2, 0.7)]}
    per_seed = LR_SELECTIONS["per-seed"](cells)
    assert {s: r["lr"] for s, r in per_seed.items()} == {0: 1e-3, 1: 1e-2}
    per_arm = LR_SELECTIONS["per-arm"](cells)
    assert {s: r["lr"] for s, r in per_arm.items()} == {0: 1e-3, 1: 1e-3}
    assert per_arm[1] is cells[1][0]  # the record itself: its test accuracy is what the comparisons pair


def test_per_arm_selection_ties_and_unfinished_cells():
    cells = {0: [_seeded(0, 1e-3, 0.5, 0.9), _seeded(0, 1e-2, 0.5, 0.7)],
             1: [_seeded(1, 1e-3, 0.5, 0.9), _seeded(1, 1e-2, 0.5, 0.8)]}
    assert {r["lr"] for r in LR_SELECTIONS["per-arm"](cells).values()} == {1e-2}  # lower mean val loss
    cells[1][1]["state"] = "failed"  # the chosen rate did not finish on seed 1: seed 1 is left out
    cells[0][0]["val_accuracy"] = 0.4
    chosen = LR_SELECTIONS["per-arm"](cells)
    assert list(chosen) == [0] and chosen[0]["lr"] == 1e-2
    assert LR_SELECTIONS["per-arm"]({0: [_seeded(0, 1e-3, None, state="running")]}) == {}


def test_default_sweep_is_five_rates_a_factor_sqrt2_apart_centred_on_the_rate():
    rates = default_sweep(1e-2)
    assert len(rates) == 5 and rates[2] == 1e-2
    assert all(b / a == pytest.approx(2 ** 0.5, rel=1e-3) for a, b in zip(rates, rates[1:]))
