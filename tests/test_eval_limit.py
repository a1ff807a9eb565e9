"""`paraknow eval --limit N` and its progress bar on a terminal."""
import io
import json

from paraknow.cli import main
from paraknow.terminal import ProgressBar


def test_eval_limit_scores_the_first_n(saved_pair, capsys):
    argv = ["eval", "--model", saved_pair["student"], "--data", saved_pair["data"], "--max-new-tokens", "2",
            "--device", "cpu"]
    assert main(argv) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(argv + ["--limit", "3"]) == 0
    limited = json.loads(capsys.readouterr().out)
    assert full["n"] == 8 and limited["n"] == 3
    assert main(argv + ["--limit", "0"]) == 2
    err = capsys.readouterr().err
    assert "--limit" in err and len(err.strip().splitlines()) == 1


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_in_place_on_a_terminal_only():
    tty = _Terminal()
    bar = ProgressBar(tty)
    bar(1, 4, "computing loss")
    bar(4, 4, "generating answers")
    bar.close()
    text = tty.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert " 25% 1/4 computing loss" in text and "[" + "#" * ProgressBar.WIDTH + "] 100% 4/4" in text
    pipe = io.StringIO()
    quiet = ProgressBar(pipe)
    quiet(1, 4, "x")
    quiet.close()
    assert pipe.getvalue() == ""
