import random

import pytest
import torch

from paraknow.core.errors import ParaknowError
from paraknow.extract import (STRUCTURES, Selection, block_selection, captured_share, evenly_spaced, max_sum_block,
    max_sum_block_reference, select)


def brute_force_block(scores, h, w):
    """Best block by summing every slice directly (no prefix sums at all)."""
    s = scores.double()
    best, pos = None, None
    for r in range(s.shape[0] - h + 1):
        for c in range(s.shape[1] - w + 1):
            v = float(s[r:r + h, c:c + w].sum())
            if best is None or v > best:
                best, pos = v, (r, c)
    return pos, best


def make_scores(kind, o, i, gen):
    if kind == "rand":
        return torch.rand(o, i, generator=gen)
    if kind == "int":  # few distinct values -> many exact ties between blocks
        return torch.randint(0, 3, (o, i), generator=gen).float()
    # float64 values with inexact sums: blocks that tie in reals differ by float64 rounding
    # (float32 inputs are summed exactly in float64 at these sizes, so they never do this)
    if kind == "const":
        return torch.full((o, i), 0.1, dtype=torch.float64)
    if kind == "tenths":
        return torch.randint(0, 3, (o, i), generator=gen).double() * 0.1
    if kind == "thirds":
        return torch.randint(0, 3, (o, i), generator=gen).double() / 3
    if kind == "sparse":
        return torch.rand(o, i, generator=gen) * (torch.rand(o, i, generator=gen) < 0.1)
    if kind == "signed":
        return torch.randn(o, i, generator=gen)
    if kind == "half":
        return torch.rand(o, i, generator=gen).half()
    if kind == "bf16":
        return torch.rand(o, i, generator=gen).bfloat16()
    if kind == "f64":
        return torch.rand(o, i, generator=gen, dtype=torch.float64)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["rand", "int", "const", "tenths", "thirds", "sparse", "signed", "half",
                                  "bf16", "f64"])
def test_max_sum_block_equals_reference(kind):
    rng = random.Random(kind)
    gen = torch.Generator().manual_seed(len(kind))
    for _ in range(30):
        o, i = rng.randint(1, 24), rng.randint(1, 24)
        h, w = rng.randint(1, o), rng.randint(1, i)
        s = make_scores(kind, o, i, gen)
        assert max_sum_block(s, h, w) == max_sum_block_reference(s, h, w), (kind, o, i, h, w)


@pytest.mark.parametrize("shape,block", [((40, 30), (25, 17)), ((33, 64), (5, 60)), ((64, 20), (64, 3)),
                                         ((50, 50), (12, 12))])
def test_max_sum_block_equals_reference_larger(shape, block):
    gen = torch.Generator().manual_seed(1)
    for s in (torch.rand(shape, generator=gen), torch.randint(0, 2, shape, generator=gen).float()):
        assert max_sum_block(s, *block) == max_sum_block_reference(s, *block)


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_max_sum_block_chunked_passes(monkeypatch, chunk):
    # real matrices are read in chunks of rows, and near-ties settled a block of rows at a time;
    # force several chunks on small ones
    import paraknow.core.numerics as numerics
    monkeypatch.setattr(numerics, "CHUNK_ELEMS", chunk)
    rng = random.Random(chunk)
    gen = torch.Generator().manual_seed(chunk)
    for kind in ("rand", "int", "tenths"):
        for _ in range(8):
            o, i = rng.randint(1, 20), rng.randint(1, 20)
            h, w = rng.randint(1, o), rng.randint(1, i)
            s = make_scores(kind, o, i, gen)
            assert max_sum_block(s, h, w) == max_sum_block_reference(s, h, w), (kind, o, i, h, w)
    s = torch.rand(30, 12, generator=gen).t()  # column-major input, chunked too
    assert max_sum_block(s, 5, 17) == max_sum_block_reference(s, 5, 17)


@pytest.mark.parametrize("kind", ["rand", "int"])
@pytest.mark.parametrize("column_major", [False, True])
def test_reference_sums_streamed_equal_the_whole_table(kind, column_major):
    """Near-ties are settled with the reference's prefix-sum arithmetic, streamed over blocks of rows
    (an lm_head's whole table would be 25 GB): bit-identical to the table at any position."""
    from paraknow.extract import _prefix_sums, _reference_sums_at

    gen = torch.Generator().manual_seed(3)
    shape = (2600, 1100)  # 3 blocks of rows at the default chunk
    s = torch.rand(shape, generator=gen) if kind == "rand" else torch.randint(0, 3, shape, generator=gen).float()
    if column_major:
        s = s.t().contiguous().t()
    h, w = 900, 400
    rr = torch.randint(0, shape[0] - h + 1, (300,), generator=gen)
    cc = torch.randint(0, shape[1] - w + 1, (300,), generator=gen)
    rr[:3], cc[:3] = torch.tensor([0, shape[0] - h, 1047]), torch.tensor([0, shape[1] - w, 5])  # the edges
    P = _prefix_sums(s)
    expected = P[rr + h, cc + w] - P[rr, cc + w] - P[rr + h, cc] + P[rr, cc]
    assert torch.equal(_reference_sums_at(s, h, w, rr, cc), expected)


def test_max_sum_block_settles_ties_over_blocks_like_the_reference():
    from paraknow.extract import _box_sums

    for value in (1.0, 0.1):  # every position ties (0.1: up to the rounding of each way of summing)
        s = torch.full((2100, 600), value)
        assert int((_box_sums(s, 2093, 594) >= _box_sums(s, 2093, 594).max() * (1 - 1e-9)).sum()) == 56
        assert max_sum_block(s, 2093, 594) == max_sum_block_reference(s, 2093, 594)


def test_max_sum_block_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(2)
    emb = torch.rand(37, 11, generator=gen)  # embed_tokens [V, d] is reduced as its transpose
    assert max_sum_block(emb.t(), 6, 37) == max_sum_block_reference(emb.t(), 6, 37)
    assert max_sum_block(emb.t(), 4, 20) == max_sum_block_reference(emb.t(), 4, 20)
    view = torch.rand(30, 30, generator=gen)[::2, 3:25]
    assert max_sum_block(view, 5, 9) == max_sum_block_reference(view, 5, 9)


def test_max_sum_block_is_true_maximum():
    gen = torch.Generator().manual_seed(3)
    for o, i, h, w in [(12, 9, 5, 4), (7, 20, 7, 3), (15, 15, 1, 1), (10, 6, 3, 6)]:
        s = torch.rand(o, i, generator=gen)
        pos, best = brute_force_block(s, h, w)
        r, c = max_sum_block(s, h, w)
        assert (r, c) == pos
        assert float(s.double()[r:r + h, c:c + w].sum()) == pytest.approx(best, rel=1e-12)


def test_exact_ties_go_to_smallest_row_then_col():
    s = torch.zeros(10, 12)
    s[6:8, 1:3] = 1.0   # later row, earlier column
    s[2:4, 8:10] = 1.0  # earlier row, later column -> wins
    s[2:4, 4:6] = 1.0   # same row, earlier column -> wins over the one above
    assert max_sum_block(s, 2, 2) == (2, 4)
    assert max_sum_block(torch.zeros(5, 7), 2, 3) == (0, 0)
    assert max_sum_block(torch.ones(5, 7), 2, 3) == (0, 0)


def test_degenerate_blocks():
    gen = torch.Generator().manual_seed(4)
    s = torch.rand(9, 13, generator=gen)
    assert max_sum_block(s, 9, 13) == (0, 0)  # block == whole matrix
    flat = int(s.view(-1).argmax())
    assert max_sum_block(s, 1, 1) == divmod(flat, 13)  # 1x1 block == argmax
    assert max_sum_block(s, 9, 1) == (0, int(s.sum(0).argmax()))  # full-height columns
    assert max_sum_block(s, 1, 13) == (int(s.sum(1).argmax()), 0)  # full-width rows
    v = torch.rand(1, 30, generator=gen)
    assert max_sum_block(v, 1, 4) == max_sum_block_reference(v, 1, 4)


def test_near_tie_follows_reference_rounding():
    # float64 scores whose best entries differ in the last bit: the later one is larger
    s = torch.zeros(6, 6, dtype=torch.float64)
    s[1, 3] = 1.0
    s[4, 0] = 1.0 + 2 ** -52
    assert max_sum_block(s, 1, 1) == max_sum_block_reference(s, 1, 1) == (4, 0)
    s[4, 0] = 1.0
    assert max_sum_block(s, 1, 1) == (1, 3)
    # here the reference's prefix sums round the extra bit away (2 + 2**-52 == 2), so it keeps
    # the earlier entry although the later one is larger: the fast search must agree
    s = torch.zeros(6, 6, dtype=torch.float64)
    s[1, 1] = 1.0
    s[4, 2] = 1.0 + 2 ** -52
    assert max_sum_block(s, 1, 1) == max_sum_block_reference(s, 1, 1) == (1, 1)
    # constant non-representable values: every block ties in reals, rounding decides
    c = torch.full((40, 37), 0.1, dtype=torch.float64)
    assert max_sum_block(c, 23, 11) == max_sum_block_reference(c, 23, 11) != (0, 0)


def test_max_sum_block_validates():
    s = torch.rand(8, 6)
    with pytest.raises(ParaknowError, match="smaller than the student"):
        max_sum_block(s, 9, 6)
    with pytest.raises(ParaknowError, match="smaller than the student"):
        max_sum_block(s, 8, 7)
    with pytest.raises(ParaknowError, match="at least 1x1"):
        max_sum_block(s, 0, 3)
    with pytest.raises(ParaknowError, match="2-D"):
        max_sum_block(torch.rand(8), 2, 2)
    bad = s.clone()
    bad[3, 3] = float("nan")
    with pytest.raises(ParaknowError, match="NaN"):
        max_sum_block(bad, 2, 2)
    bad[3, 3] = float("inf")
    with pytest.raises(ParaknowError, match="inf"):
        max_sum_block(bad, 2, 2)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_every_structure_shapes_and_indices(structure):
    gen = torch.Generator().manual_seed(5)
    o_t, i_t, o_s, i_s = 20, 14, 8, 5
    scores = torch.rand(o_t, i_t, generator=gen)
    weight = torch.randn(o_t, i_t, generator=gen)
    sel = select(structure, scores, o_s, i_s, seed=1)
    assert isinstance(sel, Selection) and sel.shape == (o_s, i_s)
    out = sel.apply(weight)
    assert out.shape == (o_s, i_s)
    mask = sel.mask((o_t, i_t))
    assert mask.shape == (o_t, i_t) and int(mask.sum()) == o_s * i_s
    # the extracted values are exactly the masked teacher entries, in row-major order
    assert torch.equal(out.reshape(-1), weight[mask])
    if structure == "elements":
        assert sel.flat.shape == (o_s * i_s,)
        assert torch.all(sel.flat[1:] > sel.flat[:-1])
    else:
        for idx, n, k in ((sel.rows, o_t, o_s), (sel.cols, i_t, i_s)):
            assert idx.dtype == torch.long and idx.shape == (k,)
            assert torch.all(idx[1:] > idx[:-1]) and int(idx[0]) >= 0 and int(idx[-1]) < n


def test_submatrix_selection_is_contiguous_best_block():
    gen = torch.Generator().manual_seed(6)
    s = torch.rand(11, 9, generator=gen)
    sel = select("submatrix", s, 4, 3)
    (r, c), _ = brute_force_block(s, 4, 3)
    assert torch.equal(sel.rows, torch.arange(r, r + 4)) and torch.equal(sel.cols, torch.arange(c, c + 3))
    assert sel.block() == (r, c)
    w = torch.randn(11, 9, generator=gen)
    assert torch.equal(sel.apply(w), w[r:r + 4, c:c + 3])


def test_rowcol_top_sums_with_ties():
    gen = torch.Generator().manual_seed(7)
    s = torch.rand(15, 12, generator=gen)
    sel = select("rowcol", s, 6, 4)
    for idx, sums, k in ((sel.rows, s.double().sum(1), 6), (sel.cols, s.double().sum(0), 4)):
        inside = torch.zeros(len(sums), dtype=torch.bool)
        inside[idx] = True
        assert inside.sum() == k
        assert sums[inside].min() >= sums[~inside].max()
        assert torch.equal(idx, torch.sort(torch.topk(sums, k).indices).values)
    t = torch.ones(6, 5)  # all rows and columns tie -> the smallest indices
    t[4] = 2.0
    sel = select("rowcol", t, 3, 2)
    assert sel.rows.tolist() == [0, 1, 4] and sel.cols.tolist() == [0, 1]


def test_elements_top_entries_row_major():
    gen = torch.Generator().manual_seed(8)
    s = torch.rand(9, 7, generator=gen)
    sel = select("elements", s, 4, 5)
    v = s.reshape(-1)
    inside = torch.zeros(v.numel(), dtype=torch.bool)
    inside[sel.flat] = True
    assert v[inside].min() > v[~inside].max()
    w = torch.arange(63.0).reshape(9, 7)  # values == flat index: row-major means increasing
    out = sel.apply(w)
    assert out.shape == (4, 5) and torch.all(out.reshape(-1).diff() > 0)
    ties = torch.zeros(4, 4)
    ties[3, 3] = 5.0
    sel = select("elements", ties, 2, 2)
    assert sel.flat.tolist() == [0, 1, 2, 15]  # zeros tie -> smallest flat indices
    assert select("elements", ties, 4, 4).flat.tolist() == list(range(16))


def test_random_is_seeded():
    s = torch.rand(30, 20)
    a, b, c = (select("random", s, 10, 6, seed=k) for k in (3, 3, 4))
    assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)
    assert not (torch.equal(a.rows, c.rows) and torch.equal(a.cols, c.cols))


def test_uniform_evenly_spaced_unique():
    for n in range(1, 40):
        for k in range(1, n + 1):
            idx = evenly_spaced(n, k)
            assert idx.shape == (k,) and int(idx[0]) == 0
            assert torch.all(idx[1:] > idx[:-1]) and int(idx[-1]) < n
            if k > 1:
                assert int(idx[-1]) == n - 1
                gaps = idx.diff()
                assert int(gaps.max() - gaps.min()) <= 1
    assert evenly_spaced(10, 4).tolist() == [0, 3, 6, 9]
    sel = select("uniform", torch.rand(7, 5), 7, 3)
    assert sel.rows.tolist() == list(range(7)) and sel.cols.tolist() == [0, 2, 4]


def test_select_validates():
    s = torch.rand(6, 4)
    with pytest.raises(ParaknowError, match="submatrix, rowcol, elements, random, uniform"):
        select("blocks", s, 2, 2)
    for structure in STRUCTURES:
        msg = r"teacher matrix \[6, 4\] is smaller than the student's \[6, 5\]; pick a larger teacher"
        with pytest.raises(ParaknowError, match=msg):
            select(structure, s, 6, 5)


def test_captured_share():
    gen = torch.Generator().manual_seed(9)
    s = torch.rand(12, 10, generator=gen)
    for structure in STRUCTURES:
        sel = select(structure, s, 5, 4)
        share = captured_share(s, sel)
        expected = float((s.double() * sel.mask(s.shape)).sum() / s.double().sum())
        assert 0.0 <= share <= 1.0 and share == pytest.approx(expected, rel=1e-12)
    best = captured_share(s, select("submatrix", s, 5, 4))
    for r in range(8):
        for c in range(7):
            assert captured_share(s, block_selection(r, c, 5, 4)) <= best + 1e-12
    assert captured_share(s, select("submatrix", s, 12, 10)) == pytest.approx(1.0)
    assert captured_share(torch.zeros(4, 4), select("submatrix", torch.zeros(4, 4), 2, 2)) == 0.0


def test_block_selection_override():
    sel = block_selection(2, 3, 4, 5, shape=(10, 8))
    assert sel.rows.tolist() == [2, 3, 4, 5] and sel.cols.tolist() == [3, 4, 5, 6, 7]
    m = sel.mask((10, 8))
    assert m[2:6, 3:8].all() and int(m.sum()) == 20
    with pytest.raises(ParaknowError, match="does not fit"):
        block_selection(7, 0, 4, 5, shape=(10, 8))
    with pytest.raises(ParaknowError, match="does not fit"):
        block_selection(0, 4, 4, 5, shape=(10, 8))
    with pytest.raises(ParaknowError, match="negative"):
        block_selection(-1, 0, 4, 5)
