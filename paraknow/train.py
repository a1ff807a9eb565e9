"""Fine-tuning a student's LoRA: vanilla, PiSSA, or initialised from a PKT export (SPEC 2.7, 5 `train`).

`run_training(config)` is the foreground worker behind `python -m paraknow train` (the app starts
the same command in the background, see `paraknow.jobs`). It writes into RUN_DIR:

  spec.json       the resolved TrainConfig (what was asked, with defaults filled in)
  status.json     state queued|running|finished|failed|stopped, pid, started/finished (unix
                  seconds), phase, step/max_steps, eta_s, error (when failed), final_eval,
                  throughput; rewritten atomically, at most about once a second while training
  metrics.jsonl   one JSON object per optimizer step: step, epoch, loss, lr, grad_norm, time
                  and, at eval steps, eval_loss, eval_accuracy (appended and flushed per line)
  adapter/        the trained adapter as a plain PEFT LoRA for the ORIGINAL student:
                  residual exports are converted with the rank-2r trick (lora.residual_to_plain),
                  PiSSA with PEFT's `path_initial_model_for_weight_conversion` (also rank 2r)
  STOP            (created by the user) stops training at the next step; the adapter is saved

Bad input (ParaknowError) is found before anything is written where possible: exit code 2 and,
for a RUN_DIR this process created, no directory at all. Any other exception marks the run
`failed` with the error (traceback on stdout), exit code 1. Under `accelerate launch` only the
main process writes files. This module imports torch/transformers lazily so `paraknow.jobs`
stays cheap to import.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import ParaknowError, first_line
from .fsio import (REFUSE_WAIT_S, atomic_directory, atomic_write_json, check_writable_parent, output_lock,
                   output_path, read_json_object)
from .options import default_of, device_option, dtype_option, option
from .validate import MAX_LENGTH, check_count, check_field_types, check_number, check_seed

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PISSA_EMBEDDING_NOTE = ("PEFT's PiSSA cannot initialise an Embedding: embed_tokens keeps PEFT's standard LoRA "
                        "init (A = 0, B ~ N(0, 1)) on its unchanged weights; lm_head and the projections get PiSSA.")
STATES = ("queued", "running", "finished", "failed", "stopped")
TERMINAL_STATES = ("finished", "failed", "stopped")
SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
ADAPTER_DIR = "adapter"
STOP_FILE = "STOP"
PISSA_INIT_DIR = "pissa_init"  # temporary: PiSSA's initial adapter, removed when the run ends
TRAINER_DIR = ".trainer"  # temporary: Trainer's output_dir (nothing is saved there)
LOG_FILE = "stdout.log"
# TrainConfig fields that are `train` flags (the others are set by the app and paraknow.jobs)
CLI_FIELDS = ("student", "data", "out", "init", "epochs", "lr", "batch", "micro_batch", "rank", "alpha", "dropout",
              "warmup", "max_length", "eval_data", "eval_every", "eval_limit", "eval_max_new_tokens", "eval_batch",
              "match", "seed", "device", "dtype")
METRIC_KEYS = ("step", "epoch", "loss", "lr", "grad_norm")
EVAL_KEYS = ("eval_loss", "eval_accuracy")
STATUS_INTERVAL_S = 1.0  # status.json is rewritten at most this often while training (plus on changes)


# ---------------------------------------------------------------------------------------
# Configuration


def _match_modes() -> tuple:
    from .answers import MATCH_MODES

    return MATCH_MODES


def _init_help() -> str:
    return "vanilla | pissa | an export directory from `extract` (PKT)"


@dataclass
class TrainConfig:
    """Everything a run needs; mirrors `python -m paraknow train` plus extras. Defaults are the
    paper's (docs/method.md); each field's metadata is its CLI flag's help (paraknow.options).

    rank/alpha/target_modules None mean: the extract defaults (16/16)/the seven q,k,v,o,gate,up,down
    projections for `vanilla`/`pissa`, and the export's own adapter_config for an export init.
    """
    student: str = option(None, "student model reference")
    data: str = option(None, "training data: JSONL file or task:NAME[:SPLIT]")
    out: str | None = option(None, "run directory (RUN_DIR) to create")
    init: str = option("vanilla", _init_help)
    epochs: float = option(3.0, "training epochs (fractions allowed)")
    lr: float = option(3e-4, "peak learning rate (linear warm-up, then linear decay)")
    batch: int = option(64, "effective batch size (micro-batch x accumulation x processes)", type=int)
    micro_batch: int = option(8, "per-step batch (accumulation = batch / micro-batch)", type=int)
    rank: int | None = option(None, "LoRA rank (not given: the extract default; an export init uses its own)",
                              type=int)
    alpha: float | None = option(None, "LoRA alpha (not given: the extract default; an export init uses its own)",
                                 type=float)
    dropout: float = option(0.05, "LoRA dropout (every init)")
    warmup: float = option(0.03, "warm-up as a ratio of the optimizer steps")
    max_length: int = option(2048, "truncate each sample to this many tokens", type=int)
    eval_data: str | None = option(None, "evaluation data: JSONL file or task:NAME[:SPLIT]")
    eval_every: int | None = option(None, "evaluate every N optimizer steps (and at the end)", type=int)
    eval_max_new_tokens: int = option(128, "tokens generated per evaluation answer", type=int)
    eval_limit: int | None = option(200, "evaluate on the first N eval records", type=int)
    eval_batch: int = option(16, "evaluation batch size", type=int)
    match: str = option("auto", "answer matching: auto (numeric when the reference is a number, else exact) | "
                        "exact | numeric (see paraknow/answers.py)", choices=_match_modes)
    seed: int = option(0, "training seed (LoRA init, data order, dropout)")
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    target_modules: list[str] | None = None
    group: str | None = None  # shared id of runs compared together (jobs.compare_runs)
    label: str | None = None  # free text shown in the runs table
    init_note: str | None = None  # set by resolved(): where the init differs from what its name says

    @property
    def method(self) -> str:
        """`vanilla`, `pissa` or `pkt` (an export init)."""
        return self.init if self.init in ("vanilla", "pissa") else "pkt"

    @property
    def grad_accum(self) -> int:
        return self.batch // (self.micro_batch * world_size())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ParaknowError("a train spec must be a JSON object of TrainConfig fields.")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ParaknowError(f"unknown train setting(s) {', '.join(unknown)}; "
                                f"known are {', '.join(sorted(names))}.")
        missing = [k for k in ("student", "data") if not data.get(k)]
        if missing:
            raise ParaknowError(f"the train spec lacks {' and '.join(missing)}.")
        check_field_types(cls, data, "train spec")
        return cls(**data)

    @classmethod
    def from_args(cls, args) -> "TrainConfig":
        """From the argparse namespace of `python -m paraknow train` (without --spec)."""
        missing = [flag for flag, value in (("--student", args.student), ("--data", args.data),
                                            ("--out", args.out)) if not value]
        if missing:
            raise ParaknowError(f"train needs {', '.join(missing)} (or --spec RUN_DIR/spec.json).")
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if f.name in CLI_FIELDS})

    def resolved(self, check_out: bool = True) -> "TrainConfig":
        """Validated copy with defaults filled in and local paths made absolute. Cheap: reads
        configs, manifests and data files, loads no weights. Raises ParaknowError."""
        from .data import load_records
        from .models import DTYPES, load_config, resolve_device

        c = TrainConfig(**{**self.to_dict(), "target_modules": list(self.target_modules or []) or None})
        c.check_numbers()
        n_proc = world_size()
        _check(c.batch % (c.micro_batch * n_proc) == 0,
               f"--batch {c.batch} is not a multiple of --micro-batch {c.micro_batch}"
               + (f" x {n_proc} processes" if n_proc > 1 else "")
               + ": the effective batch is micro-batch x gradient-accumulation steps; "
               f"choose e.g. --batch {c.micro_batch * n_proc * max(1, round(c.batch / (c.micro_batch * n_proc)))}.")
        _check(c.match in _match_modes(), f"unknown --match '{c.match}'; use one of {', '.join(_match_modes())}.")
        _check(c.eval_every is None or bool(c.eval_data),
               "--eval-every needs --eval-data (the records to evaluate on).")
        _check(c.dtype in (None, *DTYPES), f"unknown dtype '{c.dtype}'; use one of {', '.join(DTYPES)}.")
        resolve_device(c.device)
        c.student = _abs_if_local(c.student)
        c.data = _abs_if_local(c.data)
        c.eval_data = _abs_if_local(c.eval_data) if c.eval_data else None
        if c.out is not None:
            c.out = str(output_path(c.out))
            if check_out:
                _check_out_dir(Path(c.out))
        student_config = load_config(c.student)  # resolves the reference and checks the family, no weights
        load_records(c.data)
        if c.eval_data:
            load_records(c.eval_data)
        if c.init in ("vanilla", "pissa"):
            from .transfer import TransferConfig  # one LoRA rank/alpha default for extract and train

            c.rank = default_of(TransferConfig, "rank") if c.rank is None else c.rank
            c.alpha = default_of(TransferConfig, "alpha") if c.alpha is None else c.alpha
            c.target_modules = c.target_modules or list(DEFAULT_TARGETS)
        else:
            c.init = _resolve_export(c)
        c.init_note = PISSA_EMBEDDING_NOTE if c.method == "pissa" and "embed_tokens" in c.target_modules else None
        check_count("rank", c.rank)
        check_number("alpha", c.alpha, above=0)
        if isinstance(c.alpha, float) and c.alpha.is_integer():
            c.alpha = int(c.alpha)
        if c.method != "pkt":
            _check_rank_fits(c.rank, c.target_modules, student_config)
        return c

    def check_numbers(self) -> None:
        """Every numeric setting finite and in range (before anything is read or loaded)."""
        check_number("epochs", self.epochs, above=0, maximum=1e6)
        check_number("lr", self.lr, above=0)
        check_count("batch", self.batch)
        check_count("micro_batch", self.micro_batch)
        if self.rank is not None:
            check_count("rank", self.rank)
        if self.alpha is not None:
            check_number("alpha", self.alpha, above=0)
        check_number("dropout", self.dropout, minimum=0, below=1)
        check_number("warmup", self.warmup, minimum=0, below=1)
        check_count("max_length", self.max_length, minimum=2, maximum=MAX_LENGTH)
        for name in ("eval_every", "eval_limit"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        check_count("eval_max_new_tokens", self.eval_max_new_tokens)
        check_count("eval_batch", self.eval_batch)
        check_seed(self.seed)


def _check_rank_fits(rank: int, targets: list[str], student_config) -> None:
    """LoRA (and PiSSA's SVD) needs rank <= min(out, in) of every targeted projection."""
    from .models import describe_config, role_of

    shapes = describe_config(student_config).shapes
    for target in targets:
        role = role_of(f"{target}.weight")
        if role in shapes and rank > min(shapes[role]):
            raise ParaknowError(f"rank {rank} is larger than {target}'s smallest dimension "
                                f"{min(shapes[role])} (its weight is {shapes[role]}): lower the rank.")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ParaknowError(message)


def _abs_if_local(ref: str) -> str:
    """Local paths become absolute (a background process may run elsewhere); other refs stay."""
    if not ref or ref.startswith(("task:", "demo:", "bundled:")):
        return ref
    path = Path(ref).expanduser()
    return str(path.absolute()) if path.exists() else ref


def _resolve_export(c: TrainConfig) -> str:
    from .lora import ADAPTER_CONFIG, load_manifest

    path = Path(c.init).expanduser()
    if not path.is_dir():
        raise ParaknowError(f"--init must be vanilla, pissa or an export directory; '{c.init}' is none of them.")
    load_manifest(path)  # raises with advice when paraknow.json is missing
    adapter_config = path / ADAPTER_CONFIG
    if not adapter_config.is_file():
        raise ParaknowError(f"{path} has no {ADAPTER_CONFIG}: re-run `python -m paraknow extract`.")
    config = read_json_object(adapter_config, "re-run `python -m paraknow extract`")
    for name, given, own in (("--rank", c.rank, config.get("r")), ("--alpha", c.alpha, config.get("lora_alpha"))):
        if given is not None and own is not None and float(given) != float(own):
            raise ParaknowError(f"{name} {given} differs from the export's {own}: an export init trains "
                                f"at the export's rank and alpha; leave {name} out or re-export.")
    c.rank, c.alpha = int(config["r"]), config["lora_alpha"]
    targets = config.get("target_modules")
    c.target_modules = sorted(targets) if isinstance(targets, list) else targets
    return str(path.absolute())


def _check_out_dir(out: Path) -> None:
    """A run directory must be new, empty, or prepared by `paraknow.jobs` for this process."""
    if not out.exists():
        check_writable_parent(out)
        return
    if not out.is_dir():
        raise ParaknowError(f"--out {out} exists and is not a directory; choose a new run directory.")
    if not any(out.iterdir()):
        check_writable_parent(out)
        return
    status = read_json(out / STATUS_FILE)
    if status and _is_prepared_for_us(status):
        return
    if status is None:
        raise ParaknowError(f"--out {out} is a non-empty directory that is not a paraknow run; paraknow "
                            "never writes into it: choose a new run directory.")
    raise ParaknowError(f"--out {out} already holds a run (state {status.get('state', 'unknown')}); "
                        "choose a new run directory.")


def _is_prepared_for_us(status: dict) -> bool:
    if status.get("state") == "queued":
        return True
    return status.get("state") == "running" and status.get("phase") == "starting" and \
        status.get("pid") in (None, os.getpid())


def load_spec(path) -> TrainConfig:
    """TrainConfig from RUN_DIR/spec.json; the run directory is the spec's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ParaknowError(f"spec file not found: {path}. Give RUN_DIR/spec.json of a prepared run.")
    config = TrainConfig.from_dict(read_json_object(path, "give RUN_DIR/spec.json of a prepared run"))
    config.out = str(path.parent.absolute())
    return config


# ---------------------------------------------------------------------------------------
# Small helpers shared with paraknow.jobs


def world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def read_json(path) -> dict | None:
    """A JSON object from a file, or None when missing, unreadable or not an object (files are
    written atomically, so a half-written one only means a foreign writer)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def proc_start_time(pid: int | None) -> int | None:
    """Kernel start time of a process (clock ticks since boot), to tell a reused pid apart."""
    if not pid:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


class StatusFile:
    """status.json of a run, always replaced atomically (a reader never sees half a file).

    `update(force=True)` (state changes) goes through fsio.atomic_write_json (fsync'd);
    progress updates (`force=False`) are throttled to one per STATUS_INTERVAL_S and skip the
    fsync, so a slow disk never stalls a training step.
    """

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / STATUS_FILE
        self.enabled = enabled
        self.data = (read_json(self.path) or {}) if enabled else {}
        self._last = 0.0

    def update(self, force: bool = True, **values) -> None:
        self.data.update(values)
        if not self.enabled:
            return
        now = time.monotonic()
        if force:
            self._last = now
            atomic_write_json(self.path, self.data)
        elif now - self._last >= STATUS_INTERVAL_S:
            self._last = now
            tmp = self.path.with_name(f".{STATUS_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=2) + "\n")
            os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------
# Model preparation


def _train_device(config: TrainConfig) -> str:
    import torch

    from .models import resolve_device

    if config.device in (None, "", "auto"):
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
        return "cpu"
    device = resolve_device(config.device)
    return "cuda" if device == "auto" else device


def build_model(config: TrainConfig, work_dir: Path | None = None, write: bool = True):
    """(peft model ready to train, tokenizer). For PiSSA the initial adapter is saved to
    `work_dir/pissa_init` (needed to convert the trained adapter back to a plain LoRA; PEFT
    uses the folder name as an adapter name, so it cannot start with a dot)."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from .lora import student_from_export
    from .models import load_model

    device = _train_device(config)
    model, tokenizer = load_model(config.student, dtype=config.dtype,
                                  device=device if device.startswith("cuda") else None)
    transformers.set_seed(config.seed)
    if config.method == "pkt":
        try:
            model = student_from_export(model, config.init, trainable=True, dropout=config.dropout)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ParaknowError(f"the export {config.init} does not fit student '{config.student}' "
                                f"(was it made for another student?): {first_line(exc)}")
    else:
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM",
                          init_lora_weights="pissa" if config.method == "pissa" else True)
        model = get_peft_model(model, lora)
        if config.method == "pissa" and write and work_dir is not None:
            init_dir = Path(work_dir) / PISSA_INIT_DIR
            shutil.rmtree(init_dir, ignore_errors=True)
            model.peft_config["default"].init_lora_weights = True  # PEFT's documented recipe
            model.save_pretrained(str(init_dir), save_embedding_layers=False)
            model.peft_config["default"].init_lora_weights = "pissa"
    return model, tokenizer


def save_adapter(model, config: TrainConfig, run_dir: Path) -> Path:
    """Write RUN_DIR/adapter/ atomically as a plain LoRA for the original student."""
    from .lora import ADAPTER_CONFIG, load_manifest, residual_to_plain

    run_dir = Path(run_dir)
    target = run_dir / ADAPTER_DIR
    if config.method == "pkt":
        residual = load_manifest(config.init).get("mode") == "residual" and \
            (Path(config.init) / "residual" / ADAPTER_CONFIG).is_file()
        if residual:
            trained = run_dir / ".adapter_trained"
            shutil.rmtree(trained, ignore_errors=True)
            model.save_pretrained(str(trained), save_embedding_layers=False)
            try:
                residual_to_plain(trained, config.init, target)
            finally:
                shutil.rmtree(trained, ignore_errors=True)
            return target
    with atomic_directory(target, replaces=ADAPTER_CONFIG) as tmp:
        if config.method == "pissa":
            with warnings.catch_warnings():  # "PiSSA changes the base weights..." -- we are converting
                warnings.filterwarnings("ignore", message="PiSSA changes the base weights")
                model.save_pretrained(str(tmp), save_embedding_layers=False,
                                      path_initial_model_for_weight_conversion=str(run_dir / PISSA_INIT_DIR))
            _restore_embedding_loras(model, Path(tmp))
        else:
            model.save_pretrained(str(tmp), save_embedding_layers=False)
        (Path(tmp) / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    return target


def _restore_embedding_loras(model, adapter_dir: Path) -> None:
    """Put Embedding LoRAs back into a PiSSA adapter converted to a plain LoRA.

    PEFT's conversion (path_initial_model_for_weight_conversion) drops `lora_embedding_*`. PiSSA does
    not initialise an Embedding either: it keeps PEFT's standard init (A = 0, B ~ N(0, 1)) on an
    unchanged base, so its trained (A, B) already is the delta to the original student; it goes in
    zero-padded to the converted rank 2r (the converted alpha keeps s = alpha / r unchanged).
    """
    import torch

    from .lora import PEFT_PREFIX, read_adapter, write_adapter

    trained = {name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name:
               (module.lora_embedding_A["default"].detach().float().cpu(),   # [r, V]
                module.lora_embedding_B["default"].detach().float().cpu())   # [d, r]
               for name, module in model.named_modules() if "default" in getattr(module, "lora_embedding_A", {})}
    if not trained:
        return
    config, factors, embeddings = read_adapter(adapter_dir)
    for module, (A, B) in trained.items():
        pad = config["r"] - A.shape[0]
        factors[module] = (torch.cat([A, A.new_zeros(pad, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], pad)], 1))
        embeddings.add(module)
    targets = config.get("target_modules")
    write_adapter(adapter_dir, factors, embeddings, config["r"], config["lora_alpha"],
                  sorted(targets) if isinstance(targets, list) else targets,
                  config.get("base_model_name_or_path") or "", config.get("lora_dropout", 0.0))


# ---------------------------------------------------------------------------------------
# The training loop


class _TrainData:
    """A map-style dataset over encoded samples (collated by `data.collate`)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def _make_callback(run_dir: Path, status: StatusFile, metrics_fh, eval_fn, eval_every, stop_event):
    """A TrainerCallback: metrics.jsonl + status per step, STOP file, periodic eval."""
    import torch
    from transformers import TrainerCallback

    stop_path = Path(run_dir) / STOP_FILE

    class RunCallback(TrainerCallback):
        def __init__(self):
            self.stopped = False
            self.pending_eval = None
            self.last_eval = None
            self.last_eval_step = None
            self.t0 = time.time()
            self.t_first_log, self.first_logged_step = None, 0  # ETA clock starts after the first logged step
            self.summary = {}

        def _stop_requested(self, args) -> bool:
            local = stop_event.is_set() or stop_path.exists()
            if torch.distributed.is_available() and torch.distributed.is_initialized() \
                    and torch.distributed.get_world_size() > 1:
                flag = torch.tensor([1.0 if local else 0.0], device=args.device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                return bool(flag.item() > 0)
            return local

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0 = time.time()
            status.update(phase="training", max_steps=state.max_steps, step=0, train_started=self.t0)

        def on_step_end(self, args, state, control, **kwargs):
            if self._stop_requested(args):
                self.stopped = True
                control.should_training_stop = True
                return control
            step = state.global_step
            due = eval_fn is not None and ((eval_every and step % eval_every == 0) or step >= state.max_steps)
            if due and state.is_world_process_zero:
                status.update(phase="evaluating", step=step)
                result = eval_fn(kwargs["model"])
                self.pending_eval = {"eval_loss": result.loss, "eval_accuracy": result.accuracy}
                self.last_eval, self.last_eval_step = result, step
                status.update(phase="training", last_eval={"step": step, **result.to_dict()})
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
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
            if metrics_fh is not None:
                metrics_fh.write(json.dumps(line) + "\n")
                metrics_fh.flush()
            step, max_steps = state.global_step, max(state.max_steps, 1)
            if self.t_first_log is None:  # the first step carries the warm-up: time from its end
                self.t_first_log, self.first_logged_step = now, step
                eta = (now - self.t0) / step * (max_steps - step) if step else None
            else:
                per_step = (now - self.t_first_log) / max(1, step - self.first_logged_step)
                eta = per_step * (max_steps - step)
            status.update(force="eval_loss" in line or step == 1, step=step, epoch=line["epoch"], loss=line["loss"],
                          eta_s=round(eta, 1) if eta is not None else None)
            print(f"step {step}/{max_steps} epoch {line['epoch']:.3f} loss {line['loss']:.4f} "
                  f"lr {line['lr']:.3g} grad_norm {_fmt(line['grad_norm'])}"
                  + (f" eval_loss {line['eval_loss']:.4f} eval_accuracy {_fmt(line['eval_accuracy'])}"
                     if "eval_loss" in line else ""), flush=True)
            return control

    return RunCallback()


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


@dataclass
class TrainOutcome:
    """What `train` returns: final state and the training-time model (for tests and scripts)."""
    state: str
    run_dir: Path
    status: dict
    model: object = None
    tokenizer: object = None
    extra: dict = field(default_factory=dict)


def train(config: TrainConfig, callbacks=()) -> TrainOutcome:
    """Run one training job in this process and return its outcome.

    Raises ParaknowError for bad input (nothing left behind in a RUN_DIR this call created;
    a RUN_DIR prepared by paraknow.jobs is marked failed); any other exception marks the run
    failed and is re-raised. `callbacks` are extra transformers TrainerCallbacks. The main
    process holds RUN_DIR's lock throughout, so a second `train` into it is refused at once. Under a
    multi-process launcher, the process group that training started is destroyed at the end
    (left to the interpreter's exit, gloo's threads abort with "terminate called ...").
    """
    distributed_before = _distributed_initialized()
    try:
        return _train(config, callbacks)
    finally:
        if not distributed_before and _distributed_initialized():
            import torch.distributed

            torch.distributed.destroy_process_group()


def _distributed_initialized() -> bool:
    import torch.distributed

    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _train(config: TrainConfig, callbacks) -> TrainOutcome:
    if config.out is None:
        raise ParaknowError("the run needs an output directory (--out RUN_DIR).")
    main = is_main_process()
    run_dir = output_path(config.out)
    with output_lock(run_dir, wait_s=REFUSE_WAIT_S) if main else contextlib.nullcontext():
        return _train_locked(config, run_dir, main, callbacks)


def _train_locked(config: TrainConfig, run_dir: Path, main: bool, callbacks) -> TrainOutcome:
    prepared = run_dir.is_dir() and (run_dir / STATUS_FILE).exists()
    try:
        cfg = config.resolved(check_out=main)
    except ParaknowError as exc:
        if prepared and main:
            _mark_failed_if_ours(run_dir, str(exc))
        raise
    created = False
    if main:
        created = _open_run_dir(run_dir, cfg)
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
    for name in (PISSA_INIT_DIR, TRAINER_DIR, ".adapter_trained"):
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def _mark_failed_if_ours(run_dir: Path, message: str) -> None:
    status = read_json(run_dir / STATUS_FILE)
    if status and _is_prepared_for_us(status):
        status.update(state="failed", phase="done", error=message, finished=time.time(), pid=os.getpid())
        atomic_write_json(run_dir / STATUS_FILE, status)


def _open_run_dir(run_dir: Path, cfg: TrainConfig) -> bool:
    """Create RUN_DIR (atomically, with spec.json) unless paraknow.jobs prepared it; True if created."""
    spec = cfg.to_dict()
    if run_dir.exists() and any(run_dir.iterdir()):
        atomic_write_json(run_dir / SPEC_FILE, {**(read_json(run_dir / SPEC_FILE) or {}), **spec})
        return False
    with atomic_directory(run_dir) as tmp:
        atomic_write_json(Path(tmp) / SPEC_FILE, spec)
        atomic_write_json(Path(tmp) / STATUS_FILE, {"state": "running", "phase": "loading", "pid": os.getpid(),
                                                    "created": time.time()})
    return True


def _train_loaded(cfg: TrainConfig, run_dir: Path, status: StatusFile, main: bool, callbacks) -> TrainOutcome:
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from .data import collate, encode_all, load_records
    from .evaluate import evaluate

    records = load_records(cfg.data)
    eval_records = load_records(cfg.eval_data)[: cfg.eval_limit] if cfg.eval_data else None
    model, tokenizer = build_model(cfg, run_dir, write=main)
    items = encode_all(tokenizer, records, cfg.max_length)
    if eval_records:
        encode_all(tokenizer, eval_records, cfg.max_length)  # bad eval data fails now, not mid-run
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n_tokens = sum(len(x.input_ids) for x in items)

    device = _train_device(cfg)
    args = TrainingArguments(
        output_dir=str(run_dir / TRAINER_DIR), num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.micro_batch, gradient_accumulation_steps=cfg.grad_accum,
        warmup_steps=cfg.warmup, lr_scheduler_type="linear", weight_decay=0.0, seed=cfg.seed,
        data_seed=cfg.seed, logging_strategy="steps", logging_steps=1, save_strategy="no",
        eval_strategy="no", report_to="none", disable_tqdm=True, remove_unused_columns=False,
        label_names=["labels"], dataloader_num_workers=0, use_cpu=device == "cpu")

    def eval_fn(m):
        return evaluate(m, tokenizer, eval_records, max_new_tokens=cfg.eval_max_new_tokens,
                        batch_size=cfg.eval_batch, max_length=cfg.max_length, match=cfg.match)

    metrics_fh = open(run_dir / METRICS_FILE, "a", encoding="utf-8") if main else None
    stop_event = threading.Event()
    previous_handler = _install_sigterm(stop_event)
    try:
        callback = _make_callback(run_dir, status, metrics_fh, eval_fn if eval_records else None,
                                  cfg.eval_every, stop_event)
        trainer = Trainer(model=model, args=args, train_dataset=_TrainData(items),
                          data_collator=lambda batch: collate(batch, pad_id), processing_class=tokenizer,
                          callbacks=[callback, *callbacks])
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        print(f"training {cfg.method} on {len(items)} samples ({n_tokens} tokens) for {cfg.epochs} epochs: "
              f"batch {cfg.batch} = {cfg.micro_batch} x {cfg.grad_accum} accumulation"
              + (f" x {world_size()} processes" if world_size() > 1 else "") + f", device {args.device}",
              flush=True)
        t0, cpu0 = time.time(), time.process_time()
        trainer.train()
        train_runtime, train_cpu = time.time() - t0, time.process_time() - cpu0
    finally:
        _restore_sigterm(previous_handler)
        if metrics_fh is not None:
            metrics_fh.close()
    model = trainer.model
    state = trainer.state
    stopped = callback.stopped
    samples_seen = min(state.global_step * cfg.batch, math.ceil(len(items) * cfg.epochs))
    throughput = {"train_runtime": round(train_runtime, 3), "train_cpu_s": round(train_cpu, 3),
                  "train_samples": samples_seen,
                  "samples_per_s": round(samples_seen / train_runtime, 4) if train_runtime > 0 else None,
                  "tokens_per_s": round(samples_seen / max(len(items), 1) * n_tokens / train_runtime, 2)
                  if train_runtime > 0 else None}
    if main:
        status.update(phase="saving", step=state.global_step, epoch=state.epoch, eta_s=0, **throughput)
        save_adapter(model, cfg, run_dir)
        _remove_temporaries(run_dir)
    final = callback.last_eval
    if main and eval_records and not stopped and callback.last_eval_step != state.global_step:
        status.update(phase="evaluating")  # training ended off the usual last step: evaluate now
        final = eval_fn(model)
        with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": state.global_step, "epoch": state.epoch, "loss": None, "lr": None,
                                 "grad_norm": None, "eval_loss": final.loss,
                                 "eval_accuracy": final.accuracy}) + "\n")
    final_state = "stopped" if stopped else "finished"
    final_eval = final.to_dict() if (final is not None and not stopped) else None
    if main:
        status.update(state=final_state, phase="done", finished=time.time(), final_eval=final_eval)
    print(f"{final_state} after {state.global_step} steps"
          + (f"; final eval {json.dumps(final_eval)}" if final_eval else ""), flush=True)
    return TrainOutcome(final_state, run_dir, dict(status.data), model=model, tokenizer=tokenizer,
                        extra={"trainer_state": state, "summary": callback.summary})


def _install_sigterm(stop_event):
    """SIGTERM asks for a clean stop (like STOP); only possible from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    except (ValueError, OSError):
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        try:
            signal.signal(signal.SIGTERM, previous)
        except (ValueError, OSError):
            pass


def run_training(config: TrainConfig) -> int:
    """Foreground worker of `python -m paraknow train`: 0 finished/stopped, 2 bad input, 1 failed."""
    try:
        outcome = train(config)
    except ParaknowError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
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
        print(json.dumps({"run_dir": str(outcome.run_dir), "state": outcome.state,
                          "steps": outcome.status.get("step"), "final_eval": outcome.status.get("final_eval")}),
              flush=True)
    return 0
