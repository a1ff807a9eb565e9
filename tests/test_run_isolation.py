"""A malformed run affects only itself: `jobs.list_runs()` lists it as `unreadable` with the
reason and lists every other run as usual; the readers the queue relies on skip it."""
import json

import pytest

from paraknow.runs import jobs, rundir


def _run(name: str, status, spec=None) -> None:
    run_dir = jobs.runs_root() / name
    run_dir.mkdir()
    spec = {"student": "demo:student", "data": "task:arith", "init": "vanilla", "seed": 0} if spec is None else spec
    (run_dir / "spec.json").write_text(spec if isinstance(spec, str) else json.dumps(spec))
    (run_dir / "status.json").write_text(status if isinstance(status, str) else json.dumps(status))


@pytest.mark.parametrize("status, spec, reason", [
    ("[1, 2, 3]", None, "status.json holds a JSON list, not an object"),
    ('"finished"', None, "status.json holds a JSON str, not an object"),
    ("{broken", None, "status.json is not valid JSON"),
    ("[" * 100000 + "]" * 100000, None, "status.json is not valid JSON"),
    ({"state": 5}, None, "status.json: 'state' must be a string (got int 5)"),
    ({"state": "running", "pid": "1234"}, None, "'pid' must be a whole number or null (got str '1234')"),
    ({"state": "finished", "final_eval": [0.5]}, None, "'final_eval' must be an object or null"),
    ({"state": "finished", "step": 1.5}, None, "'step' must be a whole number or null"),
    ({"state": "exploded"}, None, "unknown state 'exploded'"),
    ({"state": "finished"}, "[]", "spec.json holds a JSON list, not an object"),
    ({"state": "finished"}, {"student": "demo:student", "data": "task:arith", "seed": "zero"},
     "spec.json: 'seed' must be a whole number (got str 'zero')"),
])
def test_a_malformed_run_is_listed_as_unreadable_and_the_others_still_list(status, spec, reason):
    _run("20260101-000000000000-aaaaaa", {"state": "finished", "final_eval": {"accuracy": 0.5}, "created": 1.0})
    _run("20260102-000000000000-bbbbbb", status, spec)
    _run("20260103-000000000000-cccccc", {"state": "stopped", "step": 3})
    runs = {r.run_id[:8]: r for r in jobs.list_runs(resume_queue=False)}
    assert sorted(runs) == ["20260101", "20260102", "20260103"]
    assert runs["20260101"].state == "finished" and runs["20260101"].final_eval == {"accuracy": 0.5}
    assert runs["20260103"].state == "stopped"
    bad = runs["20260102"]
    assert bad.state == jobs.UNREADABLE and reason in bad.status["error"]
    assert bad.to_row()["state"] == jobs.UNREADABLE  # the runs table renders it like any other row
    assert rundir.has_finished_run()  # the other readers skip it too
    assert jobs._next_queued() is None and jobs._busy_run() is None


def test_read_status_of_one_bad_run_does_not_raise():
    _run("20260102-000000000000-bbbbbb", {"state": "running", "pid": "x", "pid_start": None})
    run_dir = jobs.runs_root() / "20260102-000000000000-bbbbbb"
    status = jobs.read_status(run_dir)
    assert status["state"] == jobs.UNREADABLE and "'pid'" in status["error"]
    assert jobs.stop(run_dir)["state"] == jobs.UNREADABLE  # stopping it is a no-op, not a crash
    assert json.loads((run_dir / "status.json").read_text()) == {"state": "running", "pid": "x", "pid_start": None}


def test_a_malformed_export_or_metrics_line_affects_only_itself():
    from paraknow.core.paths import cache_dir
    from ui import ops

    root = cache_dir("exports")
    for name, manifest in (("good", json.dumps({"created": "2026-01-01", "rank": 4, "modules": {"m": {}}})),
                           ("listed", "[1, 2]"), ("deep", "[" * 100000 + "]" * 100000), ("broken", "{nope")):
        (root / name).mkdir()
        (root / name / "paraknow.json").write_text(manifest)
    exports = ops.list_exports(root)
    assert [e["name"] for e in exports] == ["good"] and exports[0]["modules"] == 1
    assert exports[0]["manifest"]["rank"] == 4

    _run("20260101-000000000000-aaaaaa", {"state": "running", "pid": None})
    run_dir = jobs.runs_root() / "20260101-000000000000-aaaaaa"
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n' + "[" * 100000 + "]" * 100000 + "\n"
                                           '{"step": 2, "loss": 1.5}\n')
    assert [row["step"] for row in rundir.read_metrics(run_dir)] == [1, 2]
