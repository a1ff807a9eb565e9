"""Every training option applies to every init, and a comparison trains the same modules in every arm."""
import json

import pytest
import torch
from peft import PeftModel
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama
from transformers import LlamaForCausalLM

from paraknow.core.architecture import describe
from paraknow.runs import jobs
from paraknow.runs.train import train
from paraknow.runs.train_config import PISSA_EMBEDDING_NOTE, TrainConfig
from paraknow.transfer.export import export_transfer
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

INPUT = torch.tensor([[1, 20, 33, 45, 50, 61, 70, 12, 5]])
EMBED_TARGETS = ["down_proj", "embed_tokens", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj", "up_proj",
                 "v_proj"]


def _student_and_data(tmp_path):
    student_dir = tmp_path / "student"
    tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2).save_pretrained(student_dir)
    tok = make_tokenizer()
    tok.save_pretrained(student_dir)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in SEED_RECORDS))
    return student_dir, data, tok


def _export(tmp_path, student_dir, tok):
    """A residual export with embeddings (teacher and student share the tokenizer: the default set)."""
    teacher = tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1)
    student = LlamaForCausalLM.from_pretrained(student_dir)
    scores = compute_sensitivity(teacher, tok, SEED_RECORDS, SensitivityConfig(samples=4))
    config = TransferConfig(rank=4, alpha=8)
    t_info, s_info = describe(teacher, tok), describe(student, tok)
    plan = plan_transfer(t_info, s_info, scores, config)
    out = tmp_path / "export"
    export_transfer(teacher, student, t_info, s_info, plan, config, out,
                    {"teacher": "t", "student": str(student_dir), "metric": "taylor-abs"})
    return out


def _run(tmp_path, student_dir, data, name, **settings):
    return train(TrainConfig(student=str(student_dir), data=str(data), out=str(tmp_path / name), epochs=1,
                             batch=4, micro_batch=2, max_length=128, device="cpu", **settings))


@pytest.mark.slow
def test_dropout_applies_to_an_export_init(tmp_path):
    student_dir, data, tok = _student_and_data(tmp_path)
    export = _export(tmp_path, student_dir, tok)
    assert json.loads((export / "adapter_config.json").read_text())["lora_dropout"] == 0.05
    outcome = _run(tmp_path, student_dir, data, "run", init=str(export), dropout=0.3)
    assert outcome.state == "finished"
    drops = {m.p for name, m in outcome.model.named_modules() if name.endswith("lora_dropout.default")}
    assert drops == {0.3}  # trained with it
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["lora_dropout"] == 0.3
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["dropout"] == 0.3


def test_compare_arms_train_identical_target_modules(tmp_path):
    student_dir, data, tok = _student_and_data(tmp_path)
    export = _export(tmp_path, student_dir, tok)
    _, run_dirs = jobs.compare_runs(str(student_dir), str(data), export, seeds=(0,), start=False, epochs=1,
                                    batch=4, micro_batch=2, device="cpu")
    specs = [jobs.read_spec(d) for d in run_dirs]
    assert [s["init"] for s in specs] == ["vanilla", "pissa", str(export.absolute())]
    assert [s["target_modules"] for s in specs] == [EMBED_TARGETS] * 3
    assert [s["init_note"] for s in specs] == [None, PISSA_EMBEDDING_NOTE, None]


@pytest.mark.slow
def test_pissa_with_embedding_targets_saves_a_plain_lora_that_reproduces_training(tmp_path):
    student_dir, data, _ = _student_and_data(tmp_path)
    outcome = _run(tmp_path, student_dir, data, "run", init="pissa", lr=1e-2, rank=4, alpha=8,
                   target_modules=EMBED_TARGETS)
    assert outcome.state == "finished"
    embed = outcome.model.base_model.model.model.embed_tokens
    assert embed.lora_embedding_A["default"].abs().max() > 0  # trained away from PEFT's A = 0 init
    outcome.model.eval()
    with torch.no_grad():
        trained = outcome.model(input_ids=INPUT).logits
        original = LlamaForCausalLM.from_pretrained(student_dir).eval()
        plain = PeftModel.from_pretrained(original, str(tmp_path / "run" / "adapter"))(input_ids=INPUT).logits
    torch.testing.assert_close(plain, trained, rtol=1e-4, atol=1e-4)


def test_match_reaches_training_evaluation_and_eval_command(tmp_path, monkeypatch, capsys):
    import paraknow.runs.evaluate as evaluate_module
    from paraknow.cli import main
    from paraknow.core.errors import ParaknowError

    student_dir, data, _ = _student_and_data(tmp_path)
    seen = []
    real_evaluate = evaluate_module.evaluate

    def recording_evaluate(*args, **kwargs):  # the real evaluation, with the mode it was asked for noted
        seen.append(kwargs.get("match"))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate", recording_evaluate)
    outcome = _run(tmp_path, student_dir, data, "run", rank=4, alpha=8, eval_data=str(data), eval_limit=2,
                   eval_max_new_tokens=2, match="numeric")
    assert outcome.state == "finished" and seen and set(seen) == {"numeric"}
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["match"] == "numeric"
    bad = TrainConfig(student=str(student_dir), data=str(data), out=str(tmp_path / "bad"), match="fuzzy")
    with pytest.raises(ParaknowError, match="unknown --match 'fuzzy'"):
        bad.resolved()
    assert main(["eval", "--model", str(student_dir), "--data", str(data), "--max-new-tokens", "2",
                 "--device", "cpu", "--match", "exact"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == len(SEED_RECORDS) and seen[-1] == "exact"  # `eval --match` reached the scoring
