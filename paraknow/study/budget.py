"""How long a study will take, estimated before launch from a short calibration on this machine.

The calibration loads the student once, times a forward+backward pass over one micro-batch of
training records and a greedy generation batch over validation records, and (when PKT arms or
the teacher control need it) the teacher's load and one forward+backward pass. A cell's
estimate is then:

  trained cell  student load + train samples x epochs x (train s/sample)
                + (validation records evaluated + test records) x (generation s/record)
                + for a PKT cell whose export is new: teacher load + seed samples x (teacher s/sample)
  control       model load + test records x (generation s/record; the teacher's scaled by its size)

Every figure is CPU seconds measured with the torch threads of the study's thread policy
(paraknow.core.threads: one per worker on a CPU), so it does not swing with other work on the
machine; the study's total is the cells' seconds shared out over the policy's workers.
Generation is timed at the full `eval_max_new_tokens` (an untrained model rarely stops early),
so the estimate errs high. Cells that already finished (a resumed study) replace the
calibration of their arm by their measured mean. docs/study.md shows it next to the real time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..core.threads import THREADS_PER_WORKER, ThreadPolicy
from .plan import Cell, DataSizes, train_config
from .recipe import Recipe

REPEATS = 3  # calibration passes of each kind; the fastest counts


@dataclass
class Calibration:
    student_load_s: float
    train_s_per_sample: float
    generate_s_per_record: float
    teacher_load_s: float = 0.0
    teacher_s_per_sample: float = 0.0  # sensitivity: one forward+backward per seed sample
    teacher_size_ratio: float = 1.0  # teacher parameters / student parameters


@dataclass
class TimeEstimate:
    total_s: float  # wall seconds: the cells' seconds shared out over the policy's workers
    cells: dict = field(default_factory=dict)  # cell_id -> seconds
    calibration: Calibration | None = None
    policy: ThreadPolicy = field(default_factory=lambda: ThreadPolicy(1, THREADS_PER_WORKER))

    def describe(self) -> str:
        n = len(self.cells)
        per = sum(self.cells.values()) / n if n else 0.0
        workers = self.policy.workers
        return (f"about {self.total_s / 60:.1f} min for {n} cells ({per:.0f} s per cell on average, "
                f"{workers} at a time, {self.policy.threads} torch thread{'s' * (self.policy.threads > 1)} each)")


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    """(CPU seconds of this process, value): at one thread per worker a cell's wall time is its CPU time
    whenever it has its core, and CPU time does not grow with other work on the machine."""
    t0 = time.process_time()
    value = fn(*args, **kwargs)
    return time.process_time() - t0, value


def _fastest(fn, *args) -> tuple[float, object]:
    """(the fewest CPU seconds of REPEATS calls, the last value): the first call carries one-off warm-up
    costs, and the fastest is the steadiest figure on a shared machine."""
    runs = [_timed(fn, *args) for _ in range(REPEATS)]
    return min(seconds for seconds, _ in runs), runs[-1][1]


def _train_seconds_per_sample(model, tokenizer, records, micro_batch: int, max_length: int) -> float:
    from ..core.data import collate, encode_all
    from ..runs.evaluate import _device_of, _pad_id

    items = encode_all(tokenizer, records[:micro_batch], max_length)
    batch = {k: v.to(_device_of(model)) for k, v in collate(items, _pad_id(tokenizer)).items()}
    model.train()
    seconds, _ = _fastest(lambda: model(**batch).loss.backward())
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds / len(items)


def calibrate(recipe: Recipe, sizes: DataSizes) -> Calibration:
    """Measure this machine on the study's own models and data (a few seconds on the demo pair)."""
    from ..core.data import load_records
    from ..core.models import load_model
    from ..runs.evaluate import generate_completions

    base = train_config(recipe, recipe.arm(recipe.baseline), 0, None, "vanilla")
    load_s, (model, tokenizer) = _fastest(load_model, recipe.student)  # the first load also pays imports
    train_records = load_records(recipe.train_data)
    per_sample = _train_seconds_per_sample(model, tokenizer, train_records, base.micro_batch, base.max_length)
    val = load_records(recipe.val_data)[:base.eval_batch]
    gen_s, _ = _fastest(generate_completions, model, tokenizer, val, base.eval_max_new_tokens, base.eval_batch)
    calibration = Calibration(load_s, per_sample, gen_s / max(1, len(val)))
    if any(arm.init in ("pkt", "teacher") or arm.distill for arm in recipe.arms):
        teacher_ref = recipe.teacher or next(recipe.teacher_of(a) if a.init == "pkt" else
                                             recipe.distill_settings(a)["distill_teacher"]
                                             for a in recipe.arms if a.init == "pkt" or a.distill)
        calibration.teacher_load_s, (teacher, teacher_tok) = _timed(load_model, teacher_ref)
        seeds = load_records(recipe.seed_data or recipe.train_data)
        calibration.teacher_s_per_sample = _train_seconds_per_sample(teacher, teacher_tok, seeds, 1, base.max_length)
        calibration.teacher_size_ratio = sum(p.numel() for p in teacher.parameters()) / \
            sum(p.numel() for p in model.parameters())
    return calibration


def export_seconds(recipe: Recipe, arm, sizes: DataSizes, c: Calibration) -> float:
    """What making a PKT arm's export adds to its first cell: both models loaded, the teacher's
    sensitivity over the seed samples."""
    samples = recipe.sensitivity_config(arm).samples
    return c.teacher_load_s + c.student_load_s + min(samples, sizes.seed) * c.teacher_s_per_sample


def estimate_study(recipe: Recipe, cells: list[Cell], sizes: DataSizes, calibration: Calibration,
                   measured: dict | None = None, export_keys: dict | None = None,
                   policy: ThreadPolicy | None = None) -> TimeEstimate:
    """Seconds for `cells` run under `policy` (default: one at a time). `measured`: arm -> mean
    seconds of its finished cells; `export_keys`: cell_id -> the key of its export (cells sharing a
    key extract once)."""
    policy = policy or ThreadPolicy(1, THREADS_PER_WORKER)
    measured, export_keys = measured or {}, export_keys or {}
    c = calibration
    seen_exports = set()
    out = {}
    for cell in cells:
        arm = recipe.arm(cell.arm)
        if arm.name in measured:
            out[cell.cell_id] = measured[arm.name]
            continue
        config = train_config(recipe, arm, 0, cell.lr, "vanilla")
        if not arm.trained:
            scale = c.teacher_size_ratio if arm.init == "teacher" else 1.0
            load = c.teacher_load_s if arm.init == "teacher" else c.student_load_s
            out[cell.cell_id] = load + sizes.test * c.generate_s_per_record * scale
            continue
        n_val = min(sizes.val, config.eval_limit or sizes.val)
        seconds = (c.student_load_s + sizes.train * config.epochs * c.train_s_per_sample
                   + (n_val + sizes.test) * c.generate_s_per_record)
        key = export_keys.get(cell.cell_id)
        if arm.init == "pkt" and key not in seen_exports:
            seen_exports.add(key)
            seconds += export_seconds(recipe, arm, sizes, c)
        if arm.distill:  # logit KD: a teacher forward (~1/3 of its forward+backward) per training sample;
            # sequence KD: the teacher's generation of every training answer (made once, then cached)
            seconds += c.teacher_load_s + (
                sizes.train * config.epochs * c.teacher_s_per_sample / 3 if arm.distill["kind"] == "logits"
                else sizes.train * c.generate_s_per_record * c.teacher_size_ratio)
        out[cell.cell_id] = seconds
    return TimeEstimate(sum(out.values()) / policy.workers, out, calibration, policy)
