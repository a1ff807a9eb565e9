"""paraknow: parametric knowledge transfer between language models (Zhong et al., ICLR 2024).

The pipeline, one call per step (the CLI, the app, the lesson and the study call the same ones):

    import paraknow
    teacher, tok = paraknow.load_model("demo:teacher")
    student, _ = paraknow.load_model("demo:student")
    scores = paraknow.compute_sensitivity(teacher, tok, records)          # {param: [out, in]}
    plan = paraknow.plan_transfer(t_info, s_info, scores, TransferConfig())
    paraknow.export_transfer(teacher, student, t_info, s_info, plan, config, "out/", origin)
    paraknow.verify_export(student, tok, "out/", records)
    paraknow.train(TrainConfig(student="demo:student", data=..., init="out/", out="run/"))
    paraknow.evaluate(model, tok, test_records)
    paraknow.run_study(recipe, "study/")

The names are loaded on first use, so `import paraknow.core.data` does not import the whole library.
Layers, lowest first: core, transfer, runs, viz, study, lesson, report, cli (tests/test_architecture.py).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core import __version__

if TYPE_CHECKING:  # the same names, for type checkers and readers
    from .core.models import load_model
    from .runs.evaluate import evaluate
    from .runs.train import train
    from .study.runner import run_study
    from .transfer.export import export_transfer, verify_export
    from .transfer.plan import plan_transfer
    from .transfer.sensitivity import compute_sensitivity

_API = {  # public name -> the module that defines it
    "load_model": "paraknow.core.models",
    "compute_sensitivity": "paraknow.transfer.sensitivity",
    "plan_transfer": "paraknow.transfer.plan",
    "export_transfer": "paraknow.transfer.export",
    "verify_export": "paraknow.transfer.export",
    "train": "paraknow.runs.train",
    "evaluate": "paraknow.runs.evaluate",
    "run_study": "paraknow.study.runner",
}

__all__ = ["__version__", "compute_sensitivity", "evaluate", "export_transfer", "load_model", "plan_transfer", "run_study",
           "train", "verify_export"]
assert set(__all__) == {"__version__", *_API}


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'paraknow' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
