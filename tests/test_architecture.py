"""The library's shape (docs/architecture.md): named layers, imports only downward, no import cycle,
small files, small functions, no UI imports.

Walks paraknow/ with `ast` (imports inside functions and under TYPE_CHECKING count too), so the rules
hold for every module, including new ones.
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
    assert {"__init__.py", "cli.py", "runs/jobs.py", "runs/train.py", "study/runner.py"} <= names


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


# ---------------------------------------------------------------------------------------
# Layers and cycles

# The one declaration of the library's layers, lowest first: a module may import from its own layer
# and the layers below it, never from one above. A layer is a list of module prefixes.
LAYERS = (
    ("core", ("paraknow.core",)),  # models, data, tasks, files, the job substrate, the cache
    ("transfer", ("paraknow.extract", "paraknow.transfer")),  # sensitivity, mapping, selection, LoRA, export
    ("runs", ("paraknow.runs", "paraknow.demo")),  # training, evaluation, background jobs, executors
    ("viz", ("paraknow.viz",)),  # figures
    ("study", ("paraknow.study",)),  # controlled experiments
    ("lesson", ("paraknow.lesson",)),  # the guided lesson
    ("report", ("paraknow.report", "paraknow.htmlreport")),  # results files and HTML reports
    ("cli", ("paraknow.cli", "paraknow.terminal", "paraknow.__main__")),  # the command line
    ("api", ("paraknow",)),  # the package's public names (paraknow/__init__.py)
)


def _module_name(path: Path, root: Path) -> str:
    name = path.relative_to(root.parent).with_suffix("").as_posix().replace("/", ".")
    return name.removesuffix(".__init__")


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the package modules it imports}, every import statement counted (also inside
    functions); `from pkg import name` points at pkg.name when that is a module, else at pkg."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, path.name == "__init__.py", node)
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state = {}  # module -> 1 on the current path, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_of(module: str) -> int:
    """The index of the module's layer in LAYERS (the longest matching prefix decides)."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_architecture.py")
    return best


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
                  for m, targets in graph.items() for t in targets if layer_of(t) > layer_of(m))


def test_no_import_cycle_in_the_library():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_is_in_a_layer_and_imports_only_downward():
    graph = import_graph()
    assert not (bad := upward_imports(graph)), "imports from a higher layer:\n" + "\n".join(bad)


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "paraknow" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "paraknow"


def test_the_checks_catch_a_planted_cycle_and_an_upward_import(tmp_path):
    """A cycle hidden in a function-level import, and a core module importing the CLI, are both found."""
    package = _write_package(tmp_path, {
        "__init__.py": "", "core/__init__.py": "", "transfer/__init__.py": "",
        "core/a.py": "def f():\n    from ..transfer import b\n",
        "transfer/b.py": "from ..core.a import f\n",
        "core/c.py": "from paraknow import cli\n", "cli.py": "",
    })
    graph = import_graph(package)
    assert graph["paraknow.core.a"] == {"paraknow.transfer.b"}
    assert find_cycle(graph) in (["paraknow.core.a", "paraknow.transfer.b", "paraknow.core.a"],
                                 ["paraknow.transfer.b", "paraknow.core.a", "paraknow.transfer.b"])
    bad = upward_imports(graph)
    assert "paraknow.core.a (core) imports paraknow.transfer.b (transfer)" in bad
    assert "paraknow.core.c (core) imports paraknow.cli (cli)" in bad
    del graph["paraknow.core.a"]
    assert find_cycle({m: t - {"paraknow.core.a"} for m, t in graph.items()}) is None
