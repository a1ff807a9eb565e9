"""The app's state as a recipe: a JSON file, the app's URL, and `extract --recipe FILE`.

One set of keys for all three (docs/recipe.md): `teacher`, `student`, `data` (model and data
references as the CLI takes them), `name` (the export's name) and the `extract` options by
their long names -- `metric`, `samples`, `max_length` (SensitivityConfig), `rank`, `alpha`,
`layers` (`manual:I,J,...` for a hand-made map), `structure`, `coherent`, `modules`, `mode`,
`split`, `svd`, `seed` (TransferConfig), `dtype`, `device` -- plus `overrides` (manual block
positions, {student module: [row, col]}). Types and checks are read from those dataclasses, so
a new option is a recipe key at once. Every error names its key.

In the URL (`to_query` / `from_query`) every value is a string and settings equal to their
default are left out, so a link stays short; the file (`to_dict`) writes every setting.
"""
from __future__ import annotations

import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import ParaknowError
from ..core.options import Placement, choices_of, default_of, hint_of
from ..core.validate import type_problem
from .plan import EXTRACT_OPTIONS, TransferConfig, parse_modules, parse_overrides
from .sensitivity import SENSITIVITY_OPTIONS, SensitivityConfig

REFERENCE_KEYS = ("teacher", "student", "data", "name")
PLACEMENT_KEYS = ("dtype", "device")
SETTING_KEYS = SENSITIVITY_OPTIONS + EXTRACT_OPTIONS + PLACEMENT_KEYS + ("overrides",)
KEYS = REFERENCE_KEYS + SETTING_KEYS
NAME_MAX = 80
NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{NAME_MAX - 1}}}$")


def check_export_name(name: str) -> str:
    """An export name: 1-80 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise ParaknowError(f"'{name}' is not a usable export name: use 1-80 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit.")
    return name


def _owner(key: str):
    """The dataclass whose field `key` is."""
    if key in SENSITIVITY_OPTIONS:
        return SensitivityConfig
    return Placement if key in PLACEMENT_KEYS else TransferConfig


def _hint(key: str):
    return str if key in REFERENCE_KEYS else hint_of(_owner(key), key)


def default(key: str):
    return None if key in REFERENCE_KEYS else default_of(_owner(key), key)


def _fail(key: str, message: str) -> typing.NoReturn:
    raise ParaknowError(f"recipe key '{key}': {message}")


def _check_value(key: str, value) -> None:
    """One key's value alone: its type, then the owning config's own check."""
    from .mapping import parse_layers_arg

    problem = type_problem({key: value}, {key: _hint(key)}, "recipe")
    if problem:
        raise ParaknowError(problem + ".")
    try:
        if key in ("teacher", "student", "data"):
            if not value.strip():
                raise ParaknowError("must not be empty.")
        elif key == "name":
            check_export_name(value)
        elif key == "layers":
            parse_layers_arg(value)
        elif key == "overrides":
            parse_overrides(value)
        elif key in SENSITIVITY_OPTIONS:
            SensitivityConfig(**{key: value}).validate()
        elif key in EXTRACT_OPTIONS:
            TransferConfig.from_dict({key: value}).validate()
        elif key == "device":
            from ..core.models import resolve_device

            resolve_device(value)
        elif value is not None and value not in (choices := choices_of(Placement, key)):
            raise ParaknowError(f"{value!r} is not one of {', '.join(choices)}.")
    except ParaknowError as exc:
        _fail(key, str(exc))


@dataclass
class SessionRecipe:
    """The references and the settings of one session; `settings` holds only the keys given."""
    teacher: str | None = None
    student: str | None = None
    data: str | None = None
    name: str | None = None
    settings: dict = field(default_factory=dict)

    def get(self, key: str):
        return self.settings.get(key, default(key))

    def sensitivity_config(self) -> SensitivityConfig:
        return SensitivityConfig(**{k: self.get(k) for k in SENSITIVITY_OPTIONS})

    def transfer_config(self) -> TransferConfig:
        return TransferConfig.from_dict({**{k: self.get(k) for k in EXTRACT_OPTIONS},
                                         "overrides": self.get("overrides") or {}})

    def to_dict(self) -> dict:
        """Every key, defaults filled in (the recipe file)."""
        refs = {k: getattr(self, k) for k in REFERENCE_KEYS if getattr(self, k) is not None}
        return {**refs, **{k: self.get(k) for k in SETTING_KEYS}}

    def to_query(self) -> dict[str, str]:
        """The URL's query parameters: the references and the settings that differ from their default."""
        out = {k: getattr(self, k) for k in REFERENCE_KEYS if getattr(self, k)}
        for key in SETTING_KEYS:
            value = self.settings.get(key)
            if key in self.settings and value != default(key) and not (key == "overrides" and not value):
                out[key] = _to_text(value)
        return out


def _to_text(value) -> str:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_recipe(data) -> SessionRecipe:
    """A SessionRecipe from a JSON object; an unknown key or a bad value raises, naming the key."""
    if not isinstance(data, dict):
        raise ParaknowError(f"a recipe must be a JSON object with keys {', '.join(KEYS)}.")
    for key, value in data.items():
        if key not in KEYS:
            raise ParaknowError(f"recipe key '{key}' is unknown; use {', '.join(KEYS)}.")
        _check_value(key, value)
    refs = {k: data[k] for k in REFERENCE_KEYS if k in data}
    settings = {k: data[k] for k in SETTING_KEYS if k in data}
    if settings.get("modules") is not None:  # "attn,ffn" as on the CLI, kept as a list
        settings["modules"] = list(parse_modules(settings["modules"]))
    return SessionRecipe(**refs, settings=settings)


def _from_text(key: str, text: str):
    """A query parameter's text as the value its key holds."""
    hint = _hint(key)
    try:
        if key == "overrides":
            return json.loads(text)
        if hint in (int, float) or (typing.get_args(hint) and set(typing.get_args(hint)) <= {int, float, type(None)}):
            number = float(text)
            return int(number) if int in (hint, *typing.get_args(hint)) and number.is_integer() else number
    except ValueError:
        _fail(key, f"{text!r} is not {'JSON' if key == 'overrides' else 'a number'}.")
    return text


def from_query(params: dict) -> tuple[SessionRecipe, list[str]]:
    """(recipe, problems) from URL query parameters: a bad or unknown key is left out and named in
    `problems` (a link someone edited by hand still opens the rest of the state)."""
    data, problems = {}, []
    for key, text in params.items():
        if key not in KEYS:
            continue  # other query parameters belong to someone else
        try:
            value = _from_text(key, str(text))
            _check_value(key, value)
            data[key] = value
        except ParaknowError as exc:
            problems.append(str(exc))
    return parse_recipe(data), problems


def read_recipe_text(path) -> str:
    """The text of a recipe file (this one's, and a study's): missing, unreadable, binary or not
    UTF-8 (Latin-1, say) is a ParaknowError naming the file."""
    path = Path(path).expanduser()
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParaknowError(f"recipe file not found: {path}.") from None
    except UnicodeDecodeError as exc:
        raise ParaknowError(f"the recipe {path} is not UTF-8 text (byte {exc.start}): save it as UTF-8 "
                            "JSON or YAML.") from None
    except OSError as exc:
        raise ParaknowError(f"cannot read the recipe {path} ({exc.strerror or type(exc).__name__}).") from None


def recipe_json(text: str, source: str = "the recipe"):
    """The JSON value of a recipe's text; not JSON, or nested deeper than Python recurses, is a
    ParaknowError naming `source`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParaknowError(f"{source} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    except (ValueError, RecursionError) as exc:
        raise ParaknowError(f"{source} is not valid JSON ({type(exc).__name__}).") from None


def load_recipe(path) -> SessionRecipe:
    """Read a recipe file (JSON)."""
    return recipe_from_text(read_recipe_text(path), str(Path(path).expanduser()))


def recipe_from_text(text: str, source: str = "the recipe") -> SessionRecipe:
    return parse_recipe(recipe_json(text, source))


def to_json(recipe: SessionRecipe) -> str:
    return json.dumps(recipe.to_dict(), indent=2) + "\n"
