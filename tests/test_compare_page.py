"""The Mapping page's granularity comparison (ui/compare.py) on the demo pair, driven with AppTest."""
from __future__ import annotations

import json

from apptest import assert_ok, open_page
from conftest import finish_jobs

from paraknow.extract import STRUCTURES
from paraknow.transfer.compare import combinations
from ui import state as S

TIMEOUT = 600


def test_compare_every_combination_and_adopt_a_row():
    at = open_page(None, TIMEOUT)
    at.button(key="w_home_quickstart").click().run()
    assert_ok(at)
    at.switch_page("pages/4_Mapping.py").run()
    assert_ok(at)
    before = at.session_state[S.PLAN].plan
    assert at.session_state[S.W_STRUCTURE] == "submatrix"

    finish_jobs(at.button(key="w_map_compare_run").click().run())
    assert_ok(at)
    rows = at.session_state[S.COMPARE]["rows"]
    assert {(r["structure"], r["layers"], r["coherent"]) for r in rows} == set(combinations())  # no cka yet
    assert {r["structure"] for r in rows} == set(STRUCTURES)
    table = next(d for d in at.dataframe if d.key == "w_map_compare_0")
    shown = table.value
    assert len(shown) == len(rows)
    assert list(shown.loc[shown["current"] != "", ["structure", "layers", "coherent"]].itertuples(index=False,
                                                                                                   name=None)) \
        == [("submatrix", "sensitivity", "off")]
    chart = next(c for c in at.get("plotly_chart") if "Granularity comparison" in c.proto.spec)  # the heat-table
    traces = json.loads(chart.proto.spec)["data"]  # the figure's own traces (its template may name heatmaps too)
    assert [t["type"] for t in traces] == ["heatmap"] * len({r["coherent"] for r in rows})
    current = next(r for r in rows if (r["structure"], r["layers"], r["coherent"]) == ("submatrix", "sensitivity",
                                                                                     "off"))
    assert current["captured"] == sum(m.captured for m in before.modules) / len(before.modules)

    # a click on a row (its selection) adopts it: the widgets show it and the plan changes
    pick = next(i for i, r in enumerate(rows) if (r["structure"], r["layers"], r["coherent"]) == ("rowcol", "uniform",
                                                                                                "layer"))
    at.session_state["w_map_compare_0"] = {"selection": {"rows": [pick], "columns": []}}
    at.run()
    assert_ok(at)
    assert (at.session_state[S.W_STRUCTURE], at.session_state[S.W_STRATEGY], at.session_state[S.W_COHERENT]) \
        == ("rowcol", "uniform", "layer")
    after = at.session_state[S.PLAN].plan
    assert after.layer_map != before.layer_map
    assert sum(m.captured for m in after.modules) / len(after.modules) == rows[pick]["captured"]
    shown = next(d for d in at.dataframe if d.key == "w_map_compare_1").value  # a fresh table, no row selected
    assert list(shown.loc[shown["current"] != "", "structure"]) == ["rowcol"]
