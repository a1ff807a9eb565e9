"""Layer selection: which teacher layer feeds each student layer (docs/method.md).

A mapping is a list indexed by student layer: mapping[j] = teacher layer, or None when
student layer j receives nothing. Strategies (registry `LAYER_STRATEGIES`):
  sensitivity  the L_S teacher layers with the largest summed sensitivity, in index order
  first, last  the first / last L_S teacher layers
  uniform      evenly spaced, first and last teacher layer included
  random       seeded, in index order
  manual       any list; entries may be None, teacher layers may repeat
  cka          the teacher layers, increasing with depth, with the largest summed linear CKA to
               the student layers they feed (dynamic programming over the [L_T, L_S] similarity
               of paraknow/transfer/similarity.py, computed by the caller on the seed samples)
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch

from ..core.architecture import layer_of
from ..core.errors import ParaknowError
from ..core.numerics import sum64
from ..extract import evenly_spaced


def layer_scores(scores: dict[str, torch.Tensor], n_layers: int) -> list[float]:
    """Sum of all sensitivity of each decoder layer's parameters -> [n_layers] floats.

    Parameters outside the decoder layers (embeddings, final norm, lm_head) are ignored.
    """
    totals = [0.0] * n_layers
    for name, s in scores.items():
        i = layer_of(name)
        if i is None:
            continue
        if i >= n_layers:
            raise ParaknowError(f"the sensitivity map has scores for layer {i} ({name}) but the "
                                f"model has {n_layers} layers; recompute the map for this model")
        totals[i] += float(sum64(s.detach()))
    return totals


def _sensitivity(n_teacher, n_student, scores, seed, manual, similarity):
    best = sorted(range(n_teacher), key=lambda i: (-scores[i], i))[:n_student]  # ties -> lower index
    return sorted(best)


def _first(n_teacher, n_student, scores, seed, manual, similarity):
    return list(range(n_student))


def _last(n_teacher, n_student, scores, seed, manual, similarity):
    return list(range(n_teacher - n_student, n_teacher))


def _uniform(n_teacher, n_student, scores, seed, manual, similarity):
    return evenly_spaced(n_teacher, n_student).tolist()


def _random(n_teacher, n_student, scores, seed, manual, similarity):
    return sorted(random.Random(seed).sample(range(n_teacher), n_student))


def _manual(n_teacher, n_student, scores, seed, manual, similarity):
    return list(manual)


def _cka(n_teacher, n_student, scores, seed, manual, similarity):
    # best[t][j]: the largest sum for student layers 0..j with student layer j on teacher layer t,
    # teacher layers strictly increasing; ties -> the earliest teacher layers
    sim = np.asarray(similarity, dtype=np.float64)  # [L_T, L_S]
    best = np.full((n_teacher, n_student), -math.inf)
    back = np.zeros((n_teacher, n_student), dtype=np.int64)
    best[:, 0] = sim[:, 0]
    for j in range(1, n_student):
        run, arg = -math.inf, 0  # max of best[t', j-1] over t' < t
        for t in range(n_teacher):
            if run > -math.inf:
                best[t, j], back[t, j] = run + sim[t, j], arg
            if best[t, j - 1] > run:
                run, arg = best[t, j - 1], t
    t = int(np.argmax(best[:, n_student - 1]))
    out = [t]
    for j in range(n_student - 1, 0, -1):
        t = int(back[t, j])
        out.append(t)
    return out[::-1]


LAYER_STRATEGIES = {
    "sensitivity": _sensitivity,
    "first": _first,
    "last": _last,
    "uniform": _uniform,
    "random": _random,
    "manual": _manual,
    "cka": _cka,
}
# one line per strategy for the app's picker (tests check it covers LAYER_STRATEGIES)
STRATEGY_HELP = {
    "sensitivity": "the student-count most sensitive teacher layers, in order (the paper's)",
    "first": "the first teacher layers", "last": "the last teacher layers",
    "uniform": "evenly spaced teacher layers, first and last included",
    "random": "random teacher layers (seeded), in order",
    "manual": "any teacher layer per student layer (edit the table); layers may repeat or stay unmapped",
    "cka": "the teacher layers, in depth order, whose hidden states are most similar (linear CKA) to the "
           "student layers they feed",
}


def map_layers(strategy: str, n_teacher: int, n_student: int, scores: list[float] | None = None,
               seed: int = 0, manual: list[int | None] | None = None, similarity=None) -> list[int | None]:
    """Teacher layer for each student layer (None = left unmapped), per `strategy`.

    `similarity` [n_teacher, n_student] (layer_similarity's CKA) is read by the cka strategy only.
    """
    if strategy not in LAYER_STRATEGIES:
        raise ParaknowError(f"unknown layer strategy {strategy!r}; use one of: "
                            f"{', '.join(LAYER_STRATEGIES)} (manual as manual:I,J,...)")
    if n_teacher < 1 or n_student < 1:
        raise ParaknowError(f"both models need at least one layer (teacher {n_teacher}, "
                            f"student {n_student}); check the model references")
    if strategy == "manual":
        if manual is None:
            raise ParaknowError("the manual layer strategy needs a list of teacher layers, one per "
                                f"student layer ({n_student}), e.g. manual:0,2,4 (- leaves one unmapped)")
        if len(manual) != n_student:
            raise ParaknowError(f"the manual layer list has {len(manual)} entries but the student has "
                                f"{n_student} layers; give exactly one entry per student layer "
                                "(- or none leaves a layer unmapped)")
        for j, t in enumerate(manual):
            if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_teacher):
                raise ParaknowError(f"manual entry {j} is {t!r}, but teacher layers run 0..{n_teacher - 1}; "
                                    "use a layer in that range, or - to leave the student layer unmapped")
    elif n_teacher < n_student:
        raise ParaknowError(f"the teacher has {n_teacher} layers, fewer than the student's {n_student}; "
                            "use a deeper teacher, or a manual mapping (manual:I,J,...) that reuses "
                            "or skips layers")
    if strategy == "sensitivity":
        if scores is None:
            raise ParaknowError("the sensitivity layer strategy needs layer scores; compute the "
                                "teacher's sensitivity first, or pick first, last, uniform or random")
        if len(scores) != n_teacher:
            raise ParaknowError(f"got {len(scores)} layer scores for a teacher with {n_teacher} layers; "
                                "recompute the sensitivity map for this teacher")
    if strategy == "cka":
        if similarity is None:
            raise ParaknowError("the cka layer strategy needs the teacher x student layer similarity: compute "
                                "it on the Mapping page (extract computes it from the seed samples)")
        shape = tuple(np.shape(similarity))
        if shape != (n_teacher, n_student) or not np.isfinite(np.asarray(similarity, dtype=np.float64)).all():
            raise ParaknowError(f"the layer similarity is {list(shape)} (or not finite) but the models have "
                                f"{n_teacher} x {n_student} layers; recompute it for these models")
    return LAYER_STRATEGIES[strategy](n_teacher, n_student, scores, seed, manual, similarity)


def parse_layers_arg(text: str) -> tuple[str, list[int | None] | None]:
    """CLI --layers value -> (strategy, manual list or None).

    sensitivity | first | last | uniform | random | cka | manual:I,J,...  (an entry may be - or none)
    """
    name, sep, rest = text.strip().partition(":")
    name = name.strip().lower()
    if name != "manual":
        if sep or name not in LAYER_STRATEGIES:
            named = ", ".join(n for n in LAYER_STRATEGIES if n != "manual")
            raise ParaknowError(f"bad --layers value {text!r}; use one of {named}, "
                                "or manual:I,J,... (e.g. manual:0,2,-,5)")
        return name, None
    entries = [e.strip().lower() for e in rest.split(",")] if rest.strip() else []
    if not entries:
        raise ParaknowError("--layers manual needs the teacher layers, one per student layer, "
                            "e.g. manual:0,2,-,5 (- or none leaves a student layer unmapped)")
    out: list[int | None] = []
    for e in entries:
        if e in ("-", "none"):
            out.append(None)
        elif e.isdigit():
            out.append(int(e))
        else:
            raise ParaknowError(f"bad entry {e!r} in --layers {text!r}; each entry is a teacher layer "
                                "number (0, 1, ...) or - / none for an unmapped student layer")
    return "manual", out
