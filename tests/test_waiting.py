"""tests/waiting.py: wait_until returns the condition's value as soon as it holds, and fails with
an AssertionError naming what it waited for once the deadline has passed."""
import time

import pytest
from waiting import wait_until


def test_returns_the_value_once_the_condition_holds():
    calls = []
    assert wait_until(lambda: calls.append(1) or (len(calls) >= 3 and "ready"), 5, "three calls",
                      interval=0.01) == "ready"
    assert len(calls) == 3


def test_fails_after_the_deadline_naming_what_it_waited_for():
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.2s waiting for the moon"):
        wait_until(lambda: False, 0.2, "the moon", interval=0.05)
    assert 0.2 <= time.monotonic() - start < 5


def test_an_assertion_in_the_condition_fails_at_once():
    def died():
        raise AssertionError("the process died")

    start = time.monotonic()
    with pytest.raises(AssertionError, match="the process died"):
        wait_until(died, 60, "a process that has died")
    assert time.monotonic() - start < 5
