"""Fine-tuning a student's LoRA: vanilla, PiSSA, or initialised from a PKT export (docs/method.md).

`run_training(config)` is the foreground worker behind `python -m paraknow train` (the app starts
the same command in the background, see `paraknow.runs.jobs`). It writes the run directory that
`paraknow.runs.rundir` documents (spec.json, status.json, metrics.jsonl, adapter/). The pieces:

  paraknow.runs.train_config    TrainConfig, its validation, which method an init means
  paraknow.runs.rundir          the run-directory files and their readers
  paraknow.runs.train_model     the student wrapped in its LoRA, and the adapter saved at the end
  paraknow.runs.train_callback  metrics, status, evaluation and STOP at each step
  paraknow.runs.train_loss      the loss (completion tokens only), in one place
  paraknow.runs.train (here)    the run: lock, load, train, save, final state

Bad input (ParaknowError) is found before anything is written where possible: exit code 2 and,
for a RUN_DIR this process created, no directory at all. Any other exception marks the run
`failed` with the error (traceback on stdout), exit code 1. Under `accelerate launch` only the
main process writes files. This module imports torch/transformers lazily so `paraknow.runs.jobs`
stays cheap to import.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cache import mark_entry
from ..core.errors import ParaknowError, first_line, os_error_message
from ..core.fsio import (REFUSE_WAIT_S, atomic_directory, atomic_write_json, check_output_path, check_writable_parent,
                         output_lock, output_path)
from ..core.jobdir import SPEC_FILE, STATUS_FILE, STOP_FILE, read_json
from ..core.processes import proc_start_time
from .rundir import (METRIC_KEYS, METRICS_FILE, PISSA_INIT_DIR, RUN_FILES, TRAINED_DIR, TRAINER_DIR, StatusFile,
                     is_prepared_for_us)
from .train_config import CLI_FIELDS, PISSA_EMBEDDING_NOTE, TrainConfig, is_main_process, load_spec, world_size
from .train_model import build_model, save_adapter, train_device

__all__ = ["CLI_FIELDS", "METRIC_KEYS", "PISSA_EMBEDDING_NOTE", "TrainConfig", "TrainOutcome", "build_model",
           "load_spec", "run_summary", "run_training", "save_adapter", "train"]


@dataclass
class TrainOutcome:
    """What `train` returns: final state and the training-time model (for tests and scripts)."""
    state: str
    run_dir: Path
    status: dict
    model: object = None
    tokenizer: object = None
    extra: dict = field(default_factory=dict)


def train(config: TrainConfig, callbacks=(), overwrite: bool = False) -> TrainOutcome:
    """Run one training job in this process and return its outcome.

    Raises ParaknowError for bad input (nothing left behind in a RUN_DIR this call created;
    a RUN_DIR prepared by paraknow.runs.jobs is marked failed); any other exception marks the run
    failed and is re-raised. `callbacks` are extra transformers TrainerCallbacks. `overwrite`: RUN_DIR may
    hold a run that has ended, which is replaced whole (rundir.check_out_dir: only if it holds nothing
    but a run's own files). The main
    process holds RUN_DIR's lock throughout, so a second `train` into it is refused at once. Under a
    multi-process launcher, the process group that training started is destroyed at the end
    (left to the interpreter's exit, gloo's threads abort with "terminate called ...").
    """
    distributed_before = _distributed_initialized()
    try:
        return _train(config, callbacks, overwrite)
    finally:
        if not distributed_before and _distributed_initialized():
            import torch.distributed

            torch.distributed.destroy_process_group()


def _distributed_initialized() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _train(config: TrainConfig, callbacks, overwrite: bool) -> TrainOutcome:
    if config.out is None:
        raise ParaknowError("the run needs an output directory (--out RUN_DIR).")
    main = is_main_process()
    run_dir = output_path(config.out)
    check_output_path(run_dir)  # a name too long for its lock file, or a link: refused before anything
    if not run_dir.exists():
        check_writable_parent(run_dir)  # a parent that is a file or read-only: before its lock is taken
    with output_lock(run_dir, wait_s=REFUSE_WAIT_S) if main else contextlib.nullcontext():
        return _train_locked(config, run_dir, main, callbacks, overwrite)


def _train_locked(config: TrainConfig, run_dir: Path, main: bool, callbacks, overwrite: bool) -> TrainOutcome:
    prepared = run_dir.is_dir() and (run_dir / STATUS_FILE).exists()
    try:
        cfg = config.resolved(check_out=main, overwrite=overwrite)
    except ParaknowError as exc:
        if prepared and main:
            _mark_failed_if_ours(run_dir, str(exc))
        raise
    created = False
    if main:
        created = _open_run_dir(run_dir, cfg, overwrite)
    status = StatusFile(run_dir, enabled=main)
    if main:
        status.update(state="running", phase="loading", pid=os.getpid(), pid_start=proc_start_time(os.getpid()),
                      host=socket.gethostname(), started=time.time(), finished=None, error=None,
                      step=0, max_steps=None, eta_s=None, final_eval=None, method=cfg.method)
    if (run_dir / STOP_FILE).exists():  # every process looks, so none waits for the others
        status.update(state="stopped", phase="done", finished=time.time(), note="stopped before it started")
        return TrainOutcome("stopped", run_dir, dict(status.data))
    try:
        return _train_loaded(cfg, run_dir, status, main, callbacks)
    except ParaknowError as exc:
        if created and status.data.get("phase") == "loading":  # bad input found before training
            shutil.rmtree(run_dir, ignore_errors=True)
        elif main:
            _remove_temporaries(run_dir)
            status.update(state="failed", phase="done", error=str(exc), finished=time.time())
        raise
    except BaseException as exc:
        if main:
            _remove_temporaries(run_dir)
            message = "interrupted" if isinstance(exc, KeyboardInterrupt) else \
                f"{type(exc).__name__}: {first_line(exc)}"
            status.update(state="failed", phase="done", error=message, finished=time.time())
        raise


def _remove_temporaries(run_dir: Path) -> None:
    for name in (PISSA_INIT_DIR, TRAINER_DIR, TRAINED_DIR):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def _mark_failed_if_ours(run_dir: Path, message: str) -> None:
    status = read_json(run_dir / STATUS_FILE)
    if status and is_prepared_for_us(status):
        status.update(state="failed", phase="done", error=message, finished=time.time(), pid=os.getpid())
        atomic_write_json(run_dir / STATUS_FILE, status)


def _open_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool = False) -> bool:
    """Create RUN_DIR (atomically, with spec.json) unless paraknow.runs.jobs prepared it; True if created.
    With `overwrite`, an ended run there (checked by rundir.check_out_dir) is replaced whole, in one rename."""
    spec = cfg.to_dict()
    status = read_json(run_dir / STATUS_FILE) if run_dir.is_dir() else None
    if run_dir.exists() and any(run_dir.iterdir()) and not (overwrite and status and not is_prepared_for_us(status)):
        atomic_write_json(run_dir / SPEC_FILE, {**(read_json(run_dir / SPEC_FILE) or {}), **spec})
        return False
    with atomic_directory(run_dir, replaces=STATUS_FILE if overwrite else None, owned=RUN_FILES) as tmp:
        mark_entry(tmp, run_dir)
        atomic_write_json(Path(tmp) / SPEC_FILE, spec)
        atomic_write_json(Path(tmp) / STATUS_FILE, {"state": "running", "phase": "loading", "pid": os.getpid(),
                                                    "created": time.time()})
    return True


class _TrainData:
    """A map-style dataset over encoded samples (collated by `data.collate`)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _training_arguments(cfg: TrainConfig, run_dir: Path):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(run_dir / TRAINER_DIR), num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.micro_batch, gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup, lr_scheduler_type="linear", weight_decay=0.0, seed=cfg.seed,
        data_seed=cfg.seed, logging_strategy="steps", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
        logging_nan_inf_filter=False,  # a NaN loss is logged as NaN (the filter shows an old mean instead)
        label_names=["labels"], dataloader_num_workers=0, use_cpu=train_device(cfg) == "cpu")


def _train_loaded(cfg: TrainConfig, run_dir: Path, status: StatusFile, main: bool, callbacks) -> TrainOutcome:
    from ..core.data import encode_all, load_records
    from .distill import logit_distillation
    from .distill_data import distilled_records
    from .evaluate import evaluate

    records, cost = distilled_records(cfg, load_records(cfg.data))  # sequence KD: the teacher's answers
    eval_records = load_records(cfg.eval_data)[: cfg.eval_limit] if cfg.eval_data else None
    model, tokenizer = build_model(cfg, run_dir, write=main)
    distillation = logit_distillation(cfg, model)  # logit KD: the teacher in the loss (else None)
    items = encode_all(tokenizer, records, cfg.max_length)
    if eval_records:
        encode_all(tokenizer, eval_records, cfg.max_length)  # bad eval data fails now, not mid-run

    def eval_fn(m):
        return evaluate(m, tokenizer, eval_records, max_new_tokens=cfg.eval_max_new_tokens,
                        batch_size=cfg.eval_batch, max_length=cfg.max_length, match=cfg.match)

    trainer, callback, throughput = _fit(cfg, run_dir, status, main, model, tokenizer, items,
                                         eval_fn if eval_records else None, callbacks, distillation)
    cost = distillation.cost if distillation else cost
    throughput.update(cost.to_dict() if cost else {})
    model, state, stopped = trainer.model, trainer.state, callback.stopped
    if callback.diverged:
        raise ParaknowError(callback.diverged)  # the run is marked failed with it; no adapter is saved
    if main:
        status.update(phase="saving", step=state.global_step, epoch=state.epoch, eta_s=0, **throughput)
        save_adapter(model, cfg, run_dir)
        _remove_temporaries(run_dir)
    final = callback.last_eval
    if main and eval_records and not stopped and callback.last_eval_step != state.global_step:
        status.update(phase="evaluating")  # training ended off the usual last step: evaluate now
        final = eval_fn(model)
        with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**dict.fromkeys(METRIC_KEYS), "step": state.global_step, "epoch": state.epoch,
                                 "eval_loss": final.loss, "eval_accuracy": final.accuracy}) + "\n")
    final_state = "stopped" if stopped else "finished"
    final_eval = final.to_dict() if (final is not None and not stopped) else None
    if main:
        status.update(state=final_state, phase="done", finished=time.time(), final_eval=final_eval)
    print(f"{final_state} after {state.global_step} steps"
          + (f"; final eval {json.dumps(final_eval)}" if final_eval else ""), flush=True)
    return TrainOutcome(final_state, run_dir, dict(status.data), model=model, tokenizer=tokenizer,
                        extra={"trainer_state": state, "summary": callback.summary})


def _fit(cfg: TrainConfig, run_dir: Path, status: StatusFile, main: bool, model, tokenizer, items, eval_fn,
         callbacks, distillation=None):
    """Train `model` on the encoded `items`: (the Trainer, its RunCallback, throughput figures).
    `distillation`: logit KD's loss hook (paraknow.runs.distill.LogitDistillation) or None."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..core.data import collate
    from .distill import trainer_class
    from .train_callback import RunCallback, restore_sigterm, sigterm_sets

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n_tokens = sum(len(x.input_ids) for x in items)
    args = _training_arguments(cfg, run_dir)
    metrics_fh = open(run_dir / METRICS_FILE, "a", encoding="utf-8") if main else None
    stop_event = threading.Event()
    previous_handler = sigterm_sets(stop_event)
    try:
        callback = RunCallback(run_dir, status, metrics_fh, eval_fn, cfg.eval_every, stop_event)
        trainer = trainer_class(distillation)(
            model=model, args=args, train_dataset=_TrainData(items), data_collator=lambda batch: collate(batch, pad_id),
            processing_class=tokenizer, callbacks=[callback, *callbacks], compute_loss_func=distillation)
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        print(f"training {cfg.method} on {len(items)} samples ({n_tokens} tokens) for {cfg.epochs} epochs: "
              f"batch {cfg.batch} = {cfg.micro_batch} x {cfg.grad_accum} accumulation"
              + (f" x {world_size()} processes" if world_size() > 1 else "") + f", device {args.device}",
              flush=True)
        t0, cpu0 = time.time(), time.process_time()
        with frozen_heap():
            trainer.train()
        train_runtime, train_cpu = time.time() - t0, time.process_time() - cpu0
    finally:
        restore_sigterm(previous_handler)
        if metrics_fh is not None:
            metrics_fh.close()
    samples_seen = min(trainer.state.global_step * cfg.batch, math.ceil(len(items) * cfg.epochs))
    throughput = {"train_runtime": round(train_runtime, 3), "train_cpu_s": round(train_cpu, 3),
                  "train_samples": samples_seen,
                  "samples_per_s": round(samples_seen / train_runtime, 4) if train_runtime > 0 else None,
                  "tokens_per_s": round(samples_seen / max(len(items), 1) * n_tokens / train_runtime, 2)
                  if train_runtime > 0 else None}
    return trainer, callback, throughput


@contextlib.contextmanager
def frozen_heap():
    """The objects alive now (imports, the models, the data) left out of Python's garbage collection
    for the block: the Trainer's `gc.collect()` at its start and the collector's automatic full passes
    then walk only what training makes, not the whole heap of torch and transformers (0.2-0.5 CPU s
    a cell on the demo pair). They rejoin the collected heap afterwards."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_training(config: TrainConfig, overwrite: bool = False) -> int:
    """Foreground worker of `python -m paraknow train`: 0 finished/stopped, 2 bad input, 1 failed."""
    try:
        outcome = train(config, overwrite=overwrite)
    except ParaknowError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except OSError as exc:  # the machine refused (a name too long, disk full): said as the CLI says it
        print(f"error: {os_error_message(exc)}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # the run is marked failed; the traceback goes to stdout.log
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        print(f"error: training failed: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr, flush=True)
        return 1
    if is_main_process():
        print(json.dumps(run_summary(outcome.run_dir, outcome.status)), flush=True)
    return 0


def run_summary(run_dir, status: dict) -> dict:
    """The one-line JSON `paraknow train` prints when a run ends."""
    return {"run_dir": str(run_dir), "state": status.get("state"), "steps": status.get("step"),
            "final_eval": status.get("final_eval")}
