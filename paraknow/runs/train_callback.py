"""What a run does at each training step (a transformers TrainerCallback) and how it is asked to stop.

`RunCallback` appends a line per optimizer step to metrics.jsonl, keeps status.json current (step,
loss, ETA), evaluates every `eval_every` steps and at the end, and stops training at the next step
once RUN_DIR/STOP exists or SIGTERM arrives (`sigterm_sets`); under several processes every rank
stops together. At the first loss or gradient norm that is not finite it stops too and records
why in `diverged` (the run then fails: a NaN model is never reported as trained). Imports transformers: only the training loop imports this module.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..core.jobdir import STOP_FILE
from .rundir import StatusFile


class RunCallback(TrainerCallback):
    """metrics.jsonl + status per step, the STOP file, periodic evaluation (`eval_fn(model)`)."""

    def __init__(self, run_dir: Path, status: StatusFile, metrics_fh, eval_fn, eval_every, stop_event):
        self.stop_path = Path(run_dir) / STOP_FILE
        self.status, self.metrics_fh, self.stop_event = status, metrics_fh, stop_event
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.stopped = False
        self.diverged = None  # why training stopped at a non-finite loss or gradient norm
        self.pending_eval = None
        self.last_eval = None
        self.last_eval_step = None
        self.t0 = time.time()
        self.t_first_log, self.first_logged_step = None, 0  # ETA clock starts after the first logged step
        self.summary = {}

    def _stop_requested(self, args) -> bool:
        local = self.stop_event.is_set() or self.stop_path.exists()
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            flag = torch.tensor([1.0 if local else 0.0], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item() > 0)
        return local

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.time()
        self.status.update(phase="training", max_steps=state.max_steps, step=0, train_started=self.t0)

    def on_step_end(self, args, state, control, **kwargs):
        if self._stop_requested(args):
            self.stopped = True
            control.should_training_stop = True
            return control
        step = state.global_step
        due = self.eval_fn is not None and ((self.eval_every and step % self.eval_every == 0)
                                            or step >= state.max_steps)
        if due and state.is_world_process_zero:
            self.status.update(phase="evaluating", step=step)
            result = self.eval_fn(kwargs["model"])
            self.pending_eval = {"eval_loss": result.loss, "eval_accuracy": result.accuracy}
            self.last_eval, self.last_eval_step = result, step
            self.status.update(phase="training", last_eval={"step": step, **result.to_dict()})
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        bad = next((k for k in ("loss", "grad_norm") if not math.isfinite((logs or {}).get(k, 0.0) or 0.0)), None)
        if bad is not None:  # the logged loss and norm are already reduced over every process: all stop
            self.diverged = (f"training diverged: the {bad.replace('_', ' ')} is {logs[bad]} at step "
                             f"{state.global_step} (lr {args.learning_rate:g}); lower --lr or check the data")
            control.should_training_stop = True
        if not state.is_world_process_zero or not logs:
            return control
        if "loss" not in logs:
            self.summary.update({k: v for k, v in logs.items() if k.startswith("train_")})
            return control
        now = time.time()
        line = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch),
                "loss": logs.get("loss"), "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"), "time": round(now - self.t0, 3)}
        if self.pending_eval is not None:
            line.update(self.pending_eval)
            self.pending_eval = None
        if self.metrics_fh is not None:
            self.metrics_fh.write(json.dumps(line) + "\n")
            self.metrics_fh.flush()
        step, max_steps = state.global_step, max(state.max_steps, 1)
        eta = self._eta(now, step, max_steps)
        self.status.update(force="eval_loss" in line or step == 1, step=step, epoch=line["epoch"],
                           loss=line["loss"], eta_s=round(eta, 1) if eta is not None else None)
        print(f"step {step}/{max_steps} epoch {line['epoch']:.3f} loss {line['loss']:.4f} "
              f"lr {line['lr']:.3g} grad_norm {_fmt(line['grad_norm'])}"
              + (f" eval_loss {line['eval_loss']:.4f} eval_accuracy {_fmt(line['eval_accuracy'])}"
                 if "eval_loss" in line else ""), flush=True)
        return control

    def _eta(self, now: float, step: int, max_steps: int) -> float | None:
        """Seconds left, timed from the end of the first logged step (it carries the warm-up)."""
        if self.t_first_log is None:
            self.t_first_log, self.first_logged_step = now, step
            return (now - self.t0) / step * (max_steps - step) if step else None
        per_step = (now - self.t_first_log) / max(1, step - self.first_logged_step)
        return per_step * (max_steps - step)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def sigterm_sets(stop_event: threading.Event):
    """SIGTERM asks for a clean stop (like STOP); only possible from the main thread. Returns the
    previous handler for `restore_sigterm` (None when nothing was installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    except (ValueError, OSError):
        return None


def restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass
