"""The budget while a study runs: a cell that would take the study past it does not start, the study
says so and stays resumable, and a raised budget on resume continues; measured cells correct the
next estimates (the overhead factors in the cache) and report their progress through the job substrate."""
import json
import time

import pytest

from study_fixtures import study_inputs, tiny_recipe, write_recipe

from paraknow.core.jobdir import PROGRESS_FILE
from paraknow.study import parse_recipe, run_study
from paraknow.study.budget import BudgetGate, Calibration, Factors, TimeEstimate, measured_factors, timing_file
from paraknow.study.cells import STUDY_FILE

ARMS = [{"name": "untuned", "init": "untuned"}, {"name": "vanilla", "init": "vanilla"}]
# the control's estimate is a millisecond and vanilla's a hundred times more: once the control has run
# (a real fraction of a second at least), the gate scales vanilla's estimate to many seconds
TINY = Calibration(student_load_s=0.001, train_s_per_sample=0.0124, generate_s_per_record=0.0)


def hold_back_vanilla(monkeypatch):
    """vanilla's re-scaled estimate an hour, whatever the machine's speed (the gate's re-scale is tested
    on its own below): the gate must hold it back."""
    scaled = BudgetGate.next_estimate_s
    monkeypatch.setattr(BudgetGate, "next_estimate_s",
                        lambda gate, cell: 3600.0 if cell.arm == "vanilla" else scaled(gate, cell))
    return scaled


class _Cell:
    def __init__(self, cell_id):
        self.cell_id = cell_id


def _gate(budget_s: float, cpu_cells: dict, contention: float = 1.0, overhead: dict | None = None) -> BudgetGate:
    """A gate over cells estimated at `cpu_cells` (cell_id -> (kind, CPU s)) x the overhead x `contention`."""
    factors = Factors(overhead=dict(overhead or {}), contention=contention)
    wall = {c: cpu * factors.overhead.get(kind, 1.0) * contention for c, (kind, cpu) in cpu_cells.items()}
    estimate = TimeEstimate(sum(wall.values()), wall, None, cpu_cells=cpu_cells, factors=factors)
    return BudgetGate(budget_s, estimate, spent_before_s=0.0, started=time.time() - 1.0)


def test_the_gate_reestimates_the_next_cell_from_the_cells_finished():
    a, b, c = _Cell("a"), _Cell("b"), _Cell("c")
    gate = _gate(100.0, {"a": ("trained", 1.0), "b": ("pkt-export", 2.0), "c": ("trained", 3.0)}, contention=2.0)
    assert gate.next_estimate_s(b) == 4.0 and gate.allows(b)  # nothing finished: the estimate as made
    gate.observe(a, {"cpu_s": 1.5, "seconds": 6.0})  # 1.5x its CPU estimate, at contention 4 (not 2)
    assert gate.next_estimate_s(c) == pytest.approx(3.0 * 1.5 * 4.0)  # its own kind's overhead
    assert gate.next_estimate_s(b) == pytest.approx(2.0 * 1.5 * 4.0)  # no pkt cell yet: the trained kinds'
    gate.observe(_Cell("a"), {"cpu_s": None, "seconds": 9.0})  # a failed cell (no CPU seconds): nothing learnt
    assert len(gate.observed) == 1
    gate.started = time.time() - 70.0  # 70 s spent + 18 s > 80 s
    gate.budget_s = 80.0
    assert not gate.allows(c) and gate.refused[0] is c
    assert "1 cell remains" in gate.message(1) and "--budget-minutes" in gate.message(1)


def test_a_controls_error_does_not_scale_a_trained_cell_but_its_contention_does():
    """An evaluation-only control that ran a thousand times its CPU estimate says nothing of training's
    estimate; the share of a core it got is the machine's, and counts for every cell."""
    control, vanilla, teacher = _Cell("untuned"), _Cell("vanilla"), _Cell("teacher")
    gate = _gate(100.0, {"untuned": ("control", 0.001), "vanilla": ("trained", 2.0), "teacher": ("control", 0.5)},
                 overhead={"trained": 1.25})
    gate.observe(control, {"cpu_s": 1.0, "seconds": 3.0})
    assert gate.next_estimate_s(vanilla) == pytest.approx(2.0 * 1.25 * 3.0)  # the cache's overhead, contention 3
    assert gate.next_estimate_s(teacher) == pytest.approx(0.5 * 1000.0 * 3.0)  # the control's own overhead
    gate.observe(vanilla, {"cpu_s": 4.0, "seconds": 4.0})
    assert gate.next_estimate_s(teacher) == pytest.approx(0.5 * 1000.0 * (7.0 / 5.0))


def test_an_evaluation_is_estimated_as_its_loss_pass_and_its_generation(tmp_path):
    """Every evaluated record costs its loss pass and its answer (a control: test records; a trained cell:
    validation and test records); a new export adds the sensitivity pass and the signals' zero-step loss."""
    from paraknow.study.budget import estimate_study, export_seconds
    from paraknow.study.plan import check_recipe, plan_cells
    from paraknow.study.signals import ZERO_STEP_RECORDS

    arms = [*ARMS, {"name": "pkt", "init": "pkt", "extract": {"samples": 4}}]
    recipe = parse_recipe(tiny_recipe(study_inputs(tmp_path / "inputs"), seeds=[0], arms=arms))
    sizes, cells = check_recipe(recipe), plan_cells(recipe)
    c = Calibration(student_load_s=0.5, train_s_per_sample=0.0, generate_s_per_record=0.0, loss_s_per_record=0.25,
                    sensitivity_s_per_sample=0.125)
    cpu = {cell.arm: s for cell, (_, s) in zip(cells, estimate_study(recipe, cells, sizes, c).cpu_cells.values())}
    assert cpu["untuned"] == pytest.approx(0.5 + sizes.test * 0.25)
    assert cpu["vanilla"] == pytest.approx(0.5 + (sizes.val + sizes.test) * 0.25)
    export = export_seconds(recipe, recipe.arm("pkt"), sizes, c)
    assert export == pytest.approx(2 * 0.5 + min(4, sizes.seed) * 0.125 + 2 * min(ZERO_STEP_RECORDS, sizes.val) * 0.25)
    assert cpu["pkt"] == pytest.approx(cpu["vanilla"] + export)


def test_the_budget_stops_a_study_before_a_cell_that_would_exceed_it_and_a_raised_budget_resumes(tmp_path,
                                                                                                  monkeypatch):
    paths = study_inputs(tmp_path / "inputs")
    out = tmp_path / "study"
    recipe = parse_recipe(tiny_recipe(paths, seeds=[0], arms=ARMS, budget_minutes=0.1))
    said = []
    scaled = hold_back_vanilla(monkeypatch)
    results = run_study(recipe, out, calibration=TINY, workers=1, progress=said.append)
    states = {c["arm"]: c["state"] for c in results["cells"]}
    assert states == {"untuned": "finished", "vanilla": "pending"}
    stop = results["timing"]["budget_stop"]
    assert "stopped by the budget" in stop and "vanilla__seed0" in stop and "1 cell remains" in stop
    assert stop in said
    status = json.loads((out / STUDY_FILE).read_text())
    assert status["state"] == "stopped" and status["budget_stop"] == stop and status["spent_s"] > 0

    raised = parse_recipe({**recipe.to_dict(), "budget_minutes": 30})
    monkeypatch.setattr(BudgetGate, "next_estimate_s", scaled)
    again = run_study(raised, out, resume=True, calibration=TINY, workers=1)
    assert {c["arm"]: c["state"] for c in again["cells"]} == {"untuned": "finished", "vanilla": "finished"}
    assert again["timing"]["budget_stop"] is None
    assert json.loads((out / STUDY_FILE).read_text())["spent_s"] >= status["spent_s"]


def test_the_cli_says_how_to_resume_a_study_the_budget_stopped(tmp_path, monkeypatch, capsys):
    from paraknow.cli import main
    from paraknow.study import runner

    paths = study_inputs(tmp_path / "inputs")
    out = tmp_path / "study"
    recipe = write_recipe(tmp_path / "r.json", tiny_recipe(paths, seeds=[0], arms=ARMS, budget_minutes=0.1))
    monkeypatch.setattr(runner, "calibrate", lambda *_: TINY)  # the measurement is not under test here
    scaled = hold_back_vanilla(monkeypatch)
    argv = ["study", "--recipe", recipe, "--out", str(out), "--workers", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: stopped by the budget") and "--budget-minutes" in err[-1]
    monkeypatch.setattr(BudgetGate, "next_estimate_s", scaled)
    assert main([*argv, "--resume", "--budget-minutes", "30"]) == 0
    assert "vanilla seed 0 lr 0.0003: training step 1/2" in capsys.readouterr().err  # the cell's progress on the CLI
    assert main([*argv, "--resume", "--budget-minutes", "-1"]) == 2


def test_finished_cells_write_progress_and_correct_the_next_estimates(tmp_path):
    paths = study_inputs(tmp_path / "inputs")
    recipe = parse_recipe(tiny_recipe(paths, seeds=[0], arms=ARMS))
    results = run_study(recipe, tmp_path / "study", calibration=TINY, workers=1)
    assert all(c["state"] == "finished" for c in results["cells"])
    progress = next((tmp_path / "study" / "cells").glob(f"vanilla__seed0*/{PROGRESS_FILE}"))
    rows = [json.loads(line) for line in progress.read_text().splitlines()]
    messages = [r["message"] for r in rows]
    assert "loading the student" in messages and any(m.startswith("training step") for m in messages)
    assert "validation on all items" in messages
    assert any(m.startswith("test:") for m in messages) and rows[-1]["done"] == rows[-1]["total"]
    factors = measured_factors(timing_file(recipe, 1))
    assert set(factors.overhead) == {"control", "trained"}
    assert factors.overhead["control"] > 10  # a millisecond was the estimate; the real cell took far longer
    assert factors.contention >= 1.0  # the cells' own wall / CPU seconds, just measured
    assert measured_factors(timing_file(recipe, 1), now=time.time() + 3600).contention is None  # not recent


def test_the_signals_carry_the_degenerate_seed_warning_with_its_numbers():
    from paraknow.study.signals import seed_warning

    warning = seed_warning({"seed_losses": [0.0001] * 30 + [0.249, 0.049]})  # task:arith:seed on the demo teacher
    assert "30 of 32 seed losses" in warning and "0.249" in warning and "harder seed samples" in warning
    assert seed_warning({"seed_losses": [1.2, 0.9, 1.4, 1.1]}) is None
    assert seed_warning({}) is None  # a map made before the losses were kept


@pytest.mark.slow
def test_the_study_page_says_the_budget_stopped_a_study_and_offers_a_larger_budget(tmp_path, monkeypatch):
    from apptest import assert_ok, open_page

    from ui import study as U

    paths = study_inputs(tmp_path / "inputs")
    recipe = parse_recipe(tiny_recipe(paths, seeds=[0], arms=ARMS, budget_minutes=0.1))
    hold_back_vanilla(monkeypatch)
    assert run_study(recipe, U.studies_root() / "stopped", calibration=TINY, workers=1)["timing"]["budget_stop"]
    at = open_page("pages/8_Study.py", 600)
    assert_ok(at)
    assert any("stopped by the budget" in str(w.value) for w in at.warning)
    box = at.number_input(key="w_st_resume_budget_stopped")
    assert box.value == 0.1 and not box.disabled
    assert U.with_budget(recipe, 30).budget_minutes == 30 and U.with_budget(recipe, 30).arms == recipe.arms
