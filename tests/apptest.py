"""Helpers for the headless page tests (streamlit's AppTest): open the app on a page, and check
that a run left neither an exception nor an error box."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def assert_ok(at: AppTest) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_page(page: str | None, timeout: float, errors_allowed: bool = False) -> AppTest:
    """The app run once, then switched to `page` (None: the home page), checked with `assert_ok`
    (only for exceptions when `errors_allowed`: a page may open showing what to do)."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    if page is not None:
        at.switch_page(page).run()
    if errors_allowed:
        assert not at.exception, [e.value for e in at.exception]
    else:
        assert_ok(at)
    return at
