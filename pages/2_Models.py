"""Models: pick teacher and student, see both architectures and their compatibility, then load."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from paraknow.core.compatibility import compatibility, tokenizers_verified
from paraknow.core.memory import available_memory_bytes, estimate_memory_bytes, estimate_sensitivity_memory
from ui import state as S
from ui import widgets as W

W.entry_guard()
st.title("Models")
st.caption("The teacher must be at least as deep and as wide as the student in every module that transfers. "
           "Architectures are read from the configs before any weights are loaded.")

specs: dict = {}
infos: dict = {}
columns = st.columns(2, gap="large")
for role, col in zip(S.ROLES, columns):
    with col:
        st.subheader("Teacher (larger)" if role == "teacher" else "Student (smaller)")
        spec = W.model_picker(role)
        specs[role] = spec
        if spec is None:
            continue
        if S.kind_of(spec["ref"]) == S.KIND_HUB and st.session_state[S.model_key(role, "kind")] == S.KIND_HUB \
                and spec["ref"] not in S.get(S.HUB_CHECKED):
            st.info("Hub ids need network access; offline, looking one up fails after about 30 s.",
                    icon=":material/cloud:")
            if st.button("Look up this hub id", key=f"w_{role}_hub_lookup"):
                S.get(S.HUB_CHECKED).append(spec["ref"])
                st.rerun()
            continue
        with W.show_errors(f"reading the {role}'s configuration"):
            slow = S.kind_of(spec["ref"]) in (S.KIND_BUNDLED, S.KIND_GGUF)
            with st.spinner(f"Reading the configuration of {W.md_code(spec['ref'])}…" + (
                    " (the first time, the GGUF file is de-quantised into the cache: about a minute)" if slow else "")):
                infos[role] = W.describe_ref(spec["ref"])
        loaded = S.get(S.TEACHER if role == "teacher" else S.STUDENT)
        if loaded == spec:
            st.success(f"Loaded: {W.md_code(spec['ref'])} ({spec['dtype']}, {spec['device']})",
                       icon=":material/check_circle:")
        elif loaded:
            st.caption(f"Currently loaded: {W.md_code(loaded['ref'])} ({loaded['dtype']}). Press **Load** to switch.")


if infos:
    st.subheader("Architectures")
    props = ["family", "decoder layers", "hidden size", "FFN size", "attention heads", "KV heads",
             "head dim", "vocabulary", "tied embeddings", "parameters", "weights in memory",
             "sensitivity pass needs about"]
    table = {}
    for role in S.ROLES:
        info = infos.get(role)
        if info is None:
            continue
        dtype = specs[role]["dtype"]
        weights = estimate_memory_bytes(info, dtype)
        gqa = f"{info.n_kv_heads}" + (" (GQA)" if info.n_kv_heads < info.n_heads else "")
        table[role] = [info.family, info.n_layers, info.hidden_size, info.intermediate_size, info.n_heads, gqa,
                       info.head_dim, info.vocab_size, "yes" if info.tied_embeddings else "no",
                       f"{info.n_params / 1e6:,.2f} M", f"{W.fmt_bytes(weights)} ({dtype})",
                       W.fmt_bytes(estimate_sensitivity_memory(info, dtype).total_bytes()) if role == "teacher" else "—"]
    st.dataframe(pd.DataFrame({k: [str(v) for v in vals] for k, vals in table.items()}, index=props),
                 width="stretch", height=35 * (len(props) + 1) + 3)
    free = available_memory_bytes("cpu")
    if free:
        need = sum(estimate_memory_bytes(infos[r], specs[r]["dtype"]) for r in infos)
        st.caption(f"Free memory now: {W.fmt_bytes(free)}; both models' weights: {W.fmt_bytes(need)}.")
        if need > free:
            st.error(f"Not enough free memory to load these models ({W.fmt_bytes(need)} needed, "
                     f"{W.fmt_bytes(free)} free): pick bfloat16, smaller models, or a GPU device.")

if len(infos) == 2:
    st.subheader("Compatibility")
    report = compatibility(infos["teacher"], infos["student"])
    t, s = infos["teacher"], infos["student"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Layers (teacher → student)", f"{t.n_layers} → {s.n_layers}")
    c2.metric("Tokenizer", "differs" if report.tokenizer_mismatch else
              ("same" if tokenizers_verified(t, s) else "same size"),
              help=report.tokenizer_mismatch or f"{t.vocab_size} tokens; compared by a sha256 of the token -> id "
              "mapping (embeddings transfer only between the same tokenizer)")
    c3.metric("Grouped-query attention", f"T {'yes' if report.teacher_gqa else 'no'} · "
                                         f"S {'yes' if report.student_gqa else 'no'}")
    c4.metric("Modules that transfer", f"{report.transferable} / {len(report.rows)}")
    for kind, msg in report.errors.items():
        if kind == "depth":
            st.error(msg + " (A manual layer map on the Mapping page can reuse teacher layers.)",
                     icon=":material/error:")
        else:
            st.error(msg, icon=":material/error:")
    for note in report.notes:
        st.info(note, icon=":material/info:")
    rows = [{"module": r.module, "teacher [out, in]": str(r.teacher), "student [out, in]": str(r.student),
             "transfers": r.transfers, "why not": r.reason} for r in report.rows]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=35 * (len(rows) + 1) + 3,
                 column_config={"transfers": st.column_config.CheckboxColumn()})

ready = specs.get("teacher") is not None and specs.get("student") is not None and len(infos) == 2
loaded_now = (S.get(S.TEACHER), S.get(S.STUDENT)) == (specs.get("teacher"), specs.get("student"))
label = "Reload models" if loaded_now and ready else "Load models"
if st.button(label, type="primary", disabled=not ready, key="w_models_load",
             icon=":material/refresh:" if label == "Reload models" else ":material/memory:",
             help=None if ready else "Pick both models (and fix any error above) first."):
    with W.show_errors("loading the models"):
        with st.status("Loading models…", expanded=True) as status:
            W.load_pair(specs["teacher"], specs["student"], status)
            status.update(label="Models loaded", state="complete", expanded=False)
        st.rerun()
if S.get(S.TEACHER) and S.get(S.STUDENT):
    st.page_link(W.PAGE_SENSITIVITY, label="Next: compute the teacher's sensitivity",
                 icon=":material/arrow_forward:")
