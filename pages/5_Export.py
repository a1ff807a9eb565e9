"""Export: factorise the selected teacher blocks into a LoRA initialisation for the student."""
from __future__ import annotations

from dataclasses import asdict

import pandas as pd
import streamlit as st

from paraknow import viz
from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES
from paraknow.core.errors import ParaknowError
from paraknow.core.paths import cache_dir
from paraknow.transfer.lora import MODES, SPLITS
from ui import jobs as J
from ui import ops
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

W.entry_guard()
st.title("Export")
st.caption("Each selected teacher block W is factorised by a truncated SVD at rank r into the LoRA pair (A, B) "
           "with s·B·A ≈ W (s = alpha / r). In residual mode the student's base becomes W_S − s·B·A, so its "
           "outputs do not change until fine-tuning moves the LoRA.")
if not W.require("models", "sensitivity"):
    W.stop()
sens, t_spec, s_spec = S.get(S.SENS), S.get(S.TEACHER), S.get(S.STUDENT)
s_info = S.get(S.STUDENT_INFO)

# ---- settings -------------------------------------------------------------------------
roles = W.planned_roles() if W.selected_modules() != () else []
if not roles:
    st.warning("No module is chosen for the transfer: tick at least one module on the Mapping page.",
               icon=":material/warning:")
    st.page_link(W.PAGE_MAPPING, label="Back to Mapping", icon=":material/arrow_back:")
    W.stop()
max_rank = min(min(s_info.shapes[r]) for r in roles)
W.follow_default_export_name()
with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)
    c1.number_input("Rank r", min_value=1, max_value=4096, step=1, key=S.W_RANK, **PERSIST,
                    help=f"The paper uses 16. At most {max_rank} for the chosen modules of this student.")
    c2.number_input("LoRA alpha", min_value=0.0625, max_value=4096.0, step=1.0, key=S.W_ALPHA, **PERSIST,
                    help="Scaling s = alpha / r; alpha = r gives s = 1 (the paper's 16/16).")
    c3.selectbox("Split of Σ", list(SPLITS), key=S.W_SPLIT_MODE, **PERSIST,
                 help="left: B = UΣ/s, A = Vᵀ (the paper's); sqrt: √(Σ/s) on both sides.")
    c4.selectbox("Mode", list(MODES), key=S.W_MODE, **PERSIST,
                 help="residual: base becomes W − s·B·A (outputs unchanged at step 0, the official code's); "
                      "additive: the student starts at W + s·B·A.")
    n1, n2 = st.columns([3, 1])
    n1.text_input("Export name", key=S.W_NAME, **PERSIST, help="Saved under cache/exports/<name>/.")
    n2.checkbox("Overwrite if it exists", key=S.W_OVERWRITE, **PERSIST)

config = W.current_transfer_config()
if config.rank > max_rank:
    st.error(f"Rank {config.rank} is larger than the smallest dimension ({max_rank}) of the chosen student modules: "
             f"lower the rank to {max_rank} or less.", icon=":material/error:")
    W.stop()
try:
    with st.spinner("Planning: layer map and the selection in every teacher matrix…"):
        plan = W.current_plan(config)
except ParaknowError as exc:
    st.error(W.page_message(str(exc)), icon=":material/error:")  # it may quote a value from the link: no links
    st.page_link(W.PAGE_MAPPING, label="Back to Mapping", icon=":material/arrow_back:")
    W.stop()

overrides = config.overrides
st.markdown(
    f"**Plan:** {len(plan.modules)} modules ({', '.join(r for r in LAYER_ROLES + EMBED_ROLES if r in plan.roles)}) · "
    f"layer strategy `{config.layers}` (student layer j ← teacher layer {plan.layer_map}[j]) · "
    f"structure `{config.structure}`"
    + (f" · {len(overrides)} manual block override(s)" if overrides else "")
    + f" · seeds `{sens.label}` ({sens.config.metric}).")

if st.button("Export", type="primary", icon=":material/package_2:", key="w_exp_run",
             help="Runs in the background: moving around or reloading the page never stops it."):
    with W.show_errors("exporting"):
        name = ops.check_export_name(st.session_state[S.W_NAME])
        out_dir = cache_dir("exports") / name
        if out_dir.exists() and not st.session_state[S.W_OVERWRITE]:
            raise ParaknowError(f"an export named '{name}' already exists in {out_dir.parent}: choose another name "
                                "or tick 'Overwrite if it exists'.")
        J.start_export({"teacher": t_spec, "student": s_spec, "sensitivity": str(J.sensitivity_file(sens)),
                        "config": asdict(config), "similarity": W.similarity_list(config), "out": str(out_dir),
                        "overwrite": bool(st.session_state[S.W_OVERWRITE]),
                        "provenance": sens.provenance(t_spec["ref"], s_spec["ref"])})
J.follow_export(st.session_state.get(S.W_NAME))

# ---- the last export ------------------------------------------------------------------
export = S.get(S.EXPORT)
if export:
    manifest = export["manifest"]
    mods = manifest["modules"]
    st.subheader(f"Export {W.md_code(export['name'])}")
    st.success(f"Saved to {W.md_code(export['dir'])}: a PEFT LoRA adapter for {W.md_code(manifest['student'])}"
               + (", its `residual/` companion" if manifest["mode"] == "residual" else "")
               + ", `selection.safetensors` and the manifest `paraknow.json`.", icon=":material/check_circle:")
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Modules", len(mods))
    m2.metric("Rank / alpha", f"{manifest['rank']} / {manifest['alpha']:g}")
    m3.metric("Mean energy kept at rank r", f"{sum(m['energy'] for m in mods.values()) / max(1, len(mods)):.1%}")
    m4.metric("Mean captured sensitivity", f"{sum(m['captured'] for m in mods.values()) / max(1, len(mods)):.1%}")
    W.chart(viz.energy_figure(manifest), config={"displayModeBar": False}, key="exp_energy")
    roles_in = [r for r in LAYER_ROLES + EMBED_ROLES if any(m["role"] == r for m in mods.values())]
    if not st.session_state.get(S.W_SPEC_MODULES) or not set(st.session_state[S.W_SPEC_MODULES]) <= set(roles_in):
        st.session_state[S.W_SPEC_MODULES] = roles_in[:1]
    shown = st.multiselect("Spectra of", roles_in, key=S.W_SPEC_MODULES, **PERSIST)
    W.chart(viz.spectrum_figure(manifest, [n for n, m in mods.items() if m["role"] in shown]),
            config={"displayModeBar": False}, key="exp_spectrum")

    d1, d2 = st.columns(2)
    with d1:
        st.download_button("Download as zip", data=lambda d=export["dir"]: ops.zip_dir(d),
                           file_name=f"{export['name']}.zip", mime="application/zip", on_click="ignore",
                           icon=":material/download:", key="w_exp_download")
        with st.expander("Files"):
            st.dataframe(pd.DataFrame(ops.files_table(export["dir"])), hide_index=True, width="stretch")
    with d2:
        if st.button("Verify with plain PEFT", icon=":material/fact_check:", key="w_exp_verify",
                     help="Loads the export on a copy of the student with peft.PeftModel (residual/ merged first) "
                          "and compares the logits on the seed samples with the original student's."):
            with W.show_errors("verifying the export"):
                J.start_verify(export)
        result = J.follow_verify(export)
        if result and result.dir == export["dir"]:
            text = (f"Maximum logit change vs the original student on {result.samples} seed samples "
                    f"({result.tokens} tokens): **{result.max_change:.2e}** (largest logit {result.max_logit:.1f}).")
            if result.mode == "residual" and result.unchanged:
                st.success(text + " Residual mode: the student's outputs are unchanged.", icon=":material/verified:")
            elif result.mode == "residual":
                st.error(text + f" Residual mode should leave the outputs unchanged (tolerance {result.tolerance:.1e}).",
                         icon=":material/error:")
            else:
                st.info(text + " Additive mode: the change is the injected teacher knowledge.", icon=":material/info:")
    W.report_actions("Export", {"export": export["dir"], **{k: manifest.get(k) for k in (
        "rank", "alpha", "split", "mode", "structure", "layer_map")}, "modules exported": len(mods)})
    st.page_link(W.PAGE_FINETUNE, label="Next: fine-tune the student from this export",
                 icon=":material/arrow_forward:")

# ---- earlier exports ------------------------------------------------------------------
earlier = ops.list_exports(cache_dir("exports"))
if earlier:
    with st.expander(f"All exports in {cache_dir('exports')} ({len(earlier)})"):
        st.dataframe(pd.DataFrame(earlier).drop(columns=["dir"]), hide_index=True, width="stretch")
        pick = st.selectbox("Download", [e["name"] for e in earlier], key="w_exp_earlier")
        chosen = next(e for e in earlier if e["name"] == pick)
        st.download_button(f"Download {pick}.zip", data=lambda d=chosen["dir"]: ops.zip_dir(d),
                           file_name=f"{pick}.zip", mime="application/zip", on_click="ignore",
                           icon=":material/download:", key="w_exp_download_earlier")
