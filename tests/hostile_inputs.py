"""The inputs the hostile tables share: models good and damaged, data files, GGUFs (`files`, built
once per module), a case's folder with a foreign project, a previous export and a plain file
(`place`), the machine-level set-ups (`prepare`: a full disk, a cache that is a file, links) and a
snapshot of every path under some folders (`snapshot`: nothing outside paraknow's own files may change).
"""
import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tiny import SEED_RECORDS, make_tokenizer, tiny_llama

from paraknow.core import fsio
from paraknow.core.records import to_jsonl


def _save(model, path: Path, tokenizer=True) -> Path:
    model.save_pretrained(path)
    if tokenizer:
        make_tokenizer().save_pretrained(path)
    return path


def _gguf_header(path: Path, payload: bytes) -> None:
    """A GGUF v3 file: valid magic, version and counts, then `payload` as its metadata."""
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", 1) + struct.pack("<Q", 5) + payload)


def small_gguf(path: Path) -> None:
    """A well-formed GGUF holding one [50, 16] tensor (not a complete model)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((50, 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Models (good and damaged), data files and GGUFs shared by the table's cases (read-only)."""
    root = tmp_path_factory.mktemp("inputs")
    teacher = _save(tiny_llama(layers=4, hidden=96, ffn=192, heads=6, kv_heads=2, seed=1), root / "teacher")
    student = _save(tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2), root / "student")
    paths = {"T": teacher, "S": student}
    weights = student / "model.safetensors"
    for name in ("trunc", "random", "shape", "notok", "missing", "badtok", "nan", "zero"):
        paths[name] = _save(tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2), root / name,
                            tokenizer=name != "notok")
    blob = weights.read_bytes()
    (paths["trunc"] / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    (paths["random"] / "model.safetensors").write_bytes(hashlib.sha256(b"x").digest() * 200)
    tensors = load_file(weights)
    save_file({**tensors, "model.layers.0.mlp.up_proj.weight": torch.zeros(7, 3)},
              paths["shape"] / "model.safetensors", metadata={"format": "pt"})
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.k_proj.weight"},
              paths["missing"] / "model.safetensors", metadata={"format": "pt"})
    (paths["badtok"] / "tokenizer.json").write_text("{garbage")
    save_file({**tensors, "model.layers.1.self_attn.q_proj.weight": torch.full((64, 64), float("nan"))},
              paths["nan"] / "model.safetensors", metadata={"format": "pt"})
    save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, paths["zero"] / "model.safetensors",
              metadata={"format": "pt"})
    config = json.loads((paths["missing"] / "config.json").read_text())
    paths["neg"] = _save(tiny_llama(layers=2, hidden=64, ffn=128, heads=4, kv_heads=2, seed=2), root / "neg")
    (paths["neg"] / "config.json").write_text(json.dumps({**config, "num_hidden_layers": -3}))
    adapter_config = {"r": 4, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA",
                      "task_type": "CAUSAL_LM", "base_model_name_or_path": str(student)}
    for name, weights in (("badad", "adapter_model.safetensors"), ("pickled", "adapter_model.bin"),
                          ("badexp", "adapter_model.safetensors")):
        (root / name).mkdir()
        (root / name / "adapter_config.json").write_text(json.dumps(adapter_config))
        (root / name / weights).write_bytes(b"\x10" + bytes(7) + b"{garbage}" * 10)  # a header that is not JSON
        paths[name] = root / name
    (paths["badexp"] / "paraknow.json").write_text(json.dumps({"rank": 4, "alpha": 4, "mode": "additive",
                                                               "student": str(student)}))
    paths["overrides"] = root / "overrides.json"
    paths["overrides"].write_text(json.dumps({"teacher": str(teacher), "student": str(student),
                                              "data": str(root / "seeds.jsonl"), "samples": 4,
                                              "overrides": {"model.layers.9.self_attn.q_proj": [0, 0]}}))
    paths["empty"] = root / "empty.jsonl"
    paths["empty"].write_text('{"text": "fine"}\n{"text": ""}\n')
    paths["D"] = root / "seeds.jsonl"
    paths["D"].write_text(to_jsonl(SEED_RECORDS))
    paths["deep"] = root / "deep.jsonl"
    paths["deep"].write_text('{"text": "fine"}\n{"text": "x", "extra": ' + "[" * 5000 + "]" * 5000 + "}\n")
    paths["gguf"] = root / "corrupt.gguf"
    _gguf_header(paths["gguf"], bytes(range(256)) * 2)
    _data_files(root, paths)
    paths["study_recipe"] = root / "study.json"
    paths["study_recipe"].write_text(json.dumps(STUDY_RECIPE))
    return {k: str(v) for k, v in paths.items()}


STUDY_RECIPE = {"teacher": "demo:teacher", "student": "demo:student", "seed_data": "task:arith:seed",
                "train_data": "task:arith:train", "val_data": "task:arith:train", "test_data": "task:arith:test",
                "arms": [{"name": "vanilla", "init": "vanilla"}, {"name": "pkt", "init": "pkt"}]}


def _data_files(root: Path, paths: dict) -> None:
    """Damaged data and settings files, each as the name the generated cases use (hostile_cases)."""
    contents = {
        "zero_bytes": b"", "binary": bytes(range(256)) * 4,
        "latin1": '{"text": "café"}\n'.encode("latin-1"),
        "not_json": b'{"text": "fine"}\n{garbage\n', "not_object": b'{"text": "fine"}\n[1, 2]\n',
        "no_text": b'{"text": "fine"}\n{"foo": 1}\n', "truncated_line": b'{"text": "fine"}\n{"text": "cut',
        "deep_json": b"[" * 100_000 + b"]" * 100_000, "json_list": b"[1, 2]", "truncated_json": b'{"rank": 4, "alp',
    }
    for name, data in contents.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_bytes(data)


@pytest.fixture
def place(tmp_path, monkeypatch):
    """This case's folder: a foreign project (V), a previous export (E), a file (F), a prepared
    spec with a wrong type (W) and one that is not an object (L); `.` and `~` point at V."""
    victim = tmp_path / "project"
    victim.mkdir()
    (victim / "notes.txt").write_text("my work\n")
    export = tmp_path / "old_export"
    export.mkdir()
    (export / "paraknow.json").write_text('{"rank": 4}\n')
    (export / "adapter_model.safetensors").write_bytes(b"old")
    (tmp_path / "plain.txt").write_text("a file\n")
    for name in ("typed", "listed"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(victim)
    monkeypatch.setenv("HOME", str(victim))
    return {"V": str(victim), "E": str(export), "F": str(tmp_path / "plain.txt"), "TMP": str(tmp_path),
            "W": str(tmp_path / "typed" / "spec.json"), "L": str(tmp_path / "listed" / "spec.json")}


def snapshot(*roots) -> dict:
    """Every path under the roots (the runtime cache aside) with its kind and content hash."""
    seen = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if "cache" in path.relative_to(root).parts[:1]:
                continue
            seen[str(path)] = (f"link to {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                               else hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


def prepare(setup, place, monkeypatch) -> None:
    """The machine-level setups: a writer that finds the disk full, a cache that is a file, links."""
    tmp = Path(place["TMP"])
    if setup == "enospc":
        def full(*args, **kwargs):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                                  'message: "No space left on device" })')
        monkeypatch.setattr(fsio, "save_file", full)
    if setup == "cache-file":
        monkeypatch.setenv("PARAKNOW_CACHE", place["F"])
    if setup == "dangling":
        for name in ("dangling", "dangling.safetensors"):
            (tmp / name).symlink_to(tmp / "nowhere" / name)
    if setup == "linked":
        (tmp / "linked").symlink_to(place["E"], target_is_directory=True)


