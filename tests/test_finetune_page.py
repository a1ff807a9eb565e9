"""Page 6 (Fine-tune) through streamlit.testing.v1.AppTest, plus its figure builders and helpers.

Runs are written straight to disk (jobs.new_run + a status/metrics as a training process would write
them), some from another process, so the page must find everything from cache/runs/ alone. No
training runs here: `jobs.ensure_worker` is replaced where the page queues runs.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apptest import assert_ok, open_page
from streamlit.testing.v1 import AppTest
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama

from paraknow import viz
from paraknow.core.errors import ParaknowError
from paraknow.core.fsio import atomic_write_json
from paraknow.core.paths import cache_dir
from paraknow.core.processes import proc_start_time
from paraknow.runs import jobs, rundir
from paraknow.runs.train_config import TrainConfig
from ui import finetune as F
from ui import state as S

ROOT = Path(__file__).resolve().parent.parent
PAGE = "pages/6_Fine-tune.py"


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft-student")
    tiny_llama(layers=1, hidden=32, ffn=64, heads=2, kv_heads=1).save_pretrained(d / "student")
    make_tokenizer().save_pretrained(d / "student")
    (d / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SEED_RECORDS[:4]))
    return d


@pytest.fixture
def env(student_dir, monkeypatch):
    """The page's student is the tiny model; nothing starts a real worker."""
    monkeypatch.setenv("PARAKNOW_APP_STUDENT", str(student_dir / "student"))
    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda: started.append(1))
    return {"student": str(student_dir / "student"), "data": str(student_dir / "data.jsonl"), "started": started}


def _config(env, **kw) -> TrainConfig:
    settings = dict(student=env["student"], data=env["data"], epochs=1, batch=2, micro_batch=2, rank=2, alpha=4,
                    max_length=64, device="cpu", eval_data=env["data"])
    settings.update(kw)
    return TrainConfig(**settings)


def _fake_export(name="fake-export", student=None) -> Path:
    d = cache_dir("exports") / name
    d.mkdir(parents=True)
    (d / "paraknow.json").write_text(json.dumps({
        "teacher": "demo:teacher", "student": student or "demo:student", "data": "task:arith:seed", "samples": 32,
        "metric": "taylor-abs", "rank": 2, "alpha": 4, "mode": "residual", "structure": "submatrix",
        "layer_map": [1], "modules": {"model.layers.0.self_attn.q_proj": {}}, "created": "2026-01-01T00:00:00"}))
    (d / "adapter_config.json").write_text(json.dumps({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    return d


def _metrics(steps: int, eval_every: int = 2) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        row = {"step": s, "epoch": s / steps, "loss": 3.0 - 0.1 * s, "lr": 1e-4 * s, "grad_norm": 1.0, "time": s}
        if s % eval_every == 0:
            row.update(eval_loss=2.5 - 0.1 * s, eval_accuracy=0.1 * s)
        rows.append(row)
    return rows


def _fake_run(config: TrainConfig, state: str, steps: int = 4, max_steps: int = 8, accuracy=None,
              adapter: bool = False, error: str | None = None, group=None, label=None) -> Path:
    """A run as a training process leaves it: status.json, metrics.jsonl, maybe adapter/ and stdout.log."""
    run_dir = jobs.new_run(config, group=group, label=label)
    status = {"state": state, "created": time.time(), "method": config.method, "step": steps, "max_steps": max_steps,
              "phase": "training" if state == "running" else "done", "started": time.time() - 30,
              "finished": None if state == "running" else time.time(), "loss": 2.5, "eta_s": 42.0,
              "host": socket.gethostname(), "pid": os.getpid(), "pid_start": proc_start_time(os.getpid()),
              "final_eval": {"accuracy": accuracy, "loss": 1.5, "n": 4} if accuracy is not None else None,
              "error": error}
    atomic_write_json(run_dir / "status.json", status)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _metrics(steps)))
    if adapter:
        (run_dir / "adapter").mkdir()
        (run_dir / "adapter" / "adapter_config.json").write_text("{}")
        (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    if error:
        (run_dir / "stdout.log").write_text("loading the student\nTraceback ...\nRuntimeError: out of memory\n")
    return run_dir


def _page() -> AppTest:
    return open_page(PAGE, 120)


def _figures(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


def test_page_renders_with_no_runs(env):
    at = _page()
    assert any("No runs yet" in str(i.value) for i in at.info)
    assert at.text_input(key=S.W_FT_STUDENT).value == env["student"]
    assert at.session_state[S.W_FT_SRC + "train"] == "Built-in task"
    assert at.selectbox(key=S.W_FT_SPLIT + "train").value == "train"
    assert at.selectbox(key=S.W_FT_SPLIT + "eval").value == "test"
    assert at.button(key="w_ft_compare").disabled  # no export yet
    assert not at.button(key="w_ft_launch").disabled
    assert not _figures(at)


@pytest.mark.slow
def test_runs_from_disk_are_listed_charted_and_compared(env):
    config = _config(env)
    # one run created by another process (the page must find it on disk)
    code = ("from paraknow.runs import jobs; from paraknow.runs.train import TrainConfig; import json, sys; "
            "print(jobs.new_run(TrainConfig(**json.loads(sys.argv[1])), label='from the CLI'))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(config.to_dict())], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    other = Path(out.stdout.strip().splitlines()[-1])
    jobs.stop(other)  # queued -> stopped at once (no worker needed)
    failed = _fake_run(config, "failed", steps=2, error="RuntimeError: out of memory", label="broken")
    finished = _fake_run(config, "finished", steps=8, accuracy=0.5, adapter=True, label="done")
    running = _fake_run(config, "running", steps=5, label="live one")
    export = _fake_export(student=env["student"])
    group = "gtest-group"
    for seed, accs in ((0, (0.2, 0.3, 0.5)), (1, (0.4, 0.3, 0.7))):
        for init, acc in zip(("vanilla", "pissa", str(export)), accs):
            c = _config(env, init=init, seed=seed)
            _fake_run(c, "finished", steps=8, accuracy=acc, group=group, label=f"{c.method} seed {seed}")

    at = _page()
    table = at.dataframe[0].value
    assert len(table) == 10
    assert set(table["state"]) == {"stopped", "failed", "finished", "running"}
    assert "from the CLI" in set(table["label"])
    row = table[table["run"] == running.name].iloc[0]
    assert row["progress"] == "5/8" and row["ETA"] == "42 s"
    # live: the page redraws itself while a run is active; one Stop button per active run
    assert at.button(key=f"w_ft_stop_{running.name}")
    assert [p.value for p in at.get("progress")] == [62]  # 5/8
    # the newest group is overlaid by default; its curves are drawn per run, coloured by method
    shown = at.session_state[S.W_FT_SHOW]
    assert len(shown) == 6 and all(jobs.read_spec(rundir.find_run(i))["group"] == group for i in shown)
    curves, compare = _figures(at)
    names = {t["name"] for t in curves["data"]}
    assert len(names) == 6
    loss_traces = [t for t in curves["data"] if t.get("xaxis", "x") == "x"]
    assert len(loss_traces) == 6 and all(len(t["x"]) == 8 for t in loss_traces)
    # the comparison: table and bar chart with error bars
    cmp_table = at.dataframe[1].value
    assert list(cmp_table["method"]) == ["vanilla LoRA", "PiSSA", "PKT"]
    assert list(cmp_table["accuracy (mean ± std)"]) == ["30.0% ± 14.1%", "30.0% ± 0.0%", "60.0% ± 14.1%"]
    assert list(cmp_table["min"]) == ["20.0%", "30.0%", "50.0%"] and list(cmp_table["max"])[2] == "70.0%"
    bars = [t for t in compare["data"] if t["type"] == "bar"]
    assert [round(b["y"][0], 3) for b in bars] == [0.3, 0.3, 0.6]
    assert all(b["error_y"]["visible"] for b in bars)

    # overlay other runs: the running one and the finished one
    at.multiselect(key=S.W_FT_SHOW).set_value([running.name, finished.name]).run()
    assert_ok(at)
    curves = _figures(at)[0]
    assert {t["name"] for t in curves["data"]} == {F.run_label(jobs.run_info(running)),
                                                   F.run_label(jobs.run_info(finished))}
    # details of the finished run: final numbers and the adapter download
    at.selectbox(key=S.W_FT_DETAIL).set_value(finished.name).run()
    assert_ok(at)
    assert any(m.value == "50.0%" for m in at.metric)
    assert at.get("download_button") and f"w_ft_dl_{finished.name}" in str(at.get("download_button")[0].proto.id)
    # details of the failed run: its error, what to do, and the end of stdout.log
    at.selectbox(key=S.W_FT_DETAIL).set_value(failed.name).run()
    assert not at.exception
    assert len(at.error) == 1 and "out of memory" in at.error[0].value and "launch again" in at.error[0].value
    assert any("Traceback" in str(c.value) for c in at.code)
    assert env["started"] == []  # nothing was queued, so no worker was asked for


def test_stop_button_writes_the_stop_file(env):
    running = _fake_run(_config(env), "running", steps=3, label="to stop")
    at = _page()
    assert not (running / "STOP").exists()
    at.button(key=f"w_ft_stop_{running.name}").click().run()
    assert_ok(at)
    assert (running / "STOP").exists()
    assert at.dataframe[0].value.iloc[0]["state"] == "stopping"  # until the process sees it at its next step
    assert at.button(key=f"w_ft_stop_{running.name}").disabled


@pytest.mark.slow
def test_launch_and_compare_queue_runs_with_the_form_settings(env):
    at = _page()
    at.selectbox(key=S.W_FT_SPLIT + "train").set_value("seed")
    at.radio(key=S.W_FT_SRC + "eval").set_value(S.FT_EVAL_NONE).run()
    for key, value in ((S.W_FT_EPOCHS, 1.0), (S.W_FT_BATCH, 4), (S.W_FT_MICRO, 2), (S.W_FT_RANK, 4),
                       (S.W_FT_ALPHA, 8.0), (S.W_FT_LR, 1e-3)):
        at.number_input(key=key).set_value(value)
    at.text_input(key=S.W_FT_SEEDS).set_value("3, 4").run()
    at.button(key="w_ft_launch").click().run()
    assert_ok(at)
    runs = jobs.list_runs(resume_queue=False)
    assert len(runs) == 2 and {r.spec["seed"] for r in runs} == {3, 4} and env["started"]
    spec = runs[0].spec
    assert (spec["data"], spec["eval_data"], spec["epochs"], spec["batch"], spec["micro_batch"], spec["rank"],
            spec["alpha"], spec["lr"], spec["init"]) == ("task:arith:seed", None, 1.0, 4, 2, 4, 8, 1e-3, "vanilla")
    assert any("Queued 2 run(s)" in str(s.value) for s in at.success)
    assert set(at.session_state[S.W_FT_SHOW]) == {r.run_id for r in runs}
    # queued runs can be stopped before they start
    at.button(key=f"w_ft_stop_{runs[0].run_id}").click().run()
    assert_ok(at)
    assert jobs.read_status(runs[0].run_dir)["state"] == "stopped"

    # a user mistake is explained, nothing is queued
    at.number_input(key=S.W_FT_BATCH).set_value(5).run()
    at.button(key="w_ft_launch").click().run()
    assert "not a multiple of micro-batch" in at.error[0].value and "--" not in at.error[0].value
    at.number_input(key=S.W_FT_BATCH).set_value(4)
    at.text_input(key=S.W_FT_SEEDS).set_value("one").run()
    at.button(key="w_ft_launch").click().run()
    assert "not a non-negative integer" in at.error[0].value
    assert len(jobs.list_runs(resume_queue=False)) == 2

    # compare: vanilla, PiSSA and PKT from the export, same settings, 2 seeds, one group
    _fake_export("cmp-export", student=env["student"])
    at.run()
    assert not at.button(key="w_ft_compare").disabled
    assert at.session_state[S.W_FT_EXPORT] == "cmp-export"
    at.text_input(key=S.W_FT_CMP_SEEDS).set_value("0 1").run()
    at.button(key="w_ft_compare").click().run()
    assert_ok(at)
    group = at.session_state[S.W_FT_GROUP]
    members = jobs.list_runs(group=group, resume_queue=False)
    assert sorted((r.method, r.spec["seed"]) for r in members) == sorted(
        (m, s) for m in ("vanilla", "pissa", "pkt") for s in (0, 1))
    assert all(r.spec["rank"] == 2 and r.spec["alpha"] == 4 and r.spec["epochs"] == 1.0 for r in members)
    assert any("Queued the comparison" in str(s.value) for s in at.success)
    for r in members:  # leave nothing queued behind
        jobs.stop(r.run_dir)


# ---------------------------------------------------------------------------------------
# Figure builders and helpers


def test_run_curves_traces():
    fig = viz.run_curves([{"label": "a", "rows": _metrics(6, eval_every=3)},
                          {"label": "b", "rows": _metrics(2), "color": "#000000", "dash": "dot"}])
    by_panel = {}
    for t in fig.data:
        by_panel.setdefault(t.xaxis, []).append(t)
    assert sorted(by_panel) == ["x", "x2", "x3", "x4"]  # loss, lr, eval loss, eval accuracy
    loss_a = next(t for t in by_panel["x"] if t.name == "a")
    assert list(loss_a.x) == [1, 2, 3, 4, 5, 6] and loss_a.mode == "lines"
    acc_a = next(t for t in by_panel["x4"] if t.name == "a")
    assert list(acc_a.x) == [3, 6] and "markers" in acc_a.mode
    b = [t for t in fig.data if t.name == "b"]
    assert all(t.line.color == "#000000" and t.line.dash == "dot" for t in b)
    assert sum(bool(t.showlegend) for t in fig.data if t.name == "a") == 1  # one legend entry per run
    assert fig.layout.uirevision == "run-curves"
    # a final-eval row without loss adds an eval point only; an empty run draws a hint
    rows = _metrics(2) + [{"step": 2, "loss": None, "lr": None, "eval_loss": 1.0, "eval_accuracy": 0.5}]
    assert viz.curve_points(rows, "loss") == ([1, 2], [2.9, 2.8])
    assert viz.curve_points(rows, "eval_accuracy") == ([2, 2], [0.2, 0.5])
    empty = viz.run_curves([{"label": "none", "rows": []}])
    assert not empty.data and "no metrics yet" in empty.layout.annotations[-1].text


def test_comparison_figure_and_rows():
    def stats(values):
        if not values:
            return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return {"n": len(values), "mean": mean, "std": std, "min": min(values), "max": max(values)}

    results = {"group": "g", "complete": False, "methods": {
        "pkt": {"runs": ["a", "b", "c"], "states": {"finished": 2, "running": 1},
                "accuracy": stats([0.5, 0.7]), "loss": stats([1.0, 1.2])},
        "vanilla": {"runs": ["d", "e"], "states": {"finished": 2}, "accuracy": stats([0.2, 0.4]),
                    "loss": stats([2.0, 2.0])},
        "pissa": {"runs": ["f"], "states": {"queued": 1}, "accuracy": stats([]), "loss": stats([])}}}
    fig = viz.comparison_figure(results, {"vanilla": [("v0", 0.2), ("v1", 0.4)], "pkt": [("p0", 0.5), ("p1", 0.7)]})
    bars = [t for t in fig.data if t.type == "bar"]
    assert [b.x[0] for b in bars] == ["vanilla LoRA", "PKT"]  # PiSSA has no finished run yet
    assert bars[0].y[0] == pytest.approx(0.3) and bars[1].error_y.array[0] == pytest.approx(0.1414, abs=1e-4)
    dots = [t for t in fig.data if t.type == "scatter"]
    assert [list(d.y) for d in dots] == [[0.2, 0.4], [0.5, 0.7]] and list(dots[1].customdata) == ["p0", "p1"]
    rows = viz.comparison_rows(results)
    assert [r["method"] for r in rows] == ["vanilla LoRA", "PiSSA", "PKT"]
    assert rows[2]["finished"] == "2/3" and rows[2]["accuracy (mean ± std)"] == "60.0% ± 14.1%"
    assert rows[1]["accuracy (mean ± std)"] == "–" and rows[1]["states"] == "1 queued"
    assert rows[0]["min"] == "20.0%" and rows[0]["max"] == "40.0%"
    empty = viz.comparison_figure({"methods": {}})
    assert not empty.data and tuple(empty.layout.yaxis.range) == (0, 1)  # no autorange to 0..800 %


def test_helpers():
    assert F.parse_seeds("0, 1 2;2") == [0, 1, 2]
    for bad in ("", "x", "-1", "1.5"):
        with pytest.raises(ParaknowError):
            F.parse_seeds(bad)
    assert [F.fmt_duration(v) for v in (None, 5.4, 75, 3700)] == ["–", "5 s", "1 min 15 s", "1 h 01 min"]
    with pytest.raises(ParaknowError, match="line 2"):
        F.save_upload(b'{"text": "a"}\nnot json\n', "bad.jsonl")
    path = F.save_upload(b'{"text": "a"}\n', "my data.jsonl")
    assert path.read_text() == '{"text": "a"}\n' and path.name.endswith("-my-data.jsonl")
    assert F.save_upload(b'{"text": "a"}\n', "my data.jsonl") == path  # content-keyed


def test_runs_table_cells_read_dash_when_empty(env):
    """Empty cells read '–' (never 'None'); numbers are formatted."""
    queued = jobs.run_info(_fake_run(_config(env), "queued", steps=0))
    queued.status.update(loss=None, final_eval=None)
    done = jobs.run_info(_fake_run(_config(env, seed=3), "finished", accuracy=0.425))
    rows = {r["run"]: r for r in F.run_rows([queued, done])}
    assert rows[queued.run_id]["loss"] == rows[queued.run_id]["final accuracy"] == "–"
    assert rows[done.run_id]["final accuracy"] == "42.5%" and rows[done.run_id]["loss"] == "2.5000"
    assert rows[done.run_id]["seed"] == "3"
    assert not any(v is None or v == "None" for row in rows.values() for v in row.values())


def test_fine_tune_step_done_only_after_a_finished_run(env):
    """The home page's pipeline marks Fine-tune done from disk (rundir.has_finished_run)."""
    assert not rundir.has_finished_run()
    _fake_run(_config(env), "failed", error="boom")
    _fake_run(_config(env), "stopped")
    assert not rundir.has_finished_run()
    _fake_run(_config(env), "finished", accuracy=0.5)
    assert rundir.has_finished_run()


def test_long_upload_names_are_shortened_safely():
    from ui import ops

    long_a, long_b = "a" * 300 + "-first.jsonl", "a" * 300 + "-second.jsonl"
    saved = [F.save_upload(b'{"text": "a"}\n', name) for name in (long_a, long_b)]
    for path in saved:
        assert path.exists() and len(path.name) <= 120 and path.name.endswith(".jsonl")
    assert saved[0].name[13:] != saved[1].name[13:]  # same start, different names: kept apart
    assert ops.safe_file_name("../../etc/" + "b" * 400) == ops.safe_file_name("b" * 400)  # no folders
    name = ops.default_export_name("demo:teacher", "demo:student", f"upload:{long_a}", "submatrix")
    assert ops.check_export_name(name) == name and len(name) <= ops.NAME_MAX


def test_another_students_export_warns_only_for_pkt_and_a_second_launch_keeps_the_charts(env):
    _fake_export("other-student-export", student="demo:student")
    at = _page()
    at.radio(key=S.W_FT_INIT).set_value("vanilla").run()
    assert not any("made for" in str(w.value) for w in at.warning)  # vanilla does not use the export
    at.radio(key=S.W_FT_INIT).set_value("pkt").run()
    assert any("made for `demo:student`" in str(w.value) for w in at.warning)
    at.radio(key=S.W_FT_INIT).set_value("vanilla").run()
    at.selectbox(key=S.W_FT_SPLIT + "train").set_value("seed")
    at.radio(key=S.W_FT_SRC + "eval").set_value(S.FT_EVAL_NONE).run()
    at.button(key="w_ft_launch").click().run()
    assert_ok(at)
    first = at.session_state[S.W_FT_SHOW]
    detail = at.session_state[S.W_FT_DETAIL]
    at.button(key="w_ft_launch").click().run()  # the same settings again
    assert_ok(at)
    runs = jobs.list_runs(resume_queue=False)
    assert len(runs) == 2
    assert at.session_state[S.W_FT_SHOW] == first + [runs[0].run_id]  # added, the first still charted
    assert at.session_state[S.W_FT_DETAIL] == detail  # the detail view does not jump
    assert len({F.run_label(r) for r in runs}) == 2  # launched apart: labels apart
    for r in runs:
        jobs.stop(r.run_dir)


def test_run_labels_read_the_time_to_the_second():
    run = jobs.RunInfo(run_id="20261130-115012123456-abc123", run_dir=Path("x"), state="queued", spec={},
                       status={}, method="vanilla", label="vanilla seed 0")
    assert F.run_label(run) == "vanilla seed 0 · 11-30 11:50:12 #abc"


def test_distillation_widgets_follow_train_config_and_refuse_bad_settings(env, tmp_path):
    from paraknow.core.options import choices_of, default_of

    teacher = tmp_path / "teacher"  # the student's tokenizer, another model
    tiny_llama(layers=2, hidden=32, ffn=64, heads=2, kv_heads=1, seed=3).save_pretrained(teacher)
    make_tokenizer().save_pretrained(teacher)
    at = _page()
    kind = at.selectbox(key=S.W_FT_DISTILL)
    assert kind.value == S.FT_NO_DISTILL
    assert kind.options == [F.DISTILL_LABELS[k] for k in (S.FT_NO_DISTILL, *choices_of(TrainConfig, "distill"))]
    for key, name in ((S.W_FT_DISTILL_WEIGHT, "distill_weight"), (S.W_FT_TEMPERATURE, "temperature")):
        assert at.number_input(key=key).value == default_of(TrainConfig, name) and at.number_input(key=key).disabled
    at.selectbox(key=S.W_FT_SPLIT + "train").set_value("seed")
    at.radio(key=S.W_FT_SRC + "eval").set_value(S.FT_EVAL_NONE)
    for key, value in ((S.W_FT_EPOCHS, 1.0), (S.W_FT_BATCH, 4), (S.W_FT_MICRO, 2), (S.W_FT_RANK, 4)):
        at.number_input(key=key).set_value(value)
    at.selectbox(key=S.W_FT_DISTILL).set_value("logits").run()
    assert not at.number_input(key=S.W_FT_DISTILL_WEIGHT).disabled

    def refused(**widgets) -> str:
        for key, value in widgets.items():
            (at.text_input if key == S.W_FT_DISTILL_TEACHER else at.number_input)(key=key).set_value(value)
        at.button(key="w_ft_launch").click().run()
        assert not at.exception and len(at.error) == 1 and not jobs.list_runs(resume_queue=False)
        return at.error[0].value

    assert "another vocabulary" in refused(**{S.W_FT_DISTILL_TEACHER: "demo:teacher"})
    assert "distill_weight must be a number at least 0 and at most 1" in refused(
        **{S.W_FT_DISTILL_TEACHER: str(teacher), S.W_FT_DISTILL_WEIGHT: 2.0})
    assert "temperature must be a number greater than 0" in refused(
        **{S.W_FT_DISTILL_WEIGHT: 0.25, S.W_FT_TEMPERATURE: 0.0})
    assert "enter the distillation teacher" in refused(**{S.W_FT_TEMPERATURE: 3.0, S.W_FT_DISTILL_TEACHER: " "})
    at.text_input(key=S.W_FT_DISTILL_TEACHER).set_value(str(teacher))
    at.button(key="w_ft_launch").click().run()
    assert_ok(at)
    run, = jobs.list_runs(resume_queue=False)
    assert (run.spec["distill"], run.spec["distill_teacher"], run.spec["distill_weight"], run.spec["temperature"]) \
        == ("logits", str(teacher), 0.25, 3.0) and "logits KD" in run.label
    jobs.stop(run.run_dir)
    at.selectbox(key=S.W_FT_DISTILL).set_value("sequences").run()  # another vocabulary is fine for sequence KD
    at.text_input(key=S.W_FT_DISTILL_TEACHER).set_value("demo:teacher")
    at.button(key="w_ft_launch").click().run()
    assert_ok(at)
    assert {r.spec["distill"] for r in jobs.list_runs(resume_queue=False)} == {"logits", "sequences"}
    for r in jobs.list_runs(resume_queue=False):
        jobs.stop(r.run_dir)
