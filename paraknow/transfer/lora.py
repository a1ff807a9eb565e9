"""LoRA side of the transfer: factorise extracted matrices, write PEFT adapters, load them back.

Conventions (PEFT's): a Linear LoRA adds s * B @ A with A [r, in], B [out, r], s = alpha / r.
An Embedding LoRA stores A [r, V] and B [d, r] and adds (s * B @ A).T, i.e. it acts on the
embedding's transpose [d, V] -- which is why embeddings are reduced as [d_T, V] -> [d_S, V].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core.errors import ParaknowError, first_line
from ..core.fsio import atomic_directory, atomic_save_safetensors, atomic_write_json, read_json_object
from ..core.numerics import column_major, row_blocks, squared_norm64
from ..core.validate import check_number

SPLITS = ("left", "sqrt")
MODES = ("residual", "additive")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MANIFEST_FILE = "paraknow.json"  # marks an export directory (and lets --overwrite replace it)
RESIDUAL_DIR = "residual"  # an export's companion adapter equal to -s*B@A (residual mode)
SELECTION_FILE = "selection.safetensors"  # an export's teacher indices per student module
LORA_DROPOUT = 0.05  # the LoRA dropout paraknow trains and exports with (TrainConfig.dropout's default)
PEFT_DROPOUT = 0.0  # what PEFT assumes when an adapter_config.json does not say (LoraConfig's default)
PEFT_PREFIX = "base_model.model."


SVD_METHODS = ("auto", "exact", "randomized")
# `auto` takes the randomized SVD for matrices whose smaller side is at least this, when the rank
# plus oversampling is at most a quarter of it; smaller matrices get the exact SVD (cheap there).
RANDOMIZED_MIN_DIM = 1024
OVERSAMPLE = 20  # extra random directions beyond the rank (Halko et al. 2011, section 4.2)
POWER_ITERATIONS = 6  # subspace iterations: sharpen the spectrum's decay before projecting


@dataclass
class Factors:
    """A rank-r pair in PEFT orientation: s * B @ A approximates the target."""
    A: torch.Tensor  # [r, in]  (embedding: [r, V])
    B: torch.Tensor  # [out, r] (embedding: [d, r])
    singular_values: torch.Tensor  # descending: all of them (exact SVD) or the top r (randomized)
    energy: float  # share of the squared Frobenius norm kept at rank r: sum(top-r sigma^2) / ||W||_F^2
    method: str = "exact"  # the SVD that computed them: exact | randomized


MAX_SCALING = 2.0**16  # s = alpha / r above this makes B = U Sigma / s underflow towards float32's zeros


def check_alpha(alpha: float, rank: int) -> None:
    """alpha must keep s * B @ A representable: 0 < alpha / rank <= MAX_SCALING."""
    check_number("alpha", alpha, above=0)
    if alpha / rank > MAX_SCALING:
        raise ParaknowError(f"alpha must be at most {MAX_SCALING * rank:g} at rank {rank} (got {alpha:g}): the "
                            f"scaling s = alpha / r above {MAX_SCALING:g} makes B = U Sigma / s underflow to zeros.")


def scaling(rank: int, alpha: float) -> float:
    return alpha / rank


def svd_method(shape, rank: int, requested: str = "auto") -> str:
    """The SVD `factorise` uses for a matrix of `shape` at `rank`: exact | randomized."""
    if requested not in SVD_METHODS:
        raise ParaknowError(f"unknown svd '{requested}'; use one of {', '.join(SVD_METHODS)}.")
    if requested != "auto":
        return requested
    smaller = min(shape)
    return "randomized" if smaller >= RANDOMIZED_MIN_DIM and 4 * (rank + OVERSAMPLE) <= smaller else "exact"


def randomized_svd(matrix: torch.Tensor, rank: int, seed: int = 0, oversample: int = OVERSAMPLE,
                   power_iterations: int = POWER_ITERATIONS):
    """Top-`rank` (U, sigma, Vh) of `matrix` in float64 by a randomized range finder (Halko, Martinsson,
    Tropp 2011, algorithms 4.4 + 5.1), on the matrix's device; the same seed gives the same result.

    The subspace iterations (the cost: 2 q + 1 passes over the matrix) run in float32 -- they only
    have to find the dominant subspace, re-orthonormalised at every step; the projection onto it and
    the small SVD (one pass) run in float64, so sigma and the factors carry float64 accuracy. A
    float32 matrix is read in place: no full-size copy is made.
    """
    out_dim, in_dim = matrix.shape
    width = min(rank + oversample, out_dim, in_dim)
    generator = torch.Generator(device=matrix.device).manual_seed(seed)
    work = matrix if matrix.dtype == torch.float32 else matrix.float()  # [o, i]; never half precision
    omega = torch.randn(in_dim, width, generator=generator, dtype=torch.float32, device=matrix.device)  # [i, k]
    Q = torch.linalg.qr(work @ omega).Q  # [o, k]
    for _ in range(power_iterations):
        Q = torch.linalg.qr(work.T @ Q).Q  # [i, k]
        Q = torch.linalg.qr(work @ Q).Q  # [o, k]
    del work
    Q = torch.linalg.qr(Q.double()).Q  # [o, k], orthonormal in float64
    U_small, sigma, Vh = torch.linalg.svd(_project_float64(Q, matrix), full_matrices=False)  # [k, k], [k], [k, i]
    return (Q @ U_small)[:, :rank], sigma[:rank], Vh[:rank]  # [o, r], [r], [r, i]


def _project_float64(Q: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Q^T @ matrix in float64: Q [o, k] float64, matrix [o, i] of any float dtype -> [k, i], summed
    over blocks of the matrix's rows (or of its transpose's rows when it is column-major)."""
    if matrix.dtype == torch.float64:
        return Q.T @ matrix
    if column_major(matrix):  # Q^T M = (M^T Q)^T, M^T row-major [i, o]
        rows = matrix.t()
        return torch.cat([rows[a:b].double() @ Q for a, b in row_blocks(*rows.shape)]).T  # [k, i]
    out = torch.zeros(Q.shape[1], matrix.shape[1], dtype=torch.float64, device=matrix.device)  # [k, i]
    for a, b in row_blocks(*matrix.shape):
        out.addmm_(Q[a:b].T, matrix[a:b].double())
    return out


def factorise(matrix: torch.Tensor, rank: int, alpha: float, split: str = "left", svd: str = "auto",
              seed: int = 0) -> Factors:
    """Truncated SVD so that `scaling * B @ A` is the best rank-r approximation of `matrix`.

    split='left': B = U_r Sigma_r / s, A = V_r^T (the paper's).  split='sqrt': both sides carry
    sqrt(Sigma_r / s). svd: exact, randomized (`randomized_svd`, seeded by `seed`) or auto (see
    `svd_method`). Computed on the matrix's device, in float64 (the randomized path's subspace
    iterations in float32); the factors come back as float32 on the CPU.
    """
    if split not in SPLITS:
        raise ParaknowError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}.")
    out_dim, in_dim = matrix.shape
    if rank < 1 or rank > min(out_dim, in_dim):
        raise ParaknowError(f"rank {rank} does not fit a [{out_dim}, {in_dim}] matrix: "
                            f"choose a rank between 1 and {min(out_dim, in_dim)}.")
    method = svd_method(matrix.shape, rank, svd)
    s = scaling(rank, alpha)
    if method == "exact":
        U, sigma, Vh = torch.linalg.svd(matrix.double(), full_matrices=False)  # U [o, k], sigma [k], Vh [k, i]
        U_r, sigma_r, Vh_r = U[:, :rank], sigma[:rank], Vh[:rank]
    else:  # reads the matrix in place (float32) or through one float32 copy; float64 only chunk by chunk
        U_r, sigma_r, Vh_r = randomized_svd(matrix, rank, seed)
        sigma = sigma_r
    if split == "left":
        B, A = U_r * (sigma_r / s), Vh_r
    else:
        root = (sigma_r / s).sqrt()
        B, A = U_r * root, root[:, None] * Vh_r
    total = float(sigma.square().sum()) if method == "exact" else squared_norm64(matrix)  # ||W||_F^2: the randomized sigma lacks its tail
    energy = float(sigma_r.square().sum()) / total if total > 0 else 1.0
    return Factors(A.float().cpu().contiguous(), B.float().cpu().contiguous(), sigma.float().cpu(), energy, method)


def vanilla_factors(out_dim: int, in_dim: int, rank: int, generator: torch.Generator,
                    embedding: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's default init: Linear A ~ kaiming-uniform(a=sqrt 5), B = 0; Embedding A = 0, B ~ N(0, 1)."""
    if embedding:
        return torch.zeros(rank, in_dim), torch.randn(out_dim, rank, generator=generator)
    bound = 1.0 / math.sqrt(in_dim)  # kaiming_uniform_(a=sqrt(5)) on a [r, in] weight
    A = (torch.rand(rank, in_dim, generator=generator) * 2 - 1) * bound
    return A, torch.zeros(out_dim, rank)


# ---------------------------------------------------------------------------------------
# Adapter files


def _keys(module: str, embedding: bool) -> tuple[str, str]:
    if embedding:
        return f"{PEFT_PREFIX}{module}.lora_embedding_A", f"{PEFT_PREFIX}{module}.lora_embedding_B"
    return f"{PEFT_PREFIX}{module}.lora_A.weight", f"{PEFT_PREFIX}{module}.lora_B.weight"


def write_adapter(directory: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  embedding_modules: set[str], rank: int, alpha: float, target_modules: list[str],
                  base_model: str, dropout: float = LORA_DROPOUT) -> None:
    """Write a standard PEFT LoRA adapter (config + safetensors) from {module: (A, B)}."""
    from peft import LoraConfig

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (A, B) in factors.items():
        key_a, key_b = _keys(module, module in embedding_modules)
        tensors[key_a], tensors[key_b] = A.float(), B.float()
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        base_model_name_or_path=base_model, task_type="CAUSAL_LM")
    as_dict = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    atomic_write_json(directory / ADAPTER_CONFIG, as_dict)
    atomic_save_safetensors(tensors, directory / ADAPTER_WEIGHTS, metadata={"format": "pt"})


def read_adapter(directory: Path) -> tuple[dict, dict[str, tuple[torch.Tensor, torch.Tensor]], set[str]]:
    """(config dict, {module: (A, B)}, embedding module names) of a PEFT LoRA adapter on disk."""
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).exists() or not (directory / ADAPTER_WEIGHTS).exists():
        raise ParaknowError(f"{directory} is not a LoRA adapter (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}).")
    config = read_json_object(directory / ADAPTER_CONFIG, "copy or re-create the adapter")
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    factors: dict[str, list] = {}
    embeddings = set()
    for key, value in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        for suffix, slot, is_emb in ((".lora_A.weight", 0, False), (".lora_B.weight", 1, False),
                                     (".lora_embedding_A", 0, True), (".lora_embedding_B", 1, True)):
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                factors.setdefault(module, [None, None])[slot] = value
                if is_emb:
                    embeddings.add(module)
    return config, {m: (a, b) for m, (a, b) in factors.items() if a is not None and b is not None}, embeddings


# ---------------------------------------------------------------------------------------
# Using an export


def load_manifest(export_dir) -> dict:
    path = Path(export_dir) / MANIFEST_FILE
    if not path.exists():
        raise ParaknowError(f"{export_dir} is not a paraknow export (no {MANIFEST_FILE}); "
                            "create one with `python -m paraknow extract`.")
    return read_json_object(path, "re-create the export with `python -m paraknow extract`")


def apply_residual(student, export_dir):
    """Merge the export's `residual/` companion into the student's base weights (residual mode)."""
    from peft import PeftModel

    residual = Path(export_dir) / RESIDUAL_DIR
    if not (residual / ADAPTER_CONFIG).exists():
        return student
    return PeftModel.from_pretrained(student, str(residual)).merge_and_unload()


def student_from_export(student, export_dir, trainable: bool = True, dropout: float | None = None):
    """The student ready to train from an export: residual base (if any) + the LoRA initialisation.
    `dropout` replaces the adapter's stored lora_dropout (training options apply to every init)."""
    from peft import LoraConfig, PeftModel

    from ..core.cache import touch

    load_manifest(export_dir)
    check_adapter_weights(export_dir)
    touch(export_dir)  # its last use, for `paraknow cache clear --older-than`
    base = apply_residual(student, export_dir)
    config = LoraConfig.from_pretrained(str(export_dir))
    if dropout is not None:
        config.lora_dropout = dropout
    return PeftModel.from_pretrained(base, str(export_dir), is_trainable=trainable, config=config)


def check_adapter_weights(adapter_dir) -> None:
    """An adapter's weights (and its residual/ companion's, if any) are a readable
    adapter_model.safetensors: a pickle-only folder (adapter_model.bin) is refused unread, a
    damaged file is named."""
    from safetensors import safe_open

    for folder in (Path(adapter_dir), Path(adapter_dir) / "residual"):
        weights = folder / ADAPTER_WEIGHTS
        if not (folder / ADAPTER_CONFIG).is_file():
            continue  # no residual companion
        if not weights.is_file():
            raise ParaknowError(f"{folder} has no {ADAPTER_WEIGHTS}" + (" (only adapter_model.bin, a pickle, which "
                                "paraknow never loads)" if (folder / "adapter_model.bin").exists() else "")
                                + ": save the adapter as safetensors (save_pretrained(..., safe_serialization=True)).")
        try:
            with safe_open(str(weights), framework="pt") as fh:
                list(fh.keys())
        except Exception as exc:  # noqa: BLE001 - any header problem means a damaged user file
            raise ParaknowError(f"{weights} is damaged ({first_line(exc)}): export or train the adapter "
                                "again.") from None


def attach_adapter(model, adapter_dir, model_ref: str = "the model"):
    """`model` with a LoRA adapter loaded for inference (eval, generate, the Playground page).

    A paraknow export in residual mode gets its `residual/` companion merged into the base first,
    so "student + export" is the student that training starts from; a run's `adapter/` folder or
    any other PEFT adapter is loaded as it is. The model is returned in eval mode.
    """
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / ADAPTER_CONFIG).is_file():
        raise ParaknowError(f"adapter not found: {adapter_dir} has no {ADAPTER_CONFIG}. Give the "
                            "directory written by `extract` or a run's adapter/ folder.")
    check_adapter_weights(path)
    try:
        if (path / MANIFEST_FILE).is_file():
            model = apply_residual(model, path)
        model = PeftModel.from_pretrained(model, str(path))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ParaknowError(f"the adapter in {adapter_dir} does not fit model '{model_ref}': {first_line(exc)}")
    return model.eval()


def residual_deltas(export_dir) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (A, B)} whose s * B @ A the residual base added to each module, in that module's
    orientation -- including the tied lm_head, which shares the residualised embedding."""
    manifest = load_manifest(export_dir)
    if manifest.get("mode") != "residual" or not (Path(export_dir) / RESIDUAL_DIR / ADAPTER_CONFIG).exists():
        return {}
    _, factors, _ = read_adapter(Path(export_dir) / RESIDUAL_DIR)
    tied = manifest.get("tied_compensation")
    if tied:  # embedding [V, d] delta (s B A).T equals lm_head delta s * A.T @ B.T
        A_emb, B_emb = factors[tied["embedding"]]
        factors[tied["lm_head"]] = (B_emb.T.contiguous(), A_emb.T.contiguous())
    return factors


def residual_to_plain(trained_adapter_dir, export_dir, out_dir) -> None:
    """Turn an adapter trained on the residual base into a plain LoRA for the *original* student.

    Trained model per module: W - s B0 A0 + s B1 A1  ==  W + s [B1, -B0] @ [A1; A0], a rank-2r
    LoRA (alpha doubled so s is unchanged); modules without a residual are zero-padded to 2r.
    """
    config, trained, embeddings = read_adapter(Path(trained_adapter_dir))
    residual = residual_deltas(export_dir)
    rank, alpha = config["r"], config["lora_alpha"]
    combined = {}
    for module, (A1, B1) in trained.items():
        if module in residual:
            A0, B0 = residual[module]  # already carries the minus sign
            A0, B0 = A0.to(A1.dtype), B0.to(B1.dtype)
        else:
            A0, B0 = torch.zeros_like(A1), torch.zeros_like(B1)
        combined[module] = (torch.cat([A1, A0], 0), torch.cat([B1, B0], 1))  # [2r, in], [out, 2r]
    targets = config.get("target_modules") or sorted(combined)
    with atomic_directory(Path(out_dir), replaces=ADAPTER_CONFIG) as tmp:
        write_adapter(tmp, combined, embeddings, 2 * rank, 2 * alpha, sorted(targets) if isinstance(targets, list) else targets,
                      config.get("base_model_name_or_path") or "", config.get("lora_dropout", PEFT_DROPOUT))
