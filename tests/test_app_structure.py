"""The Mapping page's structure options through its widgets (AppTest, demo pair): heads, coherent, cka."""
from __future__ import annotations

import pytest
from apptest import APP, assert_ok
from conftest import finish_jobs
from streamlit.testing.v1 import AppTest

from ui import state as S


@pytest.mark.slow
def test_mapping_heads_coherent_and_cka():
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    at.switch_page("pages/4_Mapping.py").run()
    assert_ok(at)
    assert at.session_state[S.PLAN].plan.index_sets == {}  # the default: today's per-matrix submatrix
    assert [m.label for m in at.metric][:3] == ["Captured", "Area", "Lift"]
    at.selectbox(key=S.W_STRUCTURE).set_value("heads").run()
    at.session_state[S.W_COHERENT] = "layer"
    at.run()
    assert_ok(at)
    plan = at.session_state[S.PLAN].plan
    t_info = at.session_state[S.TEACHER_INFO]
    q = next(m for m in plan.modules if m.role == "q_proj")
    assert set((q.selection.rows // t_info.head_dim).tolist()) == set(plan.index_sets[0].heads.q_heads)
    shown = " ".join(str(m.value) for m in at.markdown)
    assert "teacher KV heads" in shown and "residual dims" in shown
    assert any("vs the residual base" in str(c.value) for c in at.caption)
    assert any("coherent layer" in str(c.value) for c in at.caption)
    at.selectbox(key=S.W_STRATEGY).set_value("cka").run()
    assert_ok(at)
    finish_jobs(at.button(key="w_map_cka_for_map").click().run())
    assert_ok(at)
    plan = at.session_state[S.PLAN].plan
    assert plan.layer_similarity is not None
    assert all(b > a for a, b in zip(plan.layer_map, plan.layer_map[1:]))
    at.switch_page("pages/5_Export.py").run()
    assert_ok(at)
