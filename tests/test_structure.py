"""Structure-aware extraction: whole heads under GQA, coherent index sets, the cka layer map.

Tiny Llama and Qwen2 models with GQA (4 query heads per key/value head, and 1), the student's
head_dim half the teacher's so rotary pairs must be kept; brute-force references on tiny shapes.
"""
import itertools
import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny import VOCAB
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from paraknow.core.architecture import ATTN_ROLES, FFN_ROLES, describe, describe_config
from paraknow.core.errors import ParaknowError
from paraknow.extract import max_sum_block_reference, select
from paraknow.transfer.diagnostics import module_cosines
from paraknow.transfer.export import export_transfer
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity
from paraknow.transfer.similarity import layer_similarity
from paraknow.transfer.structure import AXES, plan_index_sets

INPUT = torch.tensor([[1, 20, 33, 45, 50, 61, 70, 12, 5]])
FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
# group size -> (teacher heads, kv heads), (student heads, kv heads)
GROUPS = {4: ((8, 2), (4, 1)), 1: ((4, 4), (2, 2))}


def tiny(family, layers, hidden, ffn, heads, kv_heads, head_dim, seed):
    config_cls, model_cls = FAMILIES[family]
    torch.manual_seed(seed)
    config = config_cls(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                        vocab_size=VOCAB, tie_word_embeddings=False, max_position_embeddings=512,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def pair(family, group):
    (th, tk), (sh, sk) = GROUPS[group]
    teacher = tiny(family, 4, 64, 96, th, tk, head_dim=16, seed=1)
    student = tiny(family, 2, 32, 48, sh, sk, head_dim=8, seed=2)
    return teacher, student


def logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT).logits


@pytest.fixture(scope="module")
def planned():
    """{(family, group): (teacher, student, scores)} with the sensitivity computed once."""
    from tiny import SEED_RECORDS, make_tokenizer

    out = {}
    for family in FAMILIES:
        for group in GROUPS:
            teacher, student = pair(family, group)
            scores = compute_sensitivity(teacher, make_tokenizer(), SEED_RECORDS, SensitivityConfig(samples=4))
            out[family, group] = teacher, student, scores
    return out


def by_role(plan, layer):
    return {m.role: m.selection for m in plan.modules if m.student_layer == layer}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("coherent", ["off", "layer", "model"])
def test_heads_are_whole_grouped_and_rotary_pairs_kept(planned, family, group, coherent):
    teacher, student, scores = planned[family, group]
    t, s = describe(teacher), describe(student)
    plan = plan_transfer(t, s, scores, TransferConfig(rank=4, structure="heads", coherent=coherent,
                                                      modules=("attn", "ffn", "embed")))
    g_t, g_s = t.n_heads // t.n_kv_heads, s.n_heads // s.n_kv_heads
    assert (g_t, g_s) == (group, group)
    for j in range(s.n_layers):
        sel = by_role(plan, j)
        heads = plan.index_sets[j].heads
        # rotary pairs: kept dims are (i, i + hd_T/2) pairs, student dim j <-> j + hd_S/2 preserved
        dims = heads.head_dims
        half_s, half_t = s.head_dim // 2, t.head_dim // 2
        assert len(dims) == s.head_dim and all(d < half_t for d in dims[:half_s])
        assert dims[half_s:] == [d + half_t for d in dims[:half_s]]
        for role, n_heads in (("q_proj", s.n_heads), ("k_proj", s.n_kv_heads), ("v_proj", s.n_kv_heads)):
            rows = sel[role].rows.view(n_heads, s.head_dim)  # [student heads, hd_S]
            teacher_head = rows // t.head_dim
            # whole heads: every student head reads one teacher head, at the same kept dims
            assert (teacher_head == teacher_head[:, :1]).all()
            assert (rows % t.head_dim == torch.tensor(dims)).all()
            assert len(set(teacher_head[:, 0].tolist())) == n_heads
        q_heads = (sel["q_proj"].rows.view(s.n_heads, s.head_dim)[:, 0] // t.head_dim).tolist()
        kv_heads = (sel["k_proj"].rows.view(s.n_kv_heads, s.head_dim)[:, 0] // t.head_dim).tolist()
        assert (q_heads, kv_heads) == (heads.q_heads, heads.kv_heads)
        assert torch.equal(sel["k_proj"].rows, sel["v_proj"].rows)
        assert torch.equal(sel["o_proj"].cols, sel["q_proj"].rows)
        # GQA: student query head m (served by student KV head m // g_S) comes from the teacher
        # group of the teacher KV head chosen for m // g_S
        assert [h // g_t for h in q_heads] == [kv_heads[m // g_s] for m in range(s.n_heads)]
        # whole neurons: one set for gate/up rows and down columns
        assert torch.equal(sel["gate_proj"].rows, sel["up_proj"].rows)
        assert torch.equal(sel["gate_proj"].rows, sel["down_proj"].cols)


@pytest.mark.parametrize("structure", ["submatrix", "rowcol", "heads", "uniform", "random", "elements"])
@pytest.mark.parametrize("coherent", ["layer", "model"])
def test_coherent_sets_are_shared(planned, structure, coherent):
    teacher, student, scores = planned["llama", 4]
    t, s = describe(teacher), describe(student)
    plan = plan_transfer(t, s, scores, TransferConfig(rank=4, structure=structure, coherent=coherent,
                                                      modules=("attn", "ffn", "embed")))
    hidden_sets = []
    for mod in plan.modules:
        rows_name, cols_name = AXES[mod.role]
        if rows_name == "hidden":
            hidden_sets.append((mod.student_layer, mod.selection.rows))
        if cols_name == "hidden":
            hidden_sets.append((mod.student_layer, mod.selection.cols))
    assert {name for name, _ in hidden_sets} == {0, 1, None}
    for layer in (0, 1):
        sets = [h for j, h in hidden_sets if j == layer]
        assert len(sets) == 7 and all(torch.equal(h, sets[0]) for h in sets)
        assert torch.equal(sets[0], plan.index_sets[layer].hidden)
        sel = by_role(plan, layer)
        assert torch.equal(sel["gate_proj"].rows, sel["up_proj"].rows)
        assert torch.equal(sel["gate_proj"].rows, sel["down_proj"].cols)
    if coherent == "model":  # one set for the whole model, the embeddings included
        assert all(torch.equal(h, hidden_sets[0][1]) for _, h in hidden_sets)
    elif structure not in ("uniform", "random"):  # score-driven: each layer its own set
        assert not torch.equal(plan.index_sets[0].hidden, plan.index_sets[1].hidden)
    if structure == "submatrix":  # the structure's own 1-D rule: a contiguous window
        h = plan.index_sets[0].hidden
        assert torch.equal(h, torch.arange(int(h[0]), int(h[0]) + len(h)))


def test_default_plan_is_todays_faithful_submatrix(planned):
    teacher, student, scores = planned["qwen2", 4]
    t, s = describe(teacher), describe(student)
    config = TransferConfig(rank=4, modules=("attn", "ffn", "embed"))
    assert (config.structure, config.coherent) == ("submatrix", "off")
    plan = plan_transfer(t, s, scores, config)
    assert plan.index_sets == {}
    for mod in plan.modules:
        sens = scores[mod.teacher_param]
        sens = sens.T if mod.transposed else sens
        assert mod.selection.block() == max_sum_block_reference(sens, *mod.shape)
        today = select("submatrix", sens, *mod.shape)
        assert torch.equal(mod.selection.rows, today.rows) and torch.equal(mod.selection.cols, today.cols)


# ---------------------------------------------------------------------------------------
# brute-force references on tiny shapes (random scores, no model)


def info(heads, kv_heads, head_dim, hidden=None, ffn=24):
    return describe_config(LlamaConfig(hidden_size=hidden or heads * head_dim, intermediate_size=ffn, num_hidden_layers=1,
                                       num_attention_heads=heads, num_key_value_heads=kv_heads,
                                       head_dim=head_dim, vocab_size=50))


def random_scores(t, seed):
    g = torch.Generator().manual_seed(seed)
    return {role: torch.rand(*t.shapes[role], generator=g) for role in ATTN_ROLES + FFN_ROLES}


def brute_force_heads(scores, t, s):
    """Enumerate every KV subset and every query subset of the chosen groups; then every pair subset."""
    hd, g_t, g_s = t.head_dim, t.n_heads // t.n_kv_heads, s.n_heads // s.n_kv_heads

    def q_value(h):
        return float(scores["q_proj"][h * hd:(h + 1) * hd].sum() + scores["o_proj"][:, h * hd:(h + 1) * hd].sum())

    def kv_value(k):
        return float(scores["k_proj"][k * hd:(k + 1) * hd].sum() + scores["v_proj"][k * hd:(k + 1) * hd].sum())

    best, choice = -1.0, None
    for kvs in itertools.combinations(range(t.n_kv_heads), s.n_kv_heads):
        for qs in itertools.product(*[itertools.combinations(range(k * g_t, (k + 1) * g_t), g_s) for k in kvs]):
            total = sum(kv_value(k) for k in kvs) + sum(q_value(h) for group in qs for h in group)
            if total > best:
                best, choice = total, (list(kvs), [h for group in qs for h in group])
    kvs, qs = choice
    half = hd // 2

    def dims_value(dims):
        total = 0.0
        for h in qs:
            total += float(scores["q_proj"][[h * hd + d for d in dims]].sum())
            total += float(scores["o_proj"][:, [h * hd + d for d in dims]].sum())
        for k in kvs:
            total += float(scores["k_proj"][[k * hd + d for d in dims]].sum())
            total += float(scores["v_proj"][[k * hd + d for d in dims]].sum())
        return total

    pairs = max(itertools.combinations(range(half), s.head_dim // 2),
                key=lambda p: dims_value(list(p) + [i + half for i in p]))
    return kvs, qs, list(pairs) + [i + half for i in pairs]


@pytest.mark.parametrize("teacher_heads, student_heads", [
    ((16, 4, 8), (4, 2, 4)),   # teacher groups of 4, student groups of 2, head_dim 8 -> 4
    ((8, 2, 8), (8, 2, 6)),    # groups of 4 kept whole, 3 of 4 rotary pairs
    ((6, 6, 4), (3, 3, 4)),    # no GQA (groups of 1), same head_dim
])
def test_heads_equal_brute_force(teacher_heads, student_heads):
    t, s = info(*teacher_heads), info(*student_heads, ffn=12)
    for seed in range(4):
        scores = random_scores(t, seed)
        sets = plan_index_sets("heads", "off", {0: scores}, {}, t, s)[0]
        assert (sets.heads.kv_heads, sets.heads.q_heads, sets.heads.head_dims) == brute_force_heads(scores, t, s)


def test_coherent_hidden_and_neurons_equal_brute_force():
    t, s = info(2, 1, 4, hidden=10, ffn=9), info(1, 1, 4, hidden=5, ffn=4)
    for seed in range(3):
        scores = random_scores(t, seed)

        def hidden_value(dims):
            reads = sum(float(scores[r][:, dims].sum()) for r in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"))
            return reads + sum(float(scores[r][dims].sum()) for r in ("o_proj", "down_proj"))

        def neuron_value(ns):
            return float(scores["gate_proj"][ns].sum() + scores["up_proj"][ns].sum() + scores["down_proj"][:, ns].sum())

        subsets = list(itertools.combinations(range(10), 5))
        windows = [tuple(range(a, a + 5)) for a in range(6)]
        for structure, candidates in (("rowcol", subsets), ("submatrix", windows)):
            sets = plan_index_sets(structure, "layer", {0: scores}, {}, t, s)[0]
            assert tuple(sets.hidden.tolist()) == max(candidates, key=lambda c: hidden_value(list(c)))
        neurons = max(itertools.combinations(range(9), 4), key=lambda c: neuron_value(list(c)))
        assert tuple(plan_index_sets("heads", "off", {0: scores}, {}, t, s)[0].neurons.tolist()) == neurons


def test_heads_refuses_incompatible_shapes():
    t = info(4, 2, 8)
    scores = random_scores(t, 0)
    for student, what in ((info(4, 4, 8), "4 key/value heads"), (info(4, 1, 8), "groups 4 query heads"),
                          (info(2, 1, 16), "head_dim 16")):
        with pytest.raises(ParaknowError, match=what):
            plan_index_sets("heads", "off", {0: scores}, {}, t, student)
    with pytest.raises(ParaknowError, match="coherent"):
        plan_index_sets("heads", "sideways", {0: scores}, {}, t, info(2, 1, 8))


# ---------------------------------------------------------------------------------------
# exports


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("options", [
    {"structure": "heads"},
    {"coherent": "layer"},
    {"structure": "heads", "coherent": "model"},
    {"layers": "cka"},
])
def test_residual_export_keeps_student_and_records_options(tmp_path, planned, tokenizer, seed_records,
                                                           family, options):
    scores = planned[family, 4][2]
    teacher, student = pair(family, 4)  # fresh: PEFT wraps the student in place
    t, s = describe(teacher), describe(student)
    config = TransferConfig(rank=4, alpha=8, modules=("attn", "ffn", "embed"), **options)
    similarity = None
    if config.layers == "cka":
        similarity, _ = layer_similarity(teacher, student, tokenizer, seed_records[:4])
    plan = plan_transfer(t, s, scores, config, similarity)
    out = tmp_path / "export"
    before = logits(student)
    manifest = export_transfer(teacher, student, t, s, plan, config, out, {"teacher": "t", "student": "s"})
    first = plan.modules[0]  # the page's one-module diagnostic agrees with the export's
    cos = module_cosines(dict(teacher.named_parameters()), dict(student.named_parameters()), first, config)
    assert manifest["modules"][first.student_module]["cos_to_student"] == pytest.approx(cos.to_weight, abs=1e-6)
    assert manifest["modules"][first.student_module]["cos_to_residual"] == pytest.approx(cos.to_residual, abs=1e-6)
    base = PeftModel.from_pretrained(student, str(out / "residual")).merge_and_unload()
    after = logits(PeftModel.from_pretrained(base, str(out)))
    assert (after - before).abs().max() <= 1e-4
    recorded = json.loads((out / "paraknow.json").read_text())
    assert recorded["index_sets"] == manifest["index_sets"]
    assert (recorded["structure"], recorded["coherent"], recorded["layers"]) == (
        config.structure, config.coherent, config.layers)
    selection = load_file(str(out / "selection.safetensors"))
    for mod in plan.modules:
        assert torch.equal(selection[f"{mod.student_module}.rows"], mod.selection.rows)
        assert torch.equal(selection[f"{mod.student_module}.cols"], mod.selection.cols)
        entry = recorded["modules"][mod.student_module]
        assert entry["lift"] == pytest.approx(entry["captured"] / entry["area"])
        assert -1 <= entry["cos_to_student"] <= 1 and -1 <= entry["cos_to_residual"] <= 1
    if config.structure == "heads":
        sets = recorded["index_sets"]["0"]
        assert sets["q_heads"] == plan.index_sets[0].heads.q_heads and len(sets["neurons"]) == s.intermediate_size
    if config.coherent == "model":
        assert recorded["index_sets"]["embeddings"]["hidden"] == recorded["index_sets"]["1"]["hidden"]
    if config.layers == "cka":
        sim = np.array(recorded["layer_similarity"])
        assert sim.shape == (4, 2) and recorded["layer_map"] == plan.layer_map
        best = max(itertools.combinations(range(4), 2), key=lambda c: sim[c[0], 0] + sim[c[1], 1])
        assert recorded["layer_map"] == list(best)


def test_cli_extract_with_the_new_options(tmp_path, capsys):
    from tiny import SEED_RECORDS, make_tokenizer

    from paraknow.cli import main
    from paraknow.core.records import to_jsonl

    teacher, student = pair("qwen2", 4)
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(tmp_path / name)
        make_tokenizer().save_pretrained(tmp_path / name)
    (tmp_path / "seeds.jsonl").write_text(to_jsonl(SEED_RECORDS))
    out = tmp_path / "export"
    argv = ["extract", "--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student"),
            "--data", str(tmp_path / "seeds.jsonl"), "--out", str(out), "--rank", "4", "--samples", "4",
            "--device", "cpu"]
    assert main(argv + ["--structure", "heads", "--coherent", "layer", "--layers", "cka"]) == 0
    manifest = json.loads((out / "paraknow.json").read_text())
    assert (manifest["structure"], manifest["coherent"], manifest["layers"]) == ("heads", "layer", "cka")
    assert len(manifest["layer_similarity"]) == 4 and set(manifest["index_sets"]) == {"0", "1"}
    assert {"kv_heads", "q_heads", "head_dims", "neurons", "hidden"} <= set(manifest["index_sets"]["0"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--coherent", "sideways"])
    assert exc.value.code == 2 and "--coherent" in capsys.readouterr().err


def test_drilldown_head_boundaries_and_index_ranges():
    from paraknow import viz
    from paraknow.transfer.structure import head_axes

    assert head_axes("q_proj", 16) == {"rows": 16} and head_axes("o_proj", 16) == {"cols": 16}
    assert head_axes("up_proj", 16) == {}
    fig = viz.matrix_figure(torch.rand(128, 64), "q_proj", heads=head_axes("q_proj", 16))
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert sorted(s.y0 for s in lines) == [15.5, 31.5, 47.5, 63.5, 79.5, 95.5, 111.5]  # 8 heads of 16 rows
    assert viz.index_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert viz.index_ranges(range(0, 10, 2), limit=2) == "0, 2, … (3 more runs)"
