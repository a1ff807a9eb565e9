"""Fine-tune: background LoRA runs (vanilla / PiSSA / PKT export), live curves, stop, download, compare."""
from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from paraknow import viz
from paraknow.core import jobdir
from paraknow.core.architecture import DTYPES
from paraknow.core.errors import ParaknowError
from paraknow.runs import jobs, rundir
from ui import executor as E
from ui import finetune as F
from ui import state as S
from ui import widgets as W
from ui.state import PERSIST

LIVE_EVERY_S = 2
W.entry_guard()
S.init_finetune()
ss = st.session_state

st.title("Fine-tune")
st.caption("Train the student's LoRA from the standard init (vanilla), from the student's own principal components "
           "(PiSSA) or from a PKT export of the teacher's knowledge, optionally distilling from a teacher's outputs "
           "too (its logits or its answers, docs/distill.md). Runs are queued and trained one after another "
           "as background processes; everything is read back from `cache/runs/`, so the charts keep updating "
           "after a page reload or an app restart.")

# ---- what to train --------------------------------------------------------------------
exports = F.list_exports()
train_ref = eval_ref = None
with st.container(border=True):
    c1, c2, c3 = st.columns([3, 1, 1])
    student = c1.text_input("Student", key=S.W_FT_STUDENT, **PERSIST,
                            help="A model reference: demo:student, a local Hugging Face folder, a .gguf file, "
                                 "bundled:smollm2-135m-instruct or a hub id.")
    devices = list(dict.fromkeys(["auto", *W.device_options()]))
    if ss.get(S.W_FT_DEVICE) not in devices:
        ss[S.W_FT_DEVICE] = "auto"
    c2.selectbox("Device", devices, key=S.W_FT_DEVICE, **PERSIST, help="auto: the GPU when there is one, else the CPU.")
    c3.selectbox("dtype", list(DTYPES), key=S.W_FT_DTYPE, **PERSIST,
                 help="float32 is the safe choice on a CPU; bfloat16 halves the memory on a GPU.")

    d1, d2 = st.columns(2, gap="large")
    with d1:
        with W.show_errors("reading the training data"):
            train_ref = F.data_picker("train", "Training data")
    with d2:
        with W.show_errors("reading the evaluation data"):
            eval_ref = F.data_picker("eval", "Evaluation data", allow_none=True)
        e1, e2, e3 = st.columns(3)
        e1.number_input("Eval limit", min_value=1, max_value=100_000, step=10, key=S.W_FT_EVAL_LIMIT, **PERSIST,
                        disabled=eval_ref is None, help="Evaluate on the first N records (greedy generation, exact match).")
        e2.number_input("Eval every N steps", min_value=0, max_value=1_000_000, step=1, key=S.W_FT_EVAL_EVERY,
                        **PERSIST, disabled=eval_ref is None, help="0: only at the end of training.")
        e3.number_input("Max new tokens", min_value=1, max_value=4096, step=16, key=S.W_FT_EVAL_TOKENS, **PERSIST,
                        disabled=eval_ref is None, help="Generation length for the accuracy.")

    pkt = ss.get(S.W_FT_INIT) == "pkt"
    h = st.columns(6)
    h[0].number_input("Epochs", min_value=0.01, max_value=1000.0, step=1.0, key=S.W_FT_EPOCHS, **PERSIST,
                      help="The paper trains 3 epochs.")
    h[1].number_input("Learning rate", min_value=1e-7, max_value=1.0, step=1e-4, format="%.2e", key=S.W_FT_LR,
                      **PERSIST, help="The paper: 3e-4 (linear decay after a 3% warmup).")
    h[2].number_input("Batch", min_value=1, max_value=65_536, step=8, key=S.W_FT_BATCH, **PERSIST,
                      help="Effective batch (the paper: 64) = micro-batch x gradient-accumulation steps.")
    h[3].number_input("Micro-batch", min_value=1, max_value=4096, step=1, key=S.W_FT_MICRO, **PERSIST,
                      help="Samples per forward pass; lower it when memory is short. Must divide the batch.")
    h[4].number_input("Rank r", min_value=1, max_value=4096, step=1, key=S.W_FT_RANK, **PERSIST, disabled=pkt,
                      help="LoRA rank of vanilla and PiSSA runs. A PKT export trains at its own rank.")
    h[5].number_input("LoRA alpha", min_value=0.0625, max_value=4096.0, step=1.0, key=S.W_FT_ALPHA, **PERSIST,
                      disabled=pkt, help="Scaling alpha / r (the paper: 16 / 16). A PKT export brings its own.")
    with st.expander("More settings"):
        m1, m2, m3 = st.columns(3)
        m1.number_input("LoRA dropout", min_value=0.0, max_value=0.95, step=0.05, key=S.W_FT_DROPOUT, **PERSIST)
        m2.number_input("Warmup ratio", min_value=0.0, max_value=0.95, step=0.01, key=S.W_FT_WARMUP, **PERSIST)
        m3.number_input("Max tokens per sample", min_value=8, max_value=32_768, step=64, key=S.W_FT_MAXLEN, **PERSIST)

    st.divider()
    st.radio("Initialisation", S.FT_INITS, key=S.W_FT_INIT, horizontal=True, **PERSIST,
             format_func=lambda m: F.INIT_LABELS[m],
             help="vanilla: Kaiming A, zero B. PiSSA: the student's principal components (PEFT). "
                  "PKT export: the teacher's extracted, factorised parameters (docs/method.md).")
    export = F.export_picker(exports)
    F.distill_widgets()
    st.divider()
    executor = E.executor_picker("runs")
    if pkt and export and (export["manifest"].get("student") or student) != (student or "").strip():
        st.warning(f"This export was made for `{export['manifest'].get('student')}`, not `{student}`: a PKT run "
                   "needs an export made for the same student.", icon=":material/warning:")

    b1, b2 = st.columns(2, gap="large")
    with b1:
        st.markdown("**Launch**: one run per seed with the initialisation above.")
        s1, s2 = st.columns([2, 1], vertical_alignment="bottom")
        s1.text_input("Seeds", key=S.W_FT_SEEDS, **PERSIST, help="One run per seed, e.g. 0 or 0, 1, 2.")
        launch = s2.button("Launch", type="primary", icon=":material/play_arrow:", key="w_ft_launch",
                           disabled=train_ref is None or executor is None, width="stretch")
    with b2:
        st.markdown("**Compare**: vanilla, PiSSA and PKT (the export above) with the same data and settings.")
        s3, s4 = st.columns([2, 1], vertical_alignment="bottom")
        s3.text_input("Seeds (each method)", key=S.W_FT_CMP_SEEDS, **PERSIST,
                      help="Every method runs once per seed; vanilla and PiSSA use the export's rank and alpha.")
        compare = s4.button("Compare", icon=":material/compare_arrows:", key="w_ft_compare",
                            disabled=train_ref is None or export is None or executor is None, width="stretch")

    if launch:
        with W.show_errors("queueing the run"):
            settings = F.settings_from_state(ss, train_ref, eval_ref)
            init = ss[S.W_FT_INIT]
            if init == "pkt":
                if export is None:
                    raise ParaknowError("no PKT export to start from: make one on the Export page, "
                                        "or choose vanilla or PiSSA.")
                init = export["dir"]
            dirs = F.launch_runs(settings, init, F.parse_seeds(ss[S.W_FT_SEEDS]), rank=int(ss[S.W_FT_RANK]),
                                 alpha=float(ss[S.W_FT_ALPHA]), export_name=export["name"] if export else None,
                                 executor=executor)
            # the new runs join the charts; the run shown in detail stays (it may be the one running)
            ss[S.W_FT_SHOW] = list(dict.fromkeys((ss.get(S.W_FT_SHOW) or []) + [d.name for d in dirs]))
            ss[S.W_FT_DETAIL] = ss.get(S.W_FT_DETAIL) or dirs[0].name
            S.put(S.FT_NOTICE, f"Queued {len(dirs)} run(s): {', '.join(d.name for d in dirs)}.")
    if compare:
        with W.show_errors("queueing the comparison"):
            settings = F.settings_from_state(ss, train_ref, eval_ref)
            group, dirs = F.compare(settings, export["dir"], F.parse_seeds(ss[S.W_FT_CMP_SEEDS]), executor)
            ss[S.W_FT_SHOW] = [d.name for d in dirs]
            ss[S.W_FT_DETAIL] = dirs[0].name
            ss[S.W_FT_GROUP] = group
            S.put(S.FT_NOTICE, f"Queued the comparison {group}: {len(dirs)} runs (vanilla, PiSSA and PKT "
                               f"`{export['name']}` x seeds {F.parse_seeds(ss[S.W_FT_CMP_SEEDS])}).")

notice = S.get(S.FT_NOTICE)
if notice:
    st.success(notice, icon=":material/schedule:")
    S.put(S.FT_NOTICE, None)


# ---- runs (live) ----------------------------------------------------------------------
def _stop(run_dir) -> None:
    jobs.stop(run_dir)


def _overlay(run_ids: list[str]) -> None:
    ss[S.W_FT_SHOW] = list(run_ids)


def run_details(run) -> None:
    s = run.status
    final = run.final_eval or {}
    state = "stopping" if F.stopping(run) else run.state
    color = {"finished": "green", "failed": "red", "stopped": "orange", "running": "blue"}.get(run.state, "gray")
    st.markdown(f"**{run.label or run.run_id}** :{color}-badge[{state}] · init "
                f"`{F.INIT_LABELS.get(run.method, run.method) if run.method != 'pkt' else run.spec.get('init')}` · "
                f"run `{run.run_id}`")
    took = (s.get("finished") or time.time()) - s["started"] if s.get("started") else None
    m = st.columns(4)
    m[0].metric("Step", f"{s.get('step') or 0}/{s.get('max_steps') or '?'}")
    m[1].metric("Final accuracy", "–" if final.get("accuracy") is None else f"{final['accuracy']:.1%}",
                help=f"exact match on {final.get('n')} eval records" if final else "evaluated when the run finishes")
    m[2].metric("Final eval loss", "–" if final.get("loss") is None else f"{final['loss']:.4f}")
    m[3].metric("Wall time", F.fmt_duration(took))
    spec = run.spec
    st.caption(f"`{spec.get('student')}` on `{spec.get('data')}` · eval `{spec.get('eval_data')}` · "
               f"{spec.get('epochs')} epochs · lr {spec.get('lr')} · batch {spec.get('batch')} "
               f"(micro {spec.get('micro_batch')}) · rank {spec.get('rank')} / alpha {spec.get('alpha')} · "
               f"seed {spec.get('seed')} · {E.where_text(s.get('executor'))}"
               + (f" · {spec['distill']} KD from `{spec.get('distill_teacher')}`" if spec.get("distill") else "")
               + (f" · {s['samples_per_s']:.1f} samples/s" if s.get("samples_per_s") else ""))
    if run.state == "failed":
        st.error(f"This run failed: {s.get('error') or 'no error recorded'}. Check the student, the data and the "
                 "export above (an export must be made for this student), then launch again; the end of its "
                 "log below shows where it stopped.", icon=":material/error:")
        st.code(jobdir.read_log(run.run_dir, 4000)[-4000:] or "(stdout.log is empty)", language="text")
    elif run.state == jobs.UNREADABLE:
        st.warning(f"This run's files are unreadable ({s.get('error')}); the other runs are not affected. "
                   f"Delete its folder `{run.run_dir}` to remove it from this list.",
                   icon=":material/warning:")
    elif run.state == "stopped":
        st.info(f"Stopped at step {s.get('step') or 0}" + (" before it started." if not s.get("step") else
                "; the adapter trained so far was saved."), icon=":material/stop_circle:")
    a1, a2 = st.columns(2)
    if F.is_active(run):
        a1.button("Stop this run", icon=":material/stop:", key=f"w_ft_stop_detail_{run.run_id}",
                  on_click=_stop, args=(run.run_dir,), disabled=F.stopping(run))
    if (run.run_dir / rundir.ADAPTER_DIR / "adapter_config.json").is_file():
        a2.download_button("Download adapter (zip)", data=lambda d=run.run_dir: rundir.adapter_zip(d),
                           file_name=f"{run.run_id}-adapter.zip", mime="application/zip", on_click="ignore",
                           icon=":material/download:", key=f"w_ft_dl_{run.run_id}",
                           help="A plain PEFT LoRA for the original student (PeftModel.from_pretrained).")
    if run.state != "failed":
        with st.expander("stdout.log (tail)"):
            st.code(jobdir.read_log(run.run_dir, 3000)[-3000:] or "(empty)", language="text")


def comparison(runs) -> None:
    groups = F.groups(runs)
    if not groups:
        return
    st.subheader("Comparisons")
    if ss.get(S.W_FT_GROUP) not in groups:
        ss[S.W_FT_GROUP] = groups[0]
    group = st.selectbox("Comparison", groups, key=S.W_FT_GROUP, **PERSIST,
                         format_func=lambda g: F.group_label(g, runs))
    results = jobs.group_results(group, runs)
    st.dataframe(pd.DataFrame(viz.comparison_rows(results)), hide_index=True, width="stretch")
    W.chart(viz.comparison_figure(results, F.group_points(group, runs)), key="ft_compare_chart",
            title=f"Final accuracy per method: {F.group_label(group, runs)}",
            config={"displayModeBar": False})
    members = [r.run_id for r in runs if r.group == group]
    c1, c2 = st.columns([3, 1])
    c1.caption("Final accuracy of each finished run (exact match on the eval data); the bars are means with ± one "
               "sample standard deviation over the seeds, the dots single runs. Same data and hyperparameters; "
               "vanilla and PiSSA train at the export's rank and alpha."
               + ("" if results["complete"] else " Runs are still going: the numbers fill in as they finish."))
    c2.button("Overlay these runs", key="w_ft_overlay_group", on_click=_overlay, args=(members,),
              icon=":material/stacked_line_chart:")


REPORT_SPEC_KEYS = ("student", "data", "init", "epochs", "lr", "batch", "rank", "alpha", "seed")  # per run, in a report


def runs_panel(live: bool) -> None:
    with W.show_errors("reading the runs"), W.collecting_figures():  # the fragment also reruns alone
        _runs_panel(live)


def _runs_panel(live: bool) -> None:
    runs = jobs.list_runs()
    active = sorted((r for r in runs if F.is_active(r)), key=lambda r: (r.state != "running", r.run_id))
    if live != bool(active):
        st.rerun()  # a run started or ended: redraw the page and switch the live updates on or off
    st.subheader("Runs")
    if not runs:
        st.info("No runs yet: choose the data and the initialisation above and press **Launch** (or **Compare**).",
                icon=":material/model_training:")
        return
    n_running = sum(r.state == "running" for r in runs)
    n_queued = sum(r.state == "queued" for r in runs)
    c1, c2 = st.columns([4, 1], vertical_alignment="center")
    c1.caption(f"{len(runs)} runs in `{jobs.runs_root()}` · {n_running} running · {n_queued} queued"
               + (f" · updating every {LIVE_EVERY_S} s" if live else ""))
    c2.button("Refresh", icon=":material/refresh:", key="w_ft_refresh")

    for run in active:
        frac, text = F.progress_of(run)
        a1, a2, a3 = st.columns([2, 5, 1], vertical_alignment="center")
        a1.markdown(f"**{F.run_label(run)}**")
        a2.progress(frac, text=text)
        a3.button("Stop", icon=":material/stop:", key=f"w_ft_stop_{run.run_id}", on_click=_stop,
                  args=(run.run_dir,), disabled=F.stopping(run), width="stretch")

    # cells are text, formatted by run_rows ('–' where there is nothing yet)
    st.dataframe(pd.DataFrame(F.run_rows(runs)), hide_index=True, width="stretch", key="ft_runs_table")

    ids = [r.run_id for r in runs]
    by_id = {r.run_id: r for r in runs}
    chosen = ss.get(S.W_FT_SHOW)
    ss[S.W_FT_SHOW] = F.default_overlay(runs) if chosen is None else [i for i in chosen if i in by_id]
    shown = st.multiselect("Runs in the charts", ids, key=S.W_FT_SHOW, **PERSIST,
                           format_func=lambda i: F.run_label(by_id[i]))
    if shown:
        grouped = len({by_id[i].group for i in shown}) == 1 and by_id[shown[0]].group
        seeds = sorted({by_id[i].spec.get("seed") for i in shown})
        series = []
        for run_id in shown:
            run = by_id[run_id]
            item = {"label": F.run_label(run), "rows": rundir.read_metrics(run.run_dir)}
            if grouped:  # one colour per method, one dash per seed
                item["color"] = viz.METHOD_COLORS.get(run.method)
                item["dash"] = ("solid", "dash", "dot", "dashdot")[seeds.index(run.spec.get("seed")) % 4]
            series.append(item)
        W.chart(viz.run_curves(series), key="ft_curves", title="Training curves", config={"displayModeBar": False})
    else:
        st.caption("Select runs above to draw their curves.")

    if ss.get(S.W_FT_DETAIL) not in by_id:
        ss[S.W_FT_DETAIL] = shown[0] if shown else ids[0]
    detail = st.selectbox("Run details", ids, key=S.W_FT_DETAIL, **PERSIST, format_func=lambda i: F.run_label(by_id[i]))
    with st.container(border=True):
        run_details(by_id[detail])
    comparison(runs)
    W.report_actions("Fine-tune", {
        **{f"run {i}": {k: by_id[i].spec.get(k) for k in REPORT_SPEC_KEYS} for i in shown},
        "comparison": ss.get(S.W_FT_GROUP) or "none"})


live = False
with W.show_errors("reading the runs"):
    live = any(F.is_active(r) for r in jobs.list_runs())
st.fragment(runs_panel, run_every=LIVE_EVERY_S if live else None)(live)
