"""The transfer itself: compatibility, layer map + per-module selections (the plan), and export.

plan_transfer() decides *what* moves (pure, cheap: the Mapping page calls it on every widget
change); export_transfer() factorises the selected teacher blocks and writes the export
directory (its files are listed in the README's command-line section).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from . import __version__
from .errors import ParaknowError
from .diagnostics import init_cosines, oriented_weight
from .extract import Selection, block_selection, captured_share, select_within, STRUCTURES
from .fsio import (REFUSE_WAIT_S, atomic_directory, atomic_save_safetensors, atomic_write_json,
                   check_replaceable, check_writable_parent, output_lock)
from .lora import MANIFEST_FILE, MODES, SPLITS, SVD_METHODS, Factors, factorise, scaling, vanilla_factors, write_adapter
from .mapping import layer_scores, map_layers
from .models import EMBED_ROLES, LAYER_ROLES, MODULE_GROUPS, ModelInfo
from .structure import COHERENT, plan_index_sets
from .validate import check_count, check_number, check_seed
from .options import option


DEFAULT_MODULES = ("attn", "ffn", "embed")  # the official code's default (--include_emb True)


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
        "not given: attn,ffn,embed, embeddings only when teacher and student share the tokenizer")
    mode: str = option("residual", "residual: the student's step-0 function is unchanged; additive: "
                       "the base stays and the student starts at W_S + s*B@A", choices=MODES)
    split: str = option("left", "where Sigma goes: left (B) or sqrt (both factors)", choices=SPLITS)
    svd: str = option("auto", "exact SVD, randomized rank-r SVD, or auto (randomized for large blocks)",
                      choices=SVD_METHODS)
    seed: int = option(0, "seed of the random strategies and the vanilla init of unmapped layers")
    overrides: dict = field(default_factory=dict)  # student module -> (row, col) of a manual block

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ParaknowError(f"unknown mode '{self.mode}'; use one of {', '.join(MODES)}.")
        if self.split not in SPLITS:
            raise ParaknowError(f"unknown split '{self.split}'; use one of {', '.join(SPLITS)}.")
        if self.svd not in SVD_METHODS:
            raise ParaknowError(f"unknown svd '{self.svd}'; use one of {', '.join(SVD_METHODS)}.")
        if self.structure not in STRUCTURES:
            raise ParaknowError(f"unknown structure '{self.structure}'; use one of {', '.join(STRUCTURES)}.")
        if self.coherent not in COHERENT:
            raise ParaknowError(f"unknown coherent option '{self.coherent}'; use one of {', '.join(COHERENT)}.")
        check_count("rank", self.rank)
        check_number("alpha", self.alpha, above=0)
        check_seed(self.seed)
        resolve_roles(DEFAULT_MODULES if self.modules is None else self.modules)


def resolve_roles(modules) -> list[str]:
    """Expand module groups into roles, in a stable order; unknown names are an error."""
    if isinstance(modules, str):
        modules = [m for m in modules.split(",") if m.strip()]
    roles = []
    for item in modules:
        item = item.strip()
        expanded = MODULE_GROUPS.get(item, (item,) if item in LAYER_ROLES + EMBED_ROLES else None)
        if expanded is None:
            raise ParaknowError(f"unknown module '{item}'; use groups attn, ffn, embed or roles "
                                f"{', '.join(LAYER_ROLES + EMBED_ROLES)}.")
        roles += [r for r in expanded if r not in roles]
    if not roles:
        raise ParaknowError("no modules selected: choose at least one of attn, ffn, embed.")
    return [r for r in LAYER_ROLES + EMBED_ROLES if r in roles]


def default_roles() -> list[str]:
    """The roles of the default module set (before the tokenizer check drops embeddings)."""
    return resolve_roles(DEFAULT_MODULES)


# ---------------------------------------------------------------------------------------
# Compatibility


def tokenizer_mismatch(teacher: ModelInfo, student: ModelInfo) -> str | None:
    """Why embeddings cannot move between the two vocabularies, or None when nothing says they differ
    (token -> id content compared by `models.vocab_fingerprint`; see `tokenizers_verified`)."""
    if teacher.vocab_size != student.vocab_size:
        return f"the vocabularies differ in size (teacher {teacher.vocab_size}, student {student.vocab_size} tokens)"
    if teacher.vocab_hash and student.vocab_hash and teacher.vocab_hash != student.vocab_hash:
        return (f"the tokenizers differ: same size ({teacher.vocab_size} tokens) but different token -> id "
                f"content (vocabulary sha256 {teacher.vocab_hash[:12]} vs {student.vocab_hash[:12]})")
    return None


def tokenizers_verified(teacher: ModelInfo, student: ModelInfo) -> bool:
    """Both vocabularies were fingerprinted and are equal (ModelInfo from `describe(model, tokenizer)`)."""
    return bool(teacher.vocab_hash) and teacher.vocab_hash == student.vocab_hash


UNVERIFIED_NOTE = ("embeddings skipped: the tokenizers were not compared (describe both models with their "
                   "tokenizers, or request embed explicitly).")


def compatibility(teacher: ModelInfo, student: ModelInfo, roles=None) -> dict:
    """Which roles can transfer, and why not. {'rows': [...], 'errors': [...], 'notes': [...]}

    `roles`: the roles a plan would transfer; only those must be at least as wide in the teacher
    (None: every decoder-layer role, as the Models page shows it).
    """
    rows, notes = [], []
    errors = {}  # kind ('depth' | 'width') -> message
    mismatch = tokenizer_mismatch(teacher, student)
    for role in LAYER_ROLES + EMBED_ROLES:
        t_shape, s_shape = teacher.shapes[role], student.shapes[role]
        if role in EMBED_ROLES and mismatch:
            ok, why = False, mismatch
        elif t_shape[0] >= s_shape[0] and t_shape[1] >= s_shape[1]:
            ok, why = True, ""
        else:
            ok, why = False, f"teacher {t_shape} smaller than student {s_shape}"
        rows.append({"module": role, "teacher": t_shape, "student": s_shape, "transfers": ok, "reason": why})
    if teacher.n_layers < student.n_layers:
        errors["depth"] = (f"the teacher has {teacher.n_layers} layers and the student {student.n_layers}: "
                           "pick a deeper teacher or a manual layer map.")
    selected = LAYER_ROLES if roles is None else roles
    bad = [r["module"] for r in rows if not r["transfers"] and r["module"] in LAYER_ROLES and r["module"] in selected]
    if bad:
        errors["width"] = (f"the teacher is narrower than the student for {', '.join(bad)}: pick a wider "
                           "teacher or leave these modules out.")
    embedding_notes = []  # only worth saying to a plan that transfers embeddings
    if mismatch:
        embedding_notes.append(f"embeddings skipped: {mismatch}.")
    if teacher.family != student.family:
        notes.append(f"different families ({teacher.family} -> {student.family}): shapes allow it, "
                     "but the paper only transfers within one family.")
    if student.tied_embeddings:
        embedding_notes.append("the student ties lm_head to embed_tokens: embeddings transfer into "
                               "embed_tokens only.")
    return {"rows": rows, "errors": errors, "notes": notes + embedding_notes,
            "embedding_notes": embedding_notes, "vocab_match": mismatch is None, "tokenizer_mismatch": mismatch,
            "gqa": {"teacher": teacher.n_kv_heads < teacher.n_heads, "student": student.n_kv_heads < student.n_heads}}


def transfer_roles(teacher: ModelInfo, student: ModelInfo, modules) -> list[str]:
    """The roles a plan transfers. `modules` None is the default set, whose embeddings stay only when
    the tokenizers are known to match; an explicit request for embeddings on different tokenizers is
    refused (on tokenizers that were not compared, equal vocabulary sizes let it through)."""
    mismatch = tokenizer_mismatch(teacher, student)
    if modules is None:
        keep = tokenizers_verified(teacher, student)
        return [r for r in default_roles() if keep or r not in EMBED_ROLES]
    roles = resolve_roles(modules)
    if mismatch and any(r in EMBED_ROLES for r in roles):
        raise ParaknowError(f"embeddings requested but {mismatch}: leave embed, embed_tokens and lm_head "
                            "out of --modules, or use a student with the teacher's tokenizer.")
    return roles


def check_transferable(teacher: ModelInfo, student: ModelInfo, config: TransferConfig) -> dict:
    """Raise the first blocking compatibility error of the selected modules (depth is fine with a
    manual map); return the report, with `roles` the ones the plan transfers."""
    roles = transfer_roles(teacher, student, config.modules)
    report = compatibility(teacher, student, roles)
    errors = dict(report["errors"])
    if config.layers == "manual":
        errors.pop("depth", None)
    if errors:
        raise ParaknowError(next(iter(errors.values())))
    return {**report, "roles": roles}


# ---------------------------------------------------------------------------------------
# Plan


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


def _oriented(scores: torch.Tensor, transposed: bool) -> torch.Tensor:
    return scores.T if transposed else scores  # embed_tokens [V, d] -> [d, V]


def plan_transfer(teacher: ModelInfo, student: ModelInfo, scores: dict, config: TransferConfig,
                  similarity=None) -> TransferPlan:
    """Layer map and the selection of every module that receives teacher parameters.

    `similarity` [L_T, L_S] (linear CKA, paraknow/similarity.py) is needed by the cka layer map only;
    the caller computes it, so planning stays pure.
    """
    config.validate()
    report = check_transferable(teacher, student, config)
    roles = report["roles"]
    wants_embeddings = any(r in EMBED_ROLES for r in resolve_roles(config.modules or DEFAULT_MODULES))
    notes = [n for n in report["notes"] if wants_embeddings or n not in report["embedding_notes"]]
    if wants_embeddings and not report["tokenizer_mismatch"] and not tokenizers_verified(teacher, student):
        notes.append(UNVERIFIED_NOTE if config.modules is None else
                     "the tokenizers were not compared, only their sizes: embeddings transfer as requested.")
    per_layer = layer_scores(scores, teacher.n_layers)
    layer_map = map_layers(config.layers, teacher.n_layers, student.n_layers, scores=per_layer,
                           seed=config.seed, manual=config.manual_map, similarity=similarity)
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
        if config.rank > min(s_shape):
            raise ParaknowError(f"rank {config.rank} is larger than {role}'s smallest dimension "
                                f"{min(s_shape)}: lower --rank.")
        sens = _oriented(scores[t_param], transposed)  # [o_T, i_T]
        planned.append(_Target(s_layer, t_layer, role, t_param, t_shape, s_shape, transposed, sens))
    by_layer: dict = {}  # student layer -> {role: oriented sensitivity}
    for t in planned:
        if t.s_layer is not None:
            by_layer.setdefault(t.s_layer, {})[t.role] = t.sens
    embeddings = {t.role: t.sens for t in planned if t.s_layer is None}
    index_sets = plan_index_sets(config.structure, config.coherent, by_layer, embeddings, teacher, student,
                                 config.seed)
    modules = []
    for s_layer, t_layer, role, t_param, t_shape, s_shape, transposed, sens in planned:
        module = student.module_name(s_layer, role)
        sets = index_sets.get(s_layer)
        rows, cols = sets.axes(role) if sets else (None, None)
        # embeddings keep every vocabulary entry since s_shape spans all of V
        auto = select_within(config.structure, sens, *s_shape, rows=rows, cols=cols, seed=config.seed)
        auto_captured = captured_share(sens, auto)
        if module in config.overrides:
            row, col = config.overrides[module]
            selection = block_selection(int(row), int(col), *s_shape, shape=t_shape)
            captured = captured_share(sens, selection)
        else:
            selection, captured, auto_captured = auto, auto_captured, None
        modules.append(ModulePlan(module, role, s_layer, t_layer, t_param, t_shape, s_shape, transposed,
                                  selection, captured, auto_captured))
    matrix = None if similarity is None or config.layers != "cka" else [list(map(float, r)) for r in similarity]
    return TransferPlan(layer_map, per_layer, roles, modules, notes, index_sets, matrix)


# ---------------------------------------------------------------------------------------
# Export


def extract_factors(teacher_model, plan: TransferPlan, config: TransferConfig, progress=None) -> dict:
    """{student module: Factors} of every planned module (SVD of the selected teacher block, computed
    on the device that holds the teacher weight, so on a GPU when the teacher is there)."""
    params = dict(teacher_model.named_parameters())
    out = {}
    for i, mod in enumerate(plan.modules):
        weight = _oriented(params[mod.teacher_param].detach(), mod.transposed)  # [o_T, i_T]
        block = mod.selection.apply(weight)  # [o_S, i_S]
        out[mod.student_module] = factorise(block, config.rank, config.alpha, config.split, config.svd, config.seed)
        if progress:
            progress(i + 1, len(plan.modules), f"factorised {mod.student_module}")
    return out


def export_transfer(teacher_model, student_model, teacher: ModelInfo, student: ModelInfo, plan: TransferPlan,
                    config: TransferConfig, out_dir, provenance: dict, progress=None,
                    overwrite: bool = False) -> dict:
    """Write the export directory atomically and return its manifest.

    An existing `out_dir` must be empty, or a previous export (it holds paraknow.json) and
    `overwrite` set; anything else raises ParaknowError before any work and stays untouched."""
    replaces = MANIFEST_FILE if overwrite else None
    check_export_dir(out_dir, overwrite)
    factors = extract_factors(teacher_model, plan, config, progress)
    generator = torch.Generator().manual_seed(config.seed)
    s = scaling(config.rank, config.alpha)
    main, residual, embeddings = {}, {}, set()
    planned = {m.student_module: m for m in plan.modules}
    layer_roles = [r for r in plan.roles if r in LAYER_ROLES]
    for j in range(student.n_layers):  # every targeted module gets a LoRA; unmapped ones the vanilla init
        for role in layer_roles:
            name = student.module_name(j, role)
            if name in planned:
                main[name] = (factors[name].A, factors[name].B)
            else:
                out_dim, in_dim = student.shapes[role]
                main[name] = vanilla_factors(out_dim, in_dim, config.rank, generator)
    tied_compensation = None
    for mod in plan.modules:
        if mod.role in EMBED_ROLES:
            main[mod.student_module] = (factors[mod.student_module].A, factors[mod.student_module].B)
            if mod.transposed:
                embeddings.add(mod.student_module)
    if config.mode == "residual":
        residual = {name: (f.A, -f.B) for name, f in factors.items()}
        embed = student.embed_name
        if student.tied_embeddings and embed in factors:
            # The residual lowers the shared matrix, so lm_head too: give lm_head the same delta back.
            A_e, B_e = factors[embed].A, factors[embed].B  # s * B_e @ A_e is [d, V]
            main[student.lm_head_name] = (B_e.T.contiguous(), A_e.T.contiguous())  # s * A_e.T @ B_e.T: [V, d]
            tied_compensation = {"embedding": embed, "lm_head": student.lm_head_name}
    targets = layer_roles + [r for r in ("embed_tokens", "lm_head")
                             if any(m.endswith(r) for m in main)]
    student_params = dict(student_model.named_parameters())
    cosines = {mod.student_module: init_cosines(
        s * factors[mod.student_module].B.double() @ factors[mod.student_module].A.double(),  # [o_S, i_S]
        oriented_weight(student_params, mod.student_module + ".weight", mod.transposed)) for mod in plan.modules}
    selection = {}
    for mod in plan.modules:
        sel = mod.selection
        if sel.flat is not None:
            selection[f"{mod.student_module}.flat"] = sel.flat.long()
        else:
            # copies: shared index sets (paraknow/structure.py) are one tensor in several modules
            selection[f"{mod.student_module}.rows"] = sel.rows.to(torch.int64, copy=True)
            selection[f"{mod.student_module}.cols"] = sel.cols.to(torch.int64, copy=True)
    manifest = {
        **provenance,
        "rank": config.rank, "alpha": config.alpha, "scaling": s, "mode": config.mode,
        "structure": config.structure, "coherent": config.coherent, "split": config.split, "svd": config.svd,
        "seed": config.seed,
        "layers": config.layers, "layer_map": plan.layer_map, "layer_scores": plan.layer_scores,
        "module_set": list(resolve_roles(config.modules)) if config.modules else "default",
        "layer_similarity": plan.layer_similarity,
        "index_sets": {"embeddings" if j is None else str(j): sets.to_dict() for j, sets in plan.index_sets.items()},
        "roles": plan.roles, "tied_compensation": tied_compensation, "notes": plan.notes,
        "overrides": {k: list(v) for k, v in config.overrides.items()},
        "modules": {mod.student_module: {
            "teacher_param": mod.teacher_param, "role": mod.role, "teacher_layer": mod.teacher_layer,
            "student_layer": mod.student_layer, "shape": list(mod.shape), "teacher_shape": list(mod.teacher_shape),
            "transposed": mod.transposed, "block": mod.selection.block(),
            "captured": mod.captured, "area": mod.area, "lift": mod.lift,
            "cos_to_student": cosines[mod.student_module].to_weight,
            "cos_to_residual": cosines[mod.student_module].to_residual,
            "energy": factors[mod.student_module].energy, "svd": factors[mod.student_module].method,
            "singular_values": factors[mod.student_module].singular_values[:64].tolist(),
        } for mod in plan.modules},
        "paraknow_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    student_ref = provenance.get("student", "")
    with atomic_directory(Path(out_dir), replaces=replaces) as tmp:
        write_adapter(tmp, main, embeddings, config.rank, config.alpha, targets, student_ref)
        if residual:
            write_adapter(tmp / "residual", residual, embeddings, config.rank, config.alpha,
                          sorted(residual), student_ref)
        atomic_save_safetensors(selection, tmp / "selection.safetensors")
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


def check_export_dir(out_dir, overwrite: bool = False) -> None:
    """An export may go to a new or empty directory in a writable folder, or replace a previous
    export (a directory holding paraknow.json) when `overwrite` is set; nothing else."""
    out_dir = Path(out_dir)
    if not overwrite and (out_dir / MANIFEST_FILE).is_file():
        raise ParaknowError(f"{out_dir} already holds a paraknow export: choose a new directory, or "
                            "overwrite it (--overwrite).")
    check_replaceable(out_dir, MANIFEST_FILE if overwrite else None, "export")
    check_writable_parent(out_dir)


def extract_to_dir(teacher_ref: str, student_ref: str, data_ref: str, out_dir, config: TransferConfig,
                   sens_config=None, device=None, dtype=None, progress=None, overwrite: bool = False) -> dict:
    """The whole `extract` command: load both models, sensitivity (cached), plan, export.
    The output is checked first (see `export_transfer`), so a refused one costs no work."""
    from .data import load_records, records_sha256
    from .models import describe, load_model, resolve_device
    from .sensitivity import SensitivityConfig, cached_sensitivity

    config.validate()
    sens_config = sens_config or SensitivityConfig()
    sens_config.validate()
    resolve_device(device)
    check_export_dir(out_dir, overwrite)
    records = load_records(data_ref)
    with output_lock(out_dir, wait_s=REFUSE_WAIT_S):  # a second writer of out_dir is refused
        teacher_model, teacher_tok = load_model(teacher_ref, dtype=dtype, device=device)
        student_model, student_tok = load_model(student_ref)
        t_info, s_info = describe(teacher_model, teacher_tok), describe(student_model, student_tok)
        check_transferable(t_info, s_info, config)  # fail before the expensive sensitivity pass
        scores, _ = cached_sensitivity(teacher_model, teacher_tok, records, sens_config, progress, teacher_ref)
        similarity = None
        if config.layers == "cka":  # on the same seed samples as the sensitivity
            from .similarity import layer_similarity

            similarity, _ = layer_similarity(teacher_model, student_model, teacher_tok,
                                             records[:sens_config.samples], student_tokenizer=student_tok,
                                             progress=progress)
        plan = plan_transfer(t_info, s_info, scores, config, similarity)
        provenance = {"teacher": teacher_ref, "student": student_ref, "data": data_ref,
                      "metric": sens_config.metric, "samples": sens_config.samples,
                      "max_length": sens_config.max_length,
                      "data_sha256": records_sha256(records[:sens_config.samples])}
        return export_transfer(teacher_model, student_model, t_info, s_info, plan, config, out_dir, provenance,
                               progress, overwrite=overwrite)
