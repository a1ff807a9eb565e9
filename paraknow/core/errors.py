"""The one exception type for user mistakes.

Every `ParaknowError` carries a message that says what went wrong *and what to do*. The CLI
turns it into a one-line reason on stderr with exit code 2; the pages show it with
`st.error`. Anything else escaping the library is a bug, except an `OSError` from the machine itself (disk
full, a read-only folder): `os_error_message` says it in one line.
"""
import errno


class ParaknowError(Exception):
    """A mistake in the user's input (path, model, data, settings), explained for a person.

    `setting`: the config field the mistake is about, when it is one (e.g. "rank"), so a page can
    say where that setting is changed without reading the message."""

    def __init__(self, message: str = "", setting: str | None = None):
        super().__init__(message)
        self.setting = setting


_OS_ADVICE = {  # errno -> what to do about it
    errno.ENOSPC: "the disk is full: free some space and run again",
    errno.EDQUOT: "the disk quota is used up: free some space and run again",
    errno.EACCES: "permission denied: choose a folder you can write",
    errno.EPERM: "not permitted: choose a folder you can write",
    errno.EROFS: "the file system is read-only: choose a folder you can write",
    errno.ENAMETOOLONG: "a name is too long for the file system: choose a shorter one",
}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system failure the user can act on (disk full, permissions, a
    read-only folder): what failed, on which path, and what to do. Whatever was being written was
    written atomically, so nothing partial is left."""
    where = f" ({exc.filename})" if exc.filename else ""
    advice = _OS_ADVICE.get(exc.errno, "check the path and run again")
    return f"{exc.strerror or first_line(exc)}{where}: {advice}; nothing partial was left behind."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
