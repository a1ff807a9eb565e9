"""paraknow.lesson: every "what to notice" note follows the data it is computed from.

Crafted sensitivity maps on tiny models show that a note changes when the data change (it is
never a canned sentence); the demo pair runs the whole lesson, fine-tuning in this process, and
the notes are checked against numbers computed here independently (from the cache file, the
run's metrics.jsonl and a plain forward pass).
"""
from __future__ import annotations

import re

import pytest
import torch
from safetensors import safe_open
from tiny import TOKENIZER, tiny_llama

from paraknow import lesson as L
from paraknow.core.errors import ParaknowError
from paraknow.core.paths import cache_dir
from paraknow.runs import rundir

TEACHER, STUDENT = "tiny:teacher", "tiny:student"


def _tiny_lesson(scale) -> L.Lesson:
    """A lesson on a tiny 4-layer teacher and 2-layer student whose sensitivity map is
    `scale(name, shape)` -- a tensor chosen by the test instead of a computed one."""
    models = {TEACHER: tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1),
              STUDENT: tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2)}
    lesson = L.Lesson(L.LessonConfig(teacher=TEACHER, student=STUDENT), loader=lambda ref: (models[ref], TOKENIZER))
    scores = {name: scale(name, tuple(p.shape)).float() for name, p in models[TEACHER].named_parameters()}
    lesson._sensitivity = (scores, {"data_sha256": "crafted", "metric": "taylor-abs", "max_length": 64}, [])
    return lesson


def _ones(name, shape):
    return torch.ones(shape)


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(\d+(?:\.\d+)?) %", text)]


@pytest.mark.parametrize("hot", [("3", "mlp.up_proj"), ("1", "self_attn.q_proj")])
def test_sensitivity_note_names_the_matrix_the_data_make_hottest(hot):
    layer, path = hot
    lesson = _tiny_lesson(lambda n, s: torch.full(s, 50.0) if n == f"model.layers.{layer}.{path}.weight"
                          else torch.ones(s))
    result = L.run_step(lesson, "sensitivity")
    scores = lesson.sensitivity()[0]
    layer_sums = {n: float(t.double().sum()) for n, t in scores.items() if ".layers." in n and t.dim() == 2}
    share = layer_sums[f"model.layers.{layer}.{path}.weight"] / sum(layer_sums.values())
    assert result.note.startswith(f"The most sensitive matrix is layer {layer}'s {path.split('.')[-1]}, "
                                  f"with {L.pct(share)} of the sensitivity")
    assert result.table[0]["share"] == L.pct(share)


@pytest.mark.parametrize("group, name", [("mlp.", "FFN"), ("self_attn.", "Attention")])
def test_where_note_follows_the_part_that_holds_most(group, name):
    lesson = _tiny_lesson(lambda n, s: torch.full(s, 30.0) if group in n else torch.ones(s))
    result = L.run_step(lesson, "where")
    assert result.note.startswith(f"{name} holds the largest share")
    assert result.facts["largest"] == ("ffn" if name == "FFN" else "attention")
    assert "right" in L.judge(L.WHERE_QUESTION, result, result.facts["largest"])
    wrong = next(k for k in L.WHERE_QUESTION.options if k != result.facts["largest"])
    right_name = L.WHERE_QUESTION.options[result.facts["largest"]]
    assert L.judge(L.WHERE_QUESTION, result, wrong).endswith(f"the most is {right_name}.")


def test_layers_note_compares_the_chosen_layers_with_evenly_spaced_ones():
    weights = {0: 1.0, 1: 1.0, 2: 5.0, 3: 1.0}  # top-2 by score: 2, then 0 (ties: lower index); evenly: 0, 3
    lesson = _tiny_lesson(lambda n, s: torch.full(s, weights[int(n.split(".")[2])]) if ".layers." in n
                          else torch.zeros(s))
    result = L.run_step(lesson, "layers")
    assert result.facts["chosen"] == [0, 2] and result.facts["evenly"] == [0, 3]
    assert "Teacher layer 2 holds the largest share" in result.note
    assert "more than the" in result.note
    flat = _tiny_lesson(lambda n, s: torch.ones(s))  # every layer alike: no better than evenly spaced
    assert "the same as the" in L.run_step(flat, "layers").note


def test_structure_note_says_when_the_submatrix_is_no_better_than_random():
    uniform = L.run_step(_tiny_lesson(_ones), "structure")
    assert uniform.facts["ratio"] == pytest.approx(1.0)
    assert "about the same" in uniform.note
    assert _numbers(uniform.note)[:3] == [float(L.pct(uniform.facts["submatrix"])[:-2]),
                                           float(L.pct(uniform.facts["area"])[:-2]),
                                           float(L.pct(uniform.facts["random"])[:-2])]

    def corner(name, shape):  # all the sensitivity in the top-left 40 x 40 corner: a block finds it
        out = torch.full(shape, 1e-3)
        if len(shape) == 2:
            out[:40, :40] = 10.0
        return out
    block = L.run_step(_tiny_lesson(corner), "structure")
    assert block.facts["ratio"] > 1.5 and "clearly more" in block.note
    assert block.facts["submatrix"] > block.facts["random"]


def test_judge_presentation_and_wording():
    result = L.StepResult([], [], "", {"best": "elements"})
    assert L.judge(L.STRUCTURE_QUESTION, result, "elements").endswith("right.")
    assert "the most is" in L.judge(L.STRUCTURE_QUESTION, result, "submatrix")
    fig = L.structure_figure([{"structure": "submatrix", "captured": 0.5, "area": 0.4},
                              {"structure": "random", "captured": 0.4, "area": 0.4}])
    big = L.presentation(fig)
    assert big.layout.height == int(fig.layout.height * L.PRESENTATION_SCALE)
    assert big.layout.xaxis.tickfont.size > 12 and fig.layout.xaxis.tickfont.size is None  # a copy
    assert L.loss_change(2.0, 1.0) == "fell by 50 %" and L.loss_change(1.0, 1.5) == "rose by 50 %"
    assert L.loss_change(1.0, 1.0) == "stayed the same"
    assert [L.how_much(r) for r in (2.0, 1.2, 1.0, 0.5)] == ["clearly more", "more, but not by much",
                                                            "about the same", "less"]
    with pytest.raises(ParaknowError, match="unknown lesson step"):
        L.step("nope")


def test_compare_needs_a_finished_run():
    with pytest.raises(ParaknowError, match="has not finished"):
        L.run_step(_tiny_lesson(_ones), "compare")
    assert L.run_step(_tiny_lesson(_ones), "finetune") is None  # no run yet: nothing to show


def _cached_map() -> dict:
    """The sensitivity map as the cache holds it, read with safetensors (not through paraknow)."""
    files = list(cache_dir("sensitivity").glob("*.safetensors"))
    assert len(files) == 1
    with safe_open(str(files[0]), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


@pytest.mark.slow
def test_whole_lesson_on_the_demo_pair():
    from paraknow.runs import jobs
    from paraknow.runs.train import train
    from paraknow.runs.train_config import TrainConfig

    config = L.LessonConfig(epochs=0.1, eval_items=2, eval_every=2, loss_items=4, max_new_tokens=24)
    lesson = L.Lesson(config)
    for key in ("load", "sensitivity", "where", "layers", "structure", "export"):
        assert L.run_step(lesson, key).note
    scores = _cached_map()
    matrices = {n: float(t.double().sum()) for n, t in scores.items() if ".layers." in n and t.dim() == 2}
    top = max(matrices, key=matrices.get)
    layer, module = int(top.split(".")[2]), top.split(".")[-2]
    assert lesson.results["sensitivity"].note.startswith(
        f"The most sensitive matrix is layer {layer}'s {module}, with {L.pct(matrices[top] / sum(matrices.values()))}")
    layer_totals = [sum(float(t.double().sum()) for n, t in scores.items() if n.startswith(f"model.layers.{i}."))
                    for i in range(8)]  # every parameter of the layer, its norms included
    best = max(range(8), key=lambda i: layer_totals[i])
    assert f"Teacher layer {best} holds the largest share, {L.pct(layer_totals[best] / sum(layer_totals))}" in \
        lesson.results["layers"].note

    # fine-tune in this process: the run directory is the one the page would have queued
    run_dir = jobs.new_run(lesson.train_config(), group=lesson.run_group, label="lesson")
    assert train(TrainConfig(**{**jobs.read_spec(run_dir), "out": str(run_dir)})).state == "finished"
    finetune = L.run_step(lesson, "finetune")
    losses = [row["loss"] for row in rundir.read_metrics(run_dir) if row.get("loss") is not None]
    k = max(1, len(losses) // 4)
    assert f"from {sum(losses[:k]) / k:.3f}" in finetune.note and f"to {sum(losses[-k:]) / k:.3f}" in finetune.note

    compare = L.run_step(lesson, "compare")
    before, step0, after = compare.extra["outputs"]
    assert step0.text == before.text  # residual export: at step 0 the student is itself
    assert "answers exactly as the student does" in compare.note
    assert f"from {before.mean_loss:.3f} to {after.mean_loss:.3f} nats per token" in compare.note
    assert ("the answer changed" in compare.note) == (before.text != after.text)
    recap = L.run_step(lesson, "recap")
    assert len(recap.table) == len(L.STEPS) - 1 and recap.facts["missing"] == []


@pytest.mark.slow
def test_the_lesson_library_does_not_import_streamlit():
    import subprocess
    import sys

    code = "import sys, paraknow.lesson; assert 'streamlit' not in sys.modules, 'streamlit imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
