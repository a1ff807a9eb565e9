"""Page 7 (Study) through streamlit.testing.v1.AppTest: the grid builder, a loaded recipe, bad input,
and a real background study launched, stopped, resumed and read back (tiny models)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptest import assert_ok, open_page
from streamlit.testing.v1 import AppTest
from study_fixtures import study_inputs, tiny_recipe
from waiting import wait_until

from paraknow.study.control import read_status
from ui import state as S
from ui import study as U

PAGE = "pages/8_Study.py"
STUDY_WAIT_S = 600  # generous: the machine may be busy


def page() -> AppTest:
    return open_page(PAGE, 600)


def summary(at: AppTest) -> str:
    return next(str(m.value) for m in at.markdown if "runs**" in str(m.value))


def table_with(at: AppTest, column: str):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def wait_until_not_live(out: Path) -> dict:
    """The background study's own process decides when it ends; poll its status file."""
    wait_until(lambda: read_status(out)["state"] != "running", STUDY_WAIT_S,
               f"the study in {out} to end")
    return read_status(out)


def test_grid_builder_counts_arms_and_runs():
    at = page()
    assert summary(at).startswith("**6 arms, 42 runs**")  # 6 default controls, vanilla/PiSSA x 3 rates, 5 seeds
    at.multiselect(key=S.W_ST_FACTOR + "structure").set_value(["rowcol", "elements"]).run()
    at.multiselect(key=S.W_ST_FACTOR + "samples").set_value([4]).run()
    at.number_input(key=S.W_ST_SEEDS).set_value(2).run()
    assert_ok(at)
    assert summary(at).startswith("**9 arms, 24 runs**")  # 2 x (2 + 2 + 1 + 1 + 3 PKT) + 2 controls
    at.text_input(key=S.W_ST_SWEEP).set_value("1e-4, x").run()
    assert "learning rates must be numbers" in " ".join(str(e.value) for e in at.error)


def test_quick_preset_and_item_limits_reach_the_recipe():
    at = page()
    at.button(key="w_st_quick").click().run()
    assert_ok(at)
    assert summary(at).startswith("**2 arms, 2 runs**")  # vanilla and PKT, one seed, one learning rate
    q = U.QUICK_PRESET
    assert summary(at).endswith(f"test {q['test_limit']}, validation {q['val_limit']}.")
    assert f"budget {q['budget_minutes']:g} min" in summary(at)
    assert at.number_input(key=S.W_ST_EPOCHS).value == q["epochs"]
    at.number_input(key=S.W_ST_TEST_LIMIT).set_value(0).run()  # 0: every test item
    assert_ok(at)
    assert summary(at).endswith(f"test all, validation {q['val_limit']}.")


def test_factor_levels_come_from_the_registries():
    from paraknow.extract import STRUCTURES
    from paraknow.transfer.mapping import LAYER_STRATEGIES

    levels = U.factor_levels()
    assert set(levels["structure"]) == set(STRUCTURES) - {"submatrix"}
    assert set(levels["layers"]) == set(LAYER_STRATEGIES) - {"manual", "sensitivity"}
    recipe = U.build_recipe("t", "s", "arith", {"epochs": 1}, 3, [1e-4, 1e-3], ["vanilla", "untuned"],
                            {"structure": ["rowcol"], "modules": ["attn,ffn,embed"]}, "vanilla", 60)
    assert [a["name"] for a in recipe["arms"]] == ["vanilla", "untuned", "pkt-structure-rowcol",
                                                   "pkt-modules-attn+ffn+embed"]
    assert recipe["arms"][0]["lr_sweep"] == [1e-4, 1e-3] and recipe["val_data"] == "task:arith:val"


def test_a_bad_pasted_recipe_names_the_key_and_launches_nothing(tmp_path):
    at = page()
    recipe = tiny_recipe(study_inputs(tmp_path / "in"))
    recipe["arms"][0]["lr_sweeps"] = [1e-3]
    at.text_area(key=S.W_ST_PASTE).set_value(json.dumps(recipe)).run()
    at.button(key="w_st_use").click().run()
    # the message is plain text: its markdown characters are escaped (the page renders them as typed)
    assert any("arms[0].lr_sweeps" in str(e.value).replace("\\", "") for e in at.error)
    assert U.list_studies() == []


@pytest.mark.slow
def test_launch_stop_resume_and_results(tmp_path):
    at = page()
    recipe = tiny_recipe(study_inputs(tmp_path / "in"), seeds=[0, 1])
    at.text_area(key=S.W_ST_PASTE).set_value(json.dumps(recipe)).run()
    at.button(key="w_st_use").click().run()
    assert_ok(at)
    assert "from the loaded recipe" in summary(at) and summary(at).startswith("**2 arms, 6 runs**")
    at.text_input(key=S.W_ST_NAME).set_value("tiny").run()
    at.button(key="w_st_launch").click().run()
    assert_ok(at)
    out = U.studies_root() / "tiny"
    assert U.list_studies() == ["tiny"] and (out / "recipe.json").is_file()
    at.button(key="w_st_stop").click().run()
    status = wait_until_not_live(out)
    assert status["state"] == "stopped" and status["cells_run"] < 6
    at.run()
    assert_ok(at)
    assert any("stopped" in str(m.value) for m in at.markdown)

    at.button(key="w_st_resume").click().run()
    assert_ok(at)
    assert wait_until_not_live(out)["state"] == "finished"
    at.run()
    assert_ok(at)
    assert any("6/6 runs finished" in str(m.value) for m in at.markdown)
    arms = table_with(at, "verdict")
    assert list(arms["arm"]) == ["vanilla", "pkt"] and list(arms["n"]) == [2, 2]
    assert list(arms["verdict"])[0] == "baseline"
    comparisons = table_with(at, "p adjusted")
    assert list(comparisons["arm"]) == ["pkt"] and list(comparisons["vs"]) == ["vanilla"]
    assert list(comparisons["verdict"]) == ["inconclusive"]  # two seeds are never a finding
    signals = table_with(at, "lift")
    assert list(signals["arm"]) == ["pkt", "Spearman vs accuracy"]
    results = json.loads((out / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["finished"] * 6
    assert (out / "report.html").is_file()


def test_signal_rows_have_readable_names_and_no_raw_none():
    from paraknow.study.signals import SIGNAL_LABELS, SIGNALS

    values = {"captured": 0.5, "area": 0.4, "lift": 1.25, "energy": 0.7, "cos_w": 0.01, "cos_residual": None,
              "zero_step_loss": -0.2}
    results = {"arms": [{"arm": "pkt", "signals": values}, {"arm": "vanilla", "signals": None}],
               "signal_correlations": {s: {"n": 1, "spearman": None} for s in SIGNALS}}
    rows = U.signal_rows(results)
    assert [r["arm"] for r in rows] == ["pkt", "Spearman vs accuracy"]
    assert set(rows[0]) == {"arm", *SIGNAL_LABELS.values()} and "cos_w" not in rows[0]
    assert rows[0][SIGNAL_LABELS["lift"]] == "1.2500" and rows[0][SIGNAL_LABELS["cos_residual"]] == "–"
    assert all(v == "–" for k, v in rows[1].items() if k != "arm")
