"""Every bench script still runs (`--smoke`: tiny sizes, seconds; no timing is asserted), so a bench
broken by a library change fails the suite instead of rotting unseen."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCALE_BENCHES = {"bench_factorise.py", "bench_paper_scale.py", "bench_sensitivity_procs.py", "bench_sensitivity_scale.py"}  # run, figures checked, by test_bench_scale.py
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("bench_*.py") if p.name not in SCALE_BENCHES)


def test_every_bench_is_run_by_a_test():
    assert len(BENCHES) >= 5 and SCALE_BENCHES <= {p.name for p in (ROOT / "bench").glob("bench_*.py")}


@pytest.mark.parametrize("bench", BENCHES)
@pytest.mark.slow
def test_bench_runs_in_smoke_size(bench, tmp_path):
    from paraknow.htmlreport import image_export_unavailable

    draws = bench == "bench_real_pair.py" and image_export_unavailable() is None  # --images: kaleido + Chromium
    images = tmp_path / "images"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / bench), "--smoke",
                           *(["--images", str(images)] if draws else [])], cwd=tmp_path,
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, "PARAKNOW_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), "a bench prints its side-by-side figures"
    for name in ("sensitivity.png", "mapping.png") if draws else ():  # the README's real-pair pictures
        data = (images / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
