"""Page 7 (Playground) through streamlit.testing.v1.AppTest on the demo pair, and the adapter list.

The page's three answers must be what the library and the CLI give for the same model and
adapter; its coloured tokens are the reference's tokens; bad input is explained on the page.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from apptest import assert_ok, open_page

from paraknow.cli import main
from paraknow.core.paths import cache_dir
from paraknow.runs import jobs
from paraknow.runs.playground import adapter_choices, task_item, token_losses
from paraknow.runs.train_config import TrainConfig
from paraknow.transfer.lora import ADAPTER_CONFIG
from paraknow.transfer.pipeline import extract_to_dir
from paraknow.transfer.plan import TransferConfig
from paraknow.transfer.sensitivity import SensitivityConfig
from ui import state as S

PAGE = "pages/7_Playground.py"
TEACHER, STUDENT = "demo:teacher", "demo:student"


def _export(name: str, mode: str = "additive") -> Path:
    out = cache_dir("exports") / name
    extract_to_dir(TEACHER, STUDENT, "task:arith:seed", out, TransferConfig(mode=mode), SensitivityConfig(samples=2))
    return out


def _cli_generate(capsys, prompt: str, tokens: int, model: str, adapter: Path | None = None) -> str:
    args = ["generate", "--model", model, "--prompt", prompt, "--max-new-tokens", str(tokens), "--device", "cpu"]
    assert main(args + (["--adapter", str(adapter)] if adapter else [])) == 0
    return capsys.readouterr().out[:-1]  # one trailing newline


@pytest.mark.slow
def test_three_answers_side_by_side_match_the_cli(capsys):
    export = _export("pg-additive")
    at = open_page(PAGE, 600)
    assert at.session_state[S.W_PG_ADAPTER] == str(export)  # the newest adapter is preselected
    at.selectbox(key=S.W_PG_TASK).set_value("arith").run()
    at.number_input(key=S.W_PG_INDEX).set_value(3).run()
    at.number_input(key=S.W_PG_TOKENS).set_value(40).run()
    at.button(key="w_pg_run").click().run()
    assert_ok(at)
    outputs = at.session_state[S.PG_RESULT]["outputs"]
    assert [o.name for o in outputs] == [f"teacher · {TEACHER}", f"student · {STUDENT}", "student + export pg-additive"]
    record, prompt, reference = task_item("arith", 3)
    for out, model, adapter in zip(outputs, (TEACHER, STUDENT, STUDENT), (None, None, export)):
        assert out.text == _cli_generate(capsys, prompt, 40, model, adapter)
        assert out.losses and out.correct is not None
    assert outputs[0].correct  # the teacher solves arith (99.5 % on the test split)
    assert outputs[0].mean_loss < outputs[1].mean_loss  # and finds the reference far less surprising
    # the coloured tokens: one span per reference token, in order
    html = [h.proto.body for h in at.get("html")]
    student_tokens = [t for t, _ in token_losses(*_loaded(STUDENT), prompt, reference)]
    assert html[1].count('class="pk-token"') == len(student_tokens) == len(outputs[1].losses)
    # the difference of two answers, chosen by the user
    at.selectbox(key=S.W_PG_DIFF_A).set_value(outputs[1].name).run()
    at.selectbox(key=S.W_PG_DIFF_B).set_value(outputs[2].name).run()
    assert_ok(at)
    diff = at.get("html")[-1].proto.body
    same = outputs[1].text == outputs[2].text
    assert ("pk-diff-added" in diff or "pk-diff-removed" in diff) != same


def _loaded(ref: str):
    from paraknow.core.models import load_model

    model, tokenizer = load_model(ref)
    return model.eval(), tokenizer


def test_typed_prompt_without_reference_and_mistakes():
    at = open_page(PAGE, 600)
    assert at.session_state[S.W_PG_ADAPTER] == ""  # no exports or runs in this cache
    at.number_input(key=S.W_PG_INDEX).set_value(5000).run()
    assert any("items 0 to 999" in str(e.value) for e in at.error)
    assert at.button(key="w_pg_run").disabled
    at.radio(key=S.W_PG_SOURCE).set_value(S.PG_SOURCES[1]).run()
    assert at.button(key="w_pg_run").disabled  # nothing typed yet
    at.text_area(key=S.W_PG_PROMPT).set_value("Reverse the words: <b>red green</b>").run()
    at.number_input(key=S.W_PG_TOKENS).set_value(8).run()
    at.button(key="w_pg_run").click().run()
    assert_ok(at)
    outputs = at.session_state[S.PG_RESULT]["outputs"]
    assert len(outputs) == 2 and all(o.losses == [] and o.correct is None for o in outputs)
    assert not at.get("html")[:-1]  # no token colouring without a reference; only the diff
    at.text_area(key=S.W_PG_PROMPT).set_value("something else").run()
    assert any("inputs changed" in str(c.value) for c in at.caption)


def test_adapter_choices_lists_exports_and_run_adapters_for_the_student():
    from peft import LoraConfig, get_peft_model

    from paraknow.core.models import load_model

    export = cache_dir("exports") / "for-student"
    export.mkdir(parents=True)
    (export / "paraknow.json").write_text(json.dumps({"student": STUDENT, "mode": "residual", "rank": 16,
                                                      "created": "2026-01-01T00:00:00"}))
    (export / ADAPTER_CONFIG).write_text("{}")
    other = cache_dir("exports") / "for-another"
    other.mkdir()
    (other / "paraknow.json").write_text(json.dumps({"student": "/elsewhere/model", "created": "2026-01-02"}))
    (other / ADAPTER_CONFIG).write_text("{}")
    (cache_dir("exports") / "no-adapter").mkdir()  # not an export: skipped
    run_dir = jobs.new_run(TrainConfig(student=STUDENT, data="task:arith:train", seed=4))
    student, _ = load_model(STUDENT)
    get_peft_model(student, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(run_dir / "adapter")
    unfinished = jobs.new_run(TrainConfig(student=STUDENT, data="task:arith:train"))  # no adapter yet
    choices = adapter_choices(STUDENT)
    assert [c.path for c in choices] == [str(export), str(run_dir / "adapter")]
    assert choices[0].label == "export for-student (residual, rank 16)"
    assert choices[1].name == f"run {run_dir.name}" and "seed 4" in choices[1].detail
    assert str(unfinished / "adapter") not in [c.path for c in adapter_choices()]
    assert len(adapter_choices()) == 3


def test_card_titles_fit_one_line_and_keep_both_ends():
    from ui.widgets import one_line

    name = "student + run 20261206-033017886335-5ae7b3"
    short = one_line(name)
    assert len(short) == 34 and short.startswith("student + run") and short.endswith("5ae7b3") and "…" in short
    assert one_line("teacher · demo:teacher") == "teacher · demo:teacher"
