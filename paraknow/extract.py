"""Dimensionality reduction of one teacher matrix to the student's shape (docs/method.md).

Pure tensor code: give it a sensitivity matrix S_T [o_T, i_T] and the student's shape
[o_S, i_S], get back a `Selection` saying which teacher entries to keep.

Structures (registry `STRUCTURES`, picked by name with `select`):
  submatrix  the contiguous block [r:r+o_S, c:c+i_S] with the largest sum of S_T (default)
  rowcol     the o_S rows and i_S columns with the largest sums, in ascending index order
  elements   the o_S*i_S largest entries, row-major, reshaped to [o_S, i_S]
  random     seeded random rows and columns, sorted
  uniform    evenly spaced rows and columns ("Weight Selection", Xu et al. 2024)
  heads      whole attention heads and whole FFN neurons, decided per layer (paraknow/transfer/structure.py);
             a matrix outside that structure (the embeddings) keeps whole rows and columns, as rowcol

`select_within` is `select` with some axes fixed in advance (index sets shared by several
matrices, see paraknow/transfer/structure.py): the structure then picks only the free axis, on its
marginal over the fixed one, with the structure's own 1-D rule (`pick_indices`).

The block search `max_sum_block` is the hot spot: the paper's code loops over every block
position in Python (hours at Llama sizes). Here all box sums come from two sliding-window
passes in float64, arranged so the big matrix is read about once, in cache-sized chunks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .core.errors import ParaknowError
from .core.numerics import column_major, row_blocks, sum64

_EPS64 = torch.finfo(torch.float64).eps


# -----------------------------------------------------------------------------
# max-sum block search

def _check_block(shape, n_rows: int, n_cols: int) -> None:
    if len(shape) != 2:
        raise ParaknowError(f"expected a 2-D sensitivity matrix, got shape {list(shape)}; "
                            "pass one weight's scores [out, in]")
    o_t, i_t = shape
    if n_rows < 1 or n_cols < 1:
        raise ParaknowError(f"the student block must be at least 1x1, got [{n_rows}, {n_cols}]; "
                            "check the student's shapes")
    if n_rows > o_t or n_cols > i_t:
        raise ParaknowError(f"teacher matrix [{o_t}, {i_t}] is smaller than the student's "
                            f"[{n_rows}, {n_cols}]; pick a larger teacher (or a smaller student) "
                            "so every teacher matrix is at least as large as the student's")


def _prefix_sums(scores: torch.Tensor) -> torch.Tensor:
    """The reference's summed-area table: P[r, c] = sum of scores[:r, :c], float64, zero-padded."""
    o, i = scores.shape
    P = torch.zeros(o + 1, i + 1, dtype=torch.float64)
    P[1:, 1:] = scores.double().cumsum(0).cumsum(1)
    return P


def max_sum_block_reference(scores: torch.Tensor, n_rows: int, n_cols: int) -> tuple[int, int]:
    """Position-by-position Python loop over a float64 2-D prefix sum, as in the paper's code.

    Slow on purpose (~10 us per position): it is the definition `max_sum_block` must reproduce
    exactly, and the baseline of its speed target.
    """
    _check_block(scores.shape, n_rows, n_cols)
    o, i = scores.shape
    P = _prefix_sums(scores)
    best, pos = -math.inf, (0, 0)
    for r in range(o - n_rows + 1):
        for c in range(i - n_cols + 1):
            s = P[r + n_rows, c + n_cols] - P[r, c + n_cols] - P[r + n_rows, c] + P[r, c]
            if s > best:
                best, pos = s, (r, c)
    return pos


def _window_last(y: torch.Tensor, w: int) -> torch.Tensor:
    """Sums of every length-w window along the last dim. y [p, m] float64 -> [p, m-w+1].

    Sliding form: window j = window 0 + sum_{t<j} (y[t+w] - y[t]).
    """
    k = y.shape[1] - w
    base = y[:, :w].sum(1, keepdim=True)  # [p, 1]
    if k == 0:
        return base
    return torch.cat([base, base + (y[:, w:] - y[:, :k]).cumsum(1)], 1)


def _box_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """All h x w box sums of x [n, m] in float64 -> [n-h+1, m-w+1] (top-left indexed).

    Rows: box row r = rows [0, h) + sum_{t<r} (x[t+h] - x[t]); the column windows commute with
    that, so they are applied to the h-row column sums and to the row differences before the
    running sum over r. Every read of x goes through chunks of rows, converted to float64 there.
    """
    if column_major(x):  # e.g. embed_tokens.t(): walk its memory order
        return _box_sums(x.t(), w, h).t()
    n, m = x.shape
    k = n - h
    col_sums = torch.zeros(m, dtype=torch.float64)  # [m] column sums of rows [0, h)
    for a, b in row_blocks(h, m):
        col_sums += x[a:b].sum(0, dtype=torch.float64)
    top = _window_last(col_sums[None], w)  # [1, m-w+1] boxes at r = 0
    if k == 0:
        return top
    out = torch.empty(k + 1, m - w + 1, dtype=torch.float64)
    out[0] = top[0]
    for a, b in row_blocks(k, m):  # running sum of the change of each box moving down one row
        diff = x[h + a:h + b].double() - x[a:b].double()  # [b-a, m]
        rows = out[a + 1:b + 1]
        torch.cumsum(_window_last(diff, w), 0, out=rows)
        rows += out[a]
    return out


def max_sum_block(scores: torch.Tensor, n_rows: int, n_cols: int) -> tuple[int, int]:
    """Top-left (row, col) of the n_rows x n_cols block of `scores` with the largest sum.

    Ties go to the smallest row, then the smallest column. The answer is identical to
    `max_sum_block_reference`: every position whose fast float64 sum lies within a
    rounding-error bound of the best is re-scored with the reference's own prefix-sum
    arithmetic, which only happens for (near) ties.
    """
    _check_block(scores.shape, n_rows, n_cols)
    if not scores.is_floating_point():
        scores = scores.double()
    x = scores.detach().cpu()
    lo = float(x.min())
    o, i = x.shape
    B = _box_sums(x, n_rows, n_cols)  # [o-n_rows+1, i-n_cols+1]
    best = float(B.max())
    if not (math.isfinite(lo) and math.isfinite(best)):  # NaN and inf both end up here
        raise ParaknowError("the sensitivity scores contain NaN or inf; recompute them "
                            "(e.g. in float32, or with fewer/shorter seed samples)")
    # Bound on |fast - reference| per box: both are chains of at most ~(o+i) float64 additions
    # of partial sums no larger than sum|x|. For scores >= 0, sum|x| <= (#blocks to cover) * best.
    if lo >= 0:
        mass = math.ceil(o / n_rows) * math.ceil(i / n_cols) * best
    else:
        mass = float(sum64(x.abs()))
    tol = 16 * (o + i + 4) * _EPS64 * mass
    near = B >= best - tol
    if int(near.sum()) == 1 or mass == 0:
        flat = int(near.reshape(-1).byte().argmax())  # first True in row-major order
        return divmod(flat, B.shape[1])
    # near-ties: settle them exactly as the reference loop would
    rr, cc = near.nonzero(as_tuple=True)  # row-major order
    j = int(_reference_sums_at(x, n_rows, n_cols, rr, cc).argmax())  # first maximum
    return int(rr[j]), int(cc[j])


def _reference_sums_at(x: torch.Tensor, n_rows: int, n_cols: int, rr: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
    """The reference's own P[r+h, c+w] - P[r, c+w] - P[r+h, c] + P[r, c] at the positions (rr, cc) [k],
    without its whole float64 table (3x the scores' size, for an lm_head 25 GB): the column running
    sums stream down the rows a block at a time -- the same sequential scan as the table's cumsum --
    and only the table rows the positions touch get their running sum along the columns."""
    o, i = x.shape
    upper = torch.zeros(len(rr), 2, dtype=torch.float64)  # P[r, c], P[r, c + w]
    lower = torch.zeros(len(rr), 2, dtype=torch.float64)  # P[r + h, c], P[r + h, c + w]
    corner_cols = torch.stack([cc, cc + n_cols], 1)  # [k, 2]
    carry = torch.zeros(1, i, dtype=torch.float64)  # column sums of the rows above the block (P row 0: zeros)
    for a, b in row_blocks(o, i):
        C = torch.cat([carry, x[a:b].double()]).cumsum(0)  # [b-a+1, i]: C[t] = column sums of rows [0, a+t)
        carry = C[-1:]
        for corners, rows in ((upper, rr), (lower, rr + n_rows)):
            hit = ((rows > a) & (rows <= b)).nonzero().view(-1)  # P rows a+1..b are C[1..b-a]
            if hit.numel():
                needed, which = (rows[hit] - a).unique(return_inverse=True)
                P = torch.nn.functional.pad(C[needed].cumsum(1), (1, 0))  # [u, i+1]
                corners[hit] = P[which[:, None], corner_cols[hit]]
    return lower[:, 1] - upper[:, 1] - lower[:, 0] + upper[:, 0]  # the reference's order of operations


# -----------------------------------------------------------------------------
# selections

@dataclass
class Selection:
    """Which entries of a teacher matrix make up the student-shaped matrix.

    Block-like structures set `rows` and `cols` (ascending teacher indices); `elements` sets
    `flat` instead (row-major indices into the teacher matrix, ascending).
    """
    shape: tuple[int, int]  # (o_S, i_S)
    rows: torch.Tensor | None = None  # [o_S] long
    cols: torch.Tensor | None = None  # [i_S] long
    flat: torch.Tensor | None = None  # [o_S * i_S] long

    def apply(self, weight: torch.Tensor) -> torch.Tensor:
        """Teacher weight [o_T, i_T] -> extracted matrix [o_S, i_S]."""
        if self.flat is not None:
            return weight.reshape(-1)[self.flat].reshape(self.shape)  # [o_S, i_S]
        b = self.block()
        if b is not None:  # contiguous block: slice, then copy
            return weight[b[0]:b[0] + self.shape[0], b[1]:b[1] + self.shape[1]].clone()
        return weight[self.rows][:, self.cols]

    def mask(self, shape) -> torch.Tensor:
        """Bool mask [o_T, i_T] of the selected teacher entries."""
        m = torch.zeros(tuple(shape), dtype=torch.bool)
        if self.flat is not None:
            m.view(-1)[self.flat] = True
        else:
            m[self.rows[:, None], self.cols[None, :]] = True
        return m

    def block(self) -> tuple[int, int] | None:
        """(row, col) top-left when the selection is one contiguous block, else None."""
        if self.rows is None or self.cols is None:
            return None
        r, c = int(self.rows[0]), int(self.cols[0])
        if (torch.equal(self.rows, torch.arange(r, r + len(self.rows)))
                and torch.equal(self.cols, torch.arange(c, c + len(self.cols)))):
            return r, c
        return None


def oriented(matrix: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A weight or its sensitivity as the plan orients it: embed_tokens [V, d] -> [d, V]."""
    return matrix.T if transposed else matrix


def _top_sorted(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values (ties -> smaller index), ascending."""
    order = torch.sort(values, descending=True, stable=True).indices
    return order[:k].sort().values


def block_selection(row: int, col: int, n_rows: int, n_cols: int,
                    shape: tuple[int, int] | None = None) -> Selection:
    """Selection of the block [row:row+n_rows, col:col+n_cols] (manual override of its position).

    `shape` is the teacher matrix's [o_T, i_T]; when given, the block must fit inside it.
    """
    if row < 0 or col < 0:
        raise ParaknowError(f"block position ({row}, {col}) is negative; use 0 or more")
    if shape is not None:
        _check_block(shape, n_rows, n_cols)
        o_t, i_t = shape
        if row + n_rows > o_t or col + n_cols > i_t:
            raise ParaknowError(
                f"a [{n_rows}, {n_cols}] block at ({row}, {col}) does not fit the teacher matrix "
                f"[{o_t}, {i_t}]; use row <= {o_t - n_rows} and col <= {i_t - n_cols}")
    return Selection((n_rows, n_cols), rows=torch.arange(row, row + n_rows),
                     cols=torch.arange(col, col + n_cols))


def _submatrix(scores, n_rows, n_cols, seed=0):
    r, c = max_sum_block(scores, n_rows, n_cols)
    return block_selection(r, c, n_rows, n_cols)


def _rowcol(scores, n_rows, n_cols, seed=0):
    s = scores.double()
    return Selection((n_rows, n_cols), rows=_top_sorted(s.sum(1), n_rows),
                     cols=_top_sorted(s.sum(0), n_cols))


def _elements(scores, n_rows, n_cols, seed=0):
    v = scores.reshape(-1)  # [o_T * i_T] row-major
    if v.dtype not in (torch.float32, torch.float64):
        v = v.float()  # exact for half types and small integers
    k = n_rows * n_cols
    if k == v.numel():
        return Selection((n_rows, n_cols), flat=torch.arange(k))
    # k-th largest value, then everything above it plus the first entries equal to it
    kth = torch.kthvalue(v, v.numel() - k + 1).values
    above = (v > kth).nonzero().view(-1)
    equal = (v == kth).nonzero().view(-1)[:k - above.numel()]
    return Selection((n_rows, n_cols), flat=torch.cat([above, equal]).sort().values)


def _random(scores, n_rows, n_cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    o_t, i_t = scores.shape
    return Selection((n_rows, n_cols), rows=torch.randperm(o_t, generator=g)[:n_rows].sort().values,
                     cols=torch.randperm(i_t, generator=g)[:n_cols].sort().values)


def evenly_spaced(n: int, k: int) -> torch.Tensor:
    """k strictly increasing indices in [0, n) spread evenly, first and last included (k > 1)."""
    if k > n:
        raise ParaknowError(f"cannot pick {k} of {n} indices")
    if k == 1:
        return torch.zeros(1, dtype=torch.long)
    # floor(j * (n-1) / (k-1) + 1/2) in exact integer arithmetic; step >= 1 so never repeats
    j = torch.arange(k)
    return (2 * j * (n - 1) + (k - 1)) // (2 * (k - 1))


def _uniform(scores, n_rows, n_cols, seed=0):
    o_t, i_t = scores.shape
    return Selection((n_rows, n_cols), rows=evenly_spaced(o_t, n_rows), cols=evenly_spaced(i_t, n_cols))


STRUCTURES = {
    "submatrix": _submatrix,
    "rowcol": _rowcol,
    "elements": _elements,
    "random": _random,
    "uniform": _uniform,
    "heads": _rowcol,  # per matrix only where there are no heads or neurons to keep whole
}
# one line per structure for the app's picker (tests check it covers STRUCTURES)
STRUCTURE_HELP = {
    "submatrix": "the contiguous student-sized block with the most sensitivity (the paper's)",
    "rowcol": "the most sensitive rows and columns, wherever they are",
    "elements": "the most sensitive single entries (destroys the matrix structure; ablation)",
    "random": "random rows and columns (seeded)", "uniform": "evenly spaced rows and columns (Weight Selection)",
    "heads": "whole attention heads with their GQA key/value groups, whole FFN neurons",
}


def select(structure: str, scores: torch.Tensor, n_rows: int, n_cols: int, seed: int = 0) -> Selection:
    """Pick the teacher entries for a [n_rows, n_cols] student matrix with `structure`."""
    if structure not in STRUCTURES:
        raise ParaknowError(f"unknown extraction structure {structure!r}; "
                            f"use one of: {', '.join(STRUCTURES)}")
    _check_block(scores.shape, n_rows, n_cols)
    return STRUCTURES[structure](scores, n_rows, n_cols, seed=seed)


def pick_indices(structure: str, values: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k of the n indices of a score vector [n], ascending, by the structure's own rule in 1-D.

    The structure runs on the [1, n] matrix: submatrix -> the best contiguous window, rowcol /
    elements / heads -> the k largest, random -> seeded, uniform -> evenly spaced.
    """
    sel = select(structure, values.reshape(1, -1), 1, k, seed=seed)
    return sel.flat if sel.flat is not None else sel.cols  # [1, n] row-major: flat index = column


def select_within(structure: str, scores: torch.Tensor, n_rows: int, n_cols: int, rows=None, cols=None,
                  seed: int = 0) -> Selection:
    """`select` with the rows and/or columns fixed in advance (None = free).

    A free axis is picked with `pick_indices` on its marginal over the fixed one, e.g. the rows
    of q_proj given a shared hidden-dimension set: the row sums of scores[:, cols].
    """
    if rows is None and cols is None:
        return select(structure, scores, n_rows, n_cols, seed=seed)
    _check_block(scores.shape, n_rows, n_cols)
    if rows is None:
        rows = pick_indices(structure, sum64(scores[:, cols], 1), n_rows, seed)  # [o_T]
    if cols is None:
        cols = pick_indices(structure, sum64(scores[rows], 0), n_cols, seed)  # [i_T]
    if len(rows) != n_rows or len(cols) != n_cols:
        raise ParaknowError(f"fixed index sets of sizes {len(rows)} x {len(cols)} do not give the student's "
                            f"[{n_rows}, {n_cols}]; recompute the plan for this student")
    return Selection((n_rows, n_cols), rows=rows.long(), cols=cols.long())


def captured_share(scores: torch.Tensor, selection: Selection) -> float:
    """Share (0..1) of the matrix's total sensitivity that lies inside the selection (float64 sums)."""
    s = scores.detach()
    total = float(sum64(s))
    if total == 0:
        return 0.0
    if selection.flat is not None:
        inside = float(sum64(s.reshape(-1)[selection.flat]))
    else:
        b = selection.block()
        if b is not None:  # contiguous: a view, no gather
            r, c = b
            inside = float(sum64(s[r:r + selection.shape[0], c:c + selection.shape[1]]))
        else:
            inside = float(sum64(s[selection.rows][:, selection.cols]))
    return min(1.0, max(0.0, inside / total))
