"""The generated hostile-input table (tests/hostile_cases.py): every option of every command with
every kind of bad value, and every recipe key with values that do not fit it, run in-process
through `paraknow.cli.main`. Each case must exit 2 with one line on stderr that names the option,
the key, its value or the file, no traceback, and leave every file outside paraknow's cache exactly
as it was (a snapshot before and after). The whole table is in the slow lane; the first case of each
family (a command and a kind of value: int, float, choice, model, data file, output...; a recipe
block) runs in the fast lane.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest
from hostile_cases import (BASE, STRING_KINDS, cli_cases, extract_recipe_cases, options, study_recipe_cases)
from hostile_inputs import STUDY_RECIPE, files, place, prepare, snapshot  # noqa: F401 - files, place: fixtures

from paraknow.cli import main

CLI = cli_cases()
EXTRACT_RECIPES = extract_recipe_cases()
STUDY_RECIPES = study_recipe_cases()


def _lanes(cases):
    """The first case of each family (a command and a kind of value, a recipe block) in the fast
    lane, the rest marked slow."""
    seen, params = set(), []
    for case_id, family, *case in cases:
        marks = () if family not in seen else (pytest.mark.slow,)
        seen.add(family)
        params.append(pytest.param(*case, id=case_id, marks=marks))
    return params


def _run(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                    if not re.match(r"\[\d+/\d+\] ", line))  # progress lines of work done before the refusal
    return code, err


def _one_line_refusal(code, err, names) -> None:
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert any(name and len(name) >= 2 and name in err for name in names), err  # it says which option, key or file


@pytest.fixture
def offline(monkeypatch):
    """No network in tests: a hub id is refused as unreachable, never fetched; a study that got past
    every check would calibrate next (its cells' work): that is a case failing, so it raises."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # read at import: every request refused

    def accepted(*args, **kwargs):
        raise AssertionError("the recipe was accepted: the study went on to calibrate")

    monkeypatch.setattr("paraknow.study.runner.calibrate", accepted)


def _mentions(flag: str, value: str) -> list[str]:
    """What a good refusal names: the option (as a flag or a setting), the value, the file it names
    (as given, expanded, or its name cut short), or a part of a reference (task:NAME:SPLIT, a,b)."""
    expanded = os.path.abspath(os.path.expanduser(value)) if value else ""
    parts = [part for part in re.split(r"[:/,]", value) if len(part) >= 3]
    return [flag, flag.lstrip("-"), flag.lstrip("-").replace("-", "_"), value, expanded, Path(value).name[:24],
            *parts]


@pytest.mark.parametrize("argv, setup, flag, value", _lanes(CLI))
def test_hostile_option_value_exits_2_with_one_line_and_touches_nothing(files, place, offline, argv, setup, flag,
                                                                        value, capsys, monkeypatch):
    names = {**files, **place}
    prepare(setup, place, monkeypatch)
    argv = [arg.format(**names) for arg in argv]
    before = snapshot(place["TMP"], Path(files["S"]).parent)
    code, err = _run(argv, capsys)
    _one_line_refusal(code, err, _mentions(flag, value.format(**names)))
    assert snapshot(place["TMP"], Path(files["S"]).parent) == before  # nothing touched, nothing left behind


@pytest.mark.parametrize("changes", _lanes(EXTRACT_RECIPES))
def test_hostile_extract_recipe_value_exits_2(files, place, offline, changes, capsys):
    recipe = Path(place["TMP"]) / "recipe.json"
    recipe.write_text(json.dumps({"teacher": files["T"], "student": files["S"], "data": files["D"], "samples": 2,
                                  "rank": 4, **changes}))
    before = snapshot(place["TMP"], Path(files["S"]).parent)
    code, err = _run(["extract", "--recipe", str(recipe), "--out", f"{place['TMP']}/x", "--device", "cpu"], capsys)
    _one_line_refusal(code, err, list(changes))
    assert snapshot(place["TMP"], Path(files["S"]).parent) == before


@pytest.mark.parametrize("changes", _lanes(STUDY_RECIPES))
def test_hostile_study_recipe_value_exits_2(files, place, offline, changes, capsys):
    recipe = Path(place["TMP"]) / "recipe.json"
    recipe.write_text(json.dumps({**STUDY_RECIPE, **changes}))
    before = snapshot(place["TMP"], Path(files["S"]).parent)
    code, err = _run(["study", "--recipe", str(recipe), "--out", f"{place['TMP']}/study"], capsys)
    keys = [*changes, *(k for v in changes.values() if isinstance(v, dict) for k in v),
            *(k for v in changes.values() if isinstance(v, list) for arm in v if isinstance(arm, dict)
              for k in arm.get("extract", {}))]
    _one_line_refusal(code, err, keys)
    assert snapshot(place["TMP"], Path(files["S"]).parent) == before


def test_every_option_has_hostile_cases():
    """A new option gets its cases from its declared type or choices; a new string option must say what
    kind of thing it names (hostile_cases.STRING_KINDS), and every command has a valid base line."""
    ids = {case[0].split("=")[0] for case in CLI}
    for command, action in options():
        assert command in BASE
        if isinstance(action, argparse._StoreAction) and action.choices is None and action.type in (None, str):
            assert action.dest in STRING_KINDS or action.dest == "out", f"{command} {action.dest}"
        assert f"{command}-{action.dest}" in ids, f"{command} {action.dest} has no hostile case"
    assert len(CLI) + len(EXTRACT_RECIPES) + len(STUDY_RECIPES) >= 355
