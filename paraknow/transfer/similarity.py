"""Teacher x student layer similarity: linear CKA of hidden states on the seed samples.

Linear CKA (Kornblith et al., ICML 2019) between representations X [n, p] and Y [n, q] of
the same n inputs: with column-centred X and Y,

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)

It is 1 for X against itself and invariant to orthogonal transforms and isotropic scaling of
either side, so layers of different widths can be compared. `layer_similarity` compares the
output of every teacher layer with the output of every student layer on the same tokens
(the Mapping page draws it to guide manual layer maps).
"""
from __future__ import annotations

import numpy as np
import torch

from ..core.data import encode
from ..core.errors import ParaknowError
from ..core.numerics import float32_matmuls


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x - x.mean(0, keepdim=True)


def linear_cka(x, y) -> float:
    """Linear CKA of two representations of the same n inputs, X [n, p] and Y [n, q]."""
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ParaknowError(f"linear CKA needs two 2-D matrices with the same number of rows, got "
                            f"{list(x.shape)} and {list(y.shape)}.")
    x, y = _centre(x), _centre(y)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def _normalised_gram(x: torch.Tensor) -> torch.Tensor:
    """Flattened centred Gram matrix H X X^T H divided by its Frobenius norm -> [n*n]."""
    xc = _centre(x)
    k = (xc @ xc.T).reshape(-1)
    n = torch.linalg.vector_norm(k)
    return (k / n if n > 0 else k).float()


def cka_matrix(reps_a: list[torch.Tensor], reps_b: list[torch.Tensor]) -> np.ndarray:
    """Linear CKA of every pair (a_i, b_j) of representations of the same n inputs -> [len a, len b].

    Uses the Gram form <Kc_a, Kc_b> / (||Kc_a|| ||Kc_b||), which equals `linear_cka` and costs
    O(n^2) per pair whatever the widths.
    """
    ga = torch.stack([_normalised_gram(x) for x in reps_a])  # [A, n*n]
    gb = torch.stack([_normalised_gram(x) for x in reps_b])  # [B, n*n]
    return (ga.double() @ gb.double().T).clamp(0, 1).numpy()


def _hidden_states(model, ids: list[int]) -> list[torch.Tensor]:
    """Output of every decoder layer for one sequence -> [L] tensors [tokens, hidden] (float32, CPU)."""
    device = model.get_input_embeddings().weight.device
    with torch.inference_mode(), float32_matmuls(model):  # a bfloat16 CPU teacher: float32 products
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    return [h[0].float().cpu() for h in out.hidden_states[1:]]


def layer_similarity(teacher, student, tokenizer, records: list[dict], student_tokenizer=None,
                     max_samples: int = 16, max_tokens: int = 1024, max_length: int = 256,
                     progress=None) -> tuple[np.ndarray, dict]:
    """Linear CKA between each teacher layer's and each student layer's output on the seeds.

    Returns ([L_T, L_S] array, info). When both models tokenise the samples identically
    (the demo pair shares a tokenizer) the n inputs are tokens (at most `max_tokens`); otherwise
    each sample's hidden states are mean-pooled and the inputs are samples.
    """
    if not records:
        raise ParaknowError("no seed samples to compare the layers on: compute the sensitivity first.")
    student_tokenizer = student_tokenizer or tokenizer
    records = records[:max_samples]
    t_ids = [encode(tokenizer, r, max_length).input_ids for r in records]
    s_ids = t_ids if student_tokenizer is tokenizer else [encode(student_tokenizer, r, max_length).input_ids
                                                         for r in records]
    token_level = t_ids == s_ids
    t_reps: list[list[torch.Tensor]] = []
    s_reps: list[list[torch.Tensor]] = []
    n_tokens = 0
    for k, (ti, si) in enumerate(zip(t_ids, s_ids)):
        if token_level:
            take = min(len(ti), max_tokens - n_tokens)
            if take <= 0:
                break
            ti = si = ti[:max(take, 1)]
        th, sh = _hidden_states(teacher, ti), _hidden_states(student, si)
        if token_level:
            t_reps.append(th)
            s_reps.append(sh)
            n_tokens += len(ti)
        else:
            t_reps.append([h.mean(0, keepdim=True) for h in th])
            s_reps.append([h.mean(0, keepdim=True) for h in sh])
        if progress:
            progress(k + 1, len(records), f"hidden states of sample {k + 1}")
    teacher_layers = [torch.cat([sample[l] for sample in t_reps]) for l in range(len(t_reps[0]))]
    student_layers = [torch.cat([sample[l] for sample in s_reps]) for l in range(len(s_reps[0]))]
    n = teacher_layers[0].shape[0]
    if n < 3:
        raise ParaknowError("too few inputs to compare layers (need at least 3 tokens or samples).")
    info = {"inputs": "tokens" if token_level else "samples (mean-pooled)", "n": n, "samples": len(t_reps)}
    return cka_matrix(teacher_layers, student_layers), info
