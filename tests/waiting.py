"""Waiting in tests: poll a condition with a short interval until it holds or a deadline passes.

Used instead of hand-written `while ...: time.sleep(...)` loops, so that a test that waits on a
background process either goes on as soon as the condition holds or fails with a message naming
what it waited for, never hangs. Deadlines are generous (the machine may be busy); a predicate may
raise AssertionError itself to fail at once (say, when the process it waits on has died).
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, message: str, interval: float = 0.1) -> T:
    """Call `predicate` every `interval` seconds until it returns a truthy value, and return that
    value; after `timeout` seconds raise AssertionError naming `message` (what was waited for)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)
