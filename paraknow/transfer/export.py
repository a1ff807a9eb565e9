"""Export: factorise the planned teacher blocks and write the export directory; check it with plain PEFT.

  export_transfer(...)  -> manifest   the SVD of every selected block as a LoRA for the student
                                      (written atomically: adapter, residual/, selection, paraknow.json)
  extract_to_dir(...)   -> manifest   the whole `extract` command: load, sensitivity (cached), plan, export
  verify_export(...)    -> Verification  the export loaded with plain PEFT against the original student
  provenance(...)       -> dict       what the manifest records about the models and seed data

The files are listed in the README's command-line section; the plan comes from
`paraknow.transfer.plan.plan_transfer`.
"""
from __future__ import annotations

import copy
import datetime as _dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from ..core import __version__
from ..core.architecture import EMBED_ROLES, LAYER_ROLES, ModelInfo
from ..core.cache import MARKER_FILE, mark_entry
from ..core.compatibility import resolve_roles
from ..core.errors import ParaknowError
from ..core.fsio import (atomic_directory, atomic_save_safetensors, atomic_write_json, check_output_path,
    check_replaceable, check_writable_parent)
from ..extract import oriented
from .controls import BLOCK_WEIGHTS
from .diagnostics import init_cosines, oriented_weight
from .lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST_FILE, RESIDUAL_DIR, SELECTION_FILE, factorise,
    load_manifest, scaling, student_from_export, vanilla_factors, write_adapter)

if TYPE_CHECKING:
    from .plan import TransferConfig, TransferPlan

# every path an export consists of: `--overwrite` replaces a folder holding these and nothing else
EXPORT_FILES = frozenset({MANIFEST_FILE, ADAPTER_CONFIG, ADAPTER_WEIGHTS, SELECTION_FILE, MARKER_FILE, RESIDUAL_DIR,
                          f"{RESIDUAL_DIR}/{ADAPTER_CONFIG}", f"{RESIDUAL_DIR}/{ADAPTER_WEIGHTS}"})


def extract_factors(teacher_model, plan: TransferPlan, config: TransferConfig, progress=None) -> dict:
    """{student module: Factors} of every planned module (SVD of the selected teacher block, or of its
    control (`config.teacher_weights`, paraknow.transfer.controls), computed on the device that holds
    the teacher weight, so on a GPU when the teacher is there)."""
    params = dict(teacher_model.named_parameters())
    control, generator = BLOCK_WEIGHTS[config.teacher_weights], torch.Generator().manual_seed(config.seed)
    out = {}
    for i, mod in enumerate(plan.modules):
        weight = oriented(params[mod.teacher_param].detach(), mod.transposed)  # [o_T, i_T]
        block = control(mod.selection.apply(weight), generator)  # [o_S, i_S]
        if not torch.isfinite(block).all():
            raise ParaknowError(f"the teacher's {mod.teacher_param} holds NaN or inf values in the block "
                                f"{mod.student_module} takes: nothing was written; check the teacher's weights.")
        out[mod.student_module] = factorise(block, config.rank, config.alpha, config.split, config.svd, config.seed)
        check_factors(mod.student_module, out[mod.student_module], config.alpha, block)
        if progress:
            progress(i + 1, len(plan.modules), f"factorised {mod.student_module}")
    return out


def check_factors(module: str, factors, alpha: float, block: torch.Tensor) -> None:
    """Refuse factors that would export a broken adapter (and residual, which is -B, A): values that
    are not finite, or a B mostly exact zeros, more of them than the teacher's `block` [o_S, i_S]
    has (its zero rows zero rows of B; anything beyond is B = U Sigma / s underflowing)."""
    for name, tensor in (("A", factors.A), ("B", factors.B)):
        if not torch.isfinite(tensor).all():
            raise ParaknowError(f"{module}: the LoRA factor {name} is not finite (overflow at alpha {alpha:g}): "
                                "nothing was written; use a smaller alpha.")
    zeros = float((factors.B == 0).float().mean())
    if zeros > 0.5 and zeros > float((block == 0).float().mean()):
        raise ParaknowError(f"{module}: {zeros:.0%} of the LoRA factor B is exactly zero, more than the teacher's "
                            f"block (B = U Sigma / s underflowed at alpha {alpha:g}): nothing was written; use a "
                            "smaller alpha.")


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
            # copies: shared index sets (paraknow/transfer/structure.py) are one tensor in several modules
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
        "svd": config.svd, "seed": config.seed, "teacher_weights": config.teacher_weights,
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
    with atomic_directory(Path(out_dir), replaces=replaces, owned=EXPORT_FILES) as tmp:
        write_adapter(tmp, adapters.main, adapters.embeddings, config.rank, config.alpha, adapters.targets,
                      student_ref)
        if adapters.residual:
            write_adapter(tmp / RESIDUAL_DIR, adapters.residual, adapters.embeddings, config.rank, config.alpha,
                          sorted(adapters.residual), student_ref)
        atomic_save_safetensors(_selection_tensors(plan), tmp / SELECTION_FILE)
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
        mark_entry(tmp, out_dir)  # an export in the cache's exports/ is the cache's to clear
    return manifest


def check_export_dir(out_dir, overwrite: bool = False) -> None:
    """An export may go to a new or empty directory in a writable folder, or replace a previous
    export (a directory holding paraknow.json and only the files an export consists of) when
    `overwrite` is set; nothing else."""
    out_dir = Path(out_dir)
    check_output_path(out_dir)  # before anything stats it
    if not overwrite and (out_dir / MANIFEST_FILE).is_file():
        raise ParaknowError(f"{out_dir} already holds a paraknow export: choose a new directory, or "
                            "overwrite it (--overwrite).")
    check_replaceable(out_dir, MANIFEST_FILE if overwrite else None, "export", owned=EXPORT_FILES)
    check_writable_parent(out_dir)


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

    from ..core.data import encode

    export = Export.open(export_dir)
    model = export.load_into(copy.deepcopy(student).eval())
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
    return Verification(dir=str(export.dir), mode=export.mode, max_change=max_change,
                        max_logit=max_logit, samples=len(records), tokens=n_tokens,
                        tolerance=1e-3 * max(1.0, max_logit))


@dataclass(frozen=True)
class Export:
    """An export directory as one object: its manifest, the teacher entries it selected, its
    residual part, and how it loads into a student (the same way for verification, training, eval
    and the Playground: residual merged into the base first, then the LoRA initialisation)."""
    dir: Path
    manifest: dict

    @classmethod
    def open(cls, directory) -> "Export":
        return cls(Path(directory), load_manifest(directory))

    @property
    def mode(self) -> str | None:
        return self.manifest.get("mode")

    @property
    def residual_dir(self) -> Path | None:
        """The companion adapter equal to -s*B@A (residual mode), or None."""
        residual = self.dir / RESIDUAL_DIR
        return residual if (residual / ADAPTER_CONFIG).is_file() else None

    def selection(self) -> dict[str, torch.Tensor]:
        """{'<student module>.rows' | '.cols' | '.flat': int64 teacher indices} (selection.safetensors)."""
        return load_file(str(self.dir / SELECTION_FILE))

    def load_into(self, student, trainable: bool = False, dropout: float | None = None):
        """The student with this export applied (a PeftModel; eval mode unless `trainable`)."""
        model = student_from_export(student, self.dir, trainable=trainable, dropout=dropout)
        return model if trainable else model.eval()
