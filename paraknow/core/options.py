"""Options that live once: a config dataclass field carries its default, choices and help text.

A field made with `option(default, help, choices=..., type=...)` (the way PEFT's configs keep
`metadata={"help": ...}`) is the single source for that setting: the CLI builds its flags from it
(`add_options`) and the pages read `default_of` / `help_of` / `choices_of`. `choices` and `help`
may be callables, so a registry (METRICS, STRUCTURES, ...) is read when asked, not copied.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, dataclass, field

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def option(default=MISSING, help: str = "", choices=None, type=None, default_factory=MISSING, accepts=None):
    """A dataclass field with its CLI/page description in `metadata`. `accepts`: the type hint a
    recipe or spec file may give for it when that is wider than the field's own (e.g. modules as
    "attn,ffn" or a list), read by `hint_of`."""
    metadata = {"help": help, "choices": choices, "type": type, "accepts": accepts}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _field(cls, name: str):
    return cls.__dataclass_fields__[name]


def default_of(cls, name: str):
    """The current default of a config field (read at call time, so it is the one source)."""
    f = _field(cls, name)
    return f.default_factory() if f.default_factory is not MISSING else f.default


def _resolve(value):
    return value() if callable(value) else value


def help_of(cls, name: str) -> str:
    return _resolve(_field(cls, name).metadata.get("help")) or ""


def hint_of(cls, name: str):
    """The type hint a settings file's value for field `name` must fit (paraknow.core.validate checks
    it): the field's `accepts`, else its annotation. The one source for the recipe and spec checks."""
    accepts = _field(cls, name).metadata.get("accepts")
    return accepts if accepts is not None else typing.get_type_hints(cls)[name]


def choices_of(cls, name: str) -> list | None:
    choices = _resolve(_field(cls, name).metadata.get("choices"))
    return list(choices) if choices is not None else None


def add_options(parser: argparse.ArgumentParser, cls, names, flags: dict | None = None) -> None:
    """Add `--dashed-name` options for fields `names` of dataclass `cls` (default, type, choices and
    help from the field). `flags` renames an option ({field: "--flag"}); its dest stays the field name."""
    flags = flags or {}
    for name in names:
        f = _field(cls, name)
        default = default_of(cls, name)
        kind = f.metadata.get("type") or (type(default) if isinstance(default, (int, float, str)) and
                                          not isinstance(default, bool) else str)
        text = help_of(cls, name)
        if default is not None:
            text = f"{text} (default: {default})" if text else f"default: {default}"
        parser.add_argument(flags.get(name, "--" + name.replace("_", "-")), dest=name, default=default,
                            type=kind, choices=choices_of(cls, name), help=text.replace("%", "%%"))


def device_option():
    return option("auto", "auto (every visible GPU, else the CPU) | cpu | cuda | cuda:N")


def dtype_option():
    return option(None, "weights dtype (float32 when not given)", choices=DTYPE_NAMES)


@dataclass
class Placement:
    """Where a command loads its model (the --device / --dtype of every command)."""
    device: str = device_option()
    dtype: str | None = dtype_option()
