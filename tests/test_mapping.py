import itertools

import numpy as np
import pytest
import torch

from paraknow.core.errors import ParaknowError
from paraknow.transfer.mapping import LAYER_STRATEGIES, layer_scores, map_layers, parse_layers_arg


def test_layer_scores_sums_each_layer():
    scores = {
        "model.layers.0.self_attn.q_proj.weight": torch.full((2, 3), 1.0),   # 6
        "model.layers.0.mlp.up_proj.weight": torch.full((4,), 0.5),          # 2
        "model.layers.2.input_layernorm.weight": torch.full((3,), 2.0),      # 6
        "model.layers.12.mlp.down_proj.weight": torch.ones(1, 1),            # layer 12, not 1
        "model.embed_tokens.weight": torch.full((5, 5), 100.0),              # not a layer
        "lm_head.weight": torch.full((5, 5), 100.0),
        "model.norm.weight": torch.ones(5),
    }
    assert layer_scores(scores, 13) == [8.0, 0.0, 6.0] + [0.0] * 9 + [1.0]
    nested = {"model.language_model.layers.1.self_attn.v_proj.weight": torch.ones(2, 2)}
    assert layer_scores(nested, 3) == [0.0, 4.0, 0.0]
    with pytest.raises(ParaknowError, match="layer 12"):
        layer_scores(scores, 4)


def test_sensitivity_keeps_top_layers_in_index_order():
    s = [5.0, 1.0, 9.0, 3.0, 7.0]
    assert map_layers("sensitivity", 5, 3, scores=s) == [0, 2, 4]
    assert map_layers("sensitivity", 5, 1, scores=s) == [2]
    assert map_layers("sensitivity", 5, 5, scores=s) == [0, 1, 2, 3, 4]
    # ties go to the lower index
    assert map_layers("sensitivity", 5, 2, scores=[1.0, 2.0, 2.0, 2.0, 0.0]) == [1, 2]
    assert map_layers("sensitivity", 4, 2, scores=[0.0, 0.0, 0.0, 0.0]) == [0, 1]


def test_first_last_uniform():
    assert map_layers("first", 6, 3) == [0, 1, 2]
    assert map_layers("last", 6, 3) == [3, 4, 5]
    assert map_layers("uniform", 10, 4) == [0, 3, 6, 9]
    assert map_layers("uniform", 40, 32)[0] == 0 and map_layers("uniform", 40, 32)[-1] == 39
    assert map_layers("uniform", 7, 1) == [0]
    assert map_layers("uniform", 5, 5) == [0, 1, 2, 3, 4]
    for n_t in range(1, 30):
        for n_s in range(1, n_t + 1):
            m = map_layers("uniform", n_t, n_s)
            assert len(m) == n_s and all(b > a for a, b in zip(m, m[1:])) and 0 <= m[0] and m[-1] < n_t


def test_random_is_seeded_sorted_unique():
    a = map_layers("random", 40, 32, seed=1)
    assert a == map_layers("random", 40, 32, seed=1)
    assert a == sorted(set(a)) and len(a) == 32 and 0 <= a[0] and a[-1] < 40
    base = map_layers("random", 40, 10, seed=0)
    assert any(map_layers("random", 40, 10, seed=k) != base for k in range(1, 5))


def test_manual_allows_none_repeats_and_shallow_teacher():
    assert map_layers("manual", 4, 3, manual=[3, None, 3]) == [3, None, 3]
    assert map_layers("manual", 2, 4, manual=[0, 0, 1, 1]) == [0, 0, 1, 1]


def test_strategies_registry():
    assert set(LAYER_STRATEGIES) == {"sensitivity", "first", "last", "uniform", "random", "manual", "cka"}


def test_map_layers_validates():
    with pytest.raises(ParaknowError, match="fewer than the student"):
        map_layers("first", 2, 3)
    with pytest.raises(ParaknowError, match="one of: sensitivity, first, last, uniform, random, manual"):
        map_layers("deepest", 4, 2)
    with pytest.raises(ParaknowError, match="needs layer scores"):
        map_layers("sensitivity", 4, 2)
    with pytest.raises(ParaknowError, match="3 layer scores"):
        map_layers("sensitivity", 4, 2, scores=[1.0, 2.0, 3.0])
    with pytest.raises(ParaknowError, match="2 entries but the student has 3"):
        map_layers("manual", 4, 3, manual=[0, 1])
    with pytest.raises(ParaknowError, match="0..3"):
        map_layers("manual", 4, 2, manual=[0, 4])
    with pytest.raises(ParaknowError, match="0..3"):
        map_layers("manual", 4, 2, manual=[-1, 2])
    with pytest.raises(ParaknowError, match="needs a list"):
        map_layers("manual", 4, 2)


def test_parse_layers_arg():
    assert parse_layers_arg("sensitivity") == ("sensitivity", None)
    assert parse_layers_arg(" Uniform ") == ("uniform", None)
    assert parse_layers_arg("manual:0,2,-,5") == ("manual", [0, 2, None, 5])
    assert parse_layers_arg("manual: 1, none ,1") == ("manual", [1, None, 1])
    for bad in ["deep", "first:3", "manual", "manual:", "manual:0,x", "manual:0,-2", "manual:0,,1"]:
        with pytest.raises(ParaknowError):
            parse_layers_arg(bad)


def test_cka_map_is_the_best_increasing_assignment():
    rng = np.random.default_rng(0)
    for n_t, n_s in [(1, 1), (4, 2), (5, 5), (6, 3), (7, 4)]:
        for _ in range(5):
            sim = rng.random((n_t, n_s))
            # brute force: every strictly increasing choice of n_s teacher layers
            best = max(itertools.combinations(range(n_t), n_s),
                       key=lambda c: sum(sim[t, j] for j, t in enumerate(c)))
            assert map_layers("cka", n_t, n_s, similarity=sim) == list(best)
    # the identity wins on a similarity that peaks on the diagonal, even when greedy would repeat
    sim = np.array([[0.9, 0.8], [0.1, 0.2], [0.0, 0.1]])
    assert map_layers("cka", 3, 2, similarity=sim) == [0, 1]
    assert parse_layers_arg("cka") == ("cka", None)


def test_cka_map_validates():
    with pytest.raises(ParaknowError, match="needs the teacher x student layer similarity"):
        map_layers("cka", 4, 2)
    with pytest.raises(ParaknowError, match=r"\[3, 2\]"):
        map_layers("cka", 4, 2, similarity=np.ones((3, 2)))
    with pytest.raises(ParaknowError, match="not finite"):
        map_layers("cka", 2, 2, similarity=np.array([[1.0, np.nan], [0.0, 1.0]]))
