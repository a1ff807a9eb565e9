"""The transfer plan: what moves from which teacher matrix to which student module.

`plan_transfer()` decides *what* moves (pure, cheap: the Mapping page calls it on every widget change):
the layer map, then per student module the selection of teacher entries (paraknow.extract) and the share
of sensitivity it captures. Compatibility lives in paraknow.core.compatibility and the export (SVD + files) in
paraknow.transfer.export; their public names are importable from here too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..core.architecture import EMBED_ROLES, LAYER_ROLES, ModelInfo
from ..core.compatibility import (DEFAULT_MODULES, UNVERIFIED_NOTE, CompatibilityReport, check_transferable,
    resolve_roles, tokenizers_verified)
from ..core.errors import ParaknowError
from ..core.options import option
from ..core.validate import check_count, check_rank_fits, check_seed
from ..extract import STRUCTURES, Selection, block_selection, captured_share, oriented, select_within
from .controls import BLOCK_WEIGHTS, BLOCK_WEIGHTS_HELP
from .lora import MODES, SPLITS, SVD_METHODS, check_alpha
from .mapping import layer_scores, map_layers, parse_layers_arg
from .structure import COHERENT, plan_index_sets


def _layers_help() -> str:
    from .mapping import LAYER_STRATEGIES

    return ("layer map: " + " | ".join(s for s in LAYER_STRATEGIES if s != "manual")
            + " | manual:I,J,... (a teacher layer per student layer, - for unmapped)")


@dataclass
class TransferConfig:
    """What `extract` transfers and how (see docs/method.md for the faithful defaults)."""
    rank: int = option(16, "LoRA rank r of the exported adapter", type=int)
    alpha: float = option(16, "LoRA alpha (scaling s = alpha / r)", type=float)
    layers: str = option("sensitivity", _layers_help)
    manual_map: list | None = None  # for layers="manual": teacher layer (or None) per student layer
    structure: str = option("submatrix", "which part of each teacher matrix to extract",
                            choices=lambda: list(STRUCTURES))
    coherent: str = option("off", lambda: "index sets shared across matrices (docs/structure.md): " + "; ".join(
        f"{k}: {v}" for k, v in COHERENT.items()), choices=lambda: list(COHERENT))
    modules: tuple | None = option(
        None, "comma list of groups attn, ffn, embed or single roles (q_proj, ..., lm_head); "
        "not given: attn,ffn,embed, embeddings only when teacher and student share the tokenizer",
        accepts=list[str] | str | None)  # a recipe gives a list of roles/groups, or "attn,ffn" as on the CLI
    mode: str = option("residual", "residual: the student's step-0 function is unchanged; additive: "
                       "the base stays and the student starts at W_S + s*B@A", choices=MODES)
    split: str = option("left", "where Sigma goes: left (B) or sqrt (both factors)", choices=SPLITS)
    svd: str = option("auto", "exact SVD, randomized rank-r SVD, or auto (randomized for large blocks)",
                      choices=SVD_METHODS)
    seed: int = option(0, "seed of the random strategies and the vanilla init of unmapped layers")
    teacher_weights: str = option("trained", BLOCK_WEIGHTS_HELP, choices=lambda: list(BLOCK_WEIGHTS))
    overrides: dict = field(default_factory=dict)  # student module -> (row, col) of a manual block

    @classmethod
    def from_dict(cls, data: dict) -> "TransferConfig":
        """The one conversion from a settings dict (a study or session recipe, a background job's
        spec) to a TransferConfig: `layers` as on the CLI ("manual:0,-,2") unless `manual_map` is
        given beside it, `modules` as "attn,ffn" or a list, `overrides` as {module: [row, col]}."""
        data = dict(data)
        if isinstance(data.get("layers"), str) and "manual_map" not in data:
            data["layers"], data["manual_map"] = parse_layers_arg(data["layers"])
        if "modules" in data:
            data["modules"] = parse_modules(data["modules"])
        data["overrides"] = parse_overrides(data.get("overrides") or {})
        return cls(**data)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ParaknowError(f"unknown mode '{self.mode}'; use one of {', '.join(MODES)}.")
        if self.split not in SPLITS:
            raise ParaknowError(f"unknown split '{self.split}'; use one of {', '.join(SPLITS)}.")
        if self.svd not in SVD_METHODS:
            raise ParaknowError(f"unknown svd '{self.svd}'; use one of {', '.join(SVD_METHODS)}.")
        if self.structure not in STRUCTURES:
            raise ParaknowError(f"unknown structure '{self.structure}'; use one of {', '.join(STRUCTURES)}.")
        if self.teacher_weights not in BLOCK_WEIGHTS:
            raise ParaknowError(f"unknown teacher_weights '{self.teacher_weights}'; use one of "
                                f"{', '.join(BLOCK_WEIGHTS)}.")
        if self.coherent not in COHERENT:
            raise ParaknowError(f"unknown coherent option '{self.coherent}'; use one of {', '.join(COHERENT)}.")
        check_count("rank", self.rank)
        check_alpha(self.alpha, self.rank)
        check_seed(self.seed)
        resolve_roles(DEFAULT_MODULES if self.modules is None else self.modules)



@dataclass
class ModulePlan:
    student_module: str
    role: str
    student_layer: int | None
    teacher_layer: int | None
    teacher_param: str
    teacher_shape: tuple
    shape: tuple  # the student's [out, in] (embeddings: [d_S, V], the transposed orientation)
    transposed: bool  # embed_tokens: the selection runs on the teacher's transpose [d_T, V]
    selection: Selection
    captured: float
    auto_captured: float | None = None  # the structure's own selection, when an override replaced it

    @property
    def area(self) -> float:
        """Share (0..1) of the teacher matrix's entries that the student's shape takes."""
        return (self.shape[0] * self.shape[1]) / (self.teacher_shape[0] * self.teacher_shape[1])

    @property
    def lift(self) -> float:
        """Captured share / area share: 1 = no better than any part of the same size."""
        return self.captured / self.area


@dataclass
class TransferPlan:
    layer_map: list
    layer_scores: list
    roles: list
    modules: list  # [ModulePlan]
    notes: list
    index_sets: dict = field(default_factory=dict)  # student layer (None: embeddings) -> LayerSets
    layer_similarity: list | None = None  # [L_T][L_S] CKA behind a cka layer map


class _Target(NamedTuple):
    """One student module to fill, before its selection is made."""
    s_layer: int | None
    t_layer: int | None
    role: str
    t_param: str
    t_shape: tuple
    s_shape: tuple
    transposed: bool
    sens: torch.Tensor  # [o_T, i_T] oriented sensitivity


def plan_transfer(teacher: ModelInfo, student: ModelInfo, scores: dict, config: TransferConfig,
                  similarity=None) -> TransferPlan:
    """Layer map and the selection of every module that receives teacher parameters.

    `similarity` [L_T, L_S] (linear CKA, paraknow/transfer/similarity.py) is needed by the cka layer map only;
    the caller computes it, so planning stays pure.
    """
    config.validate()
    _check_overrides(student, config.overrides)
    report = check_transferable(teacher, student, config)
    per_layer = layer_scores(scores, teacher.n_layers)
    layer_map = map_layers(config.layers, teacher.n_layers, student.n_layers, scores=per_layer,
                           seed=config.seed, manual=config.manual_map, similarity=similarity)
    planned = _targets(teacher, student, scores, config, layer_map, report.roles)
    by_layer: dict = {}  # student layer -> {role: oriented sensitivity}
    for t in planned:
        if t.s_layer is not None:
            by_layer.setdefault(t.s_layer, {})[t.role] = t.sens
    embeddings = {t.role: t.sens for t in planned if t.s_layer is None}
    index_sets = plan_index_sets(config.structure, config.coherent, by_layer, embeddings, teacher, student,
                                 config.seed)
    modules = [_module_plan(t, student, config, index_sets) for t in planned]
    matrix = None if similarity is None or config.layers != "cka" else [list(map(float, r)) for r in similarity]
    return TransferPlan(layer_map, per_layer, report.roles, modules, _plan_notes(teacher, student, config, report),
                        index_sets, matrix)


def _check_overrides(student: ModelInfo, overrides: dict) -> None:
    """Every manual block position names a module the student has (a typo is an error, not ignored)."""
    names = {student.module_name(j, role) for j in range(student.n_layers) for role in LAYER_ROLES}
    names |= {student.module_name(None, role) for role in EMBED_ROLES}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ParaknowError(f"overrides names {unknown[0]}, which is not a module of the student (e.g. "
                            f"{student.module_name(0, LAYER_ROLES[0])}): fix or drop that entry.")


def _plan_notes(teacher: ModelInfo, student: ModelInfo, config: TransferConfig,
                report: CompatibilityReport) -> list[str]:
    """The report's notes that concern this plan, and whether its embeddings rest on unverified tokenizers."""
    wants_embeddings = any(r in EMBED_ROLES for r in resolve_roles(config.modules or DEFAULT_MODULES))
    notes = [n for n in report.notes if wants_embeddings or n not in report.embedding_notes]
    if wants_embeddings and not report.tokenizer_mismatch and not tokenizers_verified(teacher, student):
        notes.append(UNVERIFIED_NOTE if config.modules is None else
                     "the tokenizers were not compared, only their sizes: embeddings transfer as requested.")
    return notes


def _targets(teacher: ModelInfo, student: ModelInfo, scores: dict, config: TransferConfig, layer_map: list,
             roles: list[str]) -> list[_Target]:
    """Every student module that receives teacher entries, with its teacher matrix's sensitivity."""
    targets = [(j, layer_map[j], role) for j in range(student.n_layers) if layer_map[j] is not None
               for role in roles if role in LAYER_ROLES]
    for role in (r for r in roles if r in EMBED_ROLES):  # only there when the tokenizers match
        if role == "lm_head" and student.tied_embeddings:
            continue
        targets.append((None, None, role))
    planned = []
    for s_layer, t_layer, role in targets:
        t_param = teacher.param_name(t_layer, role)
        if t_param not in scores:
            raise ParaknowError(f"the sensitivity map has no entry for {t_param}: it was computed for "
                                "another model; recompute it for this teacher.")
        transposed = role == "embed_tokens"
        t_shape = tuple(teacher.shapes[role])
        s_shape = tuple(student.shapes[role])
        if transposed:
            t_shape, s_shape = t_shape[::-1], s_shape[::-1]
        if t_shape[0] < s_shape[0] or t_shape[1] < s_shape[1]:
            raise ParaknowError(f"{role}: teacher {list(t_shape)} is smaller than student {list(s_shape)}; "
                                "pick a wider teacher or leave this module out.")
        check_rank_fits(config.rank, s_shape, role)
        sens = oriented(scores[t_param], transposed)  # [o_T, i_T]
        planned.append(_Target(s_layer, t_layer, role, t_param, t_shape, s_shape, transposed, sens))
    return planned


def _module_plan(t: _Target, student: ModelInfo, config: TransferConfig, index_sets: dict) -> ModulePlan:
    """The structure's selection for one target (or the manual override of its block position)."""
    module = student.module_name(t.s_layer, t.role)
    sets = index_sets.get(t.s_layer)
    rows, cols = sets.axes(t.role) if sets else (None, None)
    # embeddings keep every vocabulary entry since s_shape spans all of V
    auto = select_within(config.structure, t.sens, *t.s_shape, rows=rows, cols=cols, seed=config.seed)
    auto_captured = captured_share(t.sens, auto)
    if module in config.overrides:
        row, col = config.overrides[module]
        selection = block_selection(int(row), int(col), *t.s_shape, shape=t.t_shape)
        captured = captured_share(t.sens, selection)
    else:
        selection, captured, auto_captured = auto, auto_captured, None
    return ModulePlan(module, t.role, t.s_layer, t.t_layer, t.t_param, t.t_shape, t.s_shape, t.transposed,
                      selection, captured, auto_captured)

EXTRACT_OPTIONS = ("rank", "alpha", "layers", "structure", "coherent", "modules", "mode", "split", "svd", "seed")


def parse_modules(value) -> tuple | None:
    """`modules` as a recipe or the CLI gives it ("attn,ffn" or a list) -> the TransferConfig tuple."""
    if value is None:
        return None
    return tuple(m.strip() for m in (value.split(",") if isinstance(value, str) else value) if m.strip())


def parse_overrides(value: dict) -> dict[str, tuple[int, int]]:
    """Manual block placements {student module: [row, column]} -> checked (row, column) pairs."""
    out = {}
    for module, pos in value.items():
        if not (isinstance(pos, (list, tuple)) and len(pos) == 2 and
                all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pos)):
            raise ParaknowError(f"{module} must be a [row, column] pair of whole numbers >= 0 (got {pos!r}).")
        out[module] = (int(pos[0]), int(pos[1]))
    return out
