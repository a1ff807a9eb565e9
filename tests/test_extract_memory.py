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
