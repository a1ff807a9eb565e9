"""The generated hostile-input cases: every option of every command with every kind of bad value.

The cases come from the config boundary, not from a hand-written list: `paraknow.cli.build_parser()`
declares each option's type and choices (from the config dataclasses), so an int option gets the
bad whole numbers, a float option the non-finite and out-of-range numbers, a choice option values
outside its list, and a flag a value it does not take. Options that take a reference (a model, a
data file, a recipe, an output...) are typed by their destination name in `STRING_KINDS`; a new
string option without an entry there fails `test_every_option_has_hostile_cases`, so it cannot
arrive without its hostile cases. The recipe cases come the same way from the recipe key tables
(paraknow.transfer.recipe.KEYS, paraknow.study.recipe: RECIPE_KEYS, train_keys(), extract_keys())
and each key's type hint (paraknow.core.options.hint_of).

A case is (id, family, then what its test takes: argv with {PLACEHOLDER}s of hostile_inputs' `files`
and `place`, or the recipe changes). Its family (a command and a kind of value; a recipe block) picks
the fast lane's representatives. Every case must exit 2 with one line naming the option, its value or
the file.
"""
from __future__ import annotations

import argparse
import json
import math
import typing

from paraknow.cli import build_parser
from paraknow.core.options import choices_of, hint_of

BIG = str(10**30)
INT_BAD = ("abc", "", "1.5", "nan", "inf", "-5", BIG)
FLOAT_BAD = ("abc", "", "nan", "inf", "-inf", "1e400", "-5")

# hostile values by the kind of thing a string option names (placeholders: hostile_inputs' files/place)
MODEL_BAD = ("{TMP}/missing", "", "{F}", "{TMP}/typed", "{trunc}", "{random}", "{badtok}", "{gguf}", "{neg}",
             "{shape}", "no-such-org/no-such-model", "[Click here](https://evil.example/phish)", "demo:nonexistent",
             "bundled:nonexistent", "{TMP}/" + "m" * 300)
DATA_BAD = ("{TMP}/missing.jsonl", "", "{TMP}/typed", "{zero_bytes}", "{binary}", "{latin1}", "{not_json}",
            "{not_object}", "{empty}", "{deep}", "{no_text}", "{truncated_line}", "task:nonexistent",
            "task:arith:nosplit", "{TMP}/" + "d" * 300 + ".jsonl")
JSON_FILE_BAD = ("{TMP}/missing.json", "", "{TMP}/typed", "{zero_bytes}", "{binary}", "{latin1}", "{not_json}",
                 "{deep_json}", "{json_list}", "{truncated_json}")
MAP_BAD = JSON_FILE_BAD[:7] + ("{S}/model.safetensors", "{random}/model.safetensors", "{trunc}/model.safetensors")
ADAPTER_BAD = ("{TMP}/missing", "", "{F}", "{TMP}/typed", "{badad}", "{pickled}", "{S}")
INIT_BAD = ("bogus", "", "{F}", "{TMP}/typed", "{badexp}", "{V}", "{S}", "{TMP}/missing")
OUT_DIR_BAD = ("{V}", ".", "~", "{F}", "{F}/sub", "", "{TMP}/dangling", "{TMP}/" + "o" * 300)
OUT_FILE_BAD = ("{F}", "{S}/model.safetensors", "{TMP}/typed", "", "{TMP}/dangling", "{F}/sub",
                "{TMP}/" + "f" * 300)
DEVICE_BAD = ("bogus", "", "cuda:99", "cuda:x", "cpu;rm -rf ~")

STRING_KINDS = {  # option dest -> its hostile values (commands sharing a dest share its kind)
    "model": MODEL_BAD, "teacher": MODEL_BAD, "student": MODEL_BAD, "distill_teacher": MODEL_BAD,
    "data": DATA_BAD, "eval_data": DATA_BAD,
    "sensitivity": MAP_BAD, "recipe": JSON_FILE_BAD, "spec": JSON_FILE_BAD,
    "adapter": ADAPTER_BAD, "init": INIT_BAD, "device": DEVICE_BAD,
    "layers": ("bogus", "", "manual:", "manual:99,-", "manual:a,b", "manual:-1,-", "manual:0"),
    "modules": ("bogus", "../../x", "attn,bogus", ","),
    "max_memory": ("bogus", "0=abc", "cpu=-1GiB", "=", "cpu=nanGiB"),
    "prompt": ("", " \n "),
    "workers": ("bogus", "", "0", "-1", "nan", "1e9", "1.5"),
    "address": ("bogus", "ray://", "[x](https://evil.example)"),
}
OUT_KINDS = {"extract": OUT_DIR_BAD, "train": OUT_DIR_BAD, "study": OUT_DIR_BAD,
             "sensitivity": OUT_FILE_BAD, "distill-data": OUT_FILE_BAD}

# a valid command line per command: each case replaces one option of it (or adds one)
BASE = {
    "sensitivity": ["--model", "{T}", "--data", "{D}", "--out", "{TMP}/s.safetensors", "--samples", "2",
                    "--device", "cpu"],
    "extract": ["--teacher", "{T}", "--student", "{S}", "--data", "{D}", "--out", "{TMP}/x", "--samples", "2",
                "--rank", "4", "--device", "cpu"],
    "plan": ["--teacher", "{T}", "--student", "{S}", "--data", "{D}", "--samples", "2", "--rank", "4",
             "--device", "cpu"],
    "eval": ["--model", "{S}", "--data", "{D}", "--device", "cpu", "--max-new-tokens", "2", "--limit", "2"],
    "generate": ["--model", "{S}", "--prompt", "2+2", "--device", "cpu", "--max-new-tokens", "2"],
    "distill-data": ["--teacher", "demo:teacher", "--data", "task:arith:seed", "--out", "{TMP}/d.jsonl", "--device", "cpu",
                     "--max-new-tokens", "2"],
    "train": ["--student", "{S}", "--data", "{D}", "--out", "{TMP}/run", "--device", "cpu", "--epochs", "1",
              "--batch", "4", "--micro-batch", "4", "--rank", "4"],
    "cache": ["list"],
    "study": ["--recipe", "{study_recipe}", "--out", "{TMP}/study"],
}
NEEDS = {"distill_teacher": ["--distill", "logits"], "address": ["--executor", "ray"]}  # what makes it matter


def _values(command: str, action: argparse.Action) -> tuple[str, tuple]:
    """The kind and hostile values of one option, from its declared type and choices (or its kind)."""
    if action.choices is not None:
        first = str(list(action.choices)[0])
        return "choice", ("bogus", "", first.upper() if first.upper() != first else first + "x", "../" + first)
    if action.type is int:
        return "int", INT_BAD
    if action.type is float or (callable(action.type) and action.type is not str):
        return "float", FLOAT_BAD
    if action.dest == "out":
        return "out", OUT_KINDS[command]
    values = STRING_KINDS[action.dest]
    return next((name for name, known in globals().items() if known is values and name.isupper()), action.dest), values


def options(parser=None):
    """(command, action) for every option of every command (help aside)."""
    parser = parser or build_parser()
    for command, sub in parser.commands.items():
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                yield command, action


def _case_id(command: str, dest: str, value: str) -> str:
    shown = value.replace("{", "").replace("}", "")
    shown = shown if len(shown) <= 24 else f"{shown[:12]}...({len(shown)})"
    return f"{command}-{dest}={shown!r}"


def cli_cases() -> list[tuple]:
    """One case per (command, option, hostile value), plus each flag given a value it does not take:
    (id, family: the command and the kind of value, argv, setup, the option's flag or name, the value)."""
    cases = []
    for command, action in options():
        base = BASE[command]
        flag = action.option_strings[0] if action.option_strings else action.dest
        if isinstance(action, argparse._StoreTrueAction):
            cases.append((f"{command}-{action.dest}=yes", f"{command}:flag", [command, *base, f"{flag}=yes"], None,
                          flag, "yes"))
            continue
        kind, values = _values(command, action)
        for value in values:
            setup = "dangling" if "dangling" in value else None
            if not action.option_strings:  # the positional (cache's action)
                argv = [command, value, *base[1:]]
            else:
                argv = [command, *_without(base, flag), *NEEDS.get(action.dest, []), f"{flag}={value}"]
            cases.append((_case_id(command, action.dest, value), f"{command}:{kind}", argv, setup, flag, value))
    return cases


def _without(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value (a case gives its own)."""
    if flag not in argv:
        return list(argv)
    i = argv.index(flag)
    return argv[:i] + argv[i + 2:]


# recipe values --------------------------------------------------------------------------------------

def _bad_for_hint(hint, choices) -> list:
    """JSON values that do not fit a type hint, plus the non-finite and negative numbers for a
    number and an unknown name for a choice."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union,) or type(hint).__name__ == \
        "UnionType" else (hint,)
    bad = [{"an": "object"}] if dict not in args and typing.get_origin(hint) is not dict else [[1, 2]]
    if int in args or float in args:
        bad += [math.nan, math.inf, -5, 10**30] if float in args else [-5, 10**30, 1.5]
    elif str in args:
        bad += [5]
    if choices:
        bad += ["bogus"]
    return bad


def extract_recipe_cases() -> list[tuple[str, dict]]:
    """`extract --recipe`: each key of the app's recipe with each value that does not fit it, and an unknown key."""
    from paraknow.transfer import recipe

    cases = [("extract-recipe-unknown-key", "keys", {"structur": "rowcol"})]
    for key in recipe.KEYS:
        hint = recipe._hint(key)
        choices = None if key in recipe.REFERENCE_KEYS else choices_of(recipe._owner(key), key)
        for value in _bad_for_hint(hint, choices) + ([""] if key in recipe.REFERENCE_KEYS else []):
            cases.append((f"extract-recipe-{key}={json.dumps(value)[:20]}", "values", {key: value}))
    return cases


def study_recipe_cases() -> list[tuple[str, dict]]:
    """`study --recipe`: every top-level key, every `train` key and every arm `extract` key with
    values that do not fit it (changes to merge into a valid recipe)."""
    from paraknow.runs.train_config import TrainConfig
    from paraknow.study import recipe as study
    from paraknow.transfer.plan import TransferConfig
    from paraknow.transfer.sensitivity import SensitivityConfig

    cases = [(f"study-recipe-{key}={json.dumps(value)[:20]}", "top", {key: value})
             for key in study.RECIPE_KEYS for value in ({"an": "object"} if key != "train" else [1], -5, "")
             if not (key in ("train", "comparisons") and value == "")]
    cases += [("study-recipe-unknown-key", "keys", {"structur": 1}),
              ("study-recipe-seeds-negative", "seeds", {"seeds": [-1]}),
              ("study-recipe-seeds-huge", "seeds", {"seeds": [10**30]}), ("study-recipe-no-arms", "arms", {"arms": []})]
    for key in study.train_keys():
        for value in _bad_for_hint(hint_of(TrainConfig, key), choices_of(TrainConfig, key)):
            cases.append((f"study-recipe-train.{key}={json.dumps(value)[:20]}", "train", {"train": {key: value}}))
    owners = {**dict.fromkeys(study._config_fields(SensitivityConfig), SensitivityConfig),
              **dict.fromkeys(study._config_fields(TransferConfig), TransferConfig)}
    for key in study.extract_keys():
        owner = owners.get(key)
        values = _bad_for_hint(hint_of(owner, key), choices_of(owner, key)) if owner else [5, "bogus"]
        for value in values:
            arm = {"name": "pkt", "init": "pkt", "extract": {key: value}}
            cases.append((f"study-recipe-extract.{key}={json.dumps(value)[:20]}", "extract",
                          {"arms": [{"name": "vanilla", "init": "vanilla"}, arm]}))
    return cases
