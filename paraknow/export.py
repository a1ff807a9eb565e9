"""Export: factorise the planned teacher blocks and write the export directory; check it with plain PEFT.

  export_transfer(...)  -> manifest   the SVD of every selected block as a LoRA for the student
                                      (written atomically: adapter, residual/, selection, paraknow.json)
  extract_to_dir(...)   -> manifest   the whole `extract` command: load, sensitivity (cached), plan, export
  verify_export(...)    -> Verification  the export loaded with plain PEFT against the original student
  provenance(...)       -> dict       what the manifest records about the models and seed data

The files are listed in the README's command-line section; the plan comes from
`paraknow.transfer.plan_transfer`.
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import __version__
from .architecture import EMBED_ROLES, LAYER_ROLES, ModelInfo
from .compatibility import check_transferable, resolve_roles
from .diagnostics import init_cosines, oriented_weight
from .errors import ParaknowError
from .extract import oriented
from .fsio import (REFUSE_WAIT_S, atomic_directory, atomic_save_safetensors, atomic_write_json, check_replaceable,
                   check_writable_parent, output_lock)
from .lora import ADAPTER_CONFIG, MANIFEST_FILE, factorise, load_manifest, scaling, vanilla_factors, write_adapter

if TYPE_CHECKING:
    from .transfer import TransferConfig, TransferPlan

RESIDUAL_DIR = "residual"
SELECTION_FILE = "selection.safetensors"


def provenance(teacher: str, student: str, data: str, sens_config, records: list[dict]) -> dict:
    """The manifest's record of where an export came from: model references, the seed data and the
    sensitivity settings (`records`: the seed records the map was computed on, or more)."""
    from .data import records_sha256

    return {"teacher": teacher, "student": student, "data": data, "metric": sens_config.metric,
            "samples": sens_config.samples, "max_length": sens_config.max_length,
            "data_sha256": records_sha256(records[:sens_config.samples])}


def extract_factors(teacher_model, plan: TransferPlan, config: TransferConfig, progress=None) -> dict:
    """{student module: Factors} of every planned module (SVD of the selected teacher block, computed
    on the device that holds the teacher weight, so on a GPU when the teacher is there)."""
    params = dict(teacher_model.named_parameters())
    out = {}
    for i, mod in enumerate(plan.modules):
        weight = oriented(params[mod.teacher_param].detach(), mod.transposed)  # [o_T, i_T]
        block = mod.selection.apply(weight)  # [o_S, i_S]
        out[mod.student_module] = factorise(block, config.rank, config.alpha, config.split, config.svd, config.seed)
        if progress:
            progress(i + 1, len(plan.modules), f"factorised {mod.student_module}")
    return out


@dataclass
class _Adapters:
    """The (A, B) pairs an export writes: `main` (the adapter), `residual` (residual mode), and which
    modules are embeddings; `tied_compensation` when lm_head gets the tied embedding's delta back."""
    main: dict
    residual: dict
    embeddings: set
    targets: list
    tied_compensation: dict | None


def _adapters(plan: TransferPlan, student: ModelInfo, config: TransferConfig, factors: dict) -> _Adapters:
    generator = torch.Generator().manual_seed(config.seed)
    main, residual, embeddings = {}, {}, set()
    planned = {m.student_module for m in plan.modules}
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
    targets = layer_roles + [r for r in ("embed_tokens", "lm_head") if any(m.endswith(r) for m in main)]
    return _Adapters(main, residual, embeddings, targets, tied_compensation)


def _selection_tensors(plan: TransferPlan) -> dict[str, torch.Tensor]:
    """selection.safetensors: the teacher indices each student module took."""
    selection = {}
    for mod in plan.modules:
        sel = mod.selection
        if sel.flat is not None:
            selection[f"{mod.student_module}.flat"] = sel.flat.long()
        else:
            # copies: shared index sets (paraknow/structure.py) are one tensor in several modules
            selection[f"{mod.student_module}.rows"] = sel.rows.to(torch.int64, copy=True)
            selection[f"{mod.student_module}.cols"] = sel.cols.to(torch.int64, copy=True)
    return selection


def _module_entries(plan: TransferPlan, config: TransferConfig, factors: dict, student_model) -> dict:
    """The manifest's `modules`: per student module, where it came from and how well it fits."""
    s = scaling(config.rank, config.alpha)
    student_params = dict(student_model.named_parameters())
    entries = {}
    for mod in plan.modules:
        f = factors[mod.student_module]
        cos = init_cosines(s * f.B.double() @ f.A.double(),  # [o_S, i_S]
                           oriented_weight(student_params, mod.student_module + ".weight", mod.transposed))
        entries[mod.student_module] = {
            "teacher_param": mod.teacher_param, "role": mod.role, "teacher_layer": mod.teacher_layer,
            "student_layer": mod.student_layer, "shape": list(mod.shape), "teacher_shape": list(mod.teacher_shape),
            "transposed": mod.transposed, "block": mod.selection.block(),
            "captured": mod.captured, "area": mod.area, "lift": mod.lift,
            "cos_to_student": cos.to_weight, "cos_to_residual": cos.to_residual,
            "energy": f.energy, "svd": f.method, "singular_values": f.singular_values[:64].tolist()}
    return entries


def _manifest(plan: TransferPlan, config: TransferConfig, provenance: dict, modules: dict,
              tied_compensation: dict | None) -> dict:
    return {
        **provenance,
        "rank": config.rank, "alpha": config.alpha, "scaling": scaling(config.rank, config.alpha),
        "mode": config.mode, "structure": config.structure, "coherent": config.coherent, "split": config.split,
        "svd": config.svd, "seed": config.seed,
        "layers": config.layers, "layer_map": plan.layer_map, "layer_scores": plan.layer_scores,
        "module_set": list(resolve_roles(config.modules)) if config.modules else "default",
        "layer_similarity": plan.layer_similarity,
        "index_sets": {"embeddings" if j is None else str(j): sets.to_dict() for j, sets in plan.index_sets.items()},
        "roles": plan.roles, "tied_compensation": tied_compensation, "notes": plan.notes,
        "overrides": {k: list(v) for k, v in config.overrides.items()},
        "modules": modules,
        "paraknow_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def export_transfer(teacher_model, student_model, teacher: ModelInfo, student: ModelInfo, plan: TransferPlan,
                    config: TransferConfig, out_dir, provenance: dict, progress=None,
                    overwrite: bool = False) -> dict:
    """Write the export directory atomically and return its manifest.

    An existing `out_dir` must be empty, or a previous export (it holds paraknow.json) and
    `overwrite` set; anything else raises ParaknowError before any work and stays untouched."""
    replaces = MANIFEST_FILE if overwrite else None
    check_export_dir(out_dir, overwrite)
    factors = extract_factors(teacher_model, plan, config, progress)
    adapters = _adapters(plan, student, config, factors)
    manifest = _manifest(plan, config, provenance, _module_entries(plan, config, factors, student_model),
                         adapters.tied_compensation)
    student_ref = provenance.get("student", "")
    with atomic_directory(Path(out_dir), replaces=replaces) as tmp:
        write_adapter(tmp, adapters.main, adapters.embeddings, config.rank, config.alpha, adapters.targets,
                      student_ref)
        if adapters.residual:
            write_adapter(tmp / RESIDUAL_DIR, adapters.residual, adapters.embeddings, config.rank, config.alpha,
                          sorted(adapters.residual), student_ref)
        atomic_save_safetensors(_selection_tensors(plan), tmp / SELECTION_FILE)
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
    from .data import load_records
    from .models import describe, load_model, resolve_device
    from .sensitivity import SensitivityConfig, cached_sensitivity
    from .transfer import plan_transfer

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
        del scores  # the plan holds what the export needs: the map (float32, twice a bf16 teacher) goes now
        return export_transfer(teacher_model, student_model, t_info, s_info, plan, config, out_dir,
                               provenance(teacher_ref, student_ref, data_ref, sens_config, records),
                               progress, overwrite=overwrite)


@dataclass
class Verification:
    """An export loaded with plain PEFT, compared with the original student on some records."""
    dir: str
    mode: str | None
    max_change: float  # largest |logit change| over every position of every record
    max_logit: float  # largest |logit| of the original student (the tolerance scales with it)
    samples: int
    tokens: int
    tolerance: float

    @property
    def unchanged(self) -> bool:
        """Whether the student's function is unchanged (what residual mode promises at step 0)."""
        return self.max_change <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "unchanged": self.unchanged}


def verify_export(student, tokenizer, export_dir, records: list[dict], max_length: int = 512,
                  progress=None) -> Verification:
    """Load the export with plain PEFT on a copy of the student and compare logits on the records.

    Residual mode: merge `residual/` into the base first (PeftModel + merge_and_unload), then load
    the main adapter; the outputs must equal the original student's (max change ~1e-5).
    Additive mode: the change is the teacher's knowledge itself, so it is expected to be > 0.
    """
    from peft import PeftModel

    from .data import encode

    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    base = copy.deepcopy(student).eval()
    residual = export_dir / RESIDUAL_DIR
    if (residual / ADAPTER_CONFIG).is_file():
        base = PeftModel.from_pretrained(base, str(residual)).merge_and_unload()
    model = PeftModel.from_pretrained(base, str(export_dir)).eval()
    device = student.get_input_embeddings().weight.device
    max_change, max_logit, n_tokens = 0.0, 0.0, 0
    with torch.inference_mode():
        for i, record in enumerate(records):
            ids = torch.tensor([encode(tokenizer, record, max_length).input_ids], device=device)
            a = student(input_ids=ids).logits.float()  # [1, s, V]
            b = model(input_ids=ids).logits.float()
            max_change = max(max_change, float((a - b).abs().max()))
            max_logit = max(max_logit, float(a.abs().max()))
            n_tokens += ids.shape[1]
            if progress:
                progress(i + 1, len(records), f"sample {i + 1}/{len(records)}")
    return Verification(dir=str(export_dir), mode=manifest.get("mode"), max_change=max_change,
                        max_logit=max_logit, samples=len(records), tokens=n_tokens,
                        tolerance=1e-3 * max(1.0, max_logit))
