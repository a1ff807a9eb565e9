"""The library's shape (docs/architecture.md): small files, small functions, no UI imports.

Walks paraknow/ with `ast`, so the limits hold for every module, including new ones.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "paraknow"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def _trees():
    for path in _modules():
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_walk_sees_the_package():
    names = {p.relative_to(PACKAGE).as_posix() for p in _modules()}
    assert {"__init__.py", "cli.py", "jobs.py", "train.py", "study/runner.py"} <= names


def test_no_file_over_the_line_limit():
    long = {p.relative_to(PACKAGE).as_posix(): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines (split them by responsibility): {long}"


def test_no_function_over_the_line_limit():
    long = {}
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE).as_posix()}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _imported_modules(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("forbidden", ["streamlit", "ui", "pages"])
def test_the_library_never_imports_the_ui(forbidden):
    offenders = sorted(p.relative_to(PACKAGE).as_posix() for p, tree in _trees()
                       if any(m == forbidden or m.startswith(forbidden + ".") for m in _imported_modules(tree)))
    assert not offenders, f"paraknow/ must not import {forbidden}: {offenders}"


def test_the_checks_catch_a_violation(tmp_path):
    """The ast walk finds a long function and a streamlit import in a module written here."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    source = f"import streamlit as st\n\ndef long():\n{body}\n"
    tree = ast.parse(source)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES
    assert "streamlit" in _imported_modules(tree)
