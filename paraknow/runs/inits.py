"""The LoRA initialisations a run can start from without a teacher: PEFT's `init_lora_weights` variants
that fit a causal LM's linear layers and need no extra package (PEFT 0.21). One entry each; the
`--init` choices, the study's `init` values and the saving rule read this registry.

  vanilla  A ~ Kaiming, B = 0 (the base weights untouched)
  pissa    the principal singular components of each weight (the base keeps the residual)
  olora    an orthonormal (QR) basis of each weight (the base keeps the residual)
  eva      A from the SVD of each layer's input activations over training records (B = 0, base untouched)
  corda    context-oriented SVD of each weight with the covariance of its inputs over training records
           (CorDA's knowledge-preserved mode, `kpm`; the base keeps the residual)
  vanilla-ortho  vanilla LoRA whose A has random orthonormal rows (seeded), B = 0: the init-scale control
  mica     B = the left singular vectors of the r smallest singular values, frozen; A = 0, trained (base untouched)

`converts`: the init moves the base weights, so the adapter is saved converted back to a plain LoRA of
the original student (rank 2r, PEFT's `path_initial_model_for_weight_conversion`). `embedding`: PEFT
initialises an Embedding this way too (vanilla, MiCA); the others leave `embed_tokens` the standard init
(A = 0, B ~ N(0, 1)), which the run's `init_note` says.
EVA and CorDA look at the first `DATA_PASS_RECORDS` training records (forward passes only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

DATA_PASS_RECORDS = 32  # training records EVA and CorDA run forward passes over
EVA_RHO = 1.0  # EVA's rank redistribution off: every module keeps the run's rank, as vanilla


@dataclass(frozen=True)
class Init:
    label: str
    peft: object  # LoraConfig.init_lora_weights
    converts: bool  # moves the base weights: save the adapter converted (rank 2r)
    embedding: bool = False  # PEFT initialises an Embedding this way too (else: the standard init there)
    extra: Callable | None = None  # () -> more LoraConfig kwargs
    before: Callable | None = None  # (model, lora_config, batches) before get_peft_model
    after: Callable | None = None  # (peft model, batches, seed) after get_peft_model
    data: bool = False  # looks at training records (forward passes) to initialise

    @property
    def data_passes(self) -> bool:
        return self.data


def _eva_config() -> dict:
    from peft import EvaConfig

    return {"eva_config": EvaConfig(rho=EVA_RHO)}


def _eva_after(model, batches, seed: int) -> None:
    from peft import initialize_lora_eva_weights

    initialize_lora_eva_weights(model, [{k: b[k] for k in ("input_ids", "attention_mask")} for b in batches])


def _corda_config() -> dict:
    from peft.tuners.lora.config import CordaConfig

    return {"corda_config": CordaConfig(corda_method="kpm")}


def _corda_before(model, lora, batches) -> None:
    from peft.tuners.lora.corda import preprocess_corda

    def run_model():  # CorDA's hooks take one sequence at a time ([1, seq] -> squeeze(0))
        for batch in batches:
            for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
                model(input_ids=ids[mask.bool()][None])  # [1, seq]

    preprocess_corda(model, lora, run_model=run_model)


def _orthonormal_a(model, batches, seed: int) -> None:
    """Every LoRA's A gets random orthonormal rows (as PKT's A = V_r^T has), drawn with `seed`, and
    B = 0: the student starts unchanged."""
    import torch

    from ..transfer.controls import random_orthonormal

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for a_name, b_name in (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B")):
                if "default" not in getattr(module, a_name, {}):
                    continue
                A, B = getattr(module, a_name)["default"], getattr(module, b_name)["default"]
                A, B = (A.weight, B.weight) if a_name == "lora_A" else (A, B)  # [r, in] and [out, r]
                A.copy_(random_orthonormal(A.shape[1], A.shape[0], generator).T)
                B.zero_()


INITS: dict[str, Init] = {
    "vanilla": Init("vanilla LoRA", True, converts=False, embedding=True),
    "pissa": Init("PiSSA", "pissa", converts=True),
    "olora": Init("OLoRA", "olora", converts=True),
    "eva": Init("EVA", "eva", converts=False, extra=_eva_config, after=_eva_after, data=True),
    "corda": Init("CorDA", "corda", converts=True, extra=_corda_config, before=_corda_before, data=True),
    "mica": Init("MiCA", "mica", converts=False, embedding=True),
    # the init-scale control of PKT, whose A = V_r^T has orthonormal rows where Kaiming's have norm ~0.58
    "vanilla-ortho": Init("vanilla LoRA, orthonormal A", True, converts=False, embedding=True, after=_orthonormal_a),
}


def data_batches(config, tokenizer, device, batch_size: int = 8) -> list[dict]:
    """The first DATA_PASS_RECORDS training records, encoded as training encodes them, in batches
    on `device` (input_ids and attention_mask [batch, seq])."""
    from ..core.data import collate, encode_all, load_records

    items = encode_all(tokenizer, load_records(config.data)[:DATA_PASS_RECORDS], config.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return [{k: v.to(device) for k, v in collate(items[i:i + batch_size], pad).items()}
            for i in range(0, len(items), batch_size)]


def wrap(model, tokenizer, config):
    """The student wrapped in the run's LoRA (`config.init` names an entry of INITS)."""
    from peft import LoraConfig, get_peft_model

    init = INITS[config.init]
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=list(config.target_modules), task_type="CAUSAL_LM", init_lora_weights=init.peft,
                      **(init.extra() if init.extra else {}))
    batches = data_batches(config, tokenizer, model.get_input_embeddings().weight.device) if init.data_passes else []
    if init.before:
        init.before(model, lora, batches)
    model = get_peft_model(model, lora)
    if init.after:
        init.after(model, batches, config.seed)
    return model
