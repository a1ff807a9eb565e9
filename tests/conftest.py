"""Shared fixtures over the tiny models and data of tests/tiny.py.

Nothing here downloads anything; every model is random and built with `from_config`.

Under pytest-xdist (`-n 2`, docs/testing.md) each worker runs torch on one thread, and so do the
processes its tests start (OMP_NUM_THREADS, set before torch is imported): two workers of torch's
default threads on two cores wait on each other. Tests that share a module-scoped fixture of tests/
(a study run, a Ray instance, a Streamlit server) are put in one xdist group, so `--dist loadgroup`
builds that fixture once; every other test goes to whichever worker is free.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402 - after the thread setting above
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama  # noqa: E402

TESTS = Path(__file__).resolve().parent


def _shares_a_module_fixture(item) -> bool:
    """Whether the test uses a module- (or wider) scoped fixture defined under tests/."""
    info = getattr(item, "_fixtureinfo", None)
    defs = [d for ds in (info.name2fixturedefs.values() if info else ()) for d in ds]
    return any(d.scope != "function" and TESTS in Path(inspect.getfile(d.func)).resolve().parents for d in defs)


def pytest_collection_modifyitems(config, items):
    """One xdist group per test module whose tests share a costly module fixture (see above)."""
    for item in items:
        if _shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARAKNOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def seed_records():
    return [dict(r) for r in SEED_RECORDS]


@pytest.fixture
def saved_pair(tmp_path):
    """Teacher and student saved as Hugging Face directories with one tokenizer, plus seed data."""
    from paraknow.core.records import to_jsonl

    tok = make_tokenizer()
    paths = {}
    for name, model in {"teacher": tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1),
                        "student": tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2)}.items():
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    data = tmp_path / "seeds.jsonl"
    data.write_text(to_jsonl(SEED_RECORDS))
    paths["data"] = str(data)
    return paths


def finish_jobs(at):
    """Wait until every background job the app started (paraknow.runs.background) has ended, then run
    the AppTest script again: the page then reads the result from the cache, as after a poll."""
    from paraknow.runs import background

    for view in background.live_jobs():
        background.wait(view.kind, view.key)
    return at.run()
