"""Studies end to end on tiny saved models: cells, lr selection on validation, intervals, signals,
resume without rerunning finished cells, a failed cell that does not stop the rest, the budget
refusal, and the CLI giving the same per-cell numbers as the library."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from study_fixtures import study_inputs, tiny_recipe, write_recipe

from paraknow.cli import main as cli_main
from paraknow.core.data import load_records
from paraknow.core.errors import ParaknowError
from paraknow.runs.evaluate import completion_losses
from paraknow.study import parse_recipe, prepare, run_study
from paraknow.study.exports import random_teacher
from paraknow.study.signals import SIGNALS, export_signals
from paraknow.study.stats import holm, mean_interval, paired_difference

NUMBERS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss")


def full_recipe(paths: dict) -> dict:
    recipe = tiny_recipe(paths)
    recipe["arms"] += [{"name": "pkt-random-teacher", "init": "pkt",
                        "extract": {"samples": 4, "teacher_weights": "random", "structure": "random"}},
                       {"name": "untuned", "init": "untuned"}, {"name": "teacher", "init": "teacher"}]
    return recipe


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One library run of a 5-arm x 2-seed study (vanilla with a 2-rate sweep), shared by the tests
    (which are marked slow for it: the run alone takes over ten seconds on two busy cores)."""
    root = tmp_path_factory.mktemp("study")
    paths = study_inputs(root / "in")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARAKNOW_CACHE", str(root / "cache"))
        lines = []
        data = full_recipe(paths)
        results = run_study(parse_recipe(data), root / "out", progress=lines.append)
    return {"root": root, "paths": paths, "recipe": data, "out": root / "out", "results": results, "lines": lines}


def cells_by_id(results):
    return {(c["arm"], c["seed"], c["lr"]): c for c in results["cells"]}


@pytest.mark.slow
def test_end_to_end_cells_and_files(study):
    results, out = study["results"], study["out"]
    cells = results["cells"]
    # 2 controls once, vanilla 2 rates x 2 seeds, two PKT arms x 2 seeds
    assert len(cells) == 2 + 4 + 2 + 2
    assert all(c["state"] == "finished" and c["error"] is None for c in cells)
    assert json.loads((out / "results.json").read_text()) == results
    assert json.loads((out / "recipe.json").read_text()) == parse_recipe(study["recipe"]).to_dict()
    for c in cells:
        for key in ("arm", "seed", "lr", "state", "test_accuracy", "test_loss", "val_accuracy", "seconds"):
            assert key in c
        assert 0 <= c["test_accuracy"] <= 1 and c["test_loss"] > 0 and c["seconds"] > 0
        if c["arm"] in ("untuned", "teacher"):
            assert c["seed"] is None and c["lr"] is None and c["run_dir"] is None
        else:
            run = out / c["run_dir"]
            status = json.loads((run / "status.json").read_text())
            assert status["state"] == "finished" and status["final_eval"]["accuracy"] == c["val_accuracy"]
            assert json.loads((run / "spec.json").read_text())["seed"] == c["seed"]
            assert (run / "adapter" / "adapter_config.json").is_file()
    # the two sweep cells of one seed share nothing but their seed; PKT cells of one seed share an export
    pkt = [c for c in cells if c["arm"] == "pkt"]
    assert len({c["export"] for c in pkt}) == 2 and all((out / c["export"] / "paraknow.json").is_file() for c in pkt)
    assert sorted(p.name.rsplit("-", 1)[1] for p in (out / "teachers").iterdir()) == ["seed0", "seed1"]
    assert (out / "results.csv").read_text().splitlines()[0].startswith("arm,seed,lr,state,test_accuracy")
    assert len((out / "results.csv").read_text().splitlines()) == len(cells) + 1
    assert any("[10/10]" in line for line in study["lines"])


@pytest.mark.slow
def test_untuned_and_teacher_controls_are_the_models_as_they_are(study):
    from paraknow.runs.evaluate import run_eval

    cells = cells_by_id(study["results"])
    paths = study["paths"]
    for arm, ref in (("untuned", paths["student"]), ("teacher", paths["teacher"])):
        direct = run_eval(ref, paths["test_data"], max_new_tokens=3, device="cpu")
        assert cells[(arm, None, None)]["test_loss"] == pytest.approx(direct["loss"], rel=1e-6)


@pytest.mark.slow
def test_per_arm_statistics_follow_the_selected_cells(study):
    results = study["results"]
    cells = results["cells"]
    arms = {a["arm"]: a for a in results["arms"]}
    # lr_selection per-arm (the default): one rate, the best mean validation accuracy over the seeds
    # (ties: the lower mean validation loss, then the smaller rate)
    sweep = [c for c in cells if c["arm"] == "vanilla"]
    rates = sorted({c["lr"] for c in sweep})
    assert len(rates) == 2

    def mean(lr, key):
        return sum(c[key] for c in sweep if c["lr"] == lr) / 2

    rate = min(rates, key=lambda lr: (-mean(lr, "val_accuracy"), mean(lr, "val_loss"), lr))
    chosen = {c["seed"]: c for c in sweep if c["lr"] == rate}
    assert sorted(chosen) == [0, 1] and [c["selected"] for c in sweep] == [c["lr"] == rate for c in sweep]
    assert arms["vanilla"]["lr"] == {"0": rate, "1": rate}
    for name, arm in arms.items():
        if name in ("untuned", "teacher"):
            per_seed = {None: next(c for c in cells if c["arm"] == name)["test_accuracy"]}
        elif name == "vanilla":
            per_seed = {s: c["test_accuracy"] for s, c in chosen.items()}
        else:
            per_seed = {c["seed"]: c["test_accuracy"] for c in cells if c["arm"] == name}
        est = mean_interval(per_seed.values())
        assert arm["n"] == est.n and arm["mean"] == pytest.approx(est.mean)
        assert arm["ci95"] == (None if est.interval is None else pytest.approx(est.interval))
        if name == "vanilla":
            assert arm["verdict"] == "baseline" and arm["diff_vs_baseline"] is None
            continue
        base = {s: c["test_accuracy"] for s, c in chosen.items()}
        mine = {s: per_seed[None] for s in base} if None in per_seed else per_seed
        diff = paired_difference(mine, base)
        assert arm["diff_vs_baseline"] == pytest.approx(diff.mean)
        assert arm["diff_ci95"] == (None if diff.interval is None else pytest.approx(diff.interval, abs=1e-12))
        own = [c for c in results["comparisons"] if c["arm"] == name]
        if name in ("untuned", "teacher"):  # untrained references: in no family by default
            assert not own and arm["verdict"] == "not compared"
        else:  # two seeds: never a finding
            assert own[0]["verdict"] == "inconclusive" and "only 2 paired seed(s)" in own[0]["reason"]
            assert arm["verdict"] == f"inconclusive vs {own[0]['reference']}: {own[0]['reason']}"


def test_every_cell_keeps_its_predictions(study):
    out, results = study["out"], study["results"]
    n_test = len(load_records(study["paths"]["test_data"]))
    for cell in results["cells"]:
        rows = [json.loads(line) for line in (out / cell["predictions"]).read_text().splitlines()]
        assert len(rows) == n_test and {"id", "correct", "prediction"} <= set(rows[0])
        assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(cell["test_accuracy"])
    assert [c["family"] for c in results["comparisons"]] == ["primary", "secondary"]
    assert results["comparisons"][0]["arm"] == "pkt" and results["comparisons"][1]["reference"] == "pkt"


@pytest.mark.slow
def test_signals_of_pkt_arms(study):
    arms = {a["arm"]: a for a in study["results"]["arms"]}
    for name in ("vanilla", "untuned", "teacher"):
        assert arms[name]["signals"] is None
    for name in ("pkt", "pkt-random-teacher"):
        s = arms[name]["signals"]
        assert set(s) == set(SIGNALS) | {"seed_warning"} and all(s[k] is not None for k in SIGNALS)
        assert 0 < s["captured"] <= 1 and 0 < s["area"] < 1 and 0 < s["energy"] <= 1
        assert -1 <= s["cos_w"] <= 1 and -1 <= s["cos_residual"] <= 1
    # sensitivity-selected blocks capture more than their area; random positions about their area
    assert arms["pkt"]["signals"]["lift"] > 1
    assert arms["pkt-random-teacher"]["signals"]["lift"] == pytest.approx(1, abs=0.15)
    assert set(study["results"]["signal_correlations"]) == set(SIGNALS)
    report = (study["out"] / "report.html").read_text()
    assert "Cheap signals" in report and "<h2>Comparisons</h2>" in report and "inconclusive vs vanilla" in report
    assert 'src="http' not in report and len(report) > 1_000_000  # plotly.js inlined: works offline


@pytest.mark.slow
def test_zero_step_signal_is_the_additive_loss_change(study):
    """Independent check through PEFT: the export's main adapter on the untouched student is the
    additive injection; the signal must equal its loss change, and leave the student unchanged."""
    from peft import PeftModel

    from paraknow.core.models import load_model

    out, paths = study["out"], study["paths"]
    export = out / next(c for c in study["results"]["cells"] if c["arm"] == "pkt")["export"]
    student, tok = load_model(paths["student"])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    val = load_records(paths["val_data"])
    signals = export_signals(export, student, tok, val)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())
    base = sum(completion_losses(student, tok, val)) / len(val)
    additive = PeftModel.from_pretrained(load_model(paths["student"])[0], str(export)).eval()
    changed = sum(completion_losses(additive, tok, val)) / len(val)
    assert signals["zero_step_loss"] == pytest.approx(changed - base, rel=1e-4, abs=1e-6)


@pytest.mark.slow
def test_random_teacher_is_drawn_per_seed_and_reproducible(study, tmp_path):
    from safetensors.torch import load_file

    def weights(path):
        return load_file(str(path / "model.safetensors"))

    made = weights(random_teacher(study["paths"]["teacher"], tmp_path / "a", 0))
    again = weights(random_teacher(study["paths"]["teacher"], tmp_path / "b", 0))
    other = weights(random_teacher(study["paths"]["teacher"], tmp_path / "a", 1))
    teacher = load_file(str(Path(study["paths"]["teacher"]) / "model.safetensors"))
    q = "model.layers.0.self_attn.q_proj.weight"
    assert set(made) == set(teacher) and all(torch.equal(made[k], again[k]) for k in made)
    assert not torch.equal(made[q], teacher[q]) and not torch.equal(made[q], other[q])
    shipped = {p.name.rsplit("-", 1)[1]: weights(p) for p in (study["out"] / "teachers").iterdir()}
    assert all(torch.equal(made[k], shipped["seed0"][k]) for k in made)
    assert all(torch.equal(other[k], shipped["seed1"][k]) for k in made)
    exports = {c["seed"]: c["export"] for c in study["results"]["cells"] if c["arm"] == "pkt-random-teacher"}
    assert len(set(exports.values())) == 2  # one export per draw


@pytest.mark.slow
def test_resume_skips_finished_cells_and_reruns_unfinished_ones(study, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    recipe = parse_recipe(study["recipe"])
    with pytest.raises(ParaknowError, match="--resume"):
        prepare(recipe, out)
    cell_files = sorted(out.glob("cells/*/cell.json"))
    stamps = {p: (p.stat().st_mtime_ns, p.read_text()) for p in cell_files}
    lines = []
    results = run_study(recipe, out, resume=True, progress=lines.append)  # nothing left to run
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in cell_files} == stamps
    assert not any("running" in line for line in lines)
    assert cells_by_id(results) == cells_by_id(study["results"])

    # an interrupted cell (left `running`) and a failed one are rerun; the others are not touched
    interrupted, failed = out / "cells" / "pkt__seed1__lr0.0003", out / "cells" / "vanilla__seed0__lr0.01"
    for folder, state in ((interrupted, "running"), (failed, "failed")):
        record = json.loads((folder / "cell.json").read_text())
        (folder / "cell.json").write_text(json.dumps({**record, "state": state, "test_accuracy": None}))
    untouched = {p: stamps[p] for p in cell_files if p.parent not in (interrupted, failed)}
    run_status = {p: p.read_text() for p in out.glob("cells/*/run/status.json")}
    lines.clear()
    results = run_study(recipe, out, resume=True, progress=lines.append)
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in untouched} == untouched
    assert sum("running" in line for line in lines) == 2
    for p, text in run_status.items():
        assert (p.read_text() == text) == (p.parent.parent not in (interrupted, failed))
    # rerun from scratch with the same seeds: the same numbers as the first time
    before, after = cells_by_id(study["results"]), cells_by_id(results)
    for key, cell in after.items():
        assert cell["state"] == "finished"
        assert all(cell[k] == pytest.approx(before[key][k], rel=1e-6) for k in NUMBERS if cell[k] is not None)


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    changed = dict(study["recipe"], seeds=[0, 1, 2])
    with pytest.raises(ParaknowError, match="differs .*seeds"):
        prepare(parse_recipe(changed), out, resume=True)


@pytest.mark.slow
def test_resume_with_changed_comparisons_reanalyses_without_rerunning(study, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(study["out"], out)
    cell_files = sorted(out.glob("cells/*/cell.json"))
    stamps = {p: (p.stat().st_mtime_ns, p.read_text()) for p in cell_files}
    changed = dict(study["recipe"], comparisons={"primary": [["pkt", "vanilla"], ["untuned", "vanilla"]]},
                   equivalence_margin=0.2, correction="bonferroni", lr_selection="per-seed")
    lines = []
    results = run_study(parse_recipe(changed), out, resume=True, progress=lines.append)
    assert {p: (p.stat().st_mtime_ns, p.read_text()) for p in cell_files} == stamps
    assert not any("running" in line for line in lines)
    written = json.loads((out / "results.json").read_text())
    assert [(c["arm"], c["reference"]) for c in written["comparisons"]] == \
        [("pkt", "vanilla"), ("untuned", "vanilla"), ("pkt-random-teacher", "pkt")]
    assert written["correction"] == "bonferroni" and written["equivalence_margin"] == 0.2
    assert json.loads((out / "recipe.json").read_text())["correction"] == "bonferroni"
    assert results["comparisons"] == written["comparisons"]
    cells = [c for c in written["cells"] if c["arm"] == "vanilla"]  # per seed now: each seed its best rate
    for seed in (0, 1):
        own = [c for c in cells if c["seed"] == seed]
        best = min(own, key=lambda c: (-c["val_accuracy"], c["val_loss"], c["lr"]))
        assert [c["selected"] for c in own] == [c is best for c in own]


@pytest.mark.slow
def test_cli_gives_the_same_cell_numbers_as_the_library(study, tmp_path, capsys):
    recipe_file = write_recipe(tmp_path / "recipe.json", study["recipe"])
    code = cli_main(["study", "--recipe", recipe_file, "--out", str(tmp_path / "cli")])
    captured = capsys.readouterr()
    assert code == 0
    arms_table, comparisons = captured.out.strip().split("\n\n")
    table = arms_table.splitlines()
    assert table[0].split()[:3] == ["arm", "init", "n"] and len(table) == 1 + len(study["recipe"]["arms"])
    assert comparisons.splitlines()[1].split()[:2] == ["family", "arm"] and len(comparisons.splitlines()) == 4
    assert "[10/10]" in captured.err
    lib, cli = cells_by_id(study["results"]), cells_by_id(json.loads((tmp_path / "cli" / "results.json").read_text()))
    assert lib.keys() == cli.keys()
    for key in lib:
        assert {k: cli[key][k] for k in NUMBERS} == {k: lib[key][k] for k in NUMBERS}, key
    assert [a["mean"] for a in json.loads((tmp_path / "cli" / "results.json").read_text())["arms"]] == \
        [a["mean"] for a in study["results"]["arms"]]


@pytest.mark.slow
def test_a_failed_cell_does_not_stop_the_others(tmp_path):
    paths = study_inputs(tmp_path / "in")
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken_teacher"  # valid files, but its weights are NaN: the extraction's SVD fails
    shutil.copytree(paths["teacher"], broken)
    weights = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(broken / "model.safetensors")).items()}
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    recipe = tiny_recipe(paths, seeds=[0], arms=[
        {"name": "vanilla", "init": "vanilla"},
        {"name": "pkt-broken", "init": "pkt", "extract": {"samples": 4, "teacher": str(broken)}},
        {"name": "untuned", "init": "untuned"}])
    lines = []
    results = run_study(parse_recipe(recipe), tmp_path / "out", progress=lines.append)
    states = {c["arm"]: c for c in results["cells"]}
    assert states["pkt-broken"]["state"] == "failed" and states["pkt-broken"]["error"]
    assert states["vanilla"]["state"] == "finished" and states["untuned"]["state"] == "finished"
    assert any("FAILED" in line for line in lines)
    arm = next(a for a in results["arms"] if a["arm"] == "pkt-broken")
    assert arm["n"] == 0 and arm["mean"] is None and arm["states"] == {"failed": 1}
    code = cli_main(["study", "--recipe", write_recipe(tmp_path / "r.json", recipe), "--out", str(tmp_path / "cli")])
    assert code == 1


def test_budget_refusal_before_anything_runs(tmp_path, capsys):
    paths = study_inputs(tmp_path / "in")
    recipe = tiny_recipe(paths, budget_minutes=1e-6)  # 60 microseconds: any measured estimate is over it
    out = tmp_path / "out"
    with pytest.raises(ParaknowError,
                       match=r"needs about .* min for 6 cells.*budget of 1e-06 min: raise budget_minutes"):
        prepare(parse_recipe(recipe), out)
    assert not out.exists()
    code = cli_main(["study", "--recipe", write_recipe(tmp_path / "r.json", recipe), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "budget_minutes" in err[0] and not out.exists()


@pytest.mark.slow
def test_seed_count_curve_from_arms_that_differ_only_in_samples(study):
    from paraknow.study.report import seed_count_figure, seed_count_points

    recipe = parse_recipe(study["recipe"])
    # the fixture's PKT arms set samples 4 only once: no curve from one level
    assert seed_count_points(recipe, study["results"]) == []
    results = json.loads(json.dumps(study["results"]))
    recipe.arms.append(parse_recipe({**study["recipe"], "arms": [{"name": "pkt-2", "init": "pkt",
                                                                 "extract": {"samples": 2}}]}).arms[0])
    results["arms"].append({"arm": "pkt-2", "mean": 0.25, "ci95": [0.2, 0.3]})
    points = seed_count_points(recipe, results)
    assert [(p["samples"], p["arm"]) for p in points] == [(2, "pkt-2"), (4, "pkt")]
    fig = seed_count_figure(points, results)
    assert list(fig.data[0].x) == [2, 4] and fig.data[0].y[0] == pytest.approx(25.0)


@pytest.mark.slow
def test_two_workers_give_the_same_cell_numbers(study, tmp_path, monkeypatch, capsys):
    """`--workers 2` runs cells two at a time in worker processes (exports and the random teacher
    made once under a lock): every cell's numbers are those of the one-at-a-time study."""
    monkeypatch.setenv("PARAKNOW_CACHE", str(tmp_path / "cache"))  # the workers compute their own maps
    recipe_file = write_recipe(tmp_path / "recipe.json", study["recipe"])
    code = cli_main(["study", "--recipe", recipe_file, "--out", str(tmp_path / "two"), "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    lib, two = cells_by_id(study["results"]), cells_by_id(json.loads((tmp_path / "two" / "results.json").read_text()))
    assert lib.keys() == two.keys() and all(c["state"] == "finished" for c in two.values())
    for key in lib:
        for name in NUMBERS:
            if lib[key][name] is None:
                assert two[key][name] is None, (key, name)
            else:  # other thread counts may reorder float sums: equal to rounding, not bit for bit
                assert two[key][name] == pytest.approx(lib[key][name], rel=1e-3, abs=1e-6), (key, name)
    assert len(list((tmp_path / "two" / "teachers").iterdir())) == 2  # one random teacher per seed
    status = json.loads((tmp_path / "two" / "study.json").read_text())
    assert status["state"] == "finished" and status["cells_running"] == [] and status["cells_run"] == len(lib)


@pytest.mark.slow
def test_workers_out_of_range_is_refused_before_anything_runs(study, tmp_path, capsys):
    recipe_file = write_recipe(tmp_path / "recipe.json", study["recipe"])
    assert cli_main(["study", "--recipe", recipe_file, "--out", str(tmp_path / "w"), "--workers", "0"]) == 2
    assert "workers must be 'auto' or a whole number" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_the_thread_policy_is_recorded(study):
    """`--workers auto` (the default) ran the cells with one torch thread each, and the study says so
    beside the load average, in study.json and in results.json's timing."""
    timing = study["results"]["timing"]
    assert timing["requested"] == "auto" and timing["threads"] == 1 and 1 <= timing["workers"] <= 64
    assert len(timing["load_average"]) == 3 and len(timing["load_average_end"]) == 3
    status = json.loads((study["out"] / "study.json").read_text())
    assert status["threads"] == {k: timing[k] for k in ("workers", "threads", "requested", "load_average")}
    assert f"{timing['workers']} at a time, 1 torch thread each" in study["lines"][0]


@pytest.mark.slow
def test_report_study_writes_summary_cells_and_figures_without_rerunning(study, tmp_path):
    """`python -m paraknow.report study` on a finished study: nothing reruns; the summary holds
    the study's own per-arm results, the CSV every cell, the timing spans the cells' clock times."""
    from paraknow.htmlreport import image_export_unavailable
    from paraknow.report import main as report_main

    study_dir = tmp_path / "study"
    shutil.copytree(study["out"], study_dir)
    before = {p: p.stat().st_mtime_ns for p in study_dir.glob("cells/*/cell.json")}
    recipe_file = write_recipe(tmp_path / "recipe.json", study["recipe"])
    assert report_main(["study", "--recipe", recipe_file, "--dir", str(study_dir), "--out", str(tmp_path / "docs")]) == 0
    assert {p: p.stat().st_mtime_ns for p in study_dir.glob("cells/*/cell.json")} == before  # no cell reran
    summary = json.loads((tmp_path / "docs" / "summary.json").read_text())
    assert summary["provenance"]["command"].startswith("python -m paraknow.report study")
    assert [(a["arm"], a["mean"], a["factor"]) for a in summary["arms"]] == \
        [(a["arm"], a["mean"], a["factor"]) for a in study["results"]["arms"]]
    records = [json.loads(p.read_text()) for p in before]
    assert summary["timing"]["elapsed_s"] == pytest.approx(
        max(r["started"] + r["seconds"] for r in records) - min(r["started"] for r in records), abs=0.2)
    assert summary["timing"]["elapsed_s"] >= max(r["seconds"] for r in records)
    # each cell names the code that ran it; the summary counts the cells per commit
    from paraknow.core.provenance import code_version
    assert {r["commit"] for r in records} == {code_version()}
    assert summary["cell_commits"] == {code_version() or "unrecorded": len(records)}
    assert summary["comparisons"] == study["results"]["comparisons"]
    lines = (tmp_path / "docs" / "results.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + len(study["results"]["cells"])
    table = (tmp_path / "docs" / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(study["recipe"]["arms"]) and "| `vanilla` | 2 |" in table[2]
    if image_export_unavailable() is None:
        # one `samples` level: no seed-count curve; PKT's extraction cost: the cost chart
        assert set(summary["figures"]) == {"bars.png", "cost.png", "curves.png"}
        for name in summary["figures"]:
            assert (tmp_path / "docs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert summary["figures"] == [] and summary["figures_unavailable"]


def test_arm_factor_groups_the_paper_analyses():
    from paraknow.study.recipe import Arm

    assert Arm("untuned", "untuned").factor == "Controls"
    assert Arm("vanilla", "vanilla", lr_sweep=[1e-3]).factor == "Methods"
    assert Arm("pkt-attn", "pkt", extract={"modules": "attn"}).factor == "Origin (modules)"
    assert Arm("pkt-x", "pkt", extract={"modules": "attn", "rank": 4}).factor == "Crossed"
    assert Arm("pkt-svd", "pkt", extract={"svd": "exact"}).factor == "Other options"


@pytest.mark.slow
def test_vanilla_trains_the_modules_the_pkt_export_trains(study):
    """A difference between arms is the initialisation, not the set of trained modules: vanilla
    LoRA's spec lists the target modules of the PKT arm's export (embeddings included: the tiny
    pair shares its tokenizer)."""
    out = study["out"]
    export = next(c["export"] for c in study["results"]["cells"] if c["arm"] == "pkt" and c["export"])
    exported = json.loads((out / export / "adapter_config.json").read_text())["target_modules"]
    for cell in study["results"]["cells"]:
        if cell["arm"] == "vanilla":
            spec = json.loads((out / cell["run_dir"] / "spec.json").read_text())
            assert sorted(spec["target_modules"]) == sorted(exported)
    assert {"embed_tokens", "lm_head"} <= set(exported)


def test_a_recipe_target_modules_is_kept_for_vanilla(tmp_path):
    from paraknow.study.plan import train_config

    paths = study_inputs(tmp_path / "in")
    data = tiny_recipe(paths)
    data["arms"].append({"name": "vanilla-layers", "init": "vanilla", "train": {"target_modules": ["q_proj", "v_proj"]}})
    recipe = parse_recipe(data)
    assert train_config(recipe, recipe.arm("vanilla-layers"), 0, None, "vanilla").target_modules == ["q_proj", "v_proj"]
    no_pkt = parse_recipe(dict(data, arms=[a for a in data["arms"] if a["init"] != "pkt"]))
    assert train_config(no_pkt, no_pkt.arm("vanilla"), 0, None, "vanilla").target_modules is None  # TrainConfig's default


def test_controls_run_and_duplicate_exports_are_counted_once(tmp_path, monkeypatch):
    """vanilla-ortho and a shuffled teacher run as cells; `first` and `manual:0,1` give the same layer
    map and selection on this pair (different export keys, same content): the later arm is reported as
    a duplicate and left out of its family."""
    from paraknow.study.duplicates import export_digest

    monkeypatch.setenv("PARAKNOW_CACHE", str(tmp_path / "cache"))
    paths = study_inputs(tmp_path / "in")
    pkt = {"init": "pkt", "extract": {"samples": 4, "layers": "first"}}
    data = tiny_recipe(paths, arms=[
        {"name": "vanilla", "init": "vanilla"}, {"name": "ortho", "init": "vanilla-ortho"},
        {"name": "pkt-first", **pkt},
        {"name": "pkt-manual", "init": "pkt", "extract": {"samples": 4, "layers": "manual:0,1"}},
        {"name": "pkt-shuffled", "init": "pkt", "extract": {**pkt["extract"], "teacher_weights": "shuffled"}}],
        comparisons={"primary": [["ortho", "vanilla"], ["pkt-first", "vanilla"], ["pkt-manual", "vanilla"],
                                 ["pkt-shuffled", "pkt-first"]], "secondary": []})
    results = run_study(parse_recipe(data), tmp_path / "out")
    out = tmp_path / "out"
    assert all(c["state"] == "finished" for c in results["cells"])
    exports = {(c["arm"], c["seed"]): out / c["export"] for c in results["cells"] if c["export"]}
    for seed in (0, 1):
        first, manual, shuffled = (exports[(a, seed)] for a in ("pkt-first", "pkt-manual", "pkt-shuffled"))
        assert first != manual and export_digest(first) == export_digest(manual) != export_digest(shuffled)
        assert json.loads((shuffled / "paraknow.json").read_text())["teacher_weights"] == "shuffled"
    assert [(d["arm"], d["duplicate_of"]) for d in results["duplicates"]] == [("pkt-manual", "pkt-first")]
    arms = {a["arm"]: a for a in results["arms"]}
    assert arms["pkt-manual"]["duplicate_of"] == "pkt-first" and arms["pkt-first"]["duplicate_of"] is None
    assert arms["pkt-manual"]["verdict"].startswith("duplicate of pkt-first")
    comps = {c["arm"]: c for c in results["comparisons"]}
    assert comps["pkt-manual"]["p_adjusted"] is None and "duplicate of pkt-first" in comps["pkt-manual"]["reason"]
    counted = [c for c in results["comparisons"] if c["arm"] != "pkt-manual"]
    assert [c["p_adjusted"] for c in counted] == holm([c["p"] for c in counted])  # m = 3
    # vanilla-ortho trained from its own init and left a plain LoRA adapter
    ortho = next(c for c in results["cells"] if c["arm"] == "ortho")
    assert json.loads((out / ortho["run_dir"] / "spec.json").read_text())["init"] == "vanilla-ortho"
    assert (out / ortho["run_dir"] / "adapter" / "adapter_model.safetensors").is_file()
