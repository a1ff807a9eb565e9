"""Where a running cell is: its phase and step (export, training step k/n, test item k/n), written to
the cell's folder through the job substrate (paraknow.core.jobdir: progress.jsonl, read back with
`last_progress`) for the Study page, and echoed now and then on the study process's stderr for the CLI
(a background study's stderr is its stdout.log).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..core.jobdir import append_progress, last_progress

WRITE_EVERY_S = 1.0  # progress.jsonl lines at most this often within a phase
ECHO_EVERY_S = 15.0  # stderr lines at most this often within a phase


class CellProgress:
    """`progress(done, total, message)` for one cell: the line goes to CELL/progress.jsonl (throttled)
    and, at a new phase or every ECHO_EVERY_S, to stderr as `  NAME: message done/total`."""

    def __init__(self, folder: Path, name: str, stream=None):
        self.folder, self.name = Path(folder), name
        self.stream = stream or sys.stderr  # taken now: while the cell trains, sys.stderr is the cell's log
        self.message, self.written, self.echoed = None, 0.0, 0.0

    def __call__(self, done: int, total: int, message: str) -> None:
        now, new_phase = time.time(), message != self.message
        if new_phase or done >= total or now - self.written >= WRITE_EVERY_S:
            append_progress(self.folder, done, total, message)
            self.written = now
        if new_phase or now - self.echoed >= ECHO_EVERY_S:
            print(f"  {self.name}: {_text(done, total, message)}", file=self.stream, flush=True)
            self.echoed = now
        self.message = message

    def warn(self, warning: str | None) -> None:
        """A warning about the cell (the export's degenerate seeds) on stderr, once."""
        if warning:
            print(f"  {self.name}: warning: {warning}", file=self.stream, flush=True)

    def phase(self, message: str) -> None:
        """A phase without steps (the export, loading): shown as 0/1 until the next one."""
        self(0, 1, message)

    def evaluation(self, what: str):
        """A `progress` for paraknow.runs.evaluate.evaluate that names the split (`test`)."""
        return lambda done, total, message: self(done, total, f"{what}: {message}")

    def trainer_callback(self, config):
        """A TrainerCallback reporting `training step k/n`, then the validation after the last step."""
        from transformers import TrainerCallback

        report = self
        validation = f"validation on {config.eval_limit or 'all'} items" if config.eval_data else None

        class StepProgress(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                report(state.global_step + 1, state.max_steps, "training step")
                return control

            def on_optimizer_step(self, args, state, control, **kwargs):  # before the step's end evaluates
                if validation and state.global_step + 1 == state.max_steps:
                    report.phase(validation)
                return control

        return StepProgress()


def _text(done: int, total: int, message: str) -> str:
    return message if total <= 1 and not done else f"{message} {done}/{total}"  # a phase without steps: its name


def progress_text(folder: Path) -> str:
    """`message done/total` of a cell's newest progress line ('' before its first)."""
    row = last_progress(folder)
    return _text(row["done"], row["total"], row["message"]) if row else ""
