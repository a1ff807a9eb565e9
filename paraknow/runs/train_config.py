"""The training configuration: `TrainConfig` (one field per `train` flag, its default, help and choices in
the field metadata, see paraknow.core.options), its validation, and the rule for which method a run uses.

`TrainConfig.resolved()` checks a configuration cheaply (configs, manifests and data files; no
weights) so bad input is refused before a run directory is created (docs/method.md lists the
defaults and why).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..core.errors import ParaknowError
from ..core.fsio import output_path, read_json_object
from ..core.options import default_of, device_option, dtype_option, option
from ..core.validate import MAX_LENGTH, check_count, check_field_types, check_number, check_rank_fits, check_seed
from ..transfer.lora import LORA_DROPOUT, check_alpha
from .inits import INITS
from .rundir import check_out_dir

SWEPT_METHODS = tuple(INITS)  # init values that name a method (paraknow.runs.inits); any other init is an export (PKT)
METHODS = ("vanilla", "pissa", "pkt")  # the methods the Fine-tune page compares
DISTILL_KINDS = ("logits", "sequences")  # paraknow.runs.distill (online KD) / paraknow.runs.distill_data (offline)
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDING_NOTE = ("PEFT's {label} cannot initialise an Embedding: embed_tokens keeps PEFT's standard LoRA "
                  "init (A = 0, B ~ N(0, 1)) on its unchanged weights; lm_head and the projections get {label}.")
PISSA_EMBEDDING_NOTE = EMBEDDING_NOTE.format(label="PiSSA")
# TrainConfig fields that are `train` flags (the others are set by the app and paraknow.runs.jobs)
CLI_FIELDS = ("student", "data", "out", "init", "epochs", "lr", "batch", "micro_batch", "rank", "alpha", "dropout",
              "warmup", "max_length", "eval_data", "eval_every", "eval_limit", "eval_max_new_tokens", "eval_batch",
              "match", "seed", "distill", "distill_teacher", "distill_weight", "temperature", "device", "dtype")
MAX_LR = 1e6  # AdamW moves every weight by about lr per step: a larger rate is a typo, never a setting


def method_of(init: str | None) -> str:
    """The method a run with this `init` trains: one of SWEPT_METHODS, or `pkt` (an export directory)."""
    return init if init in SWEPT_METHODS else "pkt"


def world_size() -> int:
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def _match_modes() -> tuple:
    from ..core.answers import MATCH_MODES

    return MATCH_MODES


def _init_help() -> str:
    return " | ".join(SWEPT_METHODS) + " (teacher-free, paraknow/runs/inits.py) | an export directory from `extract` (PKT)"


@dataclass
class TrainConfig:
    """Everything a run needs; mirrors `python -m paraknow train` plus extras. Defaults are the
    paper's (docs/method.md); each field's metadata is its CLI flag's help (paraknow.core.options).

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
    dropout: float = option(LORA_DROPOUT, "LoRA dropout (every init)")
    warmup: float = option(0.03, "warm-up as a ratio of the optimizer steps")
    max_length: int = option(2048, "truncate each sample to this many tokens", type=int)
    eval_data: str | None = option(None, "evaluation data: JSONL file or task:NAME[:SPLIT]")
    eval_every: int | None = option(None, "evaluate every N optimizer steps (and at the end)", type=int)
    eval_max_new_tokens: int = option(128, "tokens generated per evaluation answer", type=int)
    eval_limit: int | None = option(200, "evaluate on the first N eval records", type=int)
    eval_batch: int = option(64, "evaluation batch size (sorted by length; the adapters merged)", type=int)
    match: str = option("auto", "answer matching: auto (numeric when the reference is a number, else exact) | "
                        "exact | numeric (see paraknow/core/answers.py)", choices=_match_modes)
    seed: int = option(0, "training seed (LoRA init, data order, dropout)")
    distill: str | None = option(None, "distil from --distill-teacher too: logits (online KD, loss = (1 - λ)·CE + "
                                 "λ·τ²·KL(teacher ‖ student) at temperature τ) | sequences (train on the teacher's "
                                 "greedy completions of the data's prompts, --eval-max-new-tokens long)",
                                 choices=DISTILL_KINDS)
    distill_teacher: str | None = option(None, "the teacher to distil from (a model reference)")
    distill_weight: float = option(0.5, "λ of logit KD: the weight of the KL term, in [0, 1]")
    temperature: float = option(2.0, "τ of logit KD: both softmaxes at logits / τ (> 0)")
    device: str | None = device_option()
    dtype: str | None = dtype_option()
    target_modules: list[str] | None = None
    group: str | None = None  # shared id of runs compared together (jobs.compare_runs)
    label: str | None = None  # free text shown in the runs table
    init_note: str | None = None  # set by resolved(): where the init differs from what its name says

    @property
    def method(self) -> str:
        """One of SWEPT_METHODS (paraknow.runs.inits), or `pkt` (an export init)."""
        return method_of(self.init)

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

    def resolved(self, check_out: bool = True, overwrite: bool = False) -> "TrainConfig":
        """Validated copy with defaults filled in and local paths made absolute. Cheap: reads
        configs, manifests and data files, loads no weights. Raises ParaknowError."""
        from ..core.architecture import DTYPES
        from ..core.data import load_records
        from ..core.models import load_config, resolve_device

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
                check_out_dir(Path(c.out), overwrite)
        student_config = load_config(c.student)  # resolves the reference and checks the family, no weights
        load_records(c.data)
        if c.eval_data:
            load_records(c.eval_data)
        _check_distill(c)
        if c.init in SWEPT_METHODS:
            from ..transfer.plan import TransferConfig  # one LoRA rank/alpha default for extract and train

            c.rank = default_of(TransferConfig, "rank") if c.rank is None else c.rank
            c.alpha = default_of(TransferConfig, "alpha") if c.alpha is None else c.alpha
            c.target_modules = c.target_modules or list(DEFAULT_TARGETS)
        else:
            c.init = _resolve_export(c)
        c.init_note = EMBEDDING_NOTE.format(label=INITS[c.method].label) \
            if c.method in SWEPT_METHODS and not INITS[c.method].embedding and "embed_tokens" in c.target_modules \
            else None
        check_count("rank", c.rank)
        check_number("alpha", c.alpha, above=0)
        if isinstance(c.alpha, float) and c.alpha.is_integer():
            c.alpha = int(c.alpha)
        if c.method != "pkt":
            _check_rank_fits(c.rank, c.target_modules, student_config)
        return c

    def check_numbers(self) -> None:
        """Every numeric setting finite and in range, and the target modules known module roles
        (before anything is read or loaded)."""
        from ..core.architecture import EMBED_ROLES, LAYER_ROLES

        unknown = [t for t in self.target_modules or [] if t not in LAYER_ROLES + EMBED_ROLES]
        _check(not unknown, f"target_modules: {unknown[0]!r} is not a module of the student; use some of "
                            f"{', '.join(LAYER_ROLES + EMBED_ROLES)}." if unknown else "")
        check_number("epochs", self.epochs, above=0, maximum=1e6)
        check_number("lr", self.lr, above=0, maximum=MAX_LR)
        check_count("batch", self.batch)
        check_count("micro_batch", self.micro_batch)
        if self.rank is not None:
            check_count("rank", self.rank)
        if self.alpha is not None:  # s = alpha / r representable, at the rank the run will have
            from ..transfer.plan import TransferConfig

            check_alpha(self.alpha, self.rank or default_of(TransferConfig, "rank"))
        check_number("dropout", self.dropout, minimum=0, below=1)
        check_number("warmup", self.warmup, minimum=0, below=1)
        check_count("max_length", self.max_length, minimum=2, maximum=MAX_LENGTH)
        for name in ("eval_every", "eval_limit"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        check_count("eval_max_new_tokens", self.eval_max_new_tokens)
        check_count("eval_batch", self.eval_batch)
        check_seed(self.seed)
        check_number("distill_weight", self.distill_weight, minimum=0, maximum=1)
        check_number("temperature", self.temperature, above=0)


def _check_distill(c: TrainConfig) -> None:
    """--distill needs a teacher (and the teacher --distill); logit KD needs the student's vocabulary."""
    from ..core.models import load_config

    _check(c.distill in (None, *DISTILL_KINDS),
           f"unknown --distill '{c.distill}'; use one of {', '.join(DISTILL_KINDS)}.")
    _check(bool(c.distill) == bool(c.distill_teacher),
           "--distill needs --distill-teacher REF (the teacher)" if c.distill else
           "--distill-teacher needs --distill logits|sequences (how to distil from it).")
    if not c.distill:
        return
    c.distill_teacher = _abs_if_local(c.distill_teacher)
    load_config(c.distill_teacher)
    if c.distill == "logits":
        from .distill import check_same_vocabulary

        check_same_vocabulary(c.distill_teacher, c.student)


def _check_rank_fits(rank: int, targets: list[str], student_config) -> None:
    """LoRA (and PiSSA's SVD) needs rank <= min(out, in) of every targeted projection."""
    from ..core.architecture import describe_config, role_of

    shapes = describe_config(student_config).shapes
    for target in targets:
        role = role_of(f"{target}.weight")
        if role in shapes:
            check_rank_fits(rank, shapes[role], target)


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
    from ..transfer.lora import ADAPTER_CONFIG, load_manifest

    path = Path(c.init).expanduser()
    if not path.is_dir():
        raise ParaknowError(f"--init must be {', '.join(SWEPT_METHODS)} or an export directory; "
                            f"'{c.init}' is none of them.")
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


def load_spec(path) -> TrainConfig:
    """TrainConfig from RUN_DIR/spec.json; the run directory is the spec's folder."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ParaknowError(f"spec file not found: {path}. Give RUN_DIR/spec.json of a prepared run.")
    config = TrainConfig.from_dict(read_json_object(path, "give RUN_DIR/spec.json of a prepared run"))
    config.out = str(path.parent.absolute())
    return config

