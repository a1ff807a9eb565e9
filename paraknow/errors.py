"""The one exception type for user mistakes.

Every `ParaknowError` carries a message that says what went wrong *and what to do*. The CLI
turns it into a one-line reason on stderr with exit code 2; the pages show it with
`st.error`. Anything else escaping the library is a bug.
"""


class ParaknowError(Exception):
    """A mistake in the user's input (path, model, data, settings), explained for a person."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
