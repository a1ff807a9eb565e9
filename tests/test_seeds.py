"""The degenerate-seeds check (paraknow/transfer/seeds.py): the numbers, the CLI and the Sensitivity page."""
import json

import pytest
from apptest import assert_ok, open_page

from paraknow.cli import main
from paraknow.transfer.seeds import NEAR_ZERO, check_seeds, seed_losses
from ui import state as S


def test_most_losses_near_zero_is_degenerate_with_the_numbers():
    losses = [0.0001] * 30 + [0.249, 0.049]  # task:arith:seed on the demo teacher, as reported
    check = check_seeds(losses)
    assert check.degenerate and check.near_zero == 30 and check.top == [0.249, 0.049, 0.0001]
    message = check.message()
    assert "30 of 32" in message and "0.249, 0.049" in message and "harder seed samples" in message


def test_a_few_samples_holding_the_loss_is_degenerate_even_without_zeros():
    check = check_seeds([5.0] + [0.05] * 19)
    assert check.near_zero == 0 and check.top_share > 0.8 and check.degenerate


@pytest.mark.parametrize("losses", [[1.2, 0.8, 2.0, 1.5, 0.9, 1.1], [NEAR_ZERO * 2] * 10, [3.0]])
def test_ordinary_seeds_are_fine(losses):
    assert check_seeds(losses).message() is None


def test_seed_losses_match_the_models_own_loss(tokenizer, seed_records):
    import torch
    from tiny import tiny_llama

    from paraknow.core.data import collate, encode_all

    tiny_model = tiny_llama()
    losses = seed_losses(tiny_model, tokenizer, seed_records[:3], batch_size=2)
    for record, loss in zip(seed_records[:3], losses):
        batch = collate(encode_all(tokenizer, [record]), pad_id=0)
        with torch.no_grad():
            assert loss == pytest.approx(tiny_model(**batch).loss.item(), rel=1e-4)


def test_cli_sensitivity_warns_on_the_demo_arith_seeds(tmp_path, capsys):
    out = tmp_path / "sens.safetensors"
    assert main(["sensitivity", "--model", "demo:teacher", "--data", "task:arith:seed", "--out", str(out),
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert len(printed["seed_losses"]) == 32 and printed["seed_check"]["degenerate"]
    assert "warning: degenerate seeds:" in captured.err
    export = tmp_path / "export"
    assert main(["extract", "--teacher", "demo:teacher", "--student", "demo:student", "--sensitivity", str(out),
                 "--out", str(export), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["seed_check"]["near_zero"] == printed["seed_check"]["near_zero"]
    assert "warning: degenerate seeds:" in captured.err


def test_sensitivity_page_warns_on_the_quick_start_map():
    at = open_page(None, 600)
    at.button(key="w_home_quickstart").click().run()
    at.switch_page("pages/3_Sensitivity.py").run()
    assert_ok(at)
    assert at.session_state[S.SENS].label == "task:arith:seed"
    assert any("Degenerate seeds:" in str(w.value) for w in at.warning)
