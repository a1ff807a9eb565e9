"""The executor picker of the Fine-tune and Study pages (ui/executor.py, docs/cluster.md) through
AppTest: its choices, defaults and help come from paraknow.runs.executors; Ray without Ray installed or
at an address nothing answers on is a message and starts nothing; a Ray choice reaches the runs
and the study the pages start (a one-CPU Ray instance that the test starts, as test_executors.py)."""
from __future__ import annotations

import json
import socket
import sys

import pytest
from apptest import open_page
from streamlit.testing.v1 import AppTest
from study_fixtures import study_inputs, tiny_recipe
from test_executors import needs_ray, ray_address, ray_mark  # noqa: F401 (ray_address is a fixture)
from test_jobs import setup, wait_for  # noqa: F401 (setup is a fixture)

from paraknow.core import jobdir
from paraknow.core.options import default_of, help_of
from paraknow.runs import jobs, rundir
from paraknow.runs.executors import EXECUTORS, ExecutorConfig
from paraknow.study.control import read_status as read_study_status
from ui import state as S
from ui import study as U
from ui.widgets import page_message

FINETUNE, STUDY = "pages/6_Fine-tune.py", "pages/8_Study.py"
LAUNCH = {FINETUNE: "w_ft_launch", STUDY: "w_st_launch"}


def page(path: str) -> AppTest:
    return open_page(path, 300, errors_allowed=True)


def errors(at: AppTest) -> str:
    return " ".join(str(e.value) for e in at.error)


def closed_address() -> str:
    """HOST:PORT that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def choose_ray(at: AppTest, address: str | None = None, cpus: float | None = None) -> AppTest:
    at.radio(key=S.W_EXEC).set_value("ray").run()
    if address is not None:
        at.text_input(key=S.W_EXEC_ADDRESS).set_value(address)
    if cpus is not None:
        at.number_input(key=S.W_EXEC_CPUS).set_value(cpus)
    return at.run()


def paste_recipe(at: AppTest, recipe: dict, name: str) -> None:
    at.text_area(key=S.W_ST_PASTE).set_value(json.dumps(recipe)).run()
    at.button(key="w_st_use").click().run()
    at.text_input(key=S.W_ST_NAME).set_value(name).run()


def finetune_on_jsonl(at: AppTest, data: str) -> None:
    """A two-step run: the four records of `data`, batch 2, evaluated on them at the end."""
    for role in ("train", "eval"):
        at.radio(key=S.W_FT_SRC + role).set_value(S.FT_SOURCES[1]).run()
        at.text_input(key=S.W_FT_PATH + role).set_value(data).run()
    for key, value in ((S.W_FT_EPOCHS, 1.0), (S.W_FT_BATCH, 2), (S.W_FT_MICRO, 2), (S.W_FT_RANK, 2),
                       (S.W_FT_ALPHA, 4.0), (S.W_FT_MAXLEN, 64), (S.W_FT_EVAL_TOKENS, 2)):
        at.number_input(key=key).set_value(value)
    at.selectbox(key=S.W_FT_DEVICE).set_value("cpu").run()


@pytest.fixture
def student(setup, monkeypatch):
    student_dir, data = setup
    monkeypatch.setenv("PARAKNOW_APP_STUDENT", str(student_dir))
    return str(data)


@needs_ray
@pytest.mark.parametrize("path", [FINETUNE, STUDY])
def test_the_picker_offers_the_librarys_choices_defaults_and_help(path, student):
    at = page(path)
    radio = at.radio(key=S.W_EXEC)
    assert radio.options == list(EXECUTORS) and radio.value == default_of(ExecutorConfig, "executor") == "local"
    assert radio.help == page_message(help_of(ExecutorConfig, "executor"))
    assert S.W_EXEC_ADDRESS not in [w.key for w in at.text_input]  # this machine: nothing more to choose
    choose_ray(at)
    assert not at.exception and not at.error
    address = at.text_input(key=S.W_EXEC_ADDRESS)
    assert address.value == "" and default_of(ExecutorConfig, "address") is None  # empty: Ray's own lookup
    assert address.help == page_message(help_of(ExecutorConfig, "address"))
    for key, name in ((S.W_EXEC_CPUS, "cpus"), (S.W_EXEC_GPUS, "gpus")):
        field = at.number_input(key=key)
        assert field.value == default_of(ExecutorConfig, name)
        assert field.help == page_message(help_of(ExecutorConfig, name))
    assert not at.button(key=LAUNCH[path]).disabled


@pytest.mark.parametrize("path", [FINETUNE, STUDY])
def test_ray_not_installed_is_a_message_and_launch_is_off(path, student, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as without the extra
    at = choose_ray(page(path))
    assert not at.exception
    assert "needs Ray, which is not installed" in errors(at) and "pip install -e .[ray]" in errors(at)
    assert "Traceback" not in errors(at) and "--executor" not in errors(at)
    assert at.button(key=LAUNCH[path]).disabled


@needs_ray
def test_fine_tune_on_an_unreachable_ray_address_queues_nothing(student, monkeypatch):
    from test_finetune_page import _fake_export

    started = []
    monkeypatch.setattr(jobs, "ensure_worker", lambda: started.append(1))
    _fake_export()
    address = closed_address()
    at = choose_ray(page(FINETUNE), address)
    assert not at.error  # the address is tried when runs are queued, not on every rerun
    at.button(key="w_ft_launch").click().run()
    assert f"nothing answers at the Ray address {address}" in errors(at) and "ray start --head" in errors(at)
    at.button(key="w_ft_compare").click().run()
    assert errors(at).count("nothing answers") == 1  # the comparison's message (the launch's is gone)
    assert not at.exception and not list(jobs.runs_root().iterdir()) and not started


@needs_ray
def test_a_study_on_an_unreachable_ray_address_starts_nothing(student, tmp_path):
    at = page(STUDY)
    paste_recipe(at, tiny_recipe(study_inputs(tmp_path / "in")), "unreachable")
    choose_ray(at, closed_address())
    at.button(key="w_st_launch").click().run()
    assert "nothing answers at the Ray address" in errors(at) and not at.exception
    assert U.list_studies() == [] and not (U.studies_root() / "unreachable").exists()


@needs_ray
@pytest.mark.slow
def test_a_fine_tune_run_queued_for_ray_runs_there_with_the_usual_files(student, ray_address):
    at = page(FINETUNE)
    finetune_on_jsonl(at, student)
    choose_ray(at, ray_address, cpus=1.0)
    at.button(key="w_ft_launch").click().run()
    assert not at.error and not at.exception
    [run] = jobs.list_runs(resume_queue=False)
    assert jobs.read_status(run.run_dir)["executor"] == ExecutorConfig("ray", ray_address, 1.0, 0.0).to_dict()
    try:
        wait_for(lambda: jobs.read_status(run.run_dir)["state"] not in ("queued", "running"), 240,
                 "the Ray run to end")
    finally:
        jobs.stop(run.run_dir)
    status = jobs.read_status(run.run_dir)
    assert status["state"] == "finished", jobdir.read_log(run.run_dir)
    assert ray_mark(run.run_dir)  # stdout.log: the command ran inside a Ray task
    metrics = rundir.read_metrics(run.run_dir)
    assert [row["step"] for row in metrics if "loss" in row] == [1, 2]
    assert metrics[-1]["eval_accuracy"] == status["final_eval"]["accuracy"] and status["final_eval"]["n"] == 4
    at.run()
    assert any(f"on ray at {ray_address}" in str(c.value) for c in at.caption)  # the run's details say where


@needs_ray
@pytest.mark.slow
def test_a_study_launched_for_ray_runs_its_cells_there(student, tmp_path, ray_address):
    at = page(STUDY)
    recipe = tiny_recipe(study_inputs(tmp_path / "in"), seeds=[0], arms=[{"name": "untuned", "init": "untuned"}])
    paste_recipe(at, recipe, "on-ray")
    choose_ray(at, ray_address)
    at.button(key="w_st_launch").click().run()
    assert not at.error and not at.exception
    out = U.studies_root() / "on-ray"
    wait_for(lambda: read_study_status(out)["state"] not in ("starting", "running"), 600, "the Ray study to end")
    status = read_study_status(out)
    assert status["state"] == "finished", (out / "stdout.log").read_text()[-3000:]
    # written by the study's own process: the flags reached `paraknow study`
    assert status["executor"] == ExecutorConfig("ray", ray_address).to_dict()
    results = json.loads((out / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["finished"] and results["cells"][0]["test_accuracy"] is not None
    at.run()
    assert any(f"cells on ray at {ray_address}" in str(m.value) for m in at.markdown)  # the page says where


def test_the_flags_a_background_study_gets_parse_back_to_the_same_executor():
    from paraknow.cli import build_parser
    from paraknow.runs.executors import EXECUTOR_OPTIONS

    for config in (ExecutorConfig(), ExecutorConfig("ray"), ExecutorConfig("ray", "ray://10.0.0.1:10001", 2.5, 1.0)):
        args = build_parser().parse_args(["study", "--recipe", "r.json", "--out", "o", *config.to_argv()])
        assert ExecutorConfig(**{name: getattr(args, name) for name in EXECUTOR_OPTIONS}) == config
    assert ExecutorConfig().to_argv() == []  # a local study's command line is as before
