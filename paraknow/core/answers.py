"""Answer matching: is a generated completion's final answer the reference answer?

Three modes (`eval --match`, training evaluation's `match`):

- `exact`    the final answer text (see `final_answer`) equals the reference, whitespace
             collapsed, a trailing period dropped, case ignored.
- `numeric`  the final *number* of the generation equals the reference number, compared as
             exact decimals (see `final_number`): "#### 72", "So the answer is $1,000.",
             "10 cats" and "72.0" all read as numbers; 14.5 is not 14.
- `auto`     (default) `numeric` when the reference answer is a number, else `exact`.

Final number of a text, in this order: the number after the last GSM-style "####"; else the
first number after the last "answer is"; else the last number in the text. A number may carry
a sign, thousands separators in groups of three ("1,000"), a decimal part ("14.5"), and be
wrapped in currency signs, a percent sign or trailing punctuation, which are ignored.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Callable

from .errors import ParaknowError

MATCH_MODES = ("auto", "exact", "numeric")

_ANSWER_IS = re.compile(r"answer is\b[\s:]*", re.IGNORECASE)
_GSM_MARK = re.compile(r"####\s*")
_TRAILING_LETTER = re.compile(r"(?:^|[\s(])\(?([A-E])\)?[.)]?\s*$")
# thousands groups first (so "1,000" is one number but "3, 4" is two), then plain digits
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CURRENCY = "$€£¥"
_WHOLE_NUMBER = re.compile(r"^[" + _CURRENCY + r"]?\s*(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)\s*%?$")


def _collapse(text: str) -> str:
    text = " ".join((text or "").split())
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def final_answer(text: str | None) -> str:
    """The final answer of free text: after the last "####" or "answer is" (to the end of that
    line, closing period dropped); else a trailing option letter ("... (B)" -> "B"); else the
    whole text with whitespace collapsed."""
    text = (text or "").strip()
    for marker in (_GSM_MARK, _ANSWER_IS):
        matches = list(marker.finditer(text))
        if matches:
            answer = _collapse(text[matches[-1].end():].split("\n", 1)[0])
            if answer:
                return answer
    match = _TRAILING_LETTER.search(text)
    if match:
        return match.group(1)
    return _collapse(text)


def _to_decimal(digits: str) -> Decimal | None:
    try:
        return Decimal(digits.replace(",", ""))
    except InvalidOperation:
        return None


def parse_number(text: str | None) -> Decimal | None:
    """The number a whole answer string states ("72", "$1,000", "14.5", "50%", "72."), or None
    when the string is not just a number."""
    text = _collapse(text or "").rstrip("!?;:")
    match = _WHOLE_NUMBER.match(text.strip())
    return _to_decimal(match.group(1)) if match else None


def final_number(text: str | None) -> Decimal | None:
    """The final number of a text (module docstring), or None when it states none."""
    text = text or ""
    for marker in (_GSM_MARK, _ANSWER_IS):
        matches = list(marker.finditer(text))
        if matches:
            rest = text[matches[-1].end():].lstrip(" " + _CURRENCY)
            number = _NUMBER.match(rest)
            if number:
                return _to_decimal(number.group(0))
    numbers = _NUMBER.findall(text)
    return _to_decimal(numbers[-1]) if numbers else None


def check_mode(mode: str) -> str:
    if mode not in MATCH_MODES:
        raise ParaknowError(f"unknown answer matching '{mode}'; use one of {', '.join(MATCH_MODES)}.")
    return mode


def resolve_mode(reference: str, mode: str = "auto") -> str:
    """`exact` or `numeric` for one reference answer (`auto`: numeric when it is a number)."""
    check_mode(mode)
    if mode != "auto":
        return mode
    return "numeric" if parse_number(reference) is not None else "exact"


def matches(reference: str, generated: str, mode: str = "auto",
            extract: Callable[[str], str | None] | None = None) -> bool:
    """Whether `generated` (a completion) answers `reference` (a final answer string).

    `extract` replaces `final_answer` for the exact comparison (the built-in tasks' own
    extractors: an option letter for `facts`, the first line for `instruct`).
    """
    if resolve_mode(reference, mode) == "numeric":
        want = parse_number(reference)
        if want is None:  # numeric asked for a non-numeric reference: compare its final number
            want = final_number(reference)
        got = final_number(generated)
        return want is not None and got is not None and got == want
    got = (extract or final_answer)(generated)
    return got is not None and _collapse(got).casefold() == _collapse(reference).casefold()
