"""`extract_to_dir` drops the sensitivity map once the plan is made (for the 1.5B teacher it is 6.2 GB of
float32 that used to stay alive through the export): the plan must hold no reference to the map."""
from __future__ import annotations

import gc
import weakref

import pytest
from tiny import tiny_llama

from paraknow.core.architecture import describe
from paraknow.transfer.plan import TransferConfig, plan_transfer
from paraknow.transfer.sensitivity import SensitivityConfig, compute_sensitivity


@pytest.mark.parametrize("structure", ["submatrix", "rowcol", "elements", "heads"])
def test_the_plan_keeps_no_reference_to_the_map(tokenizer, seed_records, structure):
    teacher = tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1)
    student = tiny_llama(seed=2)
    scores = compute_sensitivity(teacher, tokenizer, seed_records, SensitivityConfig(samples=2))
    alive = [weakref.ref(v) for v in scores.values()]
    plan = plan_transfer(describe(teacher, tokenizer), describe(student, tokenizer), scores,
                         TransferConfig(structure=structure))
    del scores
    gc.collect()
    assert plan.modules and not any(ref() is not None for ref in alive)


def test_extract_loads_the_student_only_once_the_map_is_freed(tmp_path, monkeypatch):
    """The real pair's peak: `extract` describes the student from a weightless instance and loads its weights
    after the plan, when no tensor of the teacher's map is alive any more."""
    from paraknow.transfer import pipeline

    events, alive = [], []
    real_plan, real_load = pipeline.plan_transfer, pipeline.load_model

    def plan(t_info, s_info, scores, *args, **kwargs):
        alive.extend(weakref.ref(v) for v in scores.values())
        events.append("plan")
        return real_plan(t_info, s_info, scores, *args, **kwargs)

    def load(ref, *args, **kwargs):
        gc.collect()
        events.append((ref, sum(r() is not None for r in alive)))  # (model, map tensors still alive)
        return real_load(ref, *args, **kwargs)

    monkeypatch.setattr(pipeline, "plan_transfer", plan)
    monkeypatch.setattr(pipeline, "load_model", load)
    manifest = pipeline.extract_to_dir("demo:teacher", "demo:student", "task:arith:seed", tmp_path / "out",
                                       TransferConfig(), SensitivityConfig(samples=2))
    assert events == [("demo:teacher", 0), "plan", ("demo:student", 0)]
    assert manifest["modules"] and alive


def test_a_weightless_description_equals_the_loaded_ones():
    from paraknow.core.models import describe_unloaded, load_model

    for ref in ("demo:student", "demo:teacher"):
        unloaded, tokenizer = describe_unloaded(ref)
        model, _ = load_model(ref)
        assert unloaded == describe(model, tokenizer)
