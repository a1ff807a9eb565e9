"""Which comparisons a study makes: the recipe's `comparisons`, `equivalence_margin` and `correction`
(their checks and their defaults, ../shared/SPEC.md section 11 and docs/study.md).

Two families, each corrected for multiplicity on its own:
  primary    each method or control arm against the baseline (vanilla LoRA, PiSSA, PKT, the
             teacher-weights controls: "does it help at all?")
  secondary  each factor-level arm against the arm it varies: its `reference`, else the arm named
             `pkt` (else the first PKT arm with the default extraction, else the baseline) --
             "does this extraction differ from PKT's default?"
The untrained references (`untuned`, `teacher`) are in no family by default: one evaluation of a
fixed model is not a sample over seeds, and adding them would only widen every other interval; a
recipe may still declare them.
"""
from __future__ import annotations

from ..core.errors import ParaknowError
from .stats import CORRECTIONS

FAMILIES = ("primary", "secondary")
DEFAULT_EQUIVALENCE_MARGIN = 0.01  # accuracy as a fraction: 1 point
DEFAULT_CORRECTION = "holm"
CONTROL_EXTRACT_KEYS = {"teacher_weights"}  # a PKT arm that changes only these is a control, not a factor level


def _fail(path: str, message: str) -> None:
    raise ParaknowError(f"recipe {path}: {message}")


def is_primary(arm) -> bool:
    """A trained method (no `extract`) or a control (only `teacher_weights`): compared with the baseline."""
    return arm.trained and set(arm.extract) <= CONTROL_EXTRACT_KEYS


def default_reference(arms, baseline: str) -> str:
    """What a factor-level arm is compared with when it names no `reference`."""
    names = [a.name for a in arms]
    if "pkt" in names:
        return "pkt"
    return next((a.name for a in arms if a.init == "pkt" and not a.extract and not a.train), baseline)


def default_comparisons(arms, baseline: str) -> dict[str, list[list[str]]]:
    """The default reference (the PKT the factor levels vary) is a method however it extracts."""
    fallback = default_reference(arms, baseline)
    primary = [a for a in arms if a.trained and (is_primary(a) or a.name == fallback)]
    return {"primary": [[a.name, baseline] for a in primary if a.name != baseline],
            "secondary": [[a.name, a.reference or fallback] for a in arms
                          if a.trained and a not in primary and a.name != (a.reference or fallback)]}


def check_reference(value, path: str, names: list[str], own: str) -> str:
    if not isinstance(value, str) or value not in names:
        _fail(path, f"{value!r} is not an arm; the arms are {', '.join(names)}.")
    if value == own:
        _fail(path, "an arm cannot be its own reference.")
    return value


def parse_comparisons(value, names: list[str]) -> dict[str, list[list[str]]]:
    """The declared families ({"primary": [[ARM, REFERENCE], ...], "secondary": [...]}, either may be
    left out for its default); raises ParaknowError naming the key."""
    if not isinstance(value, dict):
        _fail("comparisons", 'must be an object: {"primary": [[ARM, REFERENCE], ...], "secondary": [...]}.')
    out = {}
    for family, pairs in value.items():
        path = f"comparisons.{family}"
        if family not in FAMILIES:
            raise ParaknowError(f"unknown key {path} in the recipe; allowed there: {', '.join(FAMILIES)}.")
        if not isinstance(pairs, list):
            _fail(path, "must be a list of [ARM, REFERENCE] pairs.")
        seen = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, list) or len(pair) != 2:
                _fail(f"{path}[{i}]", "must be a pair [ARM, REFERENCE] of arm names.")
            for j in (0, 1):
                if pair[j] not in names:
                    _fail(f"{path}[{i}][{j}]", f"{pair[j]!r} is not an arm; the arms are {', '.join(names)}.")
            if pair[0] == pair[1]:
                _fail(f"{path}[{i}]", "compares an arm with itself.")
            if pair in seen:
                _fail(f"{path}[{i}]", f"{pair} is declared twice.")
            seen.append(list(pair))
        out[family] = seen
    return out


def parse_margin(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        _fail("equivalence_margin", f"{value!r} must be a fraction of accuracy above 0 and below 1 "
                                    f"(default {DEFAULT_EQUIVALENCE_MARGIN} = 1 point).")
    return float(value)


def parse_correction(value) -> str:
    if not isinstance(value, str) or value not in CORRECTIONS:
        _fail("correction", f"{value!r} is not one of {', '.join(CORRECTIONS)}.")
    return value
