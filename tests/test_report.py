"""Provenance reports (`python -m paraknow.report`): what a README figure is written with."""
import json
import math

from paraknow import report
from paraknow.core.models import DEMO_REFS


def test_mean_ci95_is_the_student_t_interval():
    got = report.mean_ci95([0.1, 0.2, 0.3])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, df=2) * s / sqrt(n)
    assert got["n"] == 3 and math.isclose(got["mean"], 0.2) and math.isclose(got["std"], 0.1)
    assert math.isclose(got["ci95"][0], 0.2 - half) and math.isclose(got["ci95"][1], 0.2 + half)
    assert report.mean_ci95([0.5])["ci95"] is None and report.mean_ci95([])["mean"] is None


def test_demo_report_written_with_provenance(tmp_path):
    figures = report.demo_report(max_new_tokens=8, n_test=2, progress=lambda *_: None)
    path = report.write_report(tmp_path / "r.json", figures, "python -m paraknow.report demo")
    data = json.loads(path.read_text())
    prov = data["provenance"]
    assert prov["command"] == "python -m paraknow.report demo"
    assert prov["date"].startswith("20") and prov["machine"]["cpu_count"] >= 1
    assert "commit" in prov and "dirty" in prov
    assert set(data["models"]) == set(DEMO_REFS)
    for ref in DEMO_REFS:
        assert set(data["models"][ref]) == {"arith", "facts", "instruct"}
        assert all(row["n"] == 2 for row in data["models"][ref].values())
    assert data["chance"]["facts"]["uniform_guess"] == 0.25
    assert data["chance"]["facts"]["majority_answer"] in "ABCD"


def test_unknown_task_exits_2(capsys):
    assert report.main(["compare", "--task", "nope", "--out", "/nonexistent/x.json"]) == 2
    assert "unknown task" in capsys.readouterr().err
