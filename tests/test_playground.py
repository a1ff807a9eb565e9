"""`python -m paraknow generate` and paraknow.runs.playground on the demo pair: the CLI prints what the
library returns (with and without an adapter), greedy is deterministic and formatted as the data,
per-token losses equal an independent computation, diffs and HTML rendering are escaped."""
from __future__ import annotations

import copy

import pytest
import torch

from paraknow.cli import main
from paraknow.core.data import encode_prompt
from paraknow.core.errors import ParaknowError
from paraknow.core.models import load_model
from paraknow.core.tasks import task_records
from paraknow.runs.evaluate import completion_losses, generate_completions
from paraknow.runs.playground import DiffPiece, diff_html, generate_text, token_loss_html, token_losses, word_diff
from paraknow.transfer.lora import attach_adapter
from paraknow.transfer.pipeline import extract_to_dir
from paraknow.transfer.plan import TransferConfig
from paraknow.transfer.sensitivity import SensitivityConfig

STUDENT = "demo:student"
ITEM = task_records("arith", "test")[0]
PROMPT = ITEM["messages"][0]["content"]
REFERENCE = ITEM["messages"][1]["content"]


@pytest.fixture(scope="module")
def student():
    model, tokenizer = load_model(STUDENT)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{mode: export dir} of two tiny exports demo:teacher -> demo:student (2 seed samples)."""
    root = tmp_path_factory.mktemp("exports")
    dirs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARAKNOW_CACHE", str(root / "cache"))
        for mode in ("residual", "additive"):
            dirs[mode] = root / mode
            extract_to_dir("demo:teacher", STUDENT, "task:arith:seed", dirs[mode], TransferConfig(mode=mode),
                           SensitivityConfig(samples=2))
    return dirs


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["generate", "--model", STUDENT, "--device", "cpu", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_prints_the_library_completion_with_and_without_an_adapter(student, exports, capsys):
    model, tokenizer = student
    plain = generate_text(model, tokenizer, PROMPT, max_new_tokens=24)
    code, out, _ = _cli(capsys, "--prompt", PROMPT, "--max-new-tokens", "24")
    assert code == 0 and out == plain + "\n" and plain.strip()

    texts, logits = {}, {}
    ids = torch.tensor([encode_prompt(tokenizer, ITEM)])  # [1, prompt]
    for mode, export in exports.items():
        adapted = attach_adapter(copy.deepcopy(model), export, STUDENT)
        texts[mode] = generate_text(adapted, tokenizer, PROMPT, max_new_tokens=24)
        with torch.inference_mode():
            logits[mode] = adapted(input_ids=ids).logits
        code, out, _ = _cli(capsys, "--prompt", PROMPT, "--max-new-tokens", "24", "--adapter", str(export))
        assert code == 0 and out == texts[mode] + "\n"
    with torch.inference_mode():
        base = model(input_ids=ids).logits
    # residual mode: base W - sBA plus the LoRA sBA is the student itself (what training starts from)
    assert (logits["residual"] - base).abs().max() < 1e-3
    assert texts["residual"] == plain
    # additive mode: the teacher's blocks are added on top, so the outputs move
    assert (logits["additive"] - base).abs().max() > 1e-2


def test_greedy_is_deterministic_and_formatted_as_the_data(student):
    model, tokenizer = student
    first = generate_text(model, tokenizer, PROMPT, max_new_tokens=32)
    assert first == generate_text(model, tokenizer, PROMPT, max_new_tokens=32)
    # the prompt as a user turn is the test item's prompt: the same answer evaluation scores
    assert first == generate_completions(model, tokenizer, [ITEM], max_new_tokens=32)[0]


def test_token_losses_equal_an_independent_computation(student):
    model, tokenizer = student
    assert not tokenizer.chat_template  # the demo tokenizer uses the `<|user|>` fallback format
    got = token_losses(model, tokenizer, PROMPT, REFERENCE)
    prompt_text = f"<|user|>\n{PROMPT.strip()}\n\n<|assistant|>\n"
    n_prompt = len(tokenizer(prompt_text)["input_ids"])
    ids = tokenizer(prompt_text + REFERENCE.strip() + tokenizer.eos_token)["input_ids"]
    with torch.inference_mode():
        log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    expected = [(tokenizer.decode([ids[t]]), -float(log_probs[t - 1, ids[t]])) for t in range(n_prompt, len(ids))]
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [t for t, _ in got][-1] == tokenizer.eos_token
    assert torch.allclose(torch.tensor([x for _, x in got]), torch.tensor([x for _, x in expected]).float(),
                          atol=1e-4)
    mean = sum(x for _, x in got) / len(got)
    assert mean == pytest.approx(completion_losses(model, tokenizer, [ITEM])[0], abs=1e-5)


def test_bad_input_exits_2_with_one_line(exports, capsys):
    for args, says in ((["--prompt", "  "], "prompt is empty"),
                       (["--prompt", "hi", "--adapter", "/nonexistent/adapter"], "adapter not found")):
        code, out, err = _cli(capsys, *args)
        assert code == 2 and out == "" and says in err and len(err.strip().splitlines()) == 1
    code = main(["generate", "--model", "demo:teacher", "--device", "cpu", "--prompt", "hi",
                 "--adapter", str(exports["additive"])])  # made for the student
    err = capsys.readouterr().err
    assert code == 2 and "does not fit model 'demo:teacher'" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ParaknowError, match="reference completion is empty"):
        token_losses(None, None, "hi", " ")


def test_word_diff_and_escaped_html():
    pieces = word_diff("So the answer is 22.", "So the answer is <b>23</b>. Done")
    assert pieces == [DiffPiece("same", "So the answer is"), DiffPiece("removed", "22."),
                      DiffPiece("added", "<b>23</b>. Done")]
    rendered = diff_html(pieces)
    assert "&lt;b&gt;23&lt;/b&gt;" in rendered and "<b>" not in rendered
    assert word_diff("same words", "same  words") == [DiffPiece("same", "same words")]
    tokens = token_loss_html([("<script>", 0.0), (" x\n", 9.0)], vmax=4.0)
    assert "&lt;script&gt;" in tokens and "<script>" not in tokens
    assert "rgb(255,255,255)" in tokens and "rgb(255,51,51)" in tokens and "·x⏎" in tokens
