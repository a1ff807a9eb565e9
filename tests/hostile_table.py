"""Run the hostile-input table and record, per case, whether it held: docs/results/hostile_inputs.json.

    python tests/hostile_table.py            # writes docs/results/hostile_inputs.json
    python tests/hostile_table.py --out F    # elsewhere

The table is the tests listed in HOSTILE (pytest node ids), the slow lane included: every case asserts
its exit code, its one line and that nothing outside paraknow's own files changed. Most cases are
generated from the config boundary (tests/hostile_cases.py) and run in-process. A case is `clean` when its test passed,
not clean when it failed, and `clean: null` when it could not run here (skipped, with the reason:
e.g. permission bits as root); the file records every case, the counts and where the figures came
from (paraknow.core.provenance).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from paraknow.core.fsio import atomic_write_json  # noqa: E402 - after the path set-up above
from paraknow.core.provenance import RESULTS_DIR, provenance  # noqa: E402

HOSTILE = [
    "tests/test_hostile_options.py",  # generated: every option x every kind of bad value, every recipe key
    "tests/test_hostile_cache.py",  # a converted model's checksum; damaged entries converted again
    "tests/test_hostile_overwrite.py",  # train --overwrite replaces only what paraknow wrote
    "tests/test_hostile_disk.py",  # a full disk never leaves half a file
    "tests/test_hostile_ranks.py",  # a NaN loss on one rank fails the run on every rank
    "tests/test_cli_hardening.py",  # the command line: flags, files, outputs, the machine refusing
    "tests/test_study_recipe.py::test_hostile_study_recipe_exits_2_with_one_line_and_writes_nothing",
    "tests/test_study_recipe.py::test_cli_unknown_key_exits_2_with_one_line_and_writes_nothing",
    "tests/test_cache.py::test_a_cache_pointed_at_a_project_reports_what_paraknow_did_not_make_and_clears_none_of_it",
    "tests/test_cache.py::test_a_map_entry_that_does_not_match_its_key_or_its_checksum_is_computed_again",
    "tests/test_cache.py::test_a_read_only_cache_keeps_its_entries_and_says_why",
    "tests/test_session_url.py::test_a_link_naming_files_or_hub_ids_loads_nothing_until_clicked_and_renders_no_markdown",
    "tests/test_session_url.py::test_a_held_link_loads_on_one_click",
    "tests/test_server_hosts.py",
    "tests/test_browser_links.py",
    "tests/test_paths.py::test_an_export_zip_never_follows_or_packs_a_symlink",
    "tests/test_transfer.py::test_an_export_with_non_finite_or_underflowed_factors_is_refused_and_nothing_written",
    "tests/test_train.py::test_a_diverging_run_fails_at_the_first_non_finite_loss_and_saves_no_adapter",
    "tests/test_study_control.py::test_background_study_stops_and_resumes",
    "tests/test_study_control.py::test_sigterm_during_a_cell_stops_the_study_not_just_the_cell",
]


def run_table(junit: Path) -> list[dict]:
    """Run the table with pytest; one {"case", "clean" (True, False or None: skipped), "reason"} per case."""
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    *HOSTILE], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        problem = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        cases.append({"case": f"{case.get('classname')}::{case.get('name')}",
                      "clean": None if problem is not None and problem.tag == "skipped" else problem is None,
                      "reason": None if problem is None else f"{problem.tag}: {problem.get('message', '')[:300]}"})
    return cases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS_DIR / "hostile_inputs.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cases = run_table(Path(tmp) / "junit.xml")
    clean, skipped = sum(c["clean"] is True for c in cases), sum(c["clean"] is None for c in cases)
    command = " ".join(["python tests/hostile_table.py", *(sys.argv[1:] if argv is None else argv)])
    report = {**provenance(command),
              "total": len(cases), "clean": clean, "not_clean": len(cases) - clean - skipped, "skipped": skipped,
              "cases": cases}
    atomic_write_json(args.out, report)
    print(json.dumps({k: report[k] for k in ("total", "clean", "not_clean", "skipped")}))
    return 0 if report["not_clean"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
