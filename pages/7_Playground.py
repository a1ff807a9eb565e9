"""Playground: one prompt through the teacher, the student and the student with an adapter, side by side."""
from __future__ import annotations

import streamlit as st

from paraknow.core.tasks import TASKS
from paraknow.runs import playground as P
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

W.entry_guard()
st.title("Playground")
st.caption("Greedy (deterministic) completions of one user turn, formatted exactly as the training and "
           "evaluation data are. With a reference completion, every reference token is coloured by the "
           "model's cross-entropy for it: white = expected, red = surprising (≥ "
           f"{P.LOSS_SCALE:g} nats); hover a token for its loss.")

t_spec, s_spec = W.loaded_or_default_specs()
if not (S.get(S.TEACHER) and S.get(S.STUDENT)):
    st.caption(f"No models loaded on the Models page: using {W.md_code(t_spec['ref'])} and "
               f"{W.md_code(s_spec['ref'])}.")

# ---- inputs ----------------------------------------------------------------------------
with st.container(border=True):
    source = st.radio("Prompt", S.PG_SOURCES, key=S.W_PG_SOURCE, horizontal=True, **PERSIST)
    record, prompt, reference = None, "", ""
    with W.show_errors("reading the prompt"):
        if source == S.PG_SOURCES[0]:
            c1, c2 = st.columns([2, 1])
            task = c1.selectbox("Task", list(TASKS), key=S.W_PG_TASK, **PERSIST,
                                format_func=lambda n: f"{n} ({TASKS[n].family})")
            index = c2.number_input("Test item", min_value=0, step=1, key=S.W_PG_INDEX, **PERSIST)
            record, prompt, reference = P.task_item(task, int(index))
            st.markdown(f"**Prompt** (`task:{task}:test` #{int(index)})")
            st.text(prompt)
            st.markdown("**Reference completion**")
            st.text(reference)
        else:
            prompt = st.text_area("User turn", key=S.W_PG_PROMPT, **PERSIST, height=100,
                                  placeholder="Question: Ada has 3 apples and buys 4 more. How many apples does she have?")
            reference = st.text_area("Reference completion (optional: per-token losses and answer check)",
                                     key=S.W_PG_REFERENCE, **PERSIST, height=70,
                                     placeholder="Answer: 3 + 4 = 7. So the answer is 7.")
    choices = P.adapter_choices(s_spec["ref"])
    paths = [""] + [c.path for c in choices]
    if st.session_state.get(S.W_PG_ADAPTER) not in paths:
        st.session_state[S.W_PG_ADAPTER] = paths[1] if len(paths) > 1 else ""
    by_path = {c.path: c for c in choices}
    labels = {"": "none (only teacher and student)", **{c.path: c.label for c in choices}}
    a1, a2 = st.columns([3, 1])
    adapter = a1.selectbox(f"Adapter for the student ({len(choices)} in cache/exports and cache/runs)", paths,
                           key=S.W_PG_ADAPTER, **PERSIST, format_func=labels.get,
                           help="A PKT export (its residual/ merged into the student first, as training starts "
                                "from it) or a trained run's adapter.")
    tokens = a2.number_input("Max new tokens", min_value=1, max_value=2048, step=16, key=S.W_PG_TOKENS, **PERSIST)

key = (t_spec, s_spec, adapter, prompt, reference, int(tokens), record and record.get("id"))
if st.button("Generate", type="primary", icon=":material/play_arrow:", key="w_pg_run", disabled=not prompt.strip()):
    with W.show_errors("generating"), st.spinner("Generating with each model…"):
        teacher, t_tok, _ = W.load_model_cached(t_spec["ref"], t_spec["dtype"], t_spec["device"])
        student, s_tok, _ = W.load_model_cached(s_spec["ref"], s_spec["dtype"], s_spec["device"])
        models = [(f"teacher · {t_spec['ref']}", teacher, t_tok), (f"student · {s_spec['ref']}", student, s_tok)]
        if adapter:
            adapted, a_tok = W.load_adapted_cached(s_spec, adapter)
            models.append((f"student + {by_path[adapter].name}", adapted, a_tok))
        S.put(S.PG_RESULT, {"key": key, "outputs": P.compare_models(models, prompt, reference, int(tokens), record)})

# ---- outputs ---------------------------------------------------------------------------
result = S.get(S.PG_RESULT)
if not result:
    st.info("Press Generate to see the models' answers side by side.", icon=":material/play_arrow:")
    W.stop()
if result["key"] != key:
    st.caption("The inputs changed since these answers were generated: press Generate to update them.")
outputs = result["outputs"]
for column, out in zip(st.columns(len(outputs)), outputs):
    with column.container(border=True):
        title = W.one_line(out.name)  # one line in every card, so the cards stay aligned
        st.markdown(f"**{W.md_escape(title)}**", help=out.name if title != out.name else None)
        st.text(out.text or "(empty completion)")
        if out.correct is not None:
            st.markdown(":green[:material/check_circle: answer matches the reference]" if out.correct
                        else ":red[:material/cancel: answer differs from the reference]")
        if out.losses:
            st.metric("Reference loss (mean nats per token)", f"{out.mean_loss:.3g}")
            st.html(P.token_loss_html(out.losses, P.LOSS_SCALE))

if len(outputs) >= 2:
    st.subheader("Difference between two answers")
    names = [o.name for o in outputs]
    for widget, default in ((S.W_PG_DIFF_A, names[0]), (S.W_PG_DIFF_B, names[-1])):
        if st.session_state.get(widget) not in names:
            st.session_state[widget] = default
    d1, d2 = st.columns(2)
    first = d1.selectbox("From", names, key=S.W_PG_DIFF_A, **PERSIST)
    second = d2.selectbox("To", names, key=S.W_PG_DIFF_B, **PERSIST)
    by_name = {o.name: o for o in outputs}
    st.html(P.diff_html(P.word_diff(by_name[first].text, by_name[second].text)))
    st.caption("Words only in “From” are struck through in red, words only in “To” are green.")
