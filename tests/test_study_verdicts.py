"""Study verdicts: Holm against a hand-computed table, equivalence against a worked example (and
the two one-sided tests it amounts to), the minimum detectable effect against a simulation, the
hierarchical bootstrap reproducible with its seed, every degenerate case inconclusive with its
reason, the recipe's comparisons (defaults, references, bad input), and the shipped studies'
re-analysis file equal to the analysis of their results.csv."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from study_fixtures import study_inputs, tiny_recipe, write_recipe

from paraknow.core.errors import ParaknowError
from paraknow.study import parse_recipe
from paraknow.study.compare import ArmData, compare_all
from paraknow.study.stats import bonferroni, hierarchical_bootstrap, holm, mde

ROOT = Path(__file__).resolve().parent.parent


def test_holm_against_a_hand_computed_table():
    # sorted p: 0.005 x5 = 0.025; 0.010 x4 = 0.040; 0.030 x3 = 0.090; 0.040 x2 = 0.080 -> 0.090 (monotone);
    # 0.200 x1 = 0.200
    p = [0.010, 0.040, 0.030, 0.005, 0.200]
    assert holm(p) == pytest.approx([0.040, 0.090, 0.090, 0.025, 0.200])
    assert bonferroni(p) == pytest.approx([0.050, 0.200, 0.150, 0.025, 1.0])
    # an untestable comparison still counts in m and stays None
    adjusted = holm([0.01, None, 0.02])
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.03) and adjusted[2] == pytest.approx(0.04)
    assert holm([0.6, 0.9]) == [1.0, 1.0]


def _arm(values: dict, rates: dict | None = None, items: dict | None = None) -> ArmData:
    return ArmData({s: {"test_accuracy": v} for s, v in values.items()}, rates or {}, items or {})


def _one(diffs, margin=0.01, m=1, base=0.5, arm_seeds=None, rates=None):
    """Compare an arm whose per-seed accuracy is base + diff with a reference at `base` (m - 1 other
    comparisons in the family, far from significant)."""
    ref = {s: base for s in range(len(diffs))}
    arm = {s: base + d for s, d in enumerate(diffs)} if arm_seeds is None else {s: base for s in arm_seeds}
    data = {"a": _arm(arm, rates), "ref": _arm(ref)}
    pairs = [["a", "ref"]]
    for k in range(m - 1):
        data[f"o{k}"] = _arm({s: base + (0.01 if s % 2 else -0.01) for s in range(len(diffs))})
        pairs.append([f"o{k}", "ref"])
    return compare_all({"primary": pairs}, data, "holm", margin)[0]


def test_a_duplicate_arm_is_left_out_of_its_family():
    ref = {s: 0.5 for s in range(4)}
    data = {"ref": _arm(ref), "a": _arm({0: 0.60, 1: 0.62, 2: 0.61, 3: 0.65}),
            "b": _arm({0: 0.51, 1: 0.55, 2: 0.49, 3: 0.53}), "a2": _arm({0: 0.60, 1: 0.62, 2: 0.61, 3: 0.65})}
    pairs = [["a", "ref"], ["a2", "ref"], ["b", "ref"]]
    counted = compare_all({"primary": pairs}, data, "holm", 0.01, {"a2": "duplicate of a"})
    alone = compare_all({"primary": [["a", "ref"], ["b", "ref"]]}, data, "holm", 0.01)
    assert [c.arm for c in counted] == ["a", "a2", "b"]  # declared order
    for mine, two in zip((counted[0], counted[2]), alone):  # m = 2: the duplicate is not counted
        assert mine.to_dict() == two.to_dict()
    dup = counted[1]
    assert dup.verdict == "inconclusive" and dup.reason == "duplicate of a"
    assert dup.p_adjusted is None and dup.ci95_adjusted is None and dup.mde80 is None
    assert dup.diff == pytest.approx(counted[0].diff) and dup.p == pytest.approx(counted[0].p)
    with_it = compare_all({"primary": pairs}, data, "holm", 0.01)  # counted, m = 3: wider adjusted intervals
    assert with_it[0].p_adjusted > counted[0].p_adjusted


WORKED = [0.002, -0.003, 0.001, 0.004, 0.001]  # mean 0.001, SD sqrt(26e-6 / 4) = 0.0025495, SE 0.0011402


def test_equivalence_worked_example():
    c = _one(WORKED)
    se = math.sqrt(26e-6 / 4) / math.sqrt(5)
    assert c.n == 5 and c.diff == pytest.approx(0.001)
    # 95 % interval: 0.001 +- t(0.975, 4) * SE = 0.001 +- 2.7764 * 0.0011402
    assert c.ci95_adjusted == pytest.approx([0.001 - 2.7764451 * se, 0.001 + 2.7764451 * se], rel=1e-6)
    assert c.ci95_adjusted == pytest.approx([-0.0021657, 0.0041657], abs=1e-7)
    assert c.p == pytest.approx(2 * sps.t.sf(0.001 / se, 4)) and c.p > 0.4
    assert c.verdict == "equivalent" and "+-1 points" in c.reason
    # in a family of 2 the interval is at 97.5 %: 0.001 +- 3.4954 * SE, still inside +-1 point
    c2 = _one(WORKED, m=2)
    assert c2.ci95_adjusted == pytest.approx([0.001 - 3.4954 * se, 0.001 + 3.4954 * se], rel=1e-4)
    assert c2.verdict == "equivalent"
    # a margin of 0.4 points: the upper end 0.42 is outside -> inconclusive ...
    tight = _one(WORKED, margin=0.004)
    assert tight.verdict == "inconclusive" and "minimum detectable effect" in tight.reason
    # ... which is what the two one-sided tests at 0.05 / 2 say (TOST at 0.05 would accept: p_upper = 0.029)
    p_lower = sps.ttest_1samp(WORKED, -0.004, alternative="greater").pvalue
    p_upper = sps.ttest_1samp(WORKED, 0.004, alternative="less").pvalue
    assert p_lower < 0.025 < p_upper < 0.05
    for margin in (0.01, 0.0045, 0.004, 0.0035):  # the rule is TOST at alpha / (2m), margin by margin
        tost = max(sps.ttest_1samp(WORKED, -margin, alternative="greater").pvalue,
                   sps.ttest_1samp(WORKED, margin, alternative="less").pvalue)
        assert (_one(WORKED, margin=margin).verdict == "equivalent") == (tost < 0.025)


def test_better_and_worse_by_the_adjusted_p():
    diffs = [0.030, 0.025, 0.035, 0.028, 0.032]
    c = _one(diffs)
    assert c.verdict == "better" and c.p_adjusted == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue)
    w = _one([-d for d in diffs], m=3)
    assert w.verdict == "worse" and w.p_adjusted == pytest.approx(3 * w.p)
    # a raw p below 0.05 that does not survive the family's correction
    noisy = [0.03, 0.02, 0.05, 0.005, 0.04]
    assert 0.01 < sps.ttest_1samp(noisy, 0).pvalue < 0.05
    c = _one(noisy, m=5)
    assert c.verdict == "inconclusive" and c.p_adjusted > 0.05 and c.ci95[0] > 0


@pytest.mark.parametrize("kwargs,reason", [
    ({"diffs": [0.01, 0.01]}, "only 2 paired seed(s)"),
    ({"diffs": [0.01, 0.01, 0.01, 0.01]}, "no spread"),
    ({"diffs": [0.2] * 4, "arm_seeds": [0, 1, 2]}, "unequal seeds"),
    ({"diffs": [0.30, 0.25, 0.35, 0.28], "rates": {0: 3, 1: 3, 2: 2, 3: 3}}, "unequal swept rates"),
])
def test_degenerate_cases_are_inconclusive_with_their_reason(kwargs, reason):
    c = _one(**kwargs)
    assert c.verdict == "inconclusive" and reason in c.reason


def test_two_seeds_at_plus_one_point_is_not_a_finding():
    c = _one([0.01, 0.01])
    assert c.verdict == "inconclusive" and c.p is None and c.mde80 is None


def test_mde_gives_80_percent_power_by_simulation():
    sd, n, alpha = 0.02, 5, 0.05
    delta = mde(sd, n, alpha)
    assert 0.03 < delta < 0.04  # (t_.975 + t_.8) * sd / sqrt(n) = 0.0332 is the usual approximation
    rng = np.random.default_rng(0)
    x = rng.normal(delta, sd, size=(40000, n))
    t = x.mean(1) / (x.std(1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1))
    assert power == pytest.approx(0.8, abs=0.01)
    assert mde(sd, n, alpha / 26) > 2 * delta  # the corrected level needs a far larger effect
    assert mde(0.0, n) is None and mde(sd, 1) is None


def test_hierarchical_bootstrap_is_reproducible_with_its_seed():
    rng = np.random.default_rng(3)
    d = rng.integers(-1, 2, size=(5, 300))
    first, again, other = hierarchical_bootstrap(d, seed=7), hierarchical_bootstrap(d, seed=7), \
        hierarchical_bootstrap(d, seed=8)
    assert first == again and first != other
    assert first[0] < d.mean() < first[1]
    assert hierarchical_bootstrap(np.ones((3, 50))) == [1.0, 1.0]
    assert hierarchical_bootstrap(d[:1]) is None
    # resampling items too: wider than resampling the seeds' means alone
    means = d.mean(1)
    seed_only = np.percentile([rng.choice(means, 5).mean() for _ in range(2000)], [2.5, 97.5])
    assert first[1] - first[0] > seed_only[1] - seed_only[0]


def test_bootstrap_pairs_items_by_id():
    items = {s: {f"q{i}": i % 2 == 0 for i in range(20)} for s in range(3)}
    better = {s: {k: True for k in v} for s, v in items.items()}
    data = {"a": _arm({0: 1.0, 1: 1.0, 2: 1.0}, items=better), "ref": _arm({0: 0.5, 1: 0.5, 2: 0.5}, items=items)}
    c = compare_all({"primary": [["a", "ref"]]}, data, "holm", 0.01)[0]
    assert c.bootstrap_ci95 is not None and c.bootstrap_ci95[0] > 0.2


# ---------------------------------------------------------------------------------------
# The recipe's comparisons

SHIPPED = json.loads((ROOT / "docs" / "results" / "study_demo" / "summary.json").read_text())["recipe"]


def test_default_families_of_the_shipped_recipe():
    recipe = parse_recipe(SHIPPED)
    primary, secondary = recipe.comparisons["primary"], recipe.comparisons["secondary"]
    assert primary == [["vanilla-layers", "vanilla"], ["pissa", "vanilla"], ["pkt", "vanilla"],
                       ["pkt-random-teacher", "vanilla"]]
    assert len(secondary) == 22 and all(ref == "pkt" for _, ref in secondary)
    assert ["pkt-rank-4", "pkt"] in secondary and not any(a in ("untuned", "teacher") for a, _ in primary + secondary)
    assert recipe.equivalence_margin == 0.01 and recipe.correction == "holm"


def test_declared_comparisons_and_references():
    data = json.loads(json.dumps(SHIPPED))
    data["arms"][-1]["reference"] = "pkt-rank-64"
    data["comparisons"] = {"primary": [["pkt", "vanilla"]]}
    recipe = parse_recipe(data)
    assert recipe.comparisons["primary"] == [["pkt", "vanilla"]]
    assert recipe.comparisons["secondary"][-1] == [data["arms"][-1]["name"], "pkt-rank-64"]
    assert parse_recipe({**data, "comparisons": {"secondary": []}}).comparisons["secondary"] == []


@pytest.mark.parametrize("change,key", [
    ({"comparisons": {"primary": [["pkt", "nope"]]}}, "comparisons.primary[0][1]"),
    ({"comparisons": {"primary": [["pkt", "pkt"]]}}, "comparisons.primary[0]"),
    ({"comparisons": {"tertiary": []}}, "comparisons.tertiary"),
    ({"comparisons": {"primary": [["pkt"]]}}, "comparisons.primary[0]"),
    ({"equivalence_margin": 0}, "equivalence_margin"),
    ({"equivalence_margin": -0.01}, "equivalence_margin"),
    ({"correction": "sidak"}, "correction"),
])
def test_bad_comparisons_name_their_key(change, key):
    with pytest.raises(ParaknowError) as info:
        parse_recipe({**SHIPPED, **change})
    assert key in str(info.value) and "\n" not in str(info.value)


def test_a_bad_reference_names_its_arm():
    data = json.loads(json.dumps(SHIPPED))
    data["arms"][7]["reference"] = "nope"
    with pytest.raises(ParaknowError, match=r"arms\[7\]\.reference"):
        parse_recipe(data)


def test_cli_bad_comparison_exits_2_naming_the_key_and_launches_nothing(tmp_path):
    paths = study_inputs(tmp_path / "in")
    recipe = write_recipe(tmp_path / "r.json", tiny_recipe(paths, comparisons={"primary": [["pkt", "vanila"]]}))
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, "-m", "paraknow", "study", "--recipe", recipe, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.startswith("error: ") and "comparisons.primary[0][1]" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# The shipped studies, re-analysed


@pytest.mark.parametrize("study", ["study_demo", "study_arith"])
def test_shipped_verdicts_file_is_the_analysis_of_the_shipped_cells(study):
    from paraknow.report import written_recipe
    from paraknow.study.report import records_from_csv
    from paraknow.study.results import analyse

    folder = ROOT / "docs" / "results" / study
    written = json.loads((folder / "verdicts.json").read_text())
    recipe = written_recipe(folder / "summary.json")
    records = records_from_csv((folder / "results.csv").read_text())
    assert written["comparisons"] == json.loads(json.dumps(analyse(recipe, records)))
    assert "python -m paraknow.report reanalyse" in written["provenance"]["command"]


def test_results_page_primary_verdicts_equal_the_verdicts_file():
    text = (ROOT / "docs" / "results.md").read_text()
    written = json.loads((ROOT / "docs" / "results" / "study_demo" / "verdicts.json").read_text())

    def pts(x):
        return f"{100 * x:+.1f}".replace("-", "−")

    assert "python -m paraknow.report reanalyse --study docs/results/study_demo" in text
    for c in written["comparisons"]:
        if c["family"] == "primary":
            lo, hi = c["ci95"]
            alo, ahi = c["ci95_adjusted"]
            row = f"| {pts(c['diff'])} [{pts(lo)}, {pts(hi)}] | {c['p']:.2g} / {c['p_adjusted']:.2g} | " \
                  f"[{pts(alo)}, {pts(ahi)}] | {c['verdict']}, MDE {100 * c['mde80']:.1f} |"
            assert row in text, row
