"""The pipeline's composed steps: what the CLI, the app's background jobs, the lesson and the study call.

load (paraknow.core.models) -> sensitivity (paraknow.transfer.sensitivity, cached by content in
paraknow.transfer.sensitivity_files) -> plan (paraknow.transfer.plan) -> export and verify
(paraknow.transfer.export). `extract_to_dir` is the `extract` command: all of them in one call.
"""
from __future__ import annotations

from ..core.architecture import describe
from ..core.compatibility import check_transferable
from ..core.data import load_records
from ..core.fsio import REFUSE_WAIT_S, output_lock
from ..core.models import load_model, resolve_device
from .export import check_export_dir, export_transfer
from .plan import TransferConfig, plan_transfer
from .sensitivity import SensitivityConfig
from .sensitivity_files import cached_sensitivity, provenance
from .similarity import layer_similarity


def extract_to_dir(teacher_ref: str, student_ref: str, data_ref: str, out_dir, config: TransferConfig,
                   sens_config=None, device=None, dtype=None, progress=None, overwrite: bool = False) -> dict:
    """The whole `extract` command: load both models, sensitivity (cached), plan, export.
    The output is checked first (see `export_transfer`), so a refused one costs no work."""
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
            similarity, _ = layer_similarity(teacher_model, student_model, teacher_tok,
                                             records[:sens_config.samples], student_tokenizer=student_tok,
                                             progress=progress)
        return plan_and_export(teacher_model, student_model, t_info, s_info, scores, config, out_dir,
                               provenance(teacher_ref, student_ref, data_ref, sens_config, records),
                               similarity, progress, overwrite=overwrite)


def plan_and_export(teacher_model, student_model, t_info, s_info, scores: dict, config: TransferConfig, out_dir,
                    origin: dict, similarity=None, progress=None, overwrite: bool = False) -> dict:
    """Plan from a sensitivity map and write the export (the `extract` command's last two steps, and
    the app's export job on the map the page shows); returns the manifest."""
    plan = plan_transfer(t_info, s_info, scores, config, similarity)
    return export_transfer(teacher_model, student_model, t_info, s_info, plan, config, out_dir, origin, progress,
                           overwrite=overwrite)
