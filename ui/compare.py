"""The Mapping page's granularity comparison: every structure x layer strategy x coherent level on the
session's map (paraknow.transfer.compare), computed as a background job keyed by content, drawn as a
sortable table with the current choice highlighted; clicking a row adopts it (the plan changes).
"""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from paraknow.runs import background
from ui import jobs as J
from ui import state as S

KIND = "compare"
VARIED = ("structure", "layers", "coherent", "manual_map", "overrides", "mode")  # what the rows vary or ignore
HIGHLIGHT = "background-color: rgba(229, 57, 53, 0.18)"


def _request(config) -> tuple[str, dict] | None:
    """(content key, job spec) of the comparison for the session's models, map and fixed settings."""
    from ui.widgets import current_similarity

    sens, teacher, student = S.get(S.SENS), S.get(S.TEACHER), S.get(S.STUDENT)
    if not (sens and teacher and student):
        return None
    fixed = {k: v for k, v in asdict(config).items() if k not in VARIED}
    similarity = current_similarity()
    spec = {"teacher": teacher, "student": student, "sensitivity": str(J.sensitivity_file(sens)), "config": fixed,
            "similarity": None if similarity is None else similarity.tolist()}
    key = background.content_key({"teacher": J.fingerprint(teacher), "student": J.fingerprint(student),
                                  "map": sens.id, "config": fixed,
                                  "similarity": J.similarity_key() if similarity is not None else None})
    return key, spec


def _table_key() -> str:
    return f"w_map_compare_{S.get(S.COMPARE_VERSION)}"


def adopt_clicked() -> None:
    """A row clicked in the table becomes the mapping's choice. Called before the page draws its widgets,
    which then show the adopted structure, layer strategy and coherent level."""
    state = st.session_state.get(_table_key())
    picked = (state or {}).get("selection", {}).get("rows") or []
    held = S.get(S.COMPARE)
    if not (picked and held):
        return
    row = held["rows"][picked[0]]
    S.put(S.COMPARE_VERSION, S.get(S.COMPARE_VERSION) + 1)  # a fresh table: no row stays selected
    if "error" in row:
        st.toast(f"{row['structure']} × {row['layers']} cannot be planned: {row['error']}", icon=":material/error:")
        return
    st.session_state[S.W_STRUCTURE] = row["structure"]
    st.session_state[S.W_STRATEGY] = row["layers"]
    st.session_state[S.W_COHERENT] = row["coherent"]
    st.toast(f"Adopted: structure {row['structure']}, layers {row['layers']}, coherent {row['coherent']}.",
             icon=":material/check_circle:")


def section(config) -> None:
    """The comparison: a button that starts it, its progress, then the table."""
    st.subheader("Granularity comparison")
    st.caption("Every structure × layer strategy × coherent level planned on this map, with the rank, modules "
               "and seed above. Captured, lift, energy and cos are means over the planned modules (what an "
               "export writes per module in paraknow.json); lift is captured / area, i.e. over a same-size "
               "random selection. Click a column to sort, a row to adopt it.")
    request = _request(config)
    if request is None:
        return
    key, spec = request
    held = S.get(S.COMPARE)
    if not (held and held["key"] == key):
        view = J.follow(KIND, key, "Comparing granularities")  # its progress while it runs
        if view.live:
            return
        if view.state != "finished":
            if view.state in ("failed", "stopped"):
                J.ended_note(view, "the comparison")
            if st.button("Compare every structure and layer strategy", icon=":material/table_chart:",
                         key="w_map_compare_run", help="Runs in the background (about a minute on the demo pair); "
                         "the result is kept for this map and these settings."):
                background.start(KIND, key, spec)
                st.rerun()
            return
        held = {"key": key, "rows": view.result["rows"]}
        S.put(S.COMPARE, held)
    _table(held["rows"], config)


def _table(rows: list[dict], config) -> None:
    frame = pd.DataFrame(rows)
    current = ((frame["structure"] == config.structure) & (frame["layers"] == config.layers)
               & (frame["coherent"] == config.coherent))
    frame.insert(0, "current", current.map({True: "◀ current", False: ""}))
    columns = ["current", "structure", "layers", "coherent", "captured", "lift", "energy", "cos", "modules",
               "seconds"] + (["error"] if "error" in frame else [])
    styled = frame[columns].style.apply(lambda r: [HIGHLIGHT if current[r.name] else ""] * len(r), axis=1)
    st.dataframe(styled, key=_table_key(), on_select="rerun", selection_mode="single-row", hide_index=True,
                 width="stretch", height=min(420, 38 + 35 * len(frame)),
                 column_config={"captured": st.column_config.NumberColumn(format="percent"),
                                "lift": st.column_config.NumberColumn(format="%.2fx"),
                                "energy": st.column_config.NumberColumn(format="percent"),
                                "cos": st.column_config.NumberColumn(format="%+.4f"),
                                "seconds": st.column_config.NumberColumn("plan s", format="%.2f")})
    _chart(rows, config)
    if not current.any():
        st.caption(f"The current choice ({config.structure} × {config.layers}) is not in the table"
                   + (" (manual maps are not compared)." if config.layers == "manual" else "."))


def _chart(rows: list[dict], config) -> None:
    """The rows as small multiples (one heat-table per coherent level) of the chosen metric; drawn with
    widgets.chart, so the page's HTML report holds it too."""
    from paraknow import viz
    from ui.widgets import chart

    metric = st.segmented_control("Colour by", list(viz.COMPARE_METRICS), key=S.W_COMPARE_METRIC,
                                  format_func=lambda m: viz.COMPARE_METRICS[m][0], **S.PERSIST) or "lift"
    chart(viz.compare_heat_table(rows, metric, (config.structure, config.layers, config.coherent)),
          key="map_compare_chart", config={"displayModeBar": False})
    st.caption("Blank: the combination cannot be planned on this pair (see the table). The red outline is the "
               "current choice.")
