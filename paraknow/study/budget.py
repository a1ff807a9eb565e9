"""How long a study will take, estimated before launch from a short calibration on this machine.

The calibration loads the student once and times what a cell does with it: a loss pass and a greedy
generation batch over validation records (the evaluation), then, with the baseline arm's LoRA put on it,
a forward+backward pass of the training loss over one micro-batch of training records. When PKT arms or
the teacher control need it: the teacher's load and the sensitivity pass itself over a few seed samples
(and for logit KD a plain forward+backward pass of the teacher). A cell's estimate is then:

  trained cell  student load + LoRA + train samples x epochs x (train s/sample)
                + (validation records evaluated + test records) x (loss + generation s/record)
                + for a PKT cell whose export is new: teacher and student loads + seed samples x
                  (sensitivity s/sample) + the signals' zero-step loss (twice ZERO_STEP_RECORDS records)
  control       model load + test records x (loss + generation s/record; the teacher's scaled by its size)

Every figure is CPU seconds measured with the torch threads of the study's thread policy
(paraknow.core.threads: one per worker on a CPU). Two measured factors turn them into wall seconds
(docs/study.md, *Time budget*):

  overhead    the CPU seconds real cells of this kind took over their CPU estimate, on this machine
              at this thread count with these models (the last cells run, kept in
              cache/timing/<key>.json by `record_cell`; 1 before any cell ran)
  contention  wall / CPU seconds of the cells finished there in the last RECENT_S at this process's
              niceness: the share of a core long work got lately; without such cells, the calibration's
              own wall / CPU seconds (a snapshot of a few seconds, which the scheduler favours: it errs low)

Cells that already finished (a resumed study) replace the estimate of their arm by their measured
mean. While a study runs, `BudgetGate` re-estimates each next cell from the cells done so far (the
overhead of cells like it, the contention of all of them), and stops the study before a cell that
would take it past its budget.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.fsio import atomic_write_json
from ..core.jobdir import read_json
from ..core.paths import cache_root
from ..core.threads import THREADS_PER_WORKER, ThreadPolicy
from .plan import Cell, DataSizes, train_config
from .recipe import Recipe
from .signals import ZERO_STEP_RECORDS

REPEATS = 3  # calibration passes of each kind; the fastest counts
SENSITIVITY_SAMPLES = 2  # seed samples in each calibration pass of the sensitivity
TIMING_DIR = "timing"  # under the cache: the measured cells behind the overhead factors
TIMING_KEEP = 8  # cells per kind that the overhead factor averages (the newest)
KINDS = ("control", "trained", "pkt-export", "pkt")  # pkt-export: a PKT cell that makes its export
RECENT_S = 1800  # the cells whose wall / CPU seconds give the contention: those finished this recently


@dataclass
class Calibration:
    student_load_s: float
    train_s_per_sample: float  # the training loss's forward+backward through the LoRA, per record
    generate_s_per_record: float
    loss_s_per_record: float = 0.0  # the evaluation's loss pass (a forward at the labelled positions)
    lora_s: float = 0.0  # putting the LoRA on the loaded student
    teacher_load_s: float = 0.0
    teacher_s_per_sample: float = 0.0  # one plain forward+backward of the teacher (logit KD: a third of it)
    sensitivity_s_per_sample: float = 0.0  # the sensitivity pass per seed sample (its folds included)
    teacher_size_ratio: float = 1.0  # teacher parameters / student parameters
    contention: float = 1.0  # wall / CPU seconds of the calibration: >1 when the process waits for a core


@dataclass
class TimeEstimate:
    total_s: float  # wall seconds: the cells' seconds shared out over the policy's workers
    cells: dict = field(default_factory=dict)  # cell_id -> wall seconds (CPU estimate x overhead x contention)
    calibration: Calibration | None = None
    policy: ThreadPolicy = field(default_factory=lambda: ThreadPolicy(1, THREADS_PER_WORKER))
    cpu_cells: dict = field(default_factory=dict)  # cell_id -> (kind, CPU seconds before the factors)
    factors: Factors = field(default_factory=lambda: Factors())

    def describe(self) -> str:
        n = len(self.cells)
        per = sum(self.cells.values()) / n if n else 0.0
        workers = self.policy.workers
        return (f"about {self.total_s / 60:.1f} min for {n} cells ({per:.0f} s per cell on average, "
                f"{workers} at a time, {self.policy.threads} torch thread{'s' * (self.policy.threads > 1)} each; "
                f"{self.factors.describe(self.calibration)})")


@dataclass
class Factors:
    """What the cells measured on this machine say (`measured_factors`): the overhead per kind and the
    recent contention (None: no recent cell, the calibration's snapshot stands in)."""
    overhead: dict = field(default_factory=dict)  # kind -> factor (absent: none measured yet)
    contention: float | None = None

    def contention_of(self, calibration: Calibration | None) -> float:
        return self.contention or (calibration.contention if calibration else 1.0)

    def describe(self, calibration: Calibration | None) -> str:
        overhead = ("measured overhead " + ", ".join(f"{k} {f:.2f}" for k, f in self.overhead.items())
                    if self.overhead else "no cells measured on this machine yet")
        source = "of the last cells" if self.contention else "of the calibration"
        return f"{overhead}; contention {self.contention_of(calibration):.2f} ({source})"


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


def _batch(model, tokenizer, records, max_length: int) -> dict:
    from ..core.data import collate, encode_all
    from ..runs.evaluate import _device_of, _pad_id

    items = encode_all(tokenizer, records, max_length)
    return {k: v.to(_device_of(model)) for k, v in collate(items, _pad_id(tokenizer)).items()}


def _backward_seconds(model, batch: dict, loss_of) -> float:
    """The fewest CPU seconds of a forward+backward of `loss_of(model, batch)`, per record of the batch."""
    model.train()
    seconds, _ = _fastest(lambda: loss_of(model, batch).backward())
    model.zero_grad(set_to_none=True)
    model.eval()
    return seconds / batch["input_ids"].size(0)


def _plain_loss(model, batch: dict):
    return model(**batch).loss


def _calibrate_student(recipe: Recipe, base) -> tuple[Calibration, int]:
    """(The student's load, the evaluation's loss and generation per record (on the model as it is: the
    cells evaluate merged weights), then the LoRA put on and the training loss per record through it;
    the student's parameter count)."""
    from ..core.data import load_records
    from ..core.models import load_model
    from ..runs.evaluate import completion_losses, generate_completions
    from ..runs.inits import wrap
    from ..runs.train_loss import completion_loss

    load_s, (model, tokenizer) = _fastest(load_model, recipe.student)  # the first load also pays imports
    val = load_records(recipe.val_data)[:base.eval_batch]
    loss_s, _ = _fastest(completion_losses, model, tokenizer, val, base.eval_batch, base.max_length)
    gen_s, _ = _fastest(generate_completions, model, tokenizer, val, base.eval_max_new_tokens, base.eval_batch)
    params = sum(p.numel() for p in model.parameters())
    lora_s, model = _timed(wrap, model, tokenizer, base)
    train = _batch(model, tokenizer, load_records(recipe.train_data)[:base.micro_batch], base.max_length)
    return Calibration(load_s, _backward_seconds(model, train, completion_loss), gen_s / max(1, len(val)),
                       loss_s / max(1, len(val)), lora_s), params


def _calibrate_teacher(recipe: Recipe, base, calibration: Calibration, student_params: int) -> None:
    """The teacher's load, size, a plain forward+backward per sample and (for PKT arms) the sensitivity
    pass per seed sample, into `calibration`."""
    from dataclasses import replace

    from ..core.data import load_records
    from ..core.models import load_model
    from ..transfer.sensitivity import compute_sensitivity

    pkt = next((a for a in recipe.arms if a.init == "pkt"), None)
    ref = recipe.teacher or (recipe.teacher_of(pkt) if pkt else
                             next(recipe.distill_settings(a)["distill_teacher"] for a in recipe.arms if a.distill))
    calibration.teacher_load_s, (teacher, tokenizer) = _timed(load_model, ref)
    seeds = load_records(recipe.seed_data or recipe.train_data)
    calibration.teacher_s_per_sample = _backward_seconds(teacher, _batch(teacher, tokenizer, seeds[:1],
                                                                         base.max_length), _plain_loss)
    calibration.teacher_size_ratio = sum(p.numel() for p in teacher.parameters()) / student_params
    if pkt is not None:
        config = replace(recipe.sensitivity_config(pkt), samples=min(SENSITIVITY_SAMPLES, len(seeds)))
        seconds, _ = _fastest(compute_sensitivity, teacher, tokenizer, seeds, config)
        calibration.sensitivity_s_per_sample = seconds / config.samples


def calibrate(recipe: Recipe, sizes: DataSizes) -> Calibration:
    """Measure this machine on the study's own models and data (a few seconds on the demo pair)."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    base = train_config(recipe, recipe.arm(recipe.baseline), 0, None, "vanilla").resolved(check_out=False)
    calibration, student_params = _calibrate_student(recipe, base)
    if any(arm.init in ("pkt", "teacher") or arm.distill for arm in recipe.arms):
        _calibrate_teacher(recipe, base, calibration, student_params)
    cpu = time.process_time() - cpu0
    calibration.contention = max(1.0, (time.perf_counter() - wall0) / cpu) if cpu > 0 else 1.0
    return calibration


def export_seconds(recipe: Recipe, arm, sizes: DataSizes, c: Calibration) -> float:
    """What making a PKT arm's export adds to its first cell: the teacher and the student loaded (the
    student twice: for the transfer, then for the signals), the teacher's sensitivity over the seed samples,
    and the signals' zero-step loss (the student's loss before and after the transfer)."""
    samples = recipe.sensitivity_config(arm).samples
    return (c.teacher_load_s + 2 * c.student_load_s + min(samples, sizes.seed) * c.sensitivity_s_per_sample
            + 2 * min(ZERO_STEP_RECORDS, sizes.val) * c.loss_s_per_record)


def cell_kind(arm, new_export: bool) -> str:
    """The kind of a cell for the overhead factors (KINDS)."""
    if not arm.trained:
        return "control"
    return ("pkt-export" if new_export else "pkt") if arm.init == "pkt" else "trained"


def _cpu_seconds(recipe: Recipe, cell: Cell, sizes: DataSizes, c: Calibration, new_export: bool) -> float:
    """The calibration's CPU seconds for one cell (module docstring)."""
    arm = recipe.arm(cell.arm)
    config = train_config(recipe, arm, 0, cell.lr, "vanilla")
    evaluation = c.loss_s_per_record + c.generate_s_per_record  # per record: its loss, then its answer
    if not arm.trained:
        scale = c.teacher_size_ratio if arm.init == "teacher" else 1.0
        load = c.teacher_load_s if arm.init == "teacher" else c.student_load_s
        return load + sizes.test * evaluation * scale
    n_val = min(sizes.val, config.eval_limit or sizes.val)
    seconds = (c.student_load_s + c.lora_s + sizes.train * config.epochs * c.train_s_per_sample
               + (n_val + sizes.test) * evaluation)
    if new_export:
        seconds += export_seconds(recipe, arm, sizes, c)
    if arm.distill:  # logit KD: a teacher forward (~1/3 of its forward+backward) per training sample;
        # sequence KD: the teacher's generation of every training answer (made once, then cached)
        seconds += c.teacher_load_s + (
            sizes.train * config.epochs * c.teacher_s_per_sample / 3 if arm.distill["kind"] == "logits"
            else sizes.train * c.generate_s_per_record * c.teacher_size_ratio)
    return seconds


def estimate_study(recipe: Recipe, cells: list[Cell], sizes: DataSizes, calibration: Calibration,
                   measured: dict | None = None, export_keys: dict | None = None,
                   policy: ThreadPolicy | None = None, factors: Factors | None = None) -> TimeEstimate:
    """Wall seconds for `cells` run under `policy` (default: one at a time). `measured`: arm -> mean
    seconds of its finished cells; `export_keys`: cell_id -> the key of the export it makes (cells sharing a
    key extract once; a PKT cell without one finds its export made; None: each PKT arm and seed makes
    its own); `factors`: what cells measured on this machine (`measured_factors`)."""
    policy = policy or ThreadPolicy(1, THREADS_PER_WORKER)
    measured, factors = measured or {}, factors or Factors()
    contention = factors.contention_of(calibration)
    seen_exports, out, cpu = set(), {}, {}
    for cell in cells:
        arm = recipe.arm(cell.arm)
        key = None if arm.init != "pkt" else (cell.arm, cell.seed) if export_keys is None else \
            export_keys.get(cell.cell_id)  # None: no export to make (not PKT, or made already)
        new_export = key is not None and key not in seen_exports
        seen_exports.add(key)
        kind = cell_kind(arm, new_export)
        cpu[cell.cell_id] = (kind, _cpu_seconds(recipe, cell, sizes, calibration, new_export))
        out[cell.cell_id] = measured[arm.name] if arm.name in measured else \
            cpu[cell.cell_id][1] * factors.overhead.get(kind, 1.0) * contention
    return TimeEstimate(sum(out.values()) / policy.workers, out, calibration, policy, cpu, factors)


# ---------------------------------------------------------------------------------------
# The measured cells behind the overhead factors


def timing_file(recipe: Recipe, threads: int) -> Path:
    """cache/timing/<key>.json: keyed by content -- this machine, the torch threads per cell, the pair."""
    key = json.dumps([socket.gethostname(), os.cpu_count(), threads, recipe.student, recipe.teacher])
    return cache_root() / TIMING_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def measured_factors(path: Path, now: float | None = None) -> Factors:
    """The overhead per kind (real CPU seconds / estimated CPU seconds over the newest TIMING_KEEP cells of
    that kind) and the contention (wall / CPU seconds of the cells finished in the last RECENT_S at this
    process's niceness)."""
    samples = (read_json(path) or {}).get("cells", [])
    factors = Factors()
    for kind in KINDS:
        rows = [s for s in samples if s.get("kind") == kind][-TIMING_KEEP:]
        estimated = sum(s["estimate_cpu_s"] for s in rows)
        if estimated > 0:
            factors.overhead[kind] = sum(s["cpu_s"] for s in rows) / estimated
    now = time.time() if now is None else now
    recent = [s for s in samples if s.get("nice") == os.nice(0) and now - s["at"] <= RECENT_S and s.get("wall_s")]
    cpu = sum(s["cpu_s"] for s in recent)
    if cpu > 0:
        factors.contention = max(1.0, sum(s["wall_s"] for s in recent) / cpu)
    return factors


def record_cell(path: Path, estimate: TimeEstimate, cell_id: str, record: dict) -> None:
    """Add a finished cell's real CPU and wall seconds beside its estimate (the newest TIMING_KEEP
    per kind are kept)."""
    if cell_id not in estimate.cpu_cells or record.get("cpu_s") is None:
        return
    kind, estimated = estimate.cpu_cells[cell_id]
    samples = (read_json(path) or {}).get("cells", [])
    samples.append({"kind": kind, "estimate_cpu_s": round(estimated, 3), "cpu_s": record["cpu_s"],
                    "wall_s": record.get("seconds"), "nice": os.nice(0), "at": time.time()})
    kept = [s for k in KINDS for s in [s for s in samples if s.get("kind") == k][-TIMING_KEEP:]]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"cells": sorted(kept, key=lambda s: s["at"])})


# ---------------------------------------------------------------------------------------
# The budget while the study runs


@dataclass
class BudgetGate:
    """Whether the next cell may start: the study's seconds so far (earlier sessions' `spent_before_s`
    plus this session's wall time) and that cell's estimate, corrected by the cells this session
    finished (`next_estimate_s`), must stay within `budget_s`."""
    budget_s: float
    estimate: TimeEstimate
    spent_before_s: float = 0.0
    started: float = field(default_factory=time.time)
    observed: list = field(default_factory=list)  # (kind, estimated CPU s, real CPU s, real wall s) per cell
    refused: tuple | None = None  # (cell, its estimate in seconds, seconds spent) once a cell was held back

    def spent_s(self) -> float:
        return self.spent_before_s + time.time() - self.started

    def observe(self, cell: Cell, record: dict) -> None:
        """A finished cell's real CPU and wall seconds (its record's `cpu_s`, `seconds`) beside its CPU estimate."""
        kind, estimated = self.estimate.cpu_cells.get(cell.cell_id, (None, 0.0))
        if estimated > 0 and record.get("cpu_s") and record.get("seconds"):
            self.observed.append((kind, estimated, record["cpu_s"], record["seconds"]))

    def next_estimate_s(self, cell: Cell) -> float:
        """The cell's wall seconds: its CPU estimate x the overhead (real / estimated CPU seconds) of this
        session's cells of its kind -- or of the kinds that train, for a trained cell; a control's error is
        its evaluation's, not training's, and the reverse -- x the contention (wall / CPU seconds) that all
        of them ran at. Before any cell finished (or with no CPU estimate): the estimate as made."""
        planned = self.estimate.cells.get(cell.cell_id, 0.0)
        if not self.observed or cell.cell_id not in self.estimate.cpu_cells:
            return planned
        kind, cpu = self.estimate.cpu_cells[cell.cell_id]
        alike = ([o for o in self.observed if o[0] == kind]
                 or [o for o in self.observed if (o[0] == "control") == (kind == "control")])
        overhead = (sum(o[2] for o in alike) / sum(o[1] for o in alike) if alike
                    else self.estimate.factors.overhead.get(kind, 1.0))
        contention = max(1.0, sum(o[3] for o in self.observed) / sum(o[2] for o in self.observed))
        return cpu * overhead * contention

    def allows(self, cell: Cell) -> bool:
        need, spent = self.next_estimate_s(cell), self.spent_s()
        if spent + need <= self.budget_s:
            return True
        self.refused = self.refused or (cell, need, spent)
        return False

    def message(self, remaining: int) -> str:
        """What the CLI and the page say when the gate stopped the study."""
        cell, need, spent = self.refused
        return (f"stopped by the budget: the next cell ({cell.cell_id}, about {need / 60:.1f} min) would take the "
                f"study past its {self.budget_s / 60:g}-min budget ({spent / 60:.1f} min spent); {remaining} "
                f"cell{'s remain' if remaining != 1 else ' remains'}. Raise the budget to resume: "
                "`--resume --budget-minutes M` (or budget_minutes in the recipe), or Resume on the Study page with "
                "a larger budget.")
