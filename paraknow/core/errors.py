"""The one exception type for user mistakes.

Every `ParaknowError` carries a message that says what went wrong *and what to do*. The CLI
turns it into a one-line reason on stderr with exit code 2; the pages show it with
`st.error`. Anything else escaping the library is a bug.
"""


class ParaknowError(Exception):
    """A mistake in the user's input (path, model, data, settings), explained for a person.

    `setting`: the config field the mistake is about, when it is one (e.g. "rank"), so a page can
    say where that setting is changed without reading the message."""

    def __init__(self, message: str = "", setting: str | None = None):
        super().__init__(message)
        self.setting = setting


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
