"""The study report's teacher cost: the "teacher cost" column and the chart of gain over the baseline vs
the teacher's cost, in results.json, report.html and on the Study page, from a tiny study on the demo
pair with a logit-KD arm (the values checked against the cells' recorded costs)."""
from __future__ import annotations

import re

import pytest

from paraknow.core.data import load_records
from paraknow.core.records import to_jsonl
from paraknow.study import parse_recipe, run_study
from paraknow.study.report import REPORT_HTML, arm_rows, cost_figure, cost_points

pytestmark = pytest.mark.slow  # a three-cell study on the demo pair (about a minute on a busy CPU)

PREFIX = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
SIZES = {"seed_data": ("seed", 4), "train_data": ("train", 8), "val_data": ("val", 2), "test_data": ("test", 3)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost_report")
    data = {}
    for key, (split, n) in SIZES.items():
        (root / f"{split}.jsonl").write_text(to_jsonl(load_records(f"task:facts:{split}")[:n]))
        data[key] = str(root / f"{split}.jsonl")
    recipe = parse_recipe({
        "teacher": "demo:teacher", "student": "demo:student", **data, "seeds": [0], "budget_minutes": 30,
        "train": {"epochs": 1, "batch": 4, "micro_batch": 2, "max_length": 64, "eval_max_new_tokens": 4,
                  "device": "cpu"},
        "arms": [{"name": "vanilla", "init": "vanilla"}, {"name": "pkt", "init": "pkt", "extract": {"samples": 4}},
                 {"name": "kd", "init": "vanilla", "distill": {"kind": "logits", "weight": 0.5, "temperature": 2.0}}]})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARAKNOW_CACHE", str(root / "cache"))
        results = run_study(recipe, root / "cache" / "studies" / "costs")
    return {"results": results, "root": root, "out": root / "cache" / "studies" / "costs"}


def _cells(study) -> dict:
    cells = {c["arm"]: c for c in study["results"]["cells"]}
    assert {c["state"] for c in cells.values()} == {"finished"}, cells
    return cells


def _parse(text: str) -> tuple[float, int, float]:
    """'1.23 GFLOP · 4,567 tokens · 0.8 s' -> (1.23e9, 4567, 0.8): read back independently of the formatter."""
    m = re.fullmatch(r"([\d.]+) ([kMGTPE]?)FLOP · ([\d,]+) tokens · ([\d.]+) s", text)
    assert m, text
    return float(m[1]) * PREFIX[m[2]], int(m[3].replace(",", "")), float(m[4])


def test_the_teacher_cost_column_is_the_cells_recorded_cost(study):
    cells = _cells(study)
    rows = {r["arm"]: r for r in arm_rows(study["results"])}
    assert rows["vanilla"]["teacher cost"] == "none"
    for arm in ("pkt", "kd"):
        cost = cells[arm]["cost"]
        assert cost["teacher_flops"] > 0 and cost["teacher_tokens"] > 0
        flops, tokens, seconds = _parse(rows[arm]["teacher cost"])
        assert flops == pytest.approx(cost["teacher_flops"], rel=5e-3)  # three significant digits
        assert tokens == cost["teacher_tokens"]
        assert seconds == pytest.approx(cost["teacher_seconds"], abs=0.051)
    for arm, cell in cells.items():
        assert float(rows[arm]["train s"]) == pytest.approx(cell["cost"]["train_seconds"], abs=0.051)
        arm_cost = next(a for a in study["results"]["arms"] if a["arm"] == arm)["cost"]
        assert arm_cost == pytest.approx(cell["cost"])  # one seed: the arm's mean is its cell's


def test_the_chart_puts_each_arm_at_its_cost_and_gain(study):
    cells = _cells(study)
    results = study["results"]
    points = {p["arm"]: p for p in cost_points(results)}
    assert set(points) == {"vanilla", "pkt", "kd"}
    figure = cost_figure(list(points.values()), results)
    drawn = {arm: (x, y) for trace in figure.data for arm, x, y in zip(trace.text, trace.x, trace.y)}
    arms = {a["arm"]: a for a in results["arms"]}
    for arm in ("pkt", "kd"):
        assert drawn[arm][0] == cells[arm]["cost"]["teacher_flops"]
        assert drawn[arm][1] == pytest.approx(100 * (cells[arm]["test_accuracy"] - cells["vanilla"]["test_accuracy"]))
        assert drawn[arm][1] == pytest.approx(100 * arms[arm]["diff_vs_baseline"])
    assert arms["kd"]["duplicate_of"] is None  # distilling makes it another experiment than vanilla
    assert drawn["vanilla"][1] == 0 and 0 < drawn["vanilla"][0] < min(drawn["pkt"][0], drawn["kd"][0])
    assert figure.layout.xaxis.ticktext[0] == "no teacher" and figure.layout.xaxis.tickvals[0] == drawn["vanilla"][0]


def test_report_html_has_the_column_and_the_chart(study):
    page = (study["out"] / REPORT_HTML).read_text(encoding="utf-8")
    assert "<th>teacher cost</th>" in page and "Gain over the baseline vs teacher cost" in page
    assert page.count("Plotly.newPlot") >= 2  # the bars and the cost chart
    kd = next(r for r in arm_rows(study["results"]) if r["arm"] == "kd")["teacher cost"]
    assert f"<td>{kd}</td>" in page


def test_the_study_page_shows_the_column_and_the_chart(study, monkeypatch):
    from apptest import open_page

    monkeypatch.setenv("PARAKNOW_CACHE", str(study["root"] / "cache"))
    at = open_page("pages/8_Study.py", 600)
    table = next(d.value for d in at.dataframe if "teacher cost" in d.value.columns)
    kd = next(r for r in arm_rows(study["results"]) if r["arm"] == "kd")
    assert table.set_index("arm").loc["kd", "teacher cost"] == kd["teacher cost"]
    charts = [c for c in at.get("plotly_chart") if "teacher cost" in c.proto.spec]
    assert charts, "no cost chart on the page"


def test_arms_of_equal_cost_are_drawn_side_by_side_around_it():
    from paraknow.study.report import DODGE_DECADES, _dodged

    xs = _dodged([1e9, 1e9, 1e9, 5e10, 1e9])
    assert xs[3] == 5e10  # alone at its cost: exactly there
    shared = [xs[i] for i in (0, 1, 2, 4)]
    assert shared == sorted(shared) and len(set(shared)) == 4  # in order, none on top of another
    ratios = [b / a for a, b in zip(shared, shared[1:])]
    assert ratios == pytest.approx([10 ** DODGE_DECADES] * 3)
    assert shared[0] * shared[3] == pytest.approx(1e18)  # centred on the cost (geometric mean)
