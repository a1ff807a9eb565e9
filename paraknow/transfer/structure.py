"""Index sets shared by several matrices of a layer: whole heads, whole neurons, one residual basis.

A per-matrix structure (paraknow/extract.py) picks every matrix's block on its own, so the
pieces moved into one student layer need not agree on which residual-stream dimensions, heads
or FFN neurons they describe. The plan-level step here fixes those index sets once per student
layer (or once for the model); each module's `Selection` is then built from them with
`extract.select_within`, the structure choosing only the axes left free.

Which axis of each (oriented) matrix is which index set -- `AXES`:
  q_proj [H*hd, d]: rows = query rows, cols = hidden      o_proj [d, H*hd]: rows = hidden, cols = query rows
  k_proj / v_proj [K*hd, d]: rows = key/value rows, cols = hidden
  gate_proj / up_proj [f, d]: rows = neurons, cols = hidden   down_proj [d, f]: rows = hidden, cols = neurons
  embed_tokens as [d, V]: rows = hidden                   lm_head [V, d]: cols = hidden

Layer structures (registry `LAYER_STRUCTURES`, keyed like `extract.STRUCTURES`):
  heads  the student's K_S key/value heads as whole teacher KV heads and, inside each chosen group,
         its g_S = H_S/K_S query heads, so the student's query->KV grouping holds (head m of the
         student reads KV head m // g_S). A group's value is the summed sensitivity of its KV
         head's k/v rows plus that of its g_S best query heads (q rows and o columns); the K_S
         best groups win. When the student's head_dim is smaller, the kept dims inside every
         head are whole rotary pairs (i, i + hd/2, as Llama's rotate_half pairs them), the
         hd_S/2 pairs with the largest summed sensitivity over the chosen heads. FFN: whole
         neurons, one set for gate/up rows and down columns (the largest summed sensitivity).

Coherence (`COHERENT`): `layer` fixes one hidden-dimension set per student layer, `model` one
for the whole model (embeddings included), chosen by the structure's 1-D rule on the summed
sensitivity of every transferred matrix that reads or writes the residual stream; it also fixes
one FFN neuron set per layer. docs/structure.md explains the choices.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.architecture import ATTN_ROLES, FFN_ROLES, ModelInfo
from ..core.errors import ParaknowError
from ..core.numerics import sum64
from ..extract import _top_sorted, pick_indices

COHERENT = {  # choice -> one-line explanation (CLI help and the Mapping page read it)
    "off": "every matrix picks its own rows and columns",
    "layer": "the matrices of a layer share one set of residual-stream dimensions and one set of FFN neurons",
    "model": "all matrices share one set of residual-stream dimensions; each layer one set of FFN neurons",
}

AXES = {  # role -> (index set along its rows, along its columns), orientation as planned
    "q_proj": ("q_rows", "hidden"), "k_proj": ("kv_rows", "hidden"), "v_proj": ("kv_rows", "hidden"),
    "o_proj": ("hidden", "q_rows"),
    "gate_proj": ("neurons", "hidden"), "up_proj": ("neurons", "hidden"), "down_proj": ("hidden", "neurons"),
    "embed_tokens": ("hidden", None), "lm_head": (None, "hidden"),
}


@dataclass
class HeadChoice:
    """The teacher heads behind the student's, in the student's order."""
    kv_heads: list  # teacher KV head of each student KV head (ascending)
    q_heads: list  # teacher query head of each student query head (ascending; g_S per KV head)
    head_dims: list  # teacher dims kept inside every head (ascending; rotary pairs whole)


@dataclass
class LayerSets:
    """Index sets fixed for the modules of one student layer; None leaves the axis to each matrix."""
    hidden: torch.Tensor | None = None  # [d_S] teacher residual-stream dims
    neurons: torch.Tensor | None = None  # [f_S] teacher FFN neurons
    q_rows: torch.Tensor | None = None  # [H_S * hd_S] teacher q_proj rows = o_proj columns
    kv_rows: torch.Tensor | None = None  # [K_S * hd_S] teacher k_proj / v_proj rows
    heads: HeadChoice | None = None

    def axes(self, role: str) -> tuple:
        """(rows, cols) fixed for a role's oriented matrix, None where free."""
        return tuple(None if name is None else getattr(self, name) for name in AXES[role])

    def to_dict(self) -> dict:
        out = {name: getattr(self, name).tolist() for name in ("hidden", "neurons")
               if getattr(self, name) is not None}
        if self.heads is not None:
            out.update(kv_heads=self.heads.kv_heads, q_heads=self.heads.q_heads, head_dims=self.heads.head_dims)
        return out


def _marginal(scores: dict, set_name: str, size: int) -> torch.Tensor:
    """Summed sensitivity along one index set over the matrices that have it -> [size] float64."""
    total = torch.zeros(size, dtype=torch.float64)
    for role, s in scores.items():
        rows, cols = AXES[role]
        if rows == set_name:
            total += sum64(s, 1)  # [o] row sums
        if cols == set_name:
            total += sum64(s, 0)  # [i] column sums
    return total


def _check_heads(teacher: ModelInfo, student: ModelInfo) -> None:
    g_t, g_s = teacher.n_heads // teacher.n_kv_heads, student.n_heads // student.n_kv_heads
    problem = None
    if student.n_kv_heads > teacher.n_kv_heads:
        problem = f"the student has {student.n_kv_heads} key/value heads, the teacher only {teacher.n_kv_heads}"
    elif g_s > g_t:
        problem = f"the student groups {g_s} query heads per key/value head, the teacher only {g_t}"
    elif student.head_dim > teacher.head_dim:
        problem = f"the student's head_dim {student.head_dim} is larger than the teacher's {teacher.head_dim}"
    elif student.head_dim % 2 or teacher.head_dim % 2:
        problem = "head_dim is odd, so it has no rotary pairs"
    if problem:
        raise ParaknowError(f"structure heads cannot keep whole heads: {problem}; use another structure "
                            "(e.g. submatrix), or attention modules left out")


def choose_heads(scores: dict, teacher: ModelInfo, student: ModelInfo) -> HeadChoice:
    """Whole teacher KV groups and query heads for the student (see the module docstring).

    `scores`: oriented sensitivity of the teacher layer's attention matrices (any subset of q/k/v/o).
    """
    _check_heads(teacher, student)
    hd_t, hd_s = teacher.head_dim, student.head_dim
    k_t, g_t, k_s = teacher.n_kv_heads, teacher.n_heads // teacher.n_kv_heads, student.n_kv_heads
    g_s = student.n_heads // k_s
    q_dims = _marginal(scores, "q_rows", teacher.n_heads * hd_t).view(teacher.n_heads, hd_t)  # [H_T, hd_T]
    kv_dims = _marginal(scores, "kv_rows", k_t * hd_t).view(k_t, hd_t)  # [K_T, hd_T]
    q_by_group = q_dims.sum(1).view(k_t, g_t)  # [K_T, g_T] per query head
    best_q = [_top_sorted(q_by_group[k], g_s) for k in range(k_t)]  # g_S best query heads per group
    value = kv_dims.sum(1) + torch.stack([q_by_group[k, best_q[k]].sum() for k in range(k_t)])  # [K_T]
    kv_heads = _top_sorted(value, k_s).tolist()
    q_heads = [k * g_t + int(i) for k in kv_heads for i in best_q[k]]
    if hd_s == hd_t:
        dims = torch.arange(hd_t)
    else:  # whole rotary pairs (i, i + hd/2), by their summed sensitivity over the chosen heads
        per_dim = q_dims[q_heads].sum(0) + kv_dims[kv_heads].sum(0)  # [hd_T]
        half = hd_t // 2
        pairs = _top_sorted(per_dim[:half] + per_dim[half:], hd_s // 2)  # [hd_S / 2]
        dims = torch.cat([pairs, pairs + half])  # student dim j <-> pairs[j], j + hd_S/2 <-> pairs[j] + hd_T/2
    return HeadChoice(kv_heads, q_heads, dims.tolist())


def head_rows(heads: list, head_dims: list, head_dim: int) -> torch.Tensor:
    """Teacher rows [len(heads) * len(head_dims)] of the kept dims of whole heads, ascending."""
    h, d = torch.tensor(heads, dtype=torch.long), torch.tensor(head_dims, dtype=torch.long)
    return (h[:, None] * head_dim + d[None, :]).reshape(-1)  # [heads, dims] -> flat


def _whole_heads(scores: dict, teacher: ModelInfo, student: ModelInfo, seed: int) -> LayerSets:
    sets = LayerSets()
    attention = {r: s for r, s in scores.items() if r in ATTN_ROLES}
    if attention:
        sets.heads = choose_heads(attention, teacher, student)
        sets.q_rows = head_rows(sets.heads.q_heads, sets.heads.head_dims, teacher.head_dim)
        sets.kv_rows = head_rows(sets.heads.kv_heads, sets.heads.head_dims, teacher.head_dim)
    if any(r in FFN_ROLES for r in scores):
        sets.neurons = pick_indices("heads", _marginal(scores, "neurons", teacher.intermediate_size),
                                    student.intermediate_size, seed)
    return sets


LAYER_STRUCTURES = {  # structure -> (oriented layer scores, teacher, student, seed) -> LayerSets
    "heads": _whole_heads,
}


def plan_index_sets(structure: str, coherent: str, layer_scores: dict, embed_scores: dict,
                    teacher: ModelInfo, student: ModelInfo, seed: int = 0) -> dict:
    """{student layer (None = embeddings): LayerSets} that the structure and coherence fix.

    layer_scores: {student layer: {role: oriented teacher sensitivity}} of the transferred layer
    roles; embed_scores: {role: oriented sensitivity} of the transferred embeddings. Empty when
    nothing is shared (a per-matrix structure with coherent off: today's plan).
    """
    if coherent not in COHERENT:
        raise ParaknowError(f"unknown coherent option {coherent!r}; use one of {', '.join(COHERENT)}")
    layer_structure = LAYER_STRUCTURES.get(structure)
    if layer_structure is None and coherent == "off":
        return {}
    out = {}
    for j, scores in layer_scores.items():
        sets = layer_structure(scores, teacher, student, seed) if layer_structure else LayerSets()
        if coherent != "off" and sets.neurons is None and any(r in FFN_ROLES for r in scores):
            sets.neurons = pick_indices(structure, _marginal(scores, "neurons", teacher.intermediate_size),
                                        student.intermediate_size, seed)
        if coherent == "layer":
            sets.hidden = pick_indices(structure, _marginal(scores, "hidden", teacher.hidden_size),
                                       student.hidden_size, seed)
        out[j] = sets
    if coherent == "model":
        total = _marginal(embed_scores, "hidden", teacher.hidden_size)
        for scores in layer_scores.values():
            total += _marginal(scores, "hidden", teacher.hidden_size)
        hidden = pick_indices(structure, total, student.hidden_size, seed)
        for sets in out.values():
            sets.hidden = hidden
        if embed_scores:
            out[None] = LayerSets(hidden=hidden)
    return out


def head_axes(role: str, head_dim: int) -> dict:
    """{"rows" / "cols": head_dim} for the axes of a role's matrix that run over attention heads."""
    return {axis: head_dim for axis, name in zip(("rows", "cols"), AXES[role]) if name in ("q_rows", "kv_rows")}
