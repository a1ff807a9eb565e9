"""Answer matching (`paraknow.core.answers`): the numeric normaliser, exact matching and `auto`."""
from decimal import Decimal

import pytest

from paraknow.core.answers import MATCH_MODES, final_number, matches, parse_number, resolve_mode
from paraknow.core.errors import ParaknowError

# (reference answer, generated completion, mode, expected)
CASES = [
    # GSM style "#### N"
    ("72", "She sold 48 + 24 = 72 clips.\n#### 72", "auto", True),
    ("72", "#### 72", "numeric", True),
    ("72", "48 + 24 = 72 clips in May\n#### 71", "auto", False),  # the marked answer wins over the last number
    # "the answer is N" and the last number
    ("10", "15 - 5 = 10. So the answer is 10.", "auto", True),
    ("10", "So the answer is 10 cats.", "auto", True),
    ("10", "10 cats", "auto", True),
    ("10", "There are 10 cats and 3 dogs", "auto", False),  # last number is 3
    ("10", "the answer is 10, not 12", "auto", True),  # first number after the last "answer is"
    ("5", "", "auto", False),
    ("5", "no number here", "auto", False),
    # thousands separators
    ("1000", "So the answer is 1,000.", "auto", True),
    ("1,000", "So the answer is 1000.", "auto", True),
    ("1234567", "the answer is 1,234,567", "auto", True),
    ("3", "the lists 3, 4", "auto", False),  # "3, 4" is two numbers, the last is 4
    # currency and percent signs, trailing punctuation
    ("10", "So the answer is $10.", "auto", True),
    ("$10", "It costs 10 dollars.", "auto", True),
    ("€5", "the answer is €5!", "auto", True),
    ("50", "So the answer is 50%.", "auto", True),
    ("50%", "the answer is 50", "auto", True),
    ("72.", "#### 72", "auto", True),
    # integers vs decimals
    ("14", "So the answer is 14.5.", "auto", False),
    ("14", "So the answer is 14.0", "auto", True),
    ("14.5", "the answer is 14.50", "auto", True),
    ("0.5", "the answer is .5", "auto", False),  # ".5" is not written as a number here
    # negative numbers
    ("-3", "So the answer is -3.", "auto", True),
    ("-3", "So the answer is 3.", "auto", False),
    # exact matching (non-numeric references use it under auto)
    ("Paris", "So the answer is Paris.", "auto", True),
    ("Paris", "so the answer is paris", "auto", True),  # case and trailing period ignored
    ("Paris", "So the answer is Lyon.", "auto", False),
    ("B", "I think the best option is (B)", "auto", True),
    ("B", "So the answer is C.", "auto", False),
    ("lamp ocean", "the answer is lamp   ocean", "exact", True),
    # explicit modes override auto
    ("72", "#### 72.0", "exact", False),
    ("72", "#### 72", "exact", True),
    ("10 cats", "the answer is 10", "numeric", True),  # numeric on a non-numeric reference: its number
    ("10 cats", "the answer is 10", "auto", False),   # auto: the reference is text, compared exactly
]


@pytest.mark.parametrize("reference,generated,mode,expected", CASES)
def test_matches(reference, generated, mode, expected):
    assert matches(reference, generated, mode) is expected


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_numbers_parse_as_exact_decimals():
    assert parse_number("1,000") == Decimal(1000)
    assert parse_number("$1,000.50") == Decimal("1000.50")
    assert parse_number("10 cats") is None and parse_number("B") is None and parse_number("") is None
    assert final_number("a 2 b 3.25 c") == Decimal("3.25")
    assert final_number("nothing") is None
    assert resolve_mode("72") == "numeric" and resolve_mode("Paris") == "exact"
    assert resolve_mode("Paris", "numeric") == "numeric"


def test_unknown_mode_is_a_user_error():
    assert MATCH_MODES == ("auto", "exact", "numeric")
    with pytest.raises(ParaknowError, match="auto, exact, numeric"):
        matches("1", "1", "fuzzy")
