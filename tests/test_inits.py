"""Teacher-free LoRA initialisations (paraknow.runs.inits): OLoRA, EVA and CorDA start where their
papers say, train like vanilla LoRA, and leave a plain LoRA of the original student."""
import pytest
import torch
from peft import PeftModel
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama
from transformers import LlamaForCausalLM

from paraknow.core.records import to_jsonl
from paraknow.runs.inits import INITS
from paraknow.runs.train import build_model, train
from paraknow.runs.train_config import TrainConfig

INPUT = torch.tensor([[1, 20, 33, 45, 50, 61, 70, 12, 5]])
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head", "embed_tokens"]


@pytest.fixture
def setup(tmp_path):
    student = tmp_path / "student"
    tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2).save_pretrained(student)
    make_tokenizer().save_pretrained(student)
    data = tmp_path / "data.jsonl"
    data.write_text(to_jsonl(SEED_RECORDS))
    return tmp_path, str(student), str(data)


def config(setup, init, **overrides):
    tmp_path, student, data = setup
    settings = dict(student=student, data=data, out=str(tmp_path / init), init=init, epochs=1, batch=4, micro_batch=2,
                    rank=4, alpha=8, max_length=128, device="cpu", lr=1e-2, target_modules=TARGETS)
    return TrainConfig(**{**settings, **overrides})


def logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


@pytest.mark.parametrize("init", ["olora", "eva", "corda", "mica"])
def test_starts_as_the_student_and_saves_a_plain_lora_that_reproduces_training(setup, init):
    tmp_path, student, _ = setup
    cfg = config(setup, init).resolved()
    assert cfg.init_note is None if INITS[init].embedding else INITS[init].label in cfg.init_note  # embed_tokens
    model, _ = build_model(cfg, tmp_path / f"{init}-work")
    original = LlamaForCausalLM.from_pretrained(student).eval()
    torch.testing.assert_close(logits(model), logits(original), rtol=1e-4, atol=1e-4)  # same function at step 0
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    base_moved = not torch.equal(q.base_layer.weight, original.model.layers[0].self_attn.q_proj.weight)
    assert base_moved == INITS[init].converts  # OLoRA and CorDA keep the residual in the base
    A, B = q.lora_A["default"].weight, q.lora_B["default"].weight  # [r, in], [out, r]
    # OLoRA: B = Q of W's QR; EVA: right singular vectors of the inputs; MiCA: left singular vectors of W
    basis = {"olora": B.T, "eva": A, "mica": B.T}.get(init)
    if basis is not None:  # orthogonal rows (up to one scale)
        gram = basis @ basis.T  # [r, r]
        torch.testing.assert_close(gram, torch.eye(len(gram)) * gram.diagonal().mean(), rtol=1e-3, atol=1e-3)
    outcome = train(config(setup, init))
    assert outcome.state == "finished" and outcome.status["method"] == init
    plain = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(student).eval(),
                                      str(tmp_path / init / "adapter"))
    torch.testing.assert_close(logits(plain), logits(outcome.model), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(logits(plain), logits(original), atol=1e-3)  # it did train


def test_eva_depends_on_the_data(setup):
    tmp_path, _, data = setup
    other = tmp_path / "other.jsonl"
    other.write_text(to_jsonl([{"prompt": "zzzz qqqq", "completion": "xxxx " * 5}] * 8))
    a = build_model(config(setup, "eva").resolved(), tmp_path / "a")[0]
    b = build_model(config(setup, "eva", data=str(other)).resolved(), tmp_path / "b")[0]
    name = "base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight"
    assert not torch.allclose(dict(a.named_parameters())[name], dict(b.named_parameters())[name], atol=1e-3)
