"""The command line's terminal side: progress lines and bars on stderr, one-line usage errors."""
from __future__ import annotations

import argparse
import math
import sys


def progress_line(done: int, total: int, message: str) -> None:
    print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)


class ProgressBar:
    """A progress bar redrawn in place on a terminal's stderr (nothing when stderr is not a terminal)."""
    WIDTH = 30

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.shown = False

    def __call__(self, done: int, total: int, message: str) -> None:
        if not self.stream.isatty() or total <= 0:
            return
        filled = int(self.WIDTH * min(done, total) / total)
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * done // total:3d}% "
                          f"{done}/{total} {message}\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def non_negative_days(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("must be a finite number of days, at least 0")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr too (argparse would print the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, and an option given an empty value (`--data ""`: a shell variable left unset)
        is a usage error, never read as "not given"."""
        parsed = super().parse_args(args, namespace)
        empty = next((name for name, value in vars(parsed).items() if value == ""), None)
        if empty is not None:
            self.error(f"--{empty.replace('_', '-')} is empty: give it a value or leave it out")
        return parsed
