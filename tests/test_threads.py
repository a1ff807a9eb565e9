"""The thread policy (paraknow.core.threads): `auto` workers from the free cores, one torch thread
per worker on a CPU, and the CLI accepting `--workers auto`."""
import pytest
import torch

from paraknow.core import threads
from paraknow.core.errors import ParaknowError


@pytest.mark.parametrize("value, expected", [("auto", "auto"), (" AUTO ", "auto"), ("3", 3), (2, 2), (64, 64)])
def test_parse_workers_accepts_auto_and_whole_numbers(value, expected):
    assert threads.parse_workers(value) == expected


@pytest.mark.parametrize("value", ["0", "65", "two", "1.5", 1.5, None, True, ""])
def test_parse_workers_refuses_the_rest(value):
    with pytest.raises(ParaknowError, match="workers must be 'auto' or a whole number from 1 to 64"):
        threads.parse_workers(value)


@pytest.mark.parametrize("cores, load, free", [(8, 0.2, 8), (8, 2.6, 5), (2, 4.7, 1), (2, 1.4, 1), (2, 0.4, 2)])
def test_auto_is_the_free_cores_on_a_cpu_and_one_on_a_gpu(monkeypatch, cores, load, free):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    policy = threads.thread_policy("auto")
    assert (policy.workers, policy.threads, policy.requested) == (free, 1, "auto")
    assert policy.load_average == [load, load, load]
    assert threads.thread_policy(3).workers == 3 and threads.thread_policy(3).threads == 1
    gpu = threads.thread_policy("auto", on_gpu=True)
    assert gpu.workers == 1 and gpu.threads == cores


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with threads.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_cli_and_the_page_take_auto():
    from paraknow.cli import build_parser

    args = build_parser().parse_args(["study", "--recipe", "r.json", "--out", "o"])
    assert args.workers == "auto" and threads.parse_workers(args.workers) == "auto"
    assert build_parser().parse_args(["study", "--recipe", "r", "--out", "o", "--workers", "auto"]).workers == "auto"
    assert threads.WORKER_CHOICES[:3] == ("auto", 1, 2) and threads.WORKER_CHOICES[-1] == threads.MAX_WORKERS


def test_the_estimate_is_measured_at_the_policys_threads(tmp_path, monkeypatch):
    """prepare() calibrates with the threads each cell will have, and shares the cells out over the workers."""
    from study_fixtures import study_inputs, tiny_recipe

    from paraknow.study import budget, parse_recipe, prepare

    seen = []
    real = budget.calibrate

    def calibrate(recipe, sizes):
        seen.append(torch.get_num_threads())
        return real(recipe, sizes)

    monkeypatch.setattr("paraknow.study.runner.calibrate", calibrate)
    recipe = parse_recipe(tiny_recipe(study_inputs(tmp_path / "in"), seeds=[0], arms=[
        {"name": "vanilla", "init": "vanilla"}, {"name": "vanilla-2", "init": "vanilla", "train": {"lr": 1e-3}}]))
    with threads.torch_threads(3):  # more than the policy's one, whatever OMP_NUM_THREADS says
        _, one = prepare(recipe, tmp_path / "one", workers=1)
        _, two = prepare(recipe, tmp_path / "two", workers=2, calibration=one.calibration)
        assert seen == [1] and torch.get_num_threads() == 3
    assert (one.policy.workers, one.policy.threads, two.policy.workers) == (1, 1, 2)
    assert two.cells == one.cells and two.total_s == pytest.approx(one.total_s / 2)
    assert "2 at a time, 1 torch thread each" in two.describe()
