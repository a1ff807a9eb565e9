"""Granularity comparison: every structure x layer strategy (x coherent level) planned on one map.

`compare_granularity(...)` plans each combination with `plan_transfer` and measures what an export of it
would hold, per row (means over the planned modules, the same per-module numbers `extract` writes in
paraknow.json):
  captured  share of each teacher matrix's sensitivity inside the selection
  lift      captured / area: over a same-size random selection (whose expected captured share is the area)
  energy    share of the extracted matrix's squared singular values kept at rank r
  cos       cosine of the init delta s*B@A with the student's weight
  seconds   the planning time (`plan_transfer`) of that combination
The `plan --compare` command prints the rows and the Mapping page draws them as a sortable table.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from ..core.architecture import ModelInfo
from ..core.errors import ParaknowError
from ..extract import STRUCTURES, oriented
from .diagnostics import init_cosines, oriented_weight
from .lora import factorise, scaling
from .mapping import LAYER_STRATEGIES
from .plan import TransferConfig, TransferPlan, plan_transfer
from .structure import COHERENT

NEEDS_INPUT = {"manual": "needs a hand-made map", "cka": "needs the layer similarity"}  # not planned without it


@dataclass
class CompareRow:
    """One combination of the comparison; the numbers are None when it cannot be planned (`error`)."""
    structure: str
    layers: str
    coherent: str
    captured: float | None = None
    lift: float | None = None
    energy: float | None = None
    cos: float | None = None
    modules: int = 0
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "error" or v is not None}

    def matches(self, config: TransferConfig) -> bool:
        """Whether this row is `config`'s own combination (the current choice)."""
        return (self.structure, self.layers, self.coherent) == (config.structure, config.layers, config.coherent)


def combinations(similarity=None, structures=None, strategies=None, coherent=None) -> list[tuple[str, str, str]]:
    """(structure, layer strategy, coherent level) of every row: by default every registry entry, except the
    layer strategies that need an input this comparison lacks (manual always; cka without `similarity`)."""
    strategies = strategies or [s for s in LAYER_STRATEGIES
                                if s not in NEEDS_INPUT or (s == "cka" and similarity is not None)]
    return [(st, ly, co) for st in (structures or list(STRUCTURES)) for ly in strategies
            for co in (coherent or list(COHERENT))]


def compare_granularity(teacher_model, student_model, teacher: ModelInfo, student: ModelInfo, scores: dict,
                        config: TransferConfig, similarity=None, combos=None,
                        progress: Callable[[int, int, str], None] | None = None) -> list[CompareRow]:
    """One `CompareRow` per combination (`combinations(similarity)` unless `combos` is given); `config`
    gives the rest (modules, rank, alpha, split, svd, seed). Manual block overrides are not applied."""
    combos = combos or combinations(similarity)
    t_params, s_params = dict(teacher_model.named_parameters()), dict(student_model.named_parameters())
    fits: dict = {}  # (student module, teacher param, selection digest) -> (energy, cos): rows picking the same share it
    rows = []
    for i, (structure, layers, coherent) in enumerate(combos):
        row = CompareRow(structure, layers, coherent)
        row_config = replace(config, structure=structure, layers=layers, coherent=coherent, overrides={})
        try:
            t0 = time.perf_counter()
            plan = plan_transfer(teacher, student, scores, row_config, similarity)
            row.seconds = time.perf_counter() - t0
            _measure(row, plan, row_config, t_params, s_params, fits)
        except ParaknowError as exc:  # e.g. heads on a pair whose head counts do not divide
            row.error = str(exc)
        rows.append(row)
        if progress:
            progress(i + 1, len(combos), f"{structure} x {layers} x coherent {coherent}")
    return rows


def _measure(row: CompareRow, plan: TransferPlan, config: TransferConfig, t_params: dict, s_params: dict,
             fits: dict) -> None:
    if not plan.modules:
        raise ParaknowError("nothing transfers with these settings (no module planned).")
    captured, lifts, energies, cosines = [], [], [], []
    for mod in plan.modules:
        key = (mod.student_module, mod.teacher_param, _digest(mod.selection))
        if key not in fits:
            block = mod.selection.apply(oriented(t_params[mod.teacher_param].detach(), mod.transposed))  # [o_S, i_S]
            f = factorise(block, config.rank, config.alpha, config.split, config.svd, config.seed)
            delta = scaling(config.rank, config.alpha) * f.B.double() @ f.A.double()  # [o_S, i_S]
            weight = oriented_weight(s_params, mod.student_module + ".weight", mod.transposed)  # [o_S, i_S]
            fits[key] = (f.energy, init_cosines(delta, weight).to_weight)
        captured.append(mod.captured)
        lifts.append(mod.lift)
        energies.append(fits[key][0])
        cosines.append(fits[key][1])
    n = len(plan.modules)
    row.captured, row.lift = sum(captured) / n, sum(lifts) / n
    row.energy, row.cos, row.modules = sum(energies) / n, sum(cosines) / n, n


def _digest(selection) -> str:
    """The teacher entries a selection takes, as a short hash (equal selections share one SVD)."""
    h = hashlib.sha256(str(selection.shape).encode())
    for t in (selection.rows, selection.cols, selection.flat):
        h.update(b"|" if t is None else t.cpu().numpy().tobytes())
    return h.hexdigest()
