"""Checks shared by the config dataclasses: numbers that must be finite and in range, seeds,
and field types of settings read from a file (a train spec, a recipe).

Every check raises ParaknowError naming the setting, what it must be and what it got, so the
CLI prints one line and the pages show the same message.
"""
from __future__ import annotations

import math
import numbers
import types
import typing
from dataclasses import fields

from .errors import ParaknowError

MAX_SEED = 2**32 - 1  # numpy's seed range, which transformers.set_seed also feeds
MAX_COUNT = 2**31 - 1  # steps, tokens and samples: anything larger is a typo
MAX_LENGTH = 2**20  # tokens per sample


def check_number(name: str, value, *, above: float | None = None, minimum: float | None = None,
                 below: float | None = None, maximum: float | None = None, integer: bool = False):
    """`value` must be a finite real (a whole number with `integer`), `> above`, `>= minimum`,
    `< below` and `<= maximum` where given. Returns it unchanged."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if integer else numbers.Real):
        raise ParaknowError(f"{name} must be {kind} (got {value!r}).")
    if not math.isfinite(value):
        raise ParaknowError(f"{name} must be a finite number (got {value}).")
    bounds = [(above, lambda b: value > b, "greater than"), (minimum, lambda b: value >= b, "at least"),
              (below, lambda b: value < b, "less than"), (maximum, lambda b: value <= b, "at most")]
    wanted = [f"{words} {_show(bound)}" for bound, ok, words in bounds if bound is not None]
    if not all(ok(bound) for bound, ok, _ in bounds if bound is not None):
        raise ParaknowError(f"{name} must be {kind} {' and '.join(wanted)} (got {_show(value)}).")
    return value


def check_count(name: str, value, minimum: int = 1, maximum: int = MAX_COUNT):
    """A whole number in [minimum, maximum]."""
    return check_number(name, value, minimum=minimum, maximum=maximum, integer=True)


def check_seed(value, name: str = "seed"):
    return check_number(name, value, minimum=0, maximum=MAX_SEED, integer=True)


def _matches(value, hint) -> bool:
    """Whether a JSON-decoded value fits a (resolved) type hint: str, int, float, bool, X | None,
    list[X], tuple, dict. A float field accepts an int; an int field never accepts a bool."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if origin in (list, tuple) or hint in (list, tuple):
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]  # list[X], tuple[X, ...]
        return isinstance(value, (list, tuple)) and all(any(_matches(v, a) for a in items) or not items
                                                        for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not model: leave it to the config's own checks


_WORDS = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
          type(None): "null", dict: "an object", list: "a list", tuple: "a list"}


def _describe(hint) -> str:
    """A type hint in words: `int | None` -> 'a whole number or null'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        items = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of {_describe(items[0]).removeprefix('a ')}s" if len(items) == 1 else "")
    return _WORDS.get(hint, getattr(hint, "__name__", str(hint)))


def _show(value) -> str:
    return str(value) if isinstance(value, numbers.Integral) else f"{value:g}"


def value_problem(value, hint) -> str | None:
    """Why a JSON-decoded value does not fit a type hint such as `int | None`, for a person
    ("must be a whole number (got str 'big')"); None when it fits."""
    if _matches(value, hint):
        return None
    return f"must be {_describe(hint)} (got {type(value).__name__} {value!r:.60})"


def type_problem(data: dict, types_by_key: dict, what: str) -> str | None:
    """The first key of `data` whose value does not fit `types_by_key[key]`, described for a person;
    None when all fit. Keys not listed are not checked."""
    for key, hint in types_by_key.items():
        if key in data and (problem := value_problem(data[key], hint)):
            return f"{what}: '{key}' {problem}"
    return None


def check_field_types(cls, data: dict, what: str) -> None:
    """Every key of `data` that names a field of dataclass `cls` must fit the field's type."""
    hints = typing.get_type_hints(cls)
    problem = type_problem(data, {f.name: hints[f.name] for f in fields(cls)}, what)
    if problem:
        raise ParaknowError(problem + ".")


def check_rank_fits(rank: int, shape, what: str) -> None:
    """The one check that a LoRA rank fits a weight: LoRA (and the SVD initialisations, PiSSA and PKT)
    needs rank <= min(out, in) of every matrix it adapts."""
    if rank > min(shape):
        raise ParaknowError(f"rank {rank} is larger than {what}'s smallest dimension {min(shape)} (its weight is "
                            f"{list(shape)}): lower the rank.", setting="rank")
