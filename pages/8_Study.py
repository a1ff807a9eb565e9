"""Study: does the transfer help here, and which extraction? Arms x seeds, 95 % intervals, verdicts."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from paraknow import viz
from paraknow.core.errors import ParaknowError
from paraknow.core.tasks import TASKS
from paraknow.core.threads import WORKER_CHOICES
from paraknow.study import parse_recipe, recipe_from_text
from paraknow.study.cells import RECIPE_FILE
from paraknow.study.control import log_tail, read_study, start_study, stop_study
from paraknow.study.plan import plan_cells
from paraknow.study.recipe import FACTOR_LABELS
from paraknow.study.report import (REPORT_HTML, RESULTS_CSV, RESULTS_JSON, arm_rows, bars_figure, comparison_rows,
    cost_figure, cost_points, seed_count_figure, seed_count_points)
from paraknow.study.runner import WORKERS_HELP, prepare
from ui import executor as E
from ui import state as S
from ui import study as U
from ui import widgets as W
from ui.state import PERSIST

LIVE_EVERY_S = 2
W.entry_guard()
S.init_study()
ss = st.session_state

st.title("Study")
st.caption("A controlled experiment on one teacher/student pair: every arm (an initialisation, an extraction "
           "variant or a control) is trained once per seed, learning rates are chosen on the validation split, "
           "and each arm's test accuracy is reported as a mean with a 95 % confidence interval, paired with the "
           "baseline seed by seed. Studies run in the background under `cache/studies/`; they survive reloads, "
           "can be stopped and resumed. The CLI runs the same recipe: `python -m paraknow study --recipe FILE "
           "--out DIR`.")


# ---- the recipe: grid builder or a loaded recipe -----------------------------------------
def _limit(value) -> int | None:
    """A builder's item count as a recipe limit: 0 is all of them (None)."""
    return int(value) or None


def builder_recipe() -> dict:
    with st.container(border=True):
        c = st.columns([2, 2, 1])
        c[0].text_input("Teacher", key=S.W_ST_TEACHER, **PERSIST)
        c[1].text_input("Student", key=S.W_ST_STUDENT, **PERSIST)
        c[2].selectbox("Task", list(TASKS), key=S.W_ST_TASK, **PERSIST,
                       help="Seed samples from its seed split, training on train, lr chosen on val, tested on test.")
        h = st.columns(8)
        h[0].number_input("Epochs", min_value=0.01, max_value=1000.0, step=1.0, key=S.W_ST_EPOCHS, **PERSIST)
        h[1].number_input("Learning rate", min_value=1e-7, max_value=1.0, format="%.1e", key=S.W_ST_LR, **PERSIST,
                          help="For the arms without a sweep (PKT and its variants).")
        h[2].number_input("Batch", min_value=1, max_value=65_536, key=S.W_ST_BATCH, **PERSIST)
        h[3].number_input("Micro-batch", min_value=1, max_value=4096, key=S.W_ST_MICRO, **PERSIST)
        h[4].number_input("Rank r", min_value=1, max_value=4096, key=S.W_ST_RANK, **PERSIST)
        h[5].number_input("LoRA alpha", min_value=0.0625, max_value=4096.0, key=S.W_ST_ALPHA, **PERSIST)
        h[6].number_input("Max new tokens", min_value=1, max_value=4096, key=S.W_ST_TOKENS, **PERSIST)
        h[7].button("Quick preset", key="w_st_quick", on_click=S.apply_quick_preset, icon=":material/bolt:",
                    help=f"A study for a class hour: {U.QUICK_PRESET['seeds']} seed, vanilla vs PKT at one "
                         f"learning rate, {U.QUICK_PRESET['test_limit']} test and {U.QUICK_PRESET['val_limit']} "
                         "validation items (docs/study.md).")
        v = st.columns(4)
        v[0].number_input("Val items", min_value=0, max_value=100_000, key=S.W_ST_EVAL_LIMIT, **PERSIST,
                          help="Validation items scored per cell (the learning-rate choice); 0: all of them.")
        v[1].number_input("Test items", min_value=0, max_value=100_000, key=S.W_ST_TEST_LIMIT, **PERSIST,
                          help="Test items scored per cell (the first N of the test split); 0: all of them.")
        a, b = st.columns([3, 1])
        a.multiselect("Controls", list(U.CONTROLS), key=S.W_ST_CONTROLS, **PERSIST,
                      help="  \n".join(f"**{n}**: {text}" for n, (_, text) in U.CONTROLS.items()))
        b.text_input("Learning-rate sweep", key=S.W_ST_SWEEP, **PERSIST,
                     help="vanilla and PiSSA train once per rate; per seed the best on validation is kept.")
        st.markdown("**Factors** — one PKT arm per level, everything else at the default (an ablation):")
        levels = U.factor_levels()
        cols = st.columns(len(levels))
        for col, (factor, options) in zip(cols, levels.items()):
            col.multiselect(FACTOR_LABELS[factor], options, key=S.W_ST_FACTOR + factor, **PERSIST)
        d = st.columns([1, 2, 1])
        d[0].number_input("Seeds", min_value=1, max_value=64, key=S.W_ST_SEEDS, **PERSIST,
                          help="Five or more to see differences of a few points.")
        d[2].number_input("Budget (minutes)", min_value=0.1, max_value=100_000.0, key=S.W_ST_BUDGET, **PERSIST,
                          help="A study whose estimate exceeds it is refused, and a running study stops before "
                               "a cell that would take it past the budget (resumable).")
        recipe = U.build_recipe(
            ss[S.W_ST_TEACHER].strip(), ss[S.W_ST_STUDENT].strip(), ss[S.W_ST_TASK],
            {"epochs": ss[S.W_ST_EPOCHS], "lr": ss[S.W_ST_LR], "batch": int(ss[S.W_ST_BATCH]),
             "micro_batch": int(ss[S.W_ST_MICRO]), "rank": int(ss[S.W_ST_RANK]), "alpha": ss[S.W_ST_ALPHA],
             "eval_max_new_tokens": int(ss[S.W_ST_TOKENS])},
            int(ss[S.W_ST_SEEDS]), U.parse_rates(ss[S.W_ST_SWEEP]), ss[S.W_ST_CONTROLS],
            {f: ss[S.W_ST_FACTOR + f] for f in levels}, ss[S.W_ST_BASELINE], ss[S.W_ST_BUDGET],
            _limit(ss[S.W_ST_EVAL_LIMIT]), _limit(ss[S.W_ST_TEST_LIMIT]))
        names = [arm["name"] for arm in recipe["arms"]]
        if names and ss[S.W_ST_BASELINE] not in names:
            ss[S.W_ST_BASELINE] = names[0]
        d[1].selectbox("Baseline", names or ["-"], key=S.W_ST_BASELINE, **PERSIST,
                       help="Every arm is compared with it, seed by seed.")
        return recipe


def use_pasted() -> None:
    try:
        ss[S.ST_RECIPE] = recipe_from_text(ss[S.W_ST_PASTE] or "").to_dict()
    except ParaknowError as exc:
        ss[S.ST_RECIPE] = None
        ss[S.ST_NOTICE] = ("error", str(exc))


def loaded_recipe() -> None:
    up = st.file_uploader("Recipe file (JSON or YAML)", type=["json", "yaml", "yml"], key="w_st_upload")
    if up is not None:
        ss[S.W_ST_PASTE] = up.getvalue().decode("utf-8", errors="replace")
    st.text_area("Recipe", key=S.W_ST_PASTE, **PERSIST, height=220,
                 help="The keys of docs/study.md: teacher, student, seed_data, train_data, val_data, test_data, "
                      "train, seeds, baseline, budget_minutes, arms.")
    c1, c2 = st.columns(2)
    c1.button("Use this recipe", key="w_st_use", on_click=use_pasted, icon=":material/input:")
    c2.button("Back to the grid builder", key="w_st_builder", on_click=lambda: ss.update({S.ST_RECIPE: None}),
              disabled=ss[S.ST_RECIPE] is None)


build_tab, load_tab = st.tabs(["Grid builder", "Load a recipe"])
recipe_dict = recipe = None
with build_tab:
    with W.show_errors("building the recipe"):
        built = builder_recipe()
with load_tab:
    loaded_recipe()
notice = ss.get(S.ST_NOTICE)
if notice:
    (st.error if notice[0] == "error" else st.success)(W.page_message(notice[1]))  # it may quote the recipe
    ss[S.ST_NOTICE] = None
with W.show_errors("checking the recipe"):
    recipe_dict = ss[S.ST_RECIPE] or built
    recipe = parse_recipe(recipe_dict)

if recipe is not None:
    cells = plan_cells(recipe)
    source = "the loaded recipe" if ss[S.ST_RECIPE] else "the grid builder"
    st.markdown(f"**{len(recipe.arms)} arms, {len(cells)} runs** over seeds {recipe.seeds} from {source}; "
                f"baseline `{recipe.baseline}`, budget {recipe.budget_minutes:g} min; items scored per cell: "
                f"test {recipe.test_limit or 'all'}, validation {recipe.val_limit or 'all'}.")
    with st.expander("Arms"):
        st.dataframe(pd.DataFrame([{"arm": a.name, "init": a.init,
                                    "lr sweep": ", ".join(f"{x:g}" for x in a.lr_sweep or []),
                                    "extract": json.dumps(a.extract) if a.extract else ""} for a in recipe.arms]),
                     hide_index=True, width="stretch")
    executor = E.executor_picker("study's cells")
    e = st.columns([2, 1, 1, 1, 1], vertical_alignment="bottom")
    e[0].text_input("Study name", key=S.W_ST_NAME, **PERSIST, placeholder="e.g. arith-structures",
                    help="Its folder under cache/studies/.")
    e[1].selectbox("Cells at a time", WORKER_CHOICES, key=S.W_ST_WORKERS, **PERSIST,
                      help=WORKERS_HELP)
    estimate = e[2].button("Estimate time", key="w_st_estimate", icon=":material/timer:", width="stretch",
                           help="Measures this machine on the study's models and data (a few seconds).")
    launch = e[3].button("Launch", key="w_st_launch", type="primary", icon=":material/play_arrow:", width="stretch",
                         disabled=executor is None)
    e[4].download_button("Recipe (JSON)", data=json.dumps(recipe.to_dict(), indent=1), file_name="study.json",
                         mime="application/json", on_click="ignore", key="w_st_dl_recipe", width="stretch",
                         icon=":material/download:")
    if estimate:
        with W.show_errors("estimating the study"), st.spinner("Measuring this machine…"):
            _, est = prepare(recipe, U.studies_root() / ".estimate-only", workers=ss[S.W_ST_WORKERS])
            ss[S.ST_ESTIMATE] = {"recipe": recipe.to_dict(), "text": est.describe()}
    if ss[S.ST_ESTIMATE] and ss[S.ST_ESTIMATE]["recipe"] == recipe.to_dict():
        st.info(f"Estimated {ss[S.ST_ESTIMATE]['text']}; the budget is {recipe.budget_minutes:g} min.",
                icon=":material/timer:")
    if launch:
        with W.show_errors("launching the study"), st.spinner("Checking the recipe and measuring this machine…"):
            out = U.new_study_dir(ss[S.W_ST_NAME])
            start_study(recipe, out, workers=ss[S.W_ST_WORKERS], executor=executor)
            ss[S.W_ST_VIEW] = out.name
            st.success(f"Study `{out.name}` started: {len(cells)} runs.", icon=":material/schedule:")


# ---- studies (live) ----------------------------------------------------------------------
def study_panel(live: bool) -> None:
    with W.show_errors("reading the study"):
        _study_panel(live)


def _study_panel(live: bool) -> None:
    names = U.list_studies()
    st.subheader("Studies")
    if not names:
        st.info("No studies yet: build one above and press **Launch**.", icon=":material/science:")
        return
    if ss.get(S.W_ST_VIEW) not in names:
        ss[S.W_ST_VIEW] = names[0]
    name = st.selectbox("Study", names, key=S.W_ST_VIEW, **PERSIST)
    view = read_study(U.studies_root() / name)
    if live != view.live:
        st.rerun()  # it started or ended: switch the live updates on or off
    results, status = view.results, view.status
    done = sum(c["state"] == "finished" for c in results["cells"])
    total = len(results["cells"])
    color = {"finished": "green", "running": "blue", "stopped": "orange"}.get(view.state, "red")
    running = status.get("cells_running") or ([status["cell"]] if status.get("cell") else [])
    c1, c2, c3, c4 = st.columns([4, 1, 1, 1], vertical_alignment="bottom")
    c1.markdown(f":{color}-badge[{view.state}] {done}/{total} runs finished"
                + (" · running " + ", ".join(f"`{c}`" for c in running) if view.live and running else "")
                + (f" · cells {E.where_text(status['executor'])}" if status.get("executor") else "")
                + (f" · updating every {LIVE_EVERY_S} s" if view.live else ""))
    c2.button("Stop", key="w_st_stop", icon=":material/stop:", disabled=not view.live, width="stretch",
              on_click=stop_study, args=(view.out,))
    executor = E.chosen()  # the picker above
    budget = c4.number_input("Budget (min)", min_value=0.1, max_value=100_000.0, value=float(view.recipe.budget_minutes),
                             key=f"w_st_resume_budget_{name}", disabled=view.live or done == total,
                             help="The study's whole budget, earlier sessions included; raise it to resume a "
                                  "study its budget stopped.")
    if c3.button("Resume", key="w_st_resume", icon=":material/play_arrow:", width="stretch",
                 disabled=view.live or done == total or executor is None):
        with W.show_errors("resuming the study"), st.spinner("Checking the recipe and measuring this machine…"):
            start_study(U.with_budget(view.recipe, budget), view.out, resume=True, workers=ss[S.W_ST_WORKERS],
                        executor=executor)
            st.rerun()
    st.progress(done / total if total else 0.0)
    if view.live:
        for cell_id, text, fraction in U.running_progress(view.out, running):
            st.progress(fraction, text=f"`{cell_id}`: {text}")
    if status.get("budget_stop") and not view.live:
        st.warning(status["budget_stop"], icon=":material/timer_off:")
    if view.state in ("finished", "stopped") and status.get("wall_s") is not None and status.get("cells_run"):
        st.caption(f"Estimated {status['estimate_s'] / 60:.1f} min, took {status['wall_s'] / 60:.1f} min "
                   f"for the {status['cells_run']} runs of the last session"
                   + (f"; {status['spent_s'] / 60:.1f} min spent in all." if status.get("spent_s") else "."))
    if view.state == "failed":
        st.error(f"The study process ended early ({status.get('error') or view.state}); press Resume to go on. "
                 "The end of its log:", icon=":material/error:")
        st.code(log_tail(view.out) or "(empty)", language="text")

    st.dataframe(pd.DataFrame(arm_rows(results)), hide_index=True, width="stretch", key="st_arms")
    comparisons = comparison_rows(results)
    if comparisons:
        st.markdown("**Comparisons** (paired by seed, accuracy points)")
        st.dataframe(pd.DataFrame(comparisons), hide_index=True, width="stretch", key="st_comparisons")
        st.caption(f"Within each family the p-values are corrected ({results['correction']}) and the adjusted "
                   "interval is at level 1 − 0.05/m. better/worse: adjusted p < 0.05; equivalent: the adjusted "
                   f"interval inside ±{100 * results['equivalence_margin']:g} points; otherwise inconclusive, "
                   "with the minimum detectable effect at 80 % power.")
    if any(a["mean"] is not None for a in results["arms"]):
        st.plotly_chart(bars_figure(results), key="st_bars", config={"displayModeBar": False})
        st.caption("Mean test accuracy over seeds with its 95 % confidence interval (Student t); the dotted line "
                   "is the baseline. Partial while the study runs.")
    spent = cost_points(results)
    if spent:
        st.plotly_chart(cost_figure(spent, results), key="st_cost", config={"displayModeBar": False})
        st.caption("Gain over the baseline (paired by seed, 95 % interval) against the teacher's estimated FLOPs "
                   "per cell: PKT's sensitivity pass, logit KD's teacher forwards, sequence KD's generation; arms "
                   "without a teacher at the left. The table's *teacher cost* column gives the tokens and seconds "
                   "too (docs/distill.md).")
    points = seed_count_points(view.recipe, results)
    if points:
        st.plotly_chart(seed_count_figure(points, results), key="st_seed_count", config={"displayModeBar": False})
        st.caption("PKT with the default extraction but for the number of seed samples behind the sensitivity "
                   "(the paper's seed-count figure).")
    series = U.curve_series(view.out, results)
    if series:
        with st.expander("Learning curves of the chosen runs", expanded=False):
            st.plotly_chart(viz.run_curves(series), key="st_curves", config={"displayModeBar": False})
    signals = U.signal_rows(results)
    if signals:
        st.markdown("**Cheap signals** (from each PKT export, before training) and their rank correlation with "
                    "the final accuracy across arms:")
        st.dataframe(pd.DataFrame(signals), hide_index=True, width="stretch", key="st_signals")
        for arm in results["arms"]:
            if (arm["signals"] or {}).get("seed_warning"):
                st.warning(f"**{arm['arm']}**: {arm['signals']['seed_warning']}", icon=":material/warning:")
    with st.expander("Runs"):
        st.dataframe(pd.DataFrame(U.cell_rows(results)), hide_index=True, width="stretch", key="st_cells")
    d = st.columns(4)
    for col, (fname, mime) in zip(d, ((RESULTS_JSON, "application/json"), (RESULTS_CSV, "text/csv"),
                                      (REPORT_HTML, "text/html"), (RECIPE_FILE, "application/json"))):
        path = view.out / fname
        col.download_button(fname, data=lambda p=path: p.read_bytes(), file_name=f"{name}-{fname}",
                            mime=mime, on_click="ignore", disabled=not path.is_file(), key=f"w_st_dl_{fname}",
                            icon=":material/download:", width="stretch")


live = False
with W.show_errors("reading the studies"):
    shown = ss.get(S.W_ST_VIEW)
    names = U.list_studies()
    if names:
        live = read_study(U.studies_root() / (shown if shown in names else names[0])).live
st.fragment(study_panel, run_every=LIVE_EVERY_S if live else None)(live)
