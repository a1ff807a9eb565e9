"""The pipeline's composed steps: what the CLI, the app's background jobs, the lesson and the study call.

load (paraknow.core.models) -> sensitivity (paraknow.transfer.sensitivity, cached by content in
paraknow.transfer.sensitivity_files, or a map file the user gives) -> plan (paraknow.transfer.plan) ->
export and verify (paraknow.transfer.export). `extract_to_dir` is the `extract` command: all of them in one
call; `compare_to_rows` is the `plan` command (paraknow.transfer.compare).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..core.architecture import ModelInfo, describe
from ..core.compatibility import check_transferable
from ..core.data import load_records
from ..core.errors import ParaknowError
from ..core.fsio import REFUSE_WAIT_S, output_lock
from ..core.models import describe_unloaded, load_model, resolve_device
from .compare import CompareRow, combinations, compare_granularity
from .export import check_export_dir, export_transfer
from .plan import TransferConfig, plan_transfer
from .sensitivity import SensitivityConfig
from .sensitivity_files import MapFile, cached_sensitivity, check_map_data, check_map_model, provenance, read_map_file
from .similarity import layer_similarity


@dataclass
class Prepared:
    """Both models described, the teacher loaded, the seed records and the teacher's map (computed, cached or
    read from a file), with the settings the map was computed with. The student's weights are loaded now or,
    where nothing needs them before the export, on first use (`student_weights`)."""
    teacher_model: object
    student_model: object | None  # None until `student_weights()` loads it
    teacher_tokenizer: object
    student_tokenizer: object
    teacher: ModelInfo
    student: ModelInfo
    records: list
    data_ref: str
    scores: dict
    sens_config: SensitivityConfig
    map_file: MapFile | None = None  # the file the map came from (`--sensitivity`), checked
    seed_losses: list | None = None  # the teacher's loss on each seed (a map made before they were kept: None)
    student_ref: str = ""

    def student_weights(self):
        """The student model, loaded on first use."""
        if self.student_model is None:
            self.student_model, self.student_tokenizer = load_model(self.student_ref)
        return self.student_model


def _map_source(teacher_ref: str, data_ref: str | None, sens_config: SensitivityConfig, sensitivity_file,
                asked: dict | None) -> tuple[MapFile | None, str, SensitivityConfig]:
    """The map file (read and checked against the teacher's name and `asked`), the seed data's reference
    (the file's own when `data_ref` is not given) and the sensitivity settings in force."""
    if sensitivity_file is None:
        if not data_ref:
            raise ParaknowError("give --data (the seed samples) or --sensitivity (a map file).")
        return None, data_ref, sens_config
    map_file = read_map_file(sensitivity_file, teacher_ref, asked)
    data_ref = data_ref or map_file.meta.get("data")
    if not data_ref:
        raise ParaknowError(f"{sensitivity_file} does not name its seed data: give --data.")
    return map_file, data_ref, map_file.config


def prepare(teacher_ref: str, student_ref: str, data_ref: str | None, config: TransferConfig,
            sens_config=None, device=None, dtype=None, progress=None, sensitivity_file=None,
            asked: dict | None = None, student_weights: bool = True) -> Prepared:
    """Load, check the pair, and the teacher's map: from `sensitivity_file` (checked: teacher, settings the
    user `asked` for, seed data, shapes) or computed through the cache. Without `student_weights` the student
    is described from a weightless instance and loaded later (`Prepared.student_weights`): the real pair's
    peak memory is then the teacher and its map, not the teacher, its map and the student."""
    config.validate()
    sens_config = sens_config or SensitivityConfig()
    sens_config.validate()
    resolve_device(device)
    map_file, data_ref, sens_config = _map_source(teacher_ref, data_ref, sens_config, sensitivity_file, asked)
    records = load_records(data_ref)
    if map_file is not None:
        check_map_data(map_file, records, data_ref)
    teacher_model, teacher_tok = load_model(teacher_ref, dtype=dtype, device=device)
    if student_weights:
        student_model, student_tok = load_model(student_ref)
        s_info = describe(student_model, student_tok)
    else:
        student_model, (s_info, student_tok) = None, describe_unloaded(student_ref)
    t_info = describe(teacher_model, teacher_tok)
    check_transferable(t_info, s_info, config)  # fail before the expensive sensitivity pass
    if map_file is not None:
        check_map_model(map_file, teacher_model)
        scores, meta = map_file.scores, map_file.meta
    else:
        scores, meta = cached_sensitivity(teacher_model, teacher_tok, records, sens_config, progress, teacher_ref)
    return Prepared(teacher_model, student_model, teacher_tok, student_tok, t_info, s_info, records, data_ref,
                    scores, sens_config, map_file, meta.get("seed_losses"), student_ref)


def _similarity(p: Prepared, progress=None):
    """The teacher x student layer similarity on the seed samples the map was computed on."""
    similarity, _ = layer_similarity(p.teacher_model, p.student_weights(), p.teacher_tokenizer,
                                     p.records[:p.sens_config.samples], student_tokenizer=p.student_tokenizer,
                                     progress=progress)
    return similarity


def extract_to_dir(teacher_ref: str, student_ref: str, data_ref: str | None, out_dir, config: TransferConfig,
                   sens_config=None, device=None, dtype=None, progress=None, overwrite: bool = False,
                   sensitivity_file=None, asked: dict | None = None) -> dict:
    """The whole `extract` command: load both models, sensitivity (cached, or `sensitivity_file`), plan,
    export. The output is checked first (see `export_transfer`), so a refused one costs no work."""
    check_export_dir(out_dir, overwrite)
    with output_lock(out_dir, wait_s=REFUSE_WAIT_S):  # a second writer of out_dir is refused
        wants_cka = config.layers == "cka"  # the layer similarity runs the student; nothing else needs it yet
        p = prepare(teacher_ref, student_ref, data_ref, config, sens_config, device, dtype, progress,
                    sensitivity_file, asked, student_weights=wants_cka)
        similarity = _similarity(p, progress) if wants_cka else None
        origin = provenance(teacher_ref, student_ref, p.data_ref, p.sens_config, p.records)
        if p.map_file is not None:
            origin["sensitivity_file"] = p.map_file.path
        if p.seed_losses is not None:
            origin["seed_losses"] = p.seed_losses
        scores, p.scores = p.scores, None  # handed over: plan_and_export empties it once it has planned
        return plan_and_export(p.teacher_model, p.student_weights, p.teacher, p.student, scores, config, out_dir,
                               origin, similarity, progress, overwrite=overwrite)


def plan_and_export(teacher_model, student: Callable[[], object], t_info, s_info, scores: dict,
                    config: TransferConfig, out_dir, origin: dict, similarity=None, progress=None,
                    overwrite: bool = False) -> dict:
    """Plan from a sensitivity map and write the export (the `extract` command's last two steps, and
    the app's export job on the map the page shows); returns the manifest. The plan keeps no reference
    to the map, so `scores` is emptied once planned: the map (float32, the teacher's size) is freed
    before the student model is asked for (`student()`, which may load it) and before the export's SVDs
    (the real pair's peak memory)."""
    plan = plan_transfer(t_info, s_info, scores, config, similarity)
    scores.clear()
    return export_transfer(teacher_model, student(), t_info, s_info, plan, config, out_dir, origin, progress,
                           overwrite=overwrite)


def compare_to_rows(teacher_ref: str, student_ref: str, data_ref: str | None, config: TransferConfig,
                    sens_config=None, device=None, dtype=None, progress=None, sensitivity_file=None,
                    asked: dict | None = None, compare: bool = True) -> tuple[list[CompareRow], Prepared]:
    """The `plan` command: `config`'s own combination, or with `compare` every structure x layer strategy x
    coherent level (cka included: the layer similarity is computed on the seed samples)."""
    p = prepare(teacher_ref, student_ref, data_ref, config, sens_config, device, dtype, progress,
                sensitivity_file, asked)
    wants_cka = compare or config.layers == "cka"
    similarity = _similarity(p, progress) if wants_cka else None
    combos = combinations(similarity) if compare else [(config.structure, config.layers, config.coherent)]
    rows = compare_granularity(p.teacher_model, p.student_model, p.teacher, p.student, p.scores, config,
                               similarity, combos, progress)
    if not compare and rows[0].error:  # the one combination asked for cannot be planned: say why
        raise ParaknowError(rows[0].error)
    return rows, p
