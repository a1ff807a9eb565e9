"""The README's Python example runs as written, on the demo pair, in a fresh folder."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_python_example_runs_the_whole_flow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARAKNOW_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _python_example()], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    change = float(re.search(r"^step-0 logit change (\S+)$", done.stdout, re.M).group(1))
    assert change < 1e-3  # the residual export leaves the student's logits as they were
    state, accuracy = re.search(r"^run (\w+) accuracy (\S+)$", done.stdout, re.M).groups()
    assert state == "finished" and 0.0 <= float(accuracy) <= 1.0
    assert (tmp_path / "out" / "pkt" / "paraknow.json").is_file()
    assert (tmp_path / "out" / "run" / "adapter" / "adapter_config.json").is_file()


def test_the_public_names_are_the_pipeline():
    import paraknow

    for name in ("load_model", "compute_sensitivity", "plan_transfer", "export_transfer", "verify_export", "train",
                 "evaluate", "run_study"):
        assert callable(getattr(paraknow, name)), name
    with pytest.raises(AttributeError):
        paraknow.no_such_name
