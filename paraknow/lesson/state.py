"""The lesson's settings, state and typed results (the steps are in paraknow/lesson/steps.py)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import ParaknowError
from ..transfer.lora import MANIFEST_FILE
from ..transfer.sensitivity_map import GROUP_LABELS

GROUP_NAMES = GROUP_LABELS  # the sensitivity groups' display names, the same on every page
RUN_GROUP_PREFIX = "lesson-"
PRESENTATION_SCALE = 1.5  # fonts and chart heights in presentation mode


def pct(share: float, digits: int = 1) -> str:
    """0.1234 -> '12.3 %' (the one number format of every note and table)."""
    return f"{100 * share:.{digits}f} %"


def times(ratio: float) -> str:
    """2.345 -> '2.35×' (ratios near 1 keep their difference visible)."""
    return f"{ratio:.2f}×"


@dataclass
class LessonConfig:
    """The lesson's settings. The pipeline settings themselves are the library's defaults
    (SensitivityConfig, TransferConfig); only the fine-tuning is shortened to fit a lesson."""
    teacher: str = "demo:teacher"
    student: str = "demo:student"
    task: str = "arith"  # seed data task:<task>:seed, training task:<task>:train, questions task:<task>:test
    test_item: int = 0  # the test question the compare step asks
    loss_items: int = 16  # test items whose mean reference loss the compare step reports
    max_new_tokens: int = 64
    epochs: float = 1.0  # a short run: 1000 train samples / batch 32 = 32 optimizer steps
    lr: float = 1e-3
    batch: int = 32
    micro_batch: int = 8
    eval_items: int = 16  # the run evaluates on the first N test items ...
    eval_every: int = 16  # ... every N optimizer steps (and at the end)
    seed: int = 0


@dataclass
class StepResult:
    """What one step shows: charts, one table of its numbers, and the note computed from them."""
    figures: list  # [(title, plotly Figure)]
    table: list[dict]  # rows of preformatted strings: exactly what the page prints
    note: str  # "what to notice", written from `facts`
    facts: dict = field(default_factory=dict)  # the numbers behind the note (named, unformatted)
    extra: dict = field(default_factory=dict)  # step-specific data for the page (answers, run state)


@dataclass
class Question:
    """A "predict first" question: the options and the fact of the result that holds the answer."""
    prompt: str
    options: dict  # option key -> label
    answer_fact: str  # StepResult.facts key holding the right option's key


@dataclass
class Step:
    key: str
    title: str
    formula: str  # markdown (with $...$ LaTeX): the formula in play
    run: Callable  # (Lesson) -> StepResult | None (None: a background job is still running)
    question: Question | None = None
    background: bool = False  # the step starts a background job instead of computing inline


# ---------------------------------------------------------------------------------------
# The lesson's state


Loader = Callable[[str], tuple]  # model reference -> (model, tokenizer)


def default_loader(ref: str) -> tuple:
    from ..core.models import load_model

    model, tokenizer = load_model(ref, device="cpu")
    return model.eval(), tokenizer


class Lesson:
    """Everything computed so far, step by step (each step computes what it needs first)."""

    def __init__(self, config: LessonConfig | None = None, loader: Loader = default_loader):
        self.config = config or LessonConfig()
        self.loader = loader
        self.results: dict[str, StepResult] = {}
        self.predictions: dict[str, str] = {}  # step key -> the option the class predicted
        self._models: dict | None = None
        self._sensitivity: tuple | None = None
        self._plans: dict = {}

    # ---- inputs that several steps share ------------------------------------------------
    def models(self) -> dict:
        """{'teacher', 't_tok', 't_info', 'student', 's_tok', 's_info'}, loaded once."""
        if self._models is None:
            from ..core.architecture import describe

            teacher, t_tok = self.loader(self.config.teacher)
            student, s_tok = self.loader(self.config.student)
            self._models = {"teacher": teacher, "t_tok": t_tok, "t_info": describe(teacher, t_tok),
                            "student": student, "s_tok": s_tok, "s_info": describe(student, s_tok)}
        return self._models

    @property
    def seed_ref(self) -> str:
        return f"task:{self.config.task}:seed"

    def sensitivity(self) -> tuple[dict, dict, list]:
        """(scores, metadata, seed records used): cached on disk by content (`cached_sensitivity`)."""
        if self._sensitivity is None:
            from ..core.data import load_records
            from ..transfer.sensitivity import SensitivityConfig
            from ..transfer.sensitivity_files import cached_sensitivity

            m = self.models()
            config = SensitivityConfig()
            records = load_records(self.seed_ref)[:config.samples]
            scores, meta = cached_sensitivity(m["teacher"], m["t_tok"], records, config, model_ref=self.config.teacher)
            self._sensitivity = (scores, meta, records)
        return self._sensitivity

    def plan(self, structure: str | None = None):
        """The TransferPlan with the library's defaults (`structure` replaces the default one)."""
        from ..transfer.plan import TransferConfig, plan_transfer

        config = TransferConfig() if structure is None else TransferConfig(structure=structure)
        if config.structure not in self._plans:
            m = self.models()
            self._plans[config.structure] = plan_transfer(m["t_info"], m["s_info"], self.sensitivity()[0], config)
        return self._plans[config.structure]

    def export_name(self) -> str:
        """Named by what it is made of, so the same lesson finds its export (and run) again."""
        from ..transfer.plan import TransferConfig

        meta = self.sensitivity()[1]
        key = json.dumps({"teacher": self.config.teacher, "student": self.config.student,
                          "data": meta.get("data_sha256"), "metric": meta.get("metric"),
                          "transfer": asdict(TransferConfig())}, sort_keys=True, default=str)
        return f"lesson-{self.config.task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def export_dir(self) -> Path:
        from ..core.paths import cache_dir

        return cache_dir("exports") / self.export_name()

    def export(self) -> dict:
        """The export's manifest: written once (`transfer.export_transfer`), read back afterwards."""
        from ..transfer.export import export_transfer
        from ..transfer.lora import load_manifest
        from ..transfer.plan import TransferConfig
        from ..transfer.sensitivity import SensitivityConfig
        from ..transfer.sensitivity_files import provenance

        out = self.export_dir()
        if (out / MANIFEST_FILE).is_file():
            return load_manifest(out)
        m = self.models()
        _, _, records = self.sensitivity()
        origin = provenance(self.config.teacher, self.config.student, self.seed_ref, SensitivityConfig(), records)
        try:
            return export_transfer(m["teacher"], m["student"], m["t_info"], m["s_info"], self.plan(),
                                   TransferConfig(), out, origin)
        except ParaknowError:
            if (out / MANIFEST_FILE).is_file():  # another session wrote it meanwhile
                return load_manifest(out)
            raise

    # ---- the fine-tuning run (a background job) -------------------------------------------
    @property
    def run_group(self) -> str:
        """The lesson's runs: this export, these settings."""
        settings = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode()).hexdigest()[:8]
        return f"{RUN_GROUP_PREFIX}{self.export_name()}-{settings}"

    def train_config(self):
        from ..runs.train_config import TrainConfig

        c = self.config
        return TrainConfig(student=c.student, data=f"task:{c.task}:train", init=str(self.export_dir()),
                           epochs=c.epochs, lr=c.lr, batch=c.batch, micro_batch=c.micro_batch, seed=c.seed,
                           eval_data=f"task:{c.task}:test", eval_limit=c.eval_items, eval_every=c.eval_every,
                           eval_max_new_tokens=c.max_new_tokens, device="cpu")

    def _newest_run(self, ended_badly: bool):
        from ..runs.jobs import list_runs

        runs = [r for r in list_runs(group=self.run_group) if (r.state in ("failed", "stopped")) == ended_badly]
        return max(runs, key=lambda r: r.created or 0) if runs else None

    def run(self):
        """The newest run of this lesson that is not failed or stopped (RunInfo), or None."""
        return self._newest_run(ended_badly=False)

    def start_training(self):
        """Queue the lesson's fine-tuning run (unless one is queued, running or finished) -> RunInfo."""
        from ..runs.jobs import run_info, submit

        self.export()
        held = self.run()
        if held is not None:
            return held
        return run_info(submit(self.train_config(), group=self.run_group, label="lesson"))

    def failed_run(self):
        """The newest failed or stopped lesson run (to say why), or None."""
        return self._newest_run(ended_badly=True)
