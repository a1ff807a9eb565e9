"""`paraknow <command>` (or `python -m paraknow`). Bad input: exit 2 and a one-line reason on stderr.

The options are generated from the config dataclasses (TransferConfig, SensitivityConfig,
TrainConfig, options.Placement): a default, choice list or help text is changed there, once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .core.errors import ParaknowError, os_error_message
from .core.fsio import REFUSE_WAIT_S, output_lock, output_path
from .core.models import quiet_transformers
from .core.paths import cache_root
from .runs.executors import EXECUTOR_OPTIONS
from .terminal import OneLineParser, ProgressBar, non_negative_days, progress_line
from .transfer.plan import EXTRACT_OPTIONS
from .transfer.sensitivity import SENSITIVITY_COMMAND_OPTIONS, SENSITIVITY_OPTIONS


def cmd_sensitivity(args) -> int:
    from .core.data import load_records
    from .core.memory import parse_max_memory
    from .core.models import load_config, load_model, resolve_device
    from .core.parallel import launched_rank, launched_world_size, process_device, process_group, rank_and_size
    from .transfer.seeds import seed_losses
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
    writer = output_lock(out, wait_s=REFUSE_WAIT_S) if launched_rank() == 0 else contextlib.nullcontext()
    with writer, process_group(device):  # a second writer of the same file is refused at once
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, max_memory=max_memory)
        scores = compute_sensitivity(model, tokenizer, records, config, progress_line)
        if rank_and_size()[0] == 0:
            losses = seed_losses(model, tokenizer, records[:config.samples], config.max_length)
            meta = sensitivity_meta(args.model, config, records, data=args.data, seed_losses=losses)
            save_sensitivity(out, scores, meta)
            check = _warn_seeds(losses)
            print(json.dumps({"out": str(out), "tensors": len(scores), **meta, "seed_check": check}))
    return 0


def _transfer_inputs(args):
    """The TransferConfig, SensitivityConfig and the sensitivity settings given explicitly (checked against a
    --sensitivity map's own) of `extract` and `plan`."""
    from .transfer.mapping import parse_layers_arg
    from .transfer.plan import TransferConfig
    from .transfer.sensitivity import SensitivityConfig

    strategy, manual = parse_layers_arg(args.layers)
    config = TransferConfig(**{**{name: getattr(args, name) for name in EXTRACT_OPTIONS},
                               "layers": strategy, "manual_map": manual,
                               "overrides": getattr(args, "overrides", None) or {}})
    sens = SensitivityConfig(**{name: getattr(args, name) for name in SENSITIVITY_OPTIONS})
    given = _given_flags(args.argv, args.command) | getattr(args, "recipe_keys", set())
    return config, sens, {name: getattr(args, name) for name in SENSITIVITY_OPTIONS if name in given}


def _warn_seeds(losses) -> dict | None:
    """The seed check of a map's seed losses (paraknow/transfer/seeds.py); its warning goes to stderr."""
    from .transfer.seeds import check_seeds

    if not losses:
        return None
    check = check_seeds(losses)
    if check.message():
        print(f"warning: {check.message()}", file=sys.stderr, flush=True)
    return check.to_dict()


def _report_map(map_file) -> None:
    if map_file is not None:
        print(f"sensitivity map {map_file.path}: " + json.dumps(map_file.report()), file=sys.stderr, flush=True)


def cmd_extract(args) -> int:
    from .transfer.pipeline import extract_to_dir

    if args.recipe:
        _apply_recipe(args)
    for flag in ("teacher", "student", "out") + (() if args.sensitivity else ("data",)):
        if not getattr(args, flag):
            raise ParaknowError(f"--{flag} is required (on the command line or, except --out, in --recipe).")
    config, sens, asked = _transfer_inputs(args)
    out = output_path(args.out)
    manifest = extract_to_dir(args.teacher, args.student, args.data, out, config, sens,
                              device=args.device, dtype=args.dtype, progress=progress_line, overwrite=args.overwrite,
                              sensitivity_file=args.sensitivity, asked=asked)
    print(json.dumps({"out": str(out), "modules": len(manifest["modules"]),
                      "layer_map": manifest["layer_map"], "notes": manifest["notes"],
                      "seed_check": _warn_seeds(manifest.get("seed_losses")),
                      **({"sensitivity": {k: manifest[k] for k in ("sensitivity_file", "metric", "samples",
                                                                     "data_sha256")}}
                         if args.sensitivity else {})}))
    return 0


def cmd_plan(args) -> int:
    from .transfer.pipeline import compare_to_rows

    for flag in ("teacher", "student"):
        if not getattr(args, flag):
            raise ParaknowError(f"--{flag} is required.")
    config, sens, asked = _transfer_inputs(args)
    rows, prepared = compare_to_rows(args.teacher, args.student, args.data, config, sens, device=args.device,
                                     dtype=args.dtype, progress=progress_line, sensitivity_file=args.sensitivity,
                                     asked=asked, compare=args.compare)
    _report_map(prepared.map_file)
    for row in rows:
        print(json.dumps(row.to_dict()), flush=True)
    return 0


def _apply_recipe(args) -> None:
    """Fill `args` from the recipe (paraknow/transfer/recipe.py); flags given on the command line
    win. Without --out, a recipe's `name` writes where the app writes: cache/exports/<name>."""
    from .core.paths import cache_dir
    from .transfer.recipe import REFERENCE_KEYS, SETTING_KEYS, load_recipe

    recipe = load_recipe(args.recipe)
    given = _given_flags(args.argv, args.command)
    args.recipe_keys = set()
    for key in REFERENCE_KEYS[:3] + SETTING_KEYS:
        if key not in given and (key in REFERENCE_KEYS or key in recipe.settings):
            value = getattr(recipe, key) if key in REFERENCE_KEYS else recipe.get(key)
            if key == "modules" and isinstance(value, list):
                value = ",".join(value)
            setattr(args, key, value)
            args.recipe_keys.add(key)
    args.overrides = recipe.get("overrides")
    if not args.out and recipe.name:
        args.out = str(cache_dir("exports") / recipe.name)


def _given_flags(argv, command: str) -> set[str]:
    """The options of `command` given on the command line: the command parsed once more with every
    default replaced by a marker (argparse's public set_defaults), so only what was typed differs."""
    parser = build_parser()
    typed = vars(parser.parse_args(argv))
    not_given = object()
    parser.commands[command].set_defaults(**{key: not_given for key in typed if key not in ("command", "func")})
    return {key for key, value in vars(parser.parse_args(argv)).items()
            if value is not not_given and key not in ("command", "func")}


def cmd_eval(args) -> int:
    from .runs.evaluate import run_eval

    bar = ProgressBar()
    try:
        result = run_eval(args.model, args.data, adapter=args.adapter, max_new_tokens=args.eval_max_new_tokens,
                          device=args.device, match=args.match, limit=args.limit, progress=bar)
    finally:
        bar.close()
    print(json.dumps(result))
    return 0


def cmd_generate(args) -> int:
    from .runs.playground import run_generate

    print(run_generate(args.model, args.prompt, adapter=args.adapter, max_new_tokens=args.eval_max_new_tokens,
                       device=args.device))
    return 0


def cmd_distill_data(args) -> int:
    from .runs.distill_data import run_distill_data

    print(json.dumps(run_distill_data(args.teacher, args.data, args.out, args.eval_max_new_tokens, args.eval_batch,
                                      device=args.device)))
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
        return run_training(config, overwrite=args.overwrite)  # in this process
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
        print("stopping at the next step (the adapter is saved); Ctrl-C again stops waiting", file=sys.stderr, flush=True)
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
    from .study import format_table, load_recipe, parse_recipe, run_study
    from .study.plan import plan_cells

    executor = ExecutorConfig(**{name: getattr(args, name) for name in EXECUTOR_OPTIONS}).validate()
    recipe = load_recipe(args.recipe)
    if args.budget_minutes is not None:  # checked as the recipe's own key
        recipe = parse_recipe({**recipe.to_dict(), "budget_minutes": args.budget_minutes})
    results = run_study(recipe, args.out, resume=args.resume, workers=args.workers, executor=executor,
                        progress=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_table(results))
    failed = sum(c["state"] == "failed" for c in results["cells"])
    if failed:
        print(f"error: {failed} cell(s) failed (see {args.out}/cells/*/cell.json); rerun with --resume to retry them",
              file=sys.stderr)
        return 1
    total, finished = len(plan_cells(recipe)), sum(c["state"] == "finished" for c in results["cells"])
    if finished < total and (results.get("timing") or {}).get("budget_stop"):
        print(f"error: {results['timing']['budget_stop']}", file=sys.stderr)
        return 1
    if finished < total:  # stopped (STOP or SIGTERM): not a finished study
        print(f"error: the study stopped with {total - finished} of {total} cells not finished; rerun with "
              "--resume to finish them", file=sys.stderr)
        return 1
    return 0


def cmd_cache(args) -> int:
    from .core.cache import UNMARKED, clear, fmt_bytes, list_entries

    if args.action == "list":
        entries = list_entries(args.kind, args.older_than)
        print(f"{'kind':<12} {'entry':<44} {'size':>10}  {'last used':<16}  kept because")
        for entry in entries:
            row = entry.to_row()
            print(f"{row['kind']:<12} {row['entry']:<44} {fmt_bytes(entry.size):>10}  {row['last_used']:<16}  "
                  f"{row['in_use']}")
        print(f"{len(entries)} entries, {fmt_bytes(sum(e.size for e in entries))} in {cache_root()}")
        return 0
    result = clear(args.kind, args.older_than)
    unmarked = [f"{e.kind}/{e.name}" for e in result.skipped if e.in_use == UNMARKED]
    kept = [f"{e.kind}/{e.name} ({e.in_use})" for e in result.skipped if e.in_use != UNMARKED]
    print(f"removed {len(result.removed)} entries ({fmt_bytes(result.freed)})"
          + (f"; kept {len(kept)}: " + ", ".join(kept) if kept else "")
          + (f"; left {len(unmarked)} that paraknow did not make (no marker; remove them yourself if you "
             "mean to): " + ", ".join(unmarked) if unmarked else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Every default, choice list and help text comes from the config dataclasses (paraknow.core.options)."""
    parser = OneLineParser(prog="paraknow", description="Parametric knowledge transfer between language models.")
    sub = _Commands(parser.add_subparsers(dest="command", required=True))
    _add_transfer_commands(sub)
    _add_model_use_commands(sub)
    _add_housekeeping_commands(sub)
    parser.commands = sub.parsers  # {command: its parser} (read by _given_flags)
    return parser


class _Commands:
    """The subcommands' action, keeping each command's parser as it is added."""

    def __init__(self, action):
        self.action, self.parsers = action, {}

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        self.parsers[name] = self.action.add_parser(name, **kwargs)
        return self.parsers[name]


def _add_transfer_commands(sub) -> None:
    """sensitivity, extract, plan."""
    from .core.options import Placement, add_options
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

    _add_extract(sub)
    _add_plan(sub)


def _add_extract(sub):
    """The `extract` subcommand."""
    p = sub.add_parser("extract", help="extract teacher parameters into a LoRA init for the student")
    _add_plan_inputs(p, "(required unless --recipe gives it)")
    p.add_argument("--out", help="output directory (with --recipe: cache/exports/<the recipe's name> if not given)")
    p.add_argument("--recipe", default=None,
                   help="the app's state as a JSON file (Download recipe in the app); flags given here override it")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds a previous paraknow export (never any other folder)")
    p.set_defaults(func=cmd_extract)
    return p


def _add_plan(sub):
    """The `plan` subcommand."""
    p = sub.add_parser("plan", help="what an extract would take, without exporting: one JSON line per row "
                                    "(captured, lift, energy, cos, modules, seconds)")
    _add_plan_inputs(p, "(required)")
    p.add_argument("--compare", action="store_true",
                   help="one row per structure x layer strategy x coherent level instead of the given settings only")
    p.set_defaults(func=cmd_plan)
    return p


def _add_plan_inputs(p, required: str) -> None:
    """The models, seed data or map, and transfer settings that `extract` and `plan` share."""
    from .core.options import Placement, add_options
    from .transfer.plan import TransferConfig
    from .transfer.sensitivity import SensitivityConfig
    from .transfer.sensitivity_files import MAP_FILE_HELP

    p.add_argument("--teacher", help=f"teacher model reference {required}")
    p.add_argument("--student", help=f"student model reference {required}")
    p.add_argument("--data", help="seed data: JSONL file or task:NAME[:SPLIT] (not needed with --sensitivity)")
    p.add_argument("--sensitivity", default=None, metavar="FILE", help=MAP_FILE_HELP)
    add_options(p, TransferConfig, EXTRACT_OPTIONS)
    add_options(p, SensitivityConfig, SENSITIVITY_OPTIONS)
    add_options(p, Placement, ("device", "dtype"))


def _add_model_use_commands(sub) -> None:
    """eval, generate, distill-data, train."""
    from .core.options import Placement, add_options
    from .runs.evaluate import EvalOptions
    from .runs.executors import ExecutorConfig
    from .runs.train_config import CLI_FIELDS, TrainConfig

    p = sub.add_parser("eval", help="accuracy and loss of a model (optionally with an adapter) on data")
    p.add_argument("--model", required=True, help="model reference")
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory")
    p.add_argument("--data", required=True, help="JSONL file or task:NAME[:SPLIT]")
    add_options(p, TrainConfig, ("eval_max_new_tokens", "match"), flags={"eval_max_new_tokens": "--max-new-tokens"})
    add_options(p, EvalOptions, ("limit",))
    add_options(p, Placement, ("device",))
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="greedy completion of one prompt (a user turn, formatted as the data)")
    p.add_argument("--model", required=True)
    p.add_argument("--adapter", default=None, help="a PEFT LoRA adapter directory (an export or a run's adapter/)")
    p.add_argument("--prompt", required=True, help="the user turn to complete")
    add_options(p, TrainConfig, ("eval_max_new_tokens",), flags={"eval_max_new_tokens": "--max-new-tokens"})
    add_options(p, Placement, ("device",))
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("distill-data", help="a teacher's greedy completions of a dataset's prompts (sequence KD data: "
                                            "the same records, completions replaced; cached by content)")
    p.add_argument("--teacher", required=True, help="teacher model reference")
    p.add_argument("--data", required=True, help="JSONL file or task:NAME[:SPLIT]")
    p.add_argument("--out", required=True, help="output JSONL file")
    add_options(p, TrainConfig, ("eval_max_new_tokens", "eval_batch"),
                flags={"eval_max_new_tokens": "--max-new-tokens", "eval_batch": "--batch"})
    add_options(p, Placement, ("device",))
    p.set_defaults(func=cmd_distill_data)

    p = sub.add_parser("train", help="fine-tune the student's LoRA: vanilla, PiSSA or from a PKT export")
    add_options(p, TrainConfig, CLI_FIELDS)
    p.add_argument("--spec", default=None, help="run a prepared RUN_DIR/spec.json instead of the flags above")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an ended run and nothing else")
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
    p.add_argument("--older-than", type=non_negative_days, default=None, metavar="DAYS",
                   help="only entries not used for this many days")
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser("study", help="a controlled experiment: arms x seeds, mean and 95 %% CI per arm")
    p.add_argument("--recipe", required=True, help="study recipe, JSON or YAML (docs/study.md)")
    p.add_argument("--out", required=True, help="study directory (cells, results.json, report.html)")
    p.add_argument("--resume", action="store_true", help="continue a study in --out: finished cells are kept")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="the recipe's budget_minutes for this run (e.g. raised to resume a study the budget stopped)")
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
    except OSError as exc:  # the machine refused a write (disk full, read-only, ...): outputs are atomic
        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
