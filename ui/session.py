"""The session in the URL and in a recipe file (keys: paraknow/transfer/recipe.py, docs/recipe.md).

app.py calls `restore_from_url` on the first run of a browser session (a reload or a link opens a
new session) and `write_url` after every run, so the address bar always holds the teacher, the
student, the seed data, the sensitivity settings, the plan settings and the export name. The
results come back from the content cache: a restored session finds its sensitivity map, layer
similarity and export there, or attaches to the job still computing them. The sidebar's recipe
panel downloads the same state as JSON (`python -m paraknow extract --recipe FILE` reproduces
the export) and loads one.
"""
from __future__ import annotations

import streamlit as st

from paraknow.core.errors import ParaknowError
from paraknow.transfer.recipe import SessionRecipe, from_query, recipe_from_text, to_json
from ui import state as S

TRANSFER_WIDGETS = {"structure": S.W_STRUCTURE, "coherent": S.W_COHERENT, "seed": S.W_MAP_SEED,
                    "rank": S.W_RANK, "alpha": S.W_ALPHA, "mode": S.W_MODE, "split": S.W_SPLIT_MODE}
SENSITIVITY_WIDGETS = {"metric": S.W_METRIC, "samples": S.W_SAMPLES, "max_length": S.W_MAXLEN}


# ---------------------------------------------------------------------------------------
# Session state -> recipe


def data_ref() -> str | None:
    """The seed data the session names: a task, a JSONL path, or the saved upload/paste of its map."""
    ss = st.session_state
    if ss.get(S.W_SOURCE) == S.SOURCE_TASK:
        return f"task:{ss[S.W_TASK]}:{ss[S.W_SPLIT]}"
    if ss.get(S.W_SOURCE) == S.SOURCE_FILE:
        return (ss.get(S.W_DATA_PATH) or "").strip() or None
    sens = S.get(S.SENS)
    return sens.data_ref if sens else None


def layers_value(config) -> str:
    if config.layers != "manual":
        return config.layers
    return "manual:" + ",".join("-" if t is None else str(t) for t in config.manual_map or [])


def current_recipe() -> SessionRecipe:
    """The session's state as a recipe (only the settings; results are found by content)."""
    from ui.widgets import current_transfer_config

    ss = st.session_state
    teacher, student = S.get(S.TEACHER), S.get(S.STUDENT)
    config = current_transfer_config()
    settings = {key: ss[widget] for key, widget in {**SENSITIVITY_WIDGETS, **TRANSFER_WIDGETS}.items()}
    settings.update(layers=layers_value(config), modules=list(config.modules) if config.modules is not None else None,
                    overrides={k: list(v) for k, v in config.overrides.items()},
                    dtype=(teacher or {}).get("dtype", ss[S.model_key("teacher", "dtype")]),
                    device=(teacher or {}).get("device", ss[S.model_key("teacher", "device")]))
    return SessionRecipe(teacher=teacher["ref"] if teacher else None, student=student["ref"] if student else None,
                         data=data_ref(), name=(ss.get(S.W_NAME) or "").strip() or None, settings=settings)


def write_url() -> None:
    """Put the session's state into the address bar (only when it changed; a link still waiting for
    its click stays there, so a reload asks again)."""
    if S.get(S.URL_PENDING) is not None:
        return
    try:
        query = current_recipe().to_query()
    except ParaknowError:  # a setting the pages already report (e.g. no module ticked)
        return
    if dict(st.query_params) != query:
        st.query_params.from_dict(query)


def recipe_json() -> str:
    return to_json(current_recipe())


# ---------------------------------------------------------------------------------------
# Recipe -> session state


def _apply_widgets(recipe: SessionRecipe) -> None:
    from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES
    from paraknow.core.compatibility import default_roles, resolve_roles

    ss = st.session_state
    for key, widget in {**SENSITIVITY_WIDGETS, **TRANSFER_WIDGETS}.items():
        if key in recipe.settings:
            value = recipe.settings[key]
            ss[widget] = float(value) if key == "alpha" else value
    config = recipe.transfer_config()
    ss[S.W_STRATEGY] = config.layers
    if config.layers == "manual":
        S.put(S.MANUAL_MAP, list(config.manual_map))
        S.put(S.MANUAL_VERSION, S.get(S.MANUAL_VERSION) + 1)
    chosen = default_roles() if config.modules is None else resolve_roles(config.modules)
    for role in LAYER_ROLES + EMBED_ROLES:
        ss[S.W_MODULE_PREFIX + role] = role in chosen
    if recipe.name:
        ss[S.W_NAME] = recipe.name
    if recipe.data:
        _apply_data(recipe.data)


def _apply_data(ref: str) -> None:
    ss = st.session_state
    if ref.startswith("task:"):
        parts = ref.split(":")
        ss[S.W_SOURCE], ss[S.W_TASK] = S.SOURCE_TASK, parts[1]
        ss[S.W_SPLIT] = parts[2] if len(parts) > 2 else "train"
    else:
        ss[S.W_SOURCE], ss[S.W_DATA_PATH] = S.SOURCE_FILE, ref


def _load_models(recipe: SessionRecipe) -> None:
    from ui.widgets import load_pair

    placement = {"dtype": recipe.get("dtype") or "float32", "device": recipe.get("device") or "cpu"}
    if placement["device"] == "auto":
        placement["device"] = "cpu"
    for role in S.ROLES:
        ref = getattr(recipe, role)
        if ref:
            S.preset_model_widgets(role, ref, **placement)
    if recipe.teacher and recipe.student:
        load_pair({"ref": recipe.teacher, **placement}, {"ref": recipe.student, **placement})


def _adopt_results(recipe: SessionRecipe) -> None:
    """The sensitivity map and the export this state names, when the content cache holds them."""
    from pathlib import Path

    from paraknow.core.data import load_records
    from ui import jobs
    from ui.widgets import set_sensitivity

    if not (S.get(S.TEACHER) and recipe.data):
        return
    label = recipe.data if recipe.data.startswith("task:") else Path(recipe.data).name
    request = jobs.try_sensitivity_request(jobs.SeedData(load_records(recipe.data), label, recipe.data),
                                           recipe.sensitivity_config())
    if request and jobs.sensitivity_cached(request):
        set_sensitivity(jobs.sensitivity_result(request, None))
    S.put(S.OVERRIDES, dict(recipe.transfer_config().overrides))
    S.put(S.EXPORT, jobs.named_export(recipe.name))


def apply_recipe(recipe: SessionRecipe) -> None:
    """Set the widgets, load the models and adopt cached results; raises ParaknowError."""
    _apply_widgets(recipe)
    _load_models(recipe)
    _adopt_results(recipe)


def link_asks_to_read(recipe: SessionRecipe) -> list[str]:
    """What a link names that would read a file or folder of this machine or ask the hub: one
    'role: value' line each. The built-in demo models, the bundled model and the built-in tasks
    load without asking; anything else waits for one click."""
    lines = [f"{role}: {ref}" for role in S.ROLES if (ref := getattr(recipe, role))
             and S.kind_of(ref) not in (S.KIND_DEMO, S.KIND_BUNDLED)]
    if recipe.data and not recipe.data.startswith("task:"):
        lines.append(f"seed data: {recipe.data}")
    return lines


def _apply_link(recipe: SessionRecipe, problems: list[str]) -> None:
    try:
        apply_recipe(recipe)
    except ParaknowError as exc:
        problems.append(str(exc))
    S.put(S.URL_NOTICE, "Part of the link could not be used: " + " ".join(problems) if problems else None)


def restore_from_url() -> None:
    """Once per browser session: the state in the URL (what cannot be used is reported, not fatal).
    A link that names local files or hub ids is held until the user presses the sidebar's button."""
    if S.get(S.URL_READ):
        return
    S.put(S.URL_READ, True)
    if not any(key in st.query_params for key in ("teacher", "student", "data")):
        return
    recipe, problems = from_query(st.query_params.to_dict())
    if link_asks_to_read(recipe):
        S.put(S.URL_PENDING, (recipe, problems))
        return
    _apply_link(recipe, problems)


def _load_pending_link() -> None:
    recipe, problems = S.get(S.URL_PENDING)
    S.put(S.URL_PENDING, None)
    _apply_link(recipe, list(problems))


def pending_link_panel() -> None:
    """Sidebar: what a held link would load, as plain text, and the one button that loads it."""
    recipe, _ = S.get(S.URL_PENDING)
    st.sidebar.warning("This link asks to load the following. Nothing is read until you press the button.",
                       icon=":material/link:")
    st.sidebar.text("\n".join(link_asks_to_read(recipe)))
    left, right = st.sidebar.columns(2)
    left.button("Load them", key="w_link_load", on_click=_load_pending_link, icon=":material/download:")
    right.button("Ignore the link", key="w_link_ignore", on_click=S.put, args=(S.URL_PENDING, None))


def _load_uploaded_recipe() -> None:
    upload = st.session_state.get(S.W_RECIPE_UPLOAD)
    if upload is None:
        return
    try:
        apply_recipe(recipe_from_text(upload.getvalue().decode("utf-8", errors="replace"), upload.name))
        S.put(S.URL_NOTICE, None)
    except ParaknowError as exc:
        S.put(S.URL_NOTICE, f"{upload.name}: {exc}")


def recipe_panel() -> None:
    """Sidebar: download the session as a recipe file, or load one."""
    from ui.widgets import md_escape

    if S.get(S.URL_PENDING) is not None:
        pending_link_panel()
    notice = S.get(S.URL_NOTICE)
    if notice:  # it quotes what the link or file held: shown literally, never as markdown
        st.sidebar.warning(md_escape(notice), icon=":material/link_off:")
    with st.sidebar.expander("Session recipe", icon=":material/receipt_long:"):
        st.caption("The link in the address bar opens the same state again; so does this file. "
                   "`python -m paraknow extract --recipe FILE` makes the same export.")
        st.download_button("Download recipe", data=recipe_json(), file_name="paraknow-recipe.json",
                           mime="application/json", icon=":material/download:", key="w_recipe_download",
                           on_click="ignore")
        st.file_uploader("Load a recipe", type=["json"], key=S.W_RECIPE_UPLOAD, on_change=_load_uploaded_recipe)
