"""paraknow: parametric knowledge transfer between language models (Zhong et al., ICLR 2024).

The pipeline, one call per step (the CLI, the app, the lesson and the study call the same ones):
load_model -> compute_sensitivity -> plan_transfer -> export_transfer -> verify_export -> train ->
evaluate, and run_study for a controlled experiment. The README's Python example runs the whole flow
(tests/test_readme_example.py runs it).

The names are loaded on first use, so `import paraknow.core.data` does not import the whole library.
Layers, lowest first: core, transfer, runs, viz, study, lesson, report, cli (tests/test_architecture.py).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core import __version__

if TYPE_CHECKING:  # the same names, for type checkers and readers
    from .core.architecture import describe
    from .core.data import load_records
    from .core.models import load_model
    from .runs.evaluate import evaluate
    from .runs.train import train
    from .runs.train_config import TrainConfig
    from .study.runner import run_study
    from .transfer.export import export_transfer, verify_export
    from .transfer.plan import TransferConfig, plan_transfer
    from .transfer.sensitivity import SensitivityConfig, compute_sensitivity
    from .transfer.sensitivity_files import provenance

_API = {  # public name -> the module that defines it
    "load_model": "paraknow.core.models",
    "compute_sensitivity": "paraknow.transfer.sensitivity",
    "plan_transfer": "paraknow.transfer.plan",
    "export_transfer": "paraknow.transfer.export",
    "verify_export": "paraknow.transfer.export",
    "train": "paraknow.runs.train",
    "evaluate": "paraknow.runs.evaluate",
    "run_study": "paraknow.study.runner",
    # what the steps take: model descriptions, records and the settings objects
    "describe": "paraknow.core.architecture",
    "load_records": "paraknow.core.data",
    "provenance": "paraknow.transfer.sensitivity_files",  # what an export records about its origin
    "SensitivityConfig": "paraknow.transfer.sensitivity",
    "TransferConfig": "paraknow.transfer.plan",
    "TrainConfig": "paraknow.runs.train_config",
}

__all__ = ["__version__", "compute_sensitivity", "evaluate", "export_transfer", "load_model", "plan_transfer", "run_study",
           "train", "verify_export", "describe", "load_records", "provenance", "SensitivityConfig", "TransferConfig", "TrainConfig"]
assert set(__all__) == {"__version__", *_API}


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # once loaded, a plain attribute
        return value
    raise AttributeError(f"module 'paraknow' has no attribute '{name}'")


def __dir__():
    return sorted(__all__)
