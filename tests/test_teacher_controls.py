"""The teacher-weights controls of an export (paraknow.transfer.controls): each keeps what it claims
of the teacher's block and nothing more, seeded and reproducible; and the vanilla-ortho init."""
import pytest
import torch
from safetensors.torch import load_file
from test_transfer import pair, run_export

from paraknow.transfer.controls import BLOCK_WEIGHTS, random_orthonormal
from paraknow.transfer.lora import read_adapter
from paraknow.transfer.plan import TransferConfig


def block(seed=0, shape=(12, 20)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def draw(name, matrix, seed):
    return BLOCK_WEIGHTS[name](matrix, torch.Generator().manual_seed(seed))


def test_random_orthonormal_has_orthonormal_columns():
    Q = random_orthonormal(20, 12, torch.Generator().manual_seed(0))
    torch.testing.assert_close(Q.T @ Q, torch.eye(12, dtype=torch.float64), atol=1e-12, rtol=0)


def test_spectrum_keeps_the_singular_values_not_the_directions():
    W = block()
    S = draw("spectrum", W, 3)
    assert S.shape == W.shape and S.dtype == torch.float32
    torch.testing.assert_close(torch.linalg.svdvals(S.double()), torch.linalg.svdvals(W.double()),
                               rtol=1e-5, atol=1e-5)
    U_w, _, Vh_w = torch.linalg.svd(W.double())
    U_s, _, Vh_s = torch.linalg.svd(S.double())
    # the top singular directions are unrelated (|cos| near 1 would mean the teacher's were kept)
    assert abs(float(U_w[:, 0] @ U_s[:, 0])) < 0.9 and abs(float(Vh_w[0] @ Vh_s[0])) < 0.9
    assert torch.equal(S, draw("spectrum", W, 3)) and not torch.equal(S, draw("spectrum", W, 4))


def test_shuffled_keeps_the_entries_rows_and_columns_permuted():
    W = block()
    P = draw("shuffled", W, 3)
    assert torch.equal(P.flatten().sort().values, W.flatten().sort().values) and not torch.equal(P, W)
    # a row and column permutation: every row of P is a row of W with its columns in one shared order
    rows = [next(i for i in range(W.shape[0]) if torch.equal(P[r].sort().values, W[i].sort().values))
            for r in range(W.shape[0])]
    assert sorted(rows) == list(range(W.shape[0]))
    cols = [next(j for j in range(W.shape[1]) if torch.equal(P[:, c].sort().values, W[:, j].sort().values))
            for c in range(W.shape[1])]
    torch.testing.assert_close(P, W[rows][:, cols], rtol=0, atol=0)
    assert torch.equal(P, draw("shuffled", W, 3)) and not torch.equal(P, draw("shuffled", W, 4))
    assert torch.equal(draw("trained", W, 3), W)


@pytest.mark.parametrize("control", ["spectrum", "shuffled"])
def test_export_with_a_control_moves_the_same_selection_with_the_teachers_spectrum(
        tmp_path, tokenizer, seed_records, control):
    teacher, student = pair()
    _, plan, trained, out = run_export(tmp_path / "trained", teacher, student, tokenizer, seed_records)
    _, plan_c, manifest, out_c = run_export(tmp_path / control, teacher, student, tokenizer, seed_records,
                                            teacher_weights=control)
    assert manifest["teacher_weights"] == control and trained["teacher_weights"] == "trained"
    assert manifest["layer_map"] == trained["layer_map"]
    sel, sel_c = load_file(str(out / "selection.safetensors")), load_file(str(out_c / "selection.safetensors"))
    assert set(sel) == set(sel_c) and all(torch.equal(sel[k], sel_c[k]) for k in sel)
    (_, factors, _), (_, factors_c, _) = read_adapter(out), read_adapter(out_c)
    params = dict(teacher.named_parameters())
    generator = torch.Generator().manual_seed(TransferConfig().seed)
    for mod in plan_c.modules:  # in plan order, as the export draws them
        name = mod.student_module
        assert manifest["modules"][name]["singular_values"] == pytest.approx(
            trained["modules"][name]["singular_values"], rel=1e-4, abs=1e-6)
        assert not torch.allclose(factors_c[name][0], factors[name][0], atol=1e-3)  # other directions
        weight = params[mod.teacher_param].detach()
        expected = BLOCK_WEIGHTS[control](mod.selection.apply(weight.T if mod.transposed else weight), generator)
        U, S, Vh = torch.linalg.svd(expected.double())
        A, B = factors_c[name]
        torch.testing.assert_close(manifest["scaling"] * B.double() @ A.double(), (U[:, :4] * S[:4]) @ Vh[:4],
                                   rtol=1e-4, atol=1e-5)


def test_vanilla_ortho_starts_the_student_unchanged_with_orthonormal_a(saved_pair, tmp_path):
    from paraknow.core.models import load_model
    from paraknow.runs.train_config import TrainConfig, method_of
    from paraknow.runs.train_model import build_model

    targets = ["q_proj", "down_proj", "embed_tokens"]
    assert method_of("vanilla-ortho") == "vanilla-ortho"

    def build(init, seed):
        config = TrainConfig(student=saved_pair["student"], data=saved_pair["data"], init=init, seed=seed, rank=4,
                             alpha=8, target_modules=targets, device="cpu").resolved(check_out=False)
        return build_model(config, tmp_path, write=False)[0]

    def factors(model):
        out = {}
        for name, module in model.named_modules():
            if "default" in getattr(module, "lora_A", {}):
                out[name] = (module.lora_A["default"].weight, module.lora_B["default"].weight)
            elif "default" in getattr(module, "lora_embedding_A", {}):
                out[name] = (module.lora_embedding_A["default"], module.lora_embedding_B["default"])
        return out

    ortho, again, other, vanilla = (factors(build(i, s)) for i, s in
                                    (("vanilla-ortho", 0), ("vanilla-ortho", 0), ("vanilla-ortho", 1), ("vanilla", 0)))
    assert len(ortho) == 2 * 2 + 1 and any("embed_tokens" in n for n in ortho)
    for name, (A, B) in ortho.items():
        torch.testing.assert_close(A.double() @ A.double().T, torch.eye(4, dtype=torch.float64), atol=1e-6, rtol=0)
        assert not B.any()
        assert torch.equal(A, again[name][0]) and not torch.equal(A, other[name][0])
        norms = vanilla[name][0].norm(dim=1) if "embed" not in name else None  # PEFT's Kaiming rows: not unit
        assert norms is None or not torch.allclose(norms, torch.ones_like(norms), atol=0.05)
    base = load_model(saved_pair["student"])[0]
    ids = torch.tensor([[1, 20, 33, 45, 50]])
    with torch.no_grad():
        torch.testing.assert_close(build("vanilla-ortho", 0)(input_ids=ids).logits, base(input_ids=ids).logits)
