"""The student a run trains, and the adapter it leaves: `build_model` wraps the student in a LoRA for
the run's init (vanilla, PiSSA, or a PKT export), `save_adapter` writes RUN_DIR/adapter/ as a plain
PEFT LoRA for the ORIGINAL student: residual exports are converted with the rank-2r trick
(lora.residual_to_plain), PiSSA with PEFT's `path_initial_model_for_weight_conversion` (also rank 2r).
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

from ..core.errors import ParaknowError, first_line
from ..core.fsio import atomic_directory
from ..transfer.lora import PEFT_DROPOUT
from .rundir import ADAPTER_DIR, PISSA_INIT_DIR, TRAINED_DIR
from .train_config import TrainConfig


def train_device(config: TrainConfig) -> str:
    import torch

    from ..core.models import resolve_device

    if config.device in (None, "", "auto"):
        if torch.cuda.is_available():
            return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
        return "cpu"
    device = resolve_device(config.device)
    return "cuda" if device == "auto" else device


def build_model(config: TrainConfig, work_dir: Path | None = None, write: bool = True):
    """(peft model ready to train, tokenizer). For PiSSA the initial adapter is saved to
    `work_dir/pissa_init` (needed to convert the trained adapter back to a plain LoRA; PEFT
    uses the folder name as an adapter name, so it cannot start with a dot)."""
    import transformers

    from ..core.models import load_model
    from ..transfer.lora import student_from_export
    from .inits import INITS, wrap

    device = train_device(config)
    model, tokenizer = load_model(config.student, dtype=config.dtype,
                                  device=device if device.startswith("cuda") else None)
    transformers.set_seed(config.seed)
    if config.method == "pkt":
        try:
            model = student_from_export(model, config.init, trainable=True, dropout=config.dropout)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ParaknowError(f"the export {config.init} does not fit student '{config.student}' "
                                f"(was it made for another student?): {first_line(exc)}")
    else:
        model = wrap(model, tokenizer, config)
        if INITS[config.method].converts and write and work_dir is not None:
            init_dir = Path(work_dir) / PISSA_INIT_DIR
            shutil.rmtree(init_dir, ignore_errors=True)
            model.peft_config["default"].init_lora_weights = True  # PEFT's documented recipe
            model.save_pretrained(str(init_dir), save_embedding_layers=False)
            model.peft_config["default"].init_lora_weights = INITS[config.method].peft
    return model, tokenizer


def save_adapter(model, config: TrainConfig, run_dir: Path) -> Path:
    """Write RUN_DIR/adapter/ atomically as a plain LoRA for the original student."""
    from ..transfer.lora import ADAPTER_CONFIG, RESIDUAL_DIR, load_manifest, residual_to_plain
    from .inits import INITS

    run_dir = Path(run_dir)
    target = run_dir / ADAPTER_DIR
    if config.method == "pkt":
        residual = load_manifest(config.init).get("mode") == "residual" and \
            (Path(config.init) / RESIDUAL_DIR / ADAPTER_CONFIG).is_file()
        if residual:
            trained = run_dir / TRAINED_DIR
            shutil.rmtree(trained, ignore_errors=True)
            model.save_pretrained(str(trained), save_embedding_layers=False)
            try:
                residual_to_plain(trained, config.init, target)
            finally:
                shutil.rmtree(trained, ignore_errors=True)
            return target
    with atomic_directory(target, replaces=ADAPTER_CONFIG) as tmp:
        if INITS[config.method].converts:
            with warnings.catch_warnings():  # "PiSSA/OLoRA/CorDA changes the base weights..." -- we are converting
                warnings.filterwarnings("ignore", message=".* changes the base weights")
                model.save_pretrained(str(tmp), save_embedding_layers=False,
                                      path_initial_model_for_weight_conversion=str(run_dir / PISSA_INIT_DIR))
            _restore_embedding_loras(model, Path(tmp))
        else:
            model.save_pretrained(str(tmp), save_embedding_layers=False)
        (Path(tmp) / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
    return target


def _restore_embedding_loras(model, adapter_dir: Path) -> None:
    """Put Embedding LoRAs back into a PiSSA (OLoRA, CorDA) adapter converted to a plain LoRA.

    PEFT's conversion (path_initial_model_for_weight_conversion) drops `lora_embedding_*`. PiSSA does
    not initialise an Embedding either: it keeps PEFT's standard init (A = 0, B ~ N(0, 1)) on an
    unchanged base, so its trained (A, B) already is the delta to the original student; it goes in
    zero-padded to the converted rank 2r (the converted alpha keeps s = alpha / r unchanged).
    """
    import torch

    from ..transfer.lora import PEFT_PREFIX, read_adapter, write_adapter

    trained = {name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name:
               (module.lora_embedding_A["default"].detach().float().cpu(),   # [r, V]
                module.lora_embedding_B["default"].detach().float().cpu())   # [d, r]
               for name, module in model.named_modules() if "default" in getattr(module, "lora_embedding_A", {})}
    if not trained:
        return
    config, factors, embeddings = read_adapter(adapter_dir)
    for module, (A, B) in trained.items():
        pad = config["r"] - A.shape[0]
        factors[module] = (torch.cat([A, A.new_zeros(pad, A.shape[1])]), torch.cat([B, B.new_zeros(B.shape[0], pad)], 1))
        embeddings.add(module)
    targets = config.get("target_modules")
    write_adapter(adapter_dir, factors, embeddings, config["r"], config["lora_alpha"],
                  sorted(targets) if isinstance(targets, list) else targets,
                  config.get("base_model_name_or_path") or "", config.get("lora_dropout", PEFT_DROPOUT))
