"""The faithful preset is the default: embeddings transfer when the tokenizers match (by content),
are skipped with a note when they do not, are refused when asked for explicitly on different
tokenizers; only the selected modules must be at least as wide in the teacher."""
import json

import pytest
import torch
from peft import PeftModel
from tiny import make_tokenizer, tiny_llama
from transformers import PreTrainedTokenizerFast

from paraknow import load_model
from paraknow.cli import main
from paraknow.core.architecture import describe, vocab_fingerprint
from paraknow.core.compatibility import check_transferable, compatibility
from paraknow.core.errors import ParaknowError
from paraknow.transfer.plan import TransferConfig


def permuted_tokenizer() -> PreTrainedTokenizerFast:
    """Same size and tokens as make_tokenizer(), but '1' and '2' swap ids: same vocab size, other content."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = make_tokenizer()
    vocab = dict(base.get_vocab())
    vocab["1"], vocab["2"] = vocab["2"], vocab["1"]
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", pad_token="<pad>")
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|system|>"]})
    return tok


def test_vocab_fingerprint_compares_content_not_size():
    a, b = make_tokenizer(), permuted_tokenizer()
    assert len(a) == len(b) and a.get_vocab().keys() == b.get_vocab().keys()
    assert vocab_fingerprint(a) == vocab_fingerprint(make_tokenizer())
    assert vocab_fingerprint(a) != vocab_fingerprint(b)


@pytest.fixture
def mismatched_pair(saved_pair):
    """The saved pair with a student tokenizer of the same size but other content."""
    permuted_tokenizer().save_pretrained(saved_pair["student"])
    return saved_pair


def _extract(pair, out, *extra):
    return main(["extract", "--teacher", pair["teacher"], "--student", pair["student"], "--data", pair["data"],
                 "--out", str(out), "--rank", "4", "--samples", "6", "--device", "cpu", *extra])


@pytest.mark.parametrize("modules", ["attn,ffn,embed", "embed_tokens", "ffn,lm_head"])
def test_explicit_embeddings_on_other_tokenizer_refused(tmp_path, mismatched_pair, capsys, modules):
    out = tmp_path / "export"
    code = _extract(mismatched_pair, out, "--modules", modules)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "tokenizers differ" in err and "same size" in err
    assert not out.exists() and not list(tmp_path.glob(".export*"))


def test_default_modules_skip_embeddings_on_other_tokenizer_with_a_note(tmp_path, mismatched_pair, capsys):
    out = tmp_path / "export"
    assert _extract(mismatched_pair, out) == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    assert "embed_tokens" not in manifest["roles"] and "lm_head" not in manifest["roles"]
    assert "q_proj" in manifest["roles"] and "down_proj" in manifest["roles"]
    assert any(n.startswith("embeddings skipped") and "tokenizers differ" in n for n in manifest["notes"])
    assert manifest["module_set"] == "default"
    printed = json.loads(capsys.readouterr().out)
    assert any("embeddings skipped" in n for n in printed["notes"])


@pytest.mark.slow
def test_demo_pair_default_extract_transfers_embeddings_and_keeps_step0_logits(tmp_path):
    out = tmp_path / "export"
    code = main(["extract", "--teacher", "demo:teacher", "--student", "demo:student",
                 "--data", "task:arith:seed", "--out", str(out)])
    assert code == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    assert {"embed_tokens", "lm_head"} <= set(manifest["roles"])
    assert {"model.embed_tokens", "lm_head"} <= set(manifest["modules"])
    assert manifest["mode"] == "residual" and not any("skipped" in n for n in manifest["notes"])
    student, tokenizer = load_model("demo:student")
    ids = tokenizer("<|user|>\nWhat is 17 plus 25?\n\n<|assistant|>\n", return_tensors="pt").input_ids
    with torch.no_grad():
        before = student(input_ids=ids).logits
    base = PeftModel.from_pretrained(student, str(out / "residual")).merge_and_unload()  # plain PEFT
    with torch.no_grad():
        after = PeftModel.from_pretrained(base, str(out))(input_ids=ids).logits
    assert (after - before).abs().max().item() <= 1e-4
    fresh, _ = load_model("demo:student")  # the adapter without the residual does move the logits
    with torch.no_grad():
        moved = PeftModel.from_pretrained(fresh, str(out))(input_ids=ids).logits
    assert (moved - before).abs().max().item() > 1e-2


def test_only_selected_modules_need_a_wider_teacher(tokenizer):
    # teacher k_proj/v_proj [16, 96] (one KV head) is narrower than the student's [32, 64]
    teacher = describe(tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=1, seed=1), tokenizer)
    student = describe(tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2), tokenizer)
    report = check_transferable(teacher, student, TransferConfig(modules="ffn,q_proj,o_proj"))
    assert report.roles == ["q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for modules in ("attn", None, "k_proj,ffn"):
        with pytest.raises(ParaknowError, match="narrower than the student for k_proj"):
            check_transferable(teacher, student, TransferConfig(modules=modules))
    assert "v_proj" in compatibility(teacher, student).errors["width"]  # the full report still says it


@pytest.mark.slow
def test_app_quick_start_plans_embeddings_and_the_checkboxes_narrow_it():
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from ui import state as S

    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=600)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    assert not at.exception and not at.error
    assert {"embed_tokens", "lm_head"} <= set(at.session_state[S.PLAN].plan.roles)
    at.switch_page("pages/2_Models.py").run()
    assert [m.value for m in at.metric if m.label == "Tokenizer"] == ["same"]
    at.switch_page("pages/4_Mapping.py").run()
    assert all(at.checkbox(key=S.W_MODULE_PREFIX + role).value for role in ("q_proj", "embed_tokens", "lm_head"))
    at.checkbox(key=S.W_MODULE_PREFIX + "lm_head").uncheck().run()
    assert not at.exception and not at.error
    roles = at.session_state[S.PLAN].plan.roles
    assert "embed_tokens" in roles and "lm_head" not in roles
