"""`paraknow <command>` (or `python -m paraknow`). Bad input: exit 2 and a one-line reason on stderr.

The options are generated from the config dataclasses (TransferConfig, SensitivityConfig,
TrainConfig, options.Placement): a default, choice list or help text is changed there, once.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .core.errors import ParaknowError
from .core.fsio import output_lock, output_path
from .core.models import quiet_transformers
from .core.paths import cache_root
from .runs.executors import EXECUTOR_OPTIONS
from .transfer.plan import EXTRACT_OPTIONS
from .transfer.sensitivity import SENSITIVITY_COMMAND_OPTIONS, SENSITIVITY_OPTIONS


def _progress(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


def cmd_sensitivity(args) -> int:
    from .core.data import load_records
    from .core.memory import parse_max_memory
    from .core.models import load_config, load_model, resolve_device
    from .core.parallel import launched_world_size, process_device, process_group, rank_and_size
    from .transfer.sensitivity import SensitivityConfig, check_memory, compute_sensitivity
    from .transfer.sensitivity_files import check_output_file, save_sensitivity, sensitivity_meta

    config = SensitivityConfig(**{name: getattr(args, name) for name in SENSITIVITY_COMMAND_OPTIONS})
    config.validate()
    resolve_device(args.device)
    out = output_path(args.out)
    check_output_file(out)
    max_memory = parse_max_memory(args.max_memory)
    if max_memory and launched_world_size() > 1:
        raise ParaknowError("--max-memory spreads one process's model; under torchrun / accelerate launch "
                            "every process holds a whole copy: drop --max-memory or launch one process.")
    records = load_records(args.data)
    device = process_device(args.device)  # under torchrun / accelerate launch: one GPU per process
    check_memory(load_config(args.model), config, args.dtype, device, max_memory)  # before loading anything
    with process_group(device):
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, max_memory=max_memory)
        scores = compute_sensitivity(model, tokenizer, records, config, _progress)
        meta = sensitivity_meta(args.model, config, records, data=args.data)
        if rank_and_size()[0] == 0:
            with output_lock(out):  # a second writer of the same file waits for this one
                save_sensitivity(out, scores, meta)
            print(json.dumps({"out": str(out), "tensors": len(scores), **meta}))
    return 0


def cmd_extract(args) -> int:
    from .transfer.mapping import parse_layers_arg
    from .transfer.pipeline import extract_to_dir
    from .transfer.plan import TransferConfig
    from .transfer.sensitivity import SensitivityConfig

    if args.recipe:
        _apply_recipe(args)
    for flag in ("teacher", "student", "data", "out"):
        if not getattr(args, flag):
            raise ParaknowError(f"--{flag} is required (on the command line or, except --out, in --recipe).")
    strategy, manual = parse_layers_arg(args.layers)
    config = TransferConfig(**{**{name: getattr(args, name) for name in EXTRACT_OPTIONS},
                               "layers": strategy, "manual_map": manual,
                               "overrides": getattr(args, "overrides", None) or {}})
    sens = SensitivityConfig(**{name: getattr(args, name) for name in SENSITIVITY_OPTIONS})
    out = output_path(args.out)
    manifest = extract_to_dir(args.teacher, args.student, args.data, out, config, sens,
                              device=args.device, dtype=args.dtype, progress=_progress, overwrite=args.overwrite)
    print(json.dumps({"out": str(out), "modules": len(manifest["modules"]),
                      "layer_map": manifest["layer_map"], "notes": manifest["notes"]}))
    return 0


def _apply_recipe(args) -> None:
    """Fill `args` from the recipe (paraknow/transfer/recipe.py); flags given on the command line
    win. Without --out, a recipe's `name` writes where the app writes: cache/exports/<name>."""
    from .core.paths import cache_dir
    from .transfer.recipe import REFERENCE_KEYS, SETTING_KEYS, load_recipe

    recipe = load_recipe(args.recipe)
    given = _given_flags(args.argv)
    for key in REFERENCE_KEYS[:3] + SETTING_KEYS:
        if key not in given and (key in REFERENCE_KEYS or key in recipe.settings):
            value = getattr(recipe, key) if key in REFERENCE_KEYS else recipe.get(key)
            if key == "modules" and isinstance(value, list):
                value = ",".join(value)
            setattr(args, key, value)
    args.overrides = recipe.get("overrides")
    if not args.out and recipe.name:
        args.out = str(cache_dir("exports") / recipe.name)


def _given_flags(argv) -> set[str]:
    """The `extract` options given on the command line (argparse fills in the rest with defaults)."""
    parser = build_parser()
    extract = parser._subparsers._group_actions[0].choices["extract"]
    for action in extract._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(parser.parse_args(argv)).keys()) - {"command", "func"}


def cmd_eval(args) -> int:
    from .runs.evaluate import run_eval

    result = run_eval(args.model, args.data, adapter=args.adapter, max_new_tokens=args.eval_max_new_tokens,
                      device=args.device, match=args.match)
    print(json.dumps(result))
    return 0


def cmd_generate(args) -> int:
    from .runs.playground import run_generate

    print(run_generate(args.model, args.prompt, adapter=args.adapter, max_new_tokens=args.eval_max_new_tokens,
                       device=args.device))
    return 0


def cmd_train(args) -> int:
    from .runs.executors import ExecutorConfig
    from .runs.train import run_training
    from .runs.train_config import TrainConfig, load_spec

    executor = ExecutorConfig(**{name: getattr(args, name) for name in EXECUTOR_OPTIONS}).validate()
    if args.spec:
        given = [flag for flag, value in (("--student", args.student), ("--data", args.data), ("--out", args.out))
                 if value]
        if given:
            raise ParaknowError(f"--spec already names the run; drop {', '.join(given)}.")
        config = load_spec(args.spec)
    else:
        config = TrainConfig.from_args(args)
    if executor.executor == "local":
        return run_training(config)  # in this process
    return _train_dispatched(config, executor, prepared=bool(args.spec))


def _train_dispatched(config, executor, prepared: bool) -> int:
    """`train --executor ray`: the run directory is prepared here (or was, for --spec) and the same
    `train --spec` runs where the executor runs it; Ctrl-C stops it cleanly (RUN_DIR/STOP)."""
    from .runs import jobs
    from .runs.executors import make_executor
    from .runs.train import run_summary

    make_executor(executor)  # connect first: an unreachable cluster leaves no run directory behind
    run_dir = Path(config.out) if prepared else jobs.new_run(config, executor=executor, run_dir=config.out)
    dispatch = jobs.launch(run_dir, executor)
    print(f"{run_dir}: started with --executor {executor.executor}; its output goes to {run_dir / 'stdout.log'}. "
          "Ctrl-C stops it at the next step.", file=sys.stderr, flush=True)
    try:
        code = dispatch.wait()
    except KeyboardInterrupt:
        jobs.stop(run_dir)
        print("stopping at the next step (the adapter is saved); Ctrl-C again stops waiting", file=sys.stderr,
              flush=True)
        code = dispatch.wait()
    state = jobs.settle(run_dir, code)
    status = jobs.read_status(run_dir)
    if state == "failed":
        print(f"error: {status.get('error')}", file=sys.stderr)
        return 2 if code == 2 else 1
    print(json.dumps(run_summary(run_dir, status)))
    return 0


def cmd_study(args) -> int:
    from .runs.executors import ExecutorConfig
    from .study import format_table, load_recipe, run_study

    executor = ExecutorConfig(**{name: getattr(args, name) for name in EXECUTOR_OPTIONS}).validate()
    recipe = load_recipe(args.recipe)
    results = run_study(recipe, args.out, resume=args.resume, workers=args.workers, executor=executor,
                        progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_table(results))
    failed = sum(c["state"] == "failed" for c in results["cells"])
    if failed:
        print(f"error: {failed} cell(s) failed (see {args.out}/cells/*/cell.json); rerun with --resume to retry them",
              file=sys.stderr)
    return 1 if failed else 0


def cmd_cache(args) -> int:
    from .core.cache import clear, fmt_bytes, list_entries

    if args.action == "list":
        entries = list_entries(args.kind, args.older_than)
        print(f"{'kind':<12} {'entry':<44} {'size':>10}  {'last used':<16}  in use")
        for entry in entries:
            row = entry.to_row()
            print(f"{row['kind']:<12} {row['entry']:<44} {fmt_bytes(entry.size):>10}  {row['last_used']:<16}  "
                  f"{row['in_use']}")
        print(f"{len(entries)} entries, {fmt_bytes(sum(e.size for e in entries))} in {cache_root()}")
        return 0
    result = clear(args.kind, args.older_than)
    print(f"removed {len(result.removed)} entries ({fmt_bytes(result.freed)})"
          + (f"; kept {len(result.skipped)} in use: " + ", ".join(f"{e.kind}/{e.name}" for e in result.skipped)
             if result.skipped else ""))
    return 0


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number of days, at least 0")
    return value


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr too (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """Every default, choice list and help text comes from the config dataclasses (paraknow.core.options)."""
    parser = _OneLineParser(prog="paraknow", description="Parametric knowledge transfer between language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_transfer_commands(sub)
    _add_model_use_commands(sub)
    _add_housekeeping_commands(sub)
    return parser


def _add_transfer_commands(sub) -> None:
    """sensitivity, extract."""
    from .core.options import Placement, add_options
    from .transfer.plan import TransferConfig
    from .transfer.sensitivity import SensitivityConfig

    p = sub.add_parser("sensitivity", help="sensitivity of every teacher parameter on seed samples")
    p.add_argument("--model", required=True, help="model reference (demo:teacher, dir, .gguf, hub id, ...)")
    p.add_argument("--data", required=True, help="JSONL file or task:NAME[:SPLIT]")
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_options(p, SensitivityConfig, SENSITIVITY_COMMAND_OPTIONS)
    add_options(p, Placement, ("device", "dtype"))
    p.add_argument("--max-memory", default=None,
                   help="spread the model with accelerate's device map within limits, e.g. 0=20GiB,1=20GiB,cpu=60GiB")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("extract", help="extract teacher parameters into a LoRA init for the student")
    p.add_argument("--teacher", help="teacher model reference (required unless --recipe gives it)")
    p.add_argument("--student", help="student model reference (required unless --recipe gives it)")
    p.add_argument("--data", help="seed data: JSONL file or task:NAME[:SPLIT] (required unless --recipe gives it)")
    p.add_argument("--out", help="output directory (with --recipe: cache/exports/<the recipe's name> if not given)")
    p.add_argument("--recipe", default=None,
                   help="the app's state as a JSON file (Download recipe in the app); flags given here override it")
    add_options(p, TransferConfig, EXTRACT_OPTIONS)
    add_options(p, SensitivityConfig, SENSITIVITY_OPTIONS)
    add_options(p, Placement, ("device", "dtype"))
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds a previous paraknow export (never any other folder)")
    p.set_defaults(func=cmd_extract)


def _add_model_use_commands(sub) -> None:
    """eval, generate, train."""
    from .core.options import Placement, add_options
    from .runs.executors import ExecutorConfig
    from .runs.train_config import CLI_FIELDS, TrainConfig

    p = sub.add_parser("eval", help="accuracy and loss of a model (optionally with an adapter) on data")
    p.add_argument("--model", required=True, help="model reference")
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory")
    p.add_argument("--data", required=True, help="JSONL file or task:NAME[:SPLIT]")
    add_options(p, TrainConfig, ("eval_max_new_tokens", "match"), flags={"eval_max_new_tokens": "--max-new-tokens"})
    add_options(p, Placement, ("device",))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="greedy completion of one prompt (a user turn, formatted as the data)")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory (an export or a run's adapter/)")
    p.add_argument("--prompt", required=True, help="the user turn to complete")
    add_options(p, TrainConfig, ("eval_max_new_tokens",), flags={"eval_max_new_tokens": "--max-new-tokens"})
    add_options(p, Placement, ("device",))
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="fine-tune the student's LoRA: vanilla, PiSSA or from a PKT export")
    add_options(p, TrainConfig, CLI_FIELDS)
    p.add_argument("--spec", default=None, help="run a prepared RUN_DIR/spec.json instead of the flags above")
    add_options(p, ExecutorConfig, EXECUTOR_OPTIONS)
    p.set_defaults(func=cmd_train)


def _add_housekeeping_commands(sub) -> None:
    """cache, study."""
    from .core.cache import KINDS as CACHE_KINDS
    from .core.options import add_options
    from .runs.executors import ExecutorConfig
    from .study.runner import DEFAULT_WORKERS, WORKERS_HELP

    p = sub.add_parser("cache", help="list or clear the runtime cache (sensitivity maps, models, exports, runs, "
                                     "background-job folders)")
    p.add_argument("action", choices=["list", "clear"])
    p.add_argument("--kind", default=None, choices=list(CACHE_KINDS), help="only this kind of entry")
    p.add_argument("--older-than", type=_non_negative_float, default=None, metavar="DAYS",
                   help="only entries not used for this many days")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("study", help="a controlled experiment: arms x seeds, mean and 95 %% CI per arm")
    p.add_argument("--recipe", required=True, help="study recipe, JSON or YAML (docs/study.md)")
    p.add_argument("--out", required=True, help="study directory (cells, results.json, report.html)")
    p.add_argument("--resume", action="store_true", help="continue a study in --out: finished cells are kept")
    p.add_argument("--workers", default=DEFAULT_WORKERS, help=WORKERS_HELP)  # checked by paraknow.core.threads
    add_options(p, ExecutorConfig, EXECUTOR_OPTIONS)
    p.set_defaults(func=cmd_study)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    quiet_transformers()
    try:
        return args.func(args)
    except ParaknowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
