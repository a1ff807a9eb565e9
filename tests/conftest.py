"""Shared fixtures over the tiny models and data of tests/tiny.py.

Nothing here downloads anything; every model is random and built with `from_config`.
"""
from __future__ import annotations

import pytest
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama


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
