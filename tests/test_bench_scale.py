"""The scale benches run at their --smoke size and write their figures (timings are not asserted)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(BENCH / script), "--smoke", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_bench_factorise_smoke(tmp_path):
    stdout, result = run_bench("bench_factorise.py", tmp_path / "f.json")
    assert "speed-up" in stdout and "randomized error vs exact" in stdout
    assert result["seconds"]["exact"] > 0 and result["seconds"]["randomized"] > 0
    errors = result["relative_error"]
    assert 0 < errors["exact"] <= errors["randomized"] <= 1.01 * errors["exact"]


@pytest.mark.slow
def test_bench_paper_scale_smoke(tmp_path):
    stdout, result = run_bench("bench_paper_scale.py", tmp_path / "p.json", "--layers", "2")
    assert "13B -> 7B plan + factorise projected" in stdout
    assert set(result["pairs"]) == {"llama2-13b-7b", "gqa-70b-8b"}
    gqa = result["pairs"]["gqa-70b-8b"]
    assert gqa["teacher"]["n_kv_heads"] == 2 and gqa["student"]["shapes"]["k_proj"] == [32, 64]
    for pair in result["pairs"].values():
        assert len(pair["layers_measured"]) == 2 and len(pair["layers_measured"][0]) == 7
        assert set(pair["embeddings"]) == {"embed_tokens", "lm_head"}
        projected = pair["projected"]
        assert projected["total_s"] > 0
        assert projected["total_s"] == sum(v for k, v in projected.items() if k != "total_s")
        assert pair["check"]["error_excess"] <= 0.01 and pair["peak_rss_gib"] > 0


@pytest.mark.slow
def test_bench_sensitivity_procs_smoke(tmp_path):
    """Two torchrun processes over gloo against one: the maps agree, both times are reported."""
    stdout, result = run_bench("bench_sensitivity_procs.py", tmp_path / "s.json")
    assert "ratio" in stdout and result["procs"] == 2 and result["cpu_count"] == os.cpu_count()
    assert set(result["median_s"]) == {"1", "2"} and all(t > 0 for t in result["median_s"].values())
    assert result["ratio"] == result["median_s"]["2"] / result["median_s"]["1"]
    assert result["max_relative_difference"] <= 1e-5


@pytest.mark.slow
def test_bench_sensitivity_scale_smoke(tmp_path):
    """The largest preset that fits is chosen by the estimate before anything is built, and runs."""
    stdout, result = run_bench("bench_sensitivity_scale.py", tmp_path / "g.json")
    assert [t["preset"] for t in result["tried"]] == ["tiny"] and result["tried"][0]["fits"]
    run = result["result"]
    assert run["preset"] == "tiny" and run["params"] > 0 and run["plain_s"] > 0 and run["paraknow_s"] > 0
    assert run["tokens"] > 0 and run["dtype"] == "bfloat16"
