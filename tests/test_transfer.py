"""The acceptance of the extraction engine on tiny random models (GQA pair, tied student)."""
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny import tiny_llama

from paraknow.core.architecture import describe
from paraknow.core.compatibility import compatibility
from paraknow.core.errors import ParaknowError
from paraknow.extract import max_sum_block_reference
from paraknow.transfer.export import export_transfer, verify_export
from paraknow.transfer.lora import read_adapter, residual_to_plain, student_from_export
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity

INPUT = torch.tensor([[1, 20, 33, 45, 50, 61, 70, 12, 5]])


def pair(tied_student=False):
    teacher = tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1)  # GQA, head_dim 16
    student = tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, tied=tied_student, seed=2)
    return teacher, student


def run_export(tmp_path, teacher, student, tokenizer, records, **overrides):
    scores = compute_sensitivity(teacher, tokenizer, records, SensitivityConfig(samples=len(records)))
    config = TransferConfig(**{"rank": 4, "alpha": 8, **overrides})
    t_info, s_info = describe(teacher), describe(student)
    plan = plan_transfer(t_info, s_info, scores, config)
    out = tmp_path / "export"
    manifest = export_transfer(teacher, student, t_info, s_info, plan, config, out,
                               {"teacher": "t", "student": "s", "metric": "taylor-abs"})
    return scores, plan, manifest, out


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def test_plan_layer_map_blocks_and_factors(tmp_path, tokenizer, seed_records):
    teacher, student = pair()
    scores, plan, manifest, out = run_export(tmp_path, teacher, student, tokenizer, seed_records,
                                             modules=("attn", "ffn", "embed"))
    # layer map: top-L_S layers by summed sensitivity, in index order
    per_layer = [sum(float(v.double().sum()) for k, v in scores.items() if k.startswith(f"model.layers.{i}."))
                 for i in range(4)]
    expected = sorted(sorted(range(4), key=lambda i: -per_layer[i])[:2])
    assert manifest["layer_map"] == expected
    assert manifest["layer_scores"] == pytest.approx(per_layer)
    params = dict(teacher.named_parameters())
    _, factors, embeddings = read_adapter(out)
    s = manifest["scaling"]
    assert s == 2.0
    selection = load_file(str(out / "selection.safetensors"))
    assert len(plan.modules) == 2 * 7 + 2
    for mod in plan.modules:
        sens = scores[mod.teacher_param]
        weight = params[mod.teacher_param].detach()
        if mod.transposed:
            sens, weight = sens.T, weight.T  # embed_tokens: [d, V]
        # every selected block is the true maximum
        assert mod.selection.block() == max_sum_block_reference(sens, *mod.shape)
        rows, cols = selection[f"{mod.student_module}.rows"], selection[f"{mod.student_module}.cols"]
        block = weight[rows][:, cols]
        # s * B @ A is the rank-r truncated SVD of the selected block (alpha != r)
        U, S, Vh = torch.linalg.svd(block.double())
        best = (U[:, :4] * S[:4]) @ Vh[:4]
        A, B = factors[mod.student_module]
        torch.testing.assert_close((s * B.double() @ A.double()), best, rtol=1e-4, atol=1e-5)
        info = manifest["modules"][mod.student_module]
        assert info["captured"] == pytest.approx(float(sens[rows][:, cols].sum() / sens.sum()), rel=1e-5)
        assert info["energy"] == pytest.approx(float((S[:4] ** 2).sum() / (S ** 2).sum()), rel=1e-5)
    assert "model.embed_tokens" in embeddings


@pytest.mark.parametrize("tied", [False, True])
def test_residual_export_keeps_student_function(tmp_path, tokenizer, seed_records, tied):
    teacher, student = pair(tied_student=tied)
    before = logits(student)
    _, _, manifest, out = run_export(tmp_path, teacher, student, tokenizer, seed_records,
                                     modules=("attn", "ffn", "embed"))
    assert (out / "residual" / "adapter_config.json").exists()
    # plain PEFT: merge residual/ into the base, then load the adapter
    base = PeftModel.from_pretrained(student, str(out / "residual")).merge_and_unload()
    if tied:
        assert base.lm_head.weight is base.model.embed_tokens.weight
        assert manifest["tied_compensation"] == {"embedding": "model.embed_tokens", "lm_head": "lm_head"}
    model = PeftModel.from_pretrained(base, str(out))
    after = logits(model)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    # the adapter alone (no residual) does change the function: the test can fail
    fresh = tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, tied=tied, seed=2)
    assert (logits(PeftModel.from_pretrained(fresh, str(out))) - before).abs().max() > 1e-3


def test_additive_mode_starts_at_student_plus_teacher(tmp_path, tokenizer, seed_records):
    teacher, student = pair()
    before = logits(student)
    _, _, manifest, out = run_export(tmp_path, teacher, student, tokenizer, seed_records, mode="additive")
    assert not (out / "residual").exists()
    model = PeftModel.from_pretrained(student, str(out))
    assert (logits(model) - before).abs().max() > 1e-3
    merged = model.merge_and_unload()
    _, factors, _ = read_adapter(out)
    A, B = factors["model.layers.0.mlp.up_proj"]
    fresh = tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2)
    torch.testing.assert_close(merged.model.layers[0].mlp.up_proj.weight,
                               fresh.model.layers[0].mlp.up_proj.weight + 2.0 * B @ A, rtol=1e-5, atol=1e-5)


def test_verify_export_loads_it_with_plain_peft(tmp_path, tokenizer, seed_records):
    """Residual: the student's function is unchanged (tolerance scaled by the logits); additive: changed."""
    teacher, student = pair()
    records = seed_records[:3]
    _, _, _, residual = run_export(tmp_path / "r", teacher, student, tokenizer, seed_records)
    check = verify_export(student, tokenizer, residual, records)
    assert check.mode == "residual" and check.unchanged and check.max_change < 1e-4
    assert check.samples == 3 and check.tokens > 3 and check.tolerance == pytest.approx(1e-3 * max(1.0, check.max_logit))
    _, _, _, additive = run_export(tmp_path / "a", teacher, student, tokenizer, seed_records, mode="additive")
    changed = verify_export(student, tokenizer, additive, records)
    assert changed.mode == "additive" and not changed.unchanged and changed.max_change > changed.tolerance
    assert changed.to_dict()["unchanged"] is False
    torch.testing.assert_close(logits(student), logits(pair()[1]))  # the student itself was not touched


def test_the_export_object_holds_manifest_selection_residual_and_loads_like_plain_peft(tmp_path, tokenizer,
                                                                                     seed_records):
    import copy

    from peft import PeftModel

    from paraknow.transfer.export import Export

    teacher, student = pair()
    _, plan, manifest, out = run_export(tmp_path, teacher, student, tokenizer, seed_records)
    export = Export.open(out)
    assert export.manifest == json.loads(json.dumps(manifest))  # what was written, as JSON reads it back
    assert export.mode == "residual" and export.residual_dir == out / "residual"
    selection = export.selection()
    for module in plan.modules:  # the teacher indices each student module was filled from
        torch.testing.assert_close(selection[f"{module.student_module}.rows"], module.selection.rows)
    by_hand = PeftModel.from_pretrained(copy.deepcopy(student), str(out / "residual")).merge_and_unload()
    by_hand = PeftModel.from_pretrained(by_hand, str(out)).eval()  # what a plain-PEFT user does
    torch.testing.assert_close(logits(export.load_into(copy.deepcopy(student))), logits(by_hand))
    with pytest.raises(ParaknowError, match="not a paraknow export"):
        Export.open(tmp_path)


@pytest.mark.parametrize("tied", [False, True])
def test_residual_trained_adapter_converts_to_plain_lora(tmp_path, tokenizer, seed_records, tied):
    teacher, student = pair(tied_student=tied)
    _, _, _, out = run_export(tmp_path, teacher, student, tokenizer, seed_records,
                              modules=("attn", "ffn", "embed"), layers="manual", manual_map=[3, None])
    training = student_from_export(student, out)
    torch.manual_seed(5)
    with torch.no_grad():  # stand-in for training: move every LoRA weight
        for name, p in training.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    training.eval()  # no dropout when comparing functions
    trained_logits = logits(training)
    training.save_pretrained(tmp_path / "trained")
    residual_to_plain(tmp_path / "trained", out, tmp_path / "plain")
    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    original = tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, tied=tied, seed=2)
    plain = PeftModel.from_pretrained(original, str(tmp_path / "plain"))
    torch.testing.assert_close(logits(plain), trained_logits, rtol=1e-4, atol=1e-4)


def test_structures_and_overrides(tmp_path, tokenizer, seed_records):
    teacher, student = pair()
    scores = compute_sensitivity(teacher, tokenizer, seed_records, SensitivityConfig(samples=4))
    t_info, s_info = describe(teacher), describe(student)
    for structure in ("rowcol", "elements", "random", "uniform"):
        plan = plan_transfer(t_info, s_info, scores, TransferConfig(rank=4, structure=structure))
        assert all(m.selection.apply(torch.zeros(m.teacher_shape)).shape == m.shape for m in plan.modules)
    name = "model.layers.1.mlp.gate_proj"
    plan = plan_transfer(t_info, s_info, scores, TransferConfig(rank=4, overrides={name: (10, 5)}))
    mod = next(m for m in plan.modules if m.student_module == name)
    assert mod.selection.block() == (10, 5)
    with pytest.raises(ParaknowError, match="does not fit"):
        plan_transfer(t_info, s_info, scores, TransferConfig(rank=4, overrides={name: (100, 0)}))
    with pytest.raises(ParaknowError, match="rank 65"):
        plan_transfer(t_info, s_info, scores, TransferConfig(rank=65))


def test_compatibility_errors(tokenizer, seed_records):
    teacher, student = pair()
    t_info, s_info = describe(teacher), describe(student)
    report = compatibility(t_info, s_info)
    assert not report.errors and report.teacher_gqa and report.student_gqa
    scores = compute_sensitivity(student, tokenizer, seed_records, SensitivityConfig(samples=2))
    with pytest.raises(ParaknowError, match="deeper teacher"):
        plan_transfer(s_info, t_info, scores, TransferConfig())
    with pytest.raises(ParaknowError, match="narrower"):  # a manual map allows depth, not width
        plan_transfer(s_info, t_info, scores, TransferConfig(layers="manual", manual_map=[0, 1, 1, 0]))
    other_vocab = describe(tiny_llama(layers=2, hidden=64, ffn=128, vocab=120))
    teacher_scores = compute_sensitivity(teacher, tokenizer, seed_records[:2], SensitivityConfig(samples=2))
    with pytest.raises(ParaknowError, match="lower the rank") as too_large:  # the page names where rank is set
        plan_transfer(t_info, s_info, teacher_scores, TransferConfig(rank=65))
    assert too_large.value.setting == "rank"
    with pytest.raises(ParaknowError) as deeper:
        plan_transfer(s_info, t_info, scores, TransferConfig())
    assert deeper.value.setting is None
    mismatched = compatibility(t_info, other_vocab)
    assert not mismatched.vocab_match and "differ in size" in mismatched.tokenizer_mismatch
    assert {r.module for r in mismatched.rows if not r.transfers} == {"embed_tokens", "lm_head"}
    assert mismatched.transferable == len(mismatched.rows) - 2


def test_tied_embedding_note_only_when_embeddings_transfer(tokenizer, seed_records):
    teacher, student = pair(tied_student=True)
    scores = compute_sensitivity(teacher, tokenizer, seed_records[:2], SensitivityConfig(samples=2))
    t_info, s_info = describe(teacher), describe(student)
    assert any("ties lm_head" in n for n in compatibility(t_info, s_info).notes)  # the Models page says it
    without = plan_transfer(t_info, s_info, scores, TransferConfig(modules=("attn", "ffn")))
    assert not any("ties lm_head" in n for n in without.notes)
    embeds = plan_transfer(t_info, s_info, scores, TransferConfig(modules=("attn", "embed")))
    assert any("ties lm_head" in n for n in embeds.notes)


def test_an_export_with_non_finite_or_underflowed_factors_is_refused_and_nothing_written(tmp_path, tokenizer,
                                                                                        seed_records):
    from paraknow.transfer.export import extract_factors
    from paraknow.transfer.lora import MAX_SCALING

    teacher, student = pair()
    scores = compute_sensitivity(teacher, tokenizer, seed_records, SensitivityConfig(samples=2))
    t_info, s_info = describe(teacher), describe(student)
    config = TransferConfig(rank=4, alpha=4 * MAX_SCALING)  # the largest alpha allowed: s = 2**16
    plan = plan_transfer(t_info, s_info, scores, config)
    assert extract_factors(teacher, plan, config)  # ordinary weights: every factor is fine
    with pytest.raises(ParaknowError, match="alpha must be at most 262144 at rank 4"):
        TransferConfig(rank=4, alpha=1e308).validate()
    with torch.no_grad():
        teacher.model.layers[plan.layer_map[0]].self_attn.q_proj.weight.mul_(1e-41)  # B = U Sigma / s underflows
    with pytest.raises(ParaknowError, match=r"q_proj: \d+% of the LoRA factor B is exactly zero"):
        export_transfer(teacher, student, t_info, s_info, plan, config, tmp_path / "tiny", {})
    with torch.no_grad():
        teacher.model.layers[plan.layer_map[0]].self_attn.q_proj.weight.fill_(float("nan"))
    with pytest.raises(ParaknowError, match=r"the teacher's model.layers.0.self_attn.q_proj.weight holds NaN or inf "
                                            r"values in the block model.layers.0.self_attn.q_proj takes"):
        export_transfer(teacher, student, t_info, s_info, plan, TransferConfig(rank=4, alpha=4), tmp_path / "nan", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary left
