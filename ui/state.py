"""Every st.session_state key the app uses, in one place, with its default.

Two kinds of keys:

- results (prefix `pk_`): what the pipeline produced so far -- loaded model specs, the
  sensitivity map, the mapping choices, the last export. Only code writes them.
- widget keys (prefix `w_`): the value of one widget. Widgets are created with
  `**PERSIST` (`persist_state="session"`) and without `value=`/`index=`, so their value is
  the one stored here, it survives moving between pages, and code may preset it (quick
  start, "edit this mapping") before the widget is drawn.

Development override (documented in the README of the UI, see `default_refs`): the
environment variables PARAKNOW_APP_TEACHER / PARAKNOW_APP_STUDENT replace the default
model references (demo:teacher / demo:student), e.g. with tiny local models.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from paraknow.runs.rundir import has_finished_run

PERSIST = {"persist_state": "session"}
ROLES = ("teacher", "student")

# ---- results --------------------------------------------------------------------------
TEACHER = "pk_teacher"            # {"ref", "dtype", "device"} of the loaded teacher, or None
STUDENT = "pk_student"            # same for the student
TEACHER_INFO = "pk_teacher_info"  # paraknow.core.models.ModelInfo of the loaded teacher (describe)
STUDENT_INFO = "pk_student_info"
SENS = "pk_sens"                  # paraknow.transfer.sensitivity.SensitivityMap (ui.widgets.sensitivity_result)
SENS_B = "pk_sens_b"              # second map for the task comparison
MANUAL_MAP = "pk_manual_map"      # manual layer map (list, teacher layer or None per student layer)
MANUAL_BASE = "pk_manual_base"    # the map the mapping table editor started from
MANUAL_VERSION = "pk_manual_version"  # bumped to give the table editor a fresh key
OVERRIDES = "pk_overrides"        # {student module: (row, col)} manual block positions
PLAN = "pk_plan"                  # HeldPlan: the TransferPlan of the current mapping and its settings key
CKA = "pk_cka"                    # {"key", "matrix", "info"} layer similarity (key: ui.jobs.similarity_key)
EXPORT = "pk_export"              # {"name", "dir", "manifest"} of the last export
EXPORT_JOB = "pk_export_job"      # key of the export job started from this session, until it ends
NAME_AUTO = "pk_name_auto"        # the export name last filled in from the settings (followed until edited)
URL_READ = "pk_url_read"          # the URL's state was applied (once per session: a reload is a new session)
URL_NOTICE = "pk_url_notice"      # what in the URL or an uploaded recipe could not be used
URL_PENDING = "pk_url_pending"    # a link's SessionRecipe that names files or hub ids: applied on one click
EXPORTS_MADE = "pk_exports_made"  # names exported in this session
VERIFY = "pk_verify"              # paraknow.transfer.export.Verification of the last verification
VERIFY_KEY = "pk_verify_key"      # content key of that verification's job (ui.jobs.verify_key)
QUICKSTART = "pk_quickstart"      # summary line of the last quick start
HUB_CHECKED = "pk_hub_checked"    # hub ids whose config the user asked to look up (network)
PG_RESULT = "pk_pg_result"        # {"key", "outputs": [playground.Output]} of the last Playground run
LESSON = "pk_lesson"              # paraknow.lesson.Lesson of the Lesson page (its results so far)
COMPARE = "pk_compare"            # {"key", "rows"}: the Mapping page's granularity comparison (ui.compare)
COMPARE_VERSION = "pk_compare_version"  # bumped to give the comparison table a fresh key (no row selected)



@dataclass
class HeldPlan:
    """The plan the session holds, with the settings it was made from (ui.widgets.plan_key)."""
    key: str
    plan: object  # paraknow.transfer.plan.TransferPlan


RESULT_DEFAULTS = {
    TEACHER: None, STUDENT: None, TEACHER_INFO: None, STUDENT_INFO: None, SENS: None, SENS_B: None,
    MANUAL_MAP: None, MANUAL_BASE: None, MANUAL_VERSION: 0, OVERRIDES: {}, PLAN: None, CKA: None,
    EXPORT: None, EXPORT_JOB: None, NAME_AUTO: None, URL_NOTICE: None, URL_PENDING: None, EXPORTS_MADE: [],
    VERIFY: None,
    VERIFY_KEY: None, QUICKSTART: None,
    HUB_CHECKED: [], PG_RESULT: None, LESSON: None, COMPARE: None, COMPARE_VERSION: 0,
}

# ---- widgets --------------------------------------------------------------------------
KIND_DEMO, KIND_BUNDLED, KIND_LOCAL, KIND_GGUF, KIND_HUB = (
    "Built-in demo", "Bundled SmolLM2", "Local folder", "GGUF file", "Hub id")
MODEL_KINDS = (KIND_DEMO, KIND_BUNDLED, KIND_LOCAL, KIND_GGUF, KIND_HUB)
BUNDLED_REF = "bundled:smollm2-135m-instruct"


def model_key(role: str, field: str) -> str:
    """Widget key of a model picker field: kind | demo | local | gguf | hub | dtype | device."""
    return f"w_{role}_{field}"


# Sensitivity page
W_RECIPE_UPLOAD = "w_recipe_upload"  # the sidebar's recipe file uploader (not persisted: applied once)
W_CACHE_KIND = "w_cache_kind"      # the kind of cache entry the Home page's cache panel clears
W_CACHE_DAYS = "w_cache_days"      # ... only those unused for this many days (0: all)
W_SOURCE = "w_sens_source"        # one of SOURCES
W_TASK = "w_sens_task"
W_SPLIT = "w_sens_split"
W_PASTE = "w_sens_paste"
W_DATA_PATH = "w_sens_path"       # a JSONL file on the server
W_UPLOAD = "w_sens_upload"        # file_uploader (no persist: the parsed records are kept instead)
W_SAMPLES = "w_sens_samples"
W_METRIC = "w_sens_metric"
W_MAXLEN = "w_sens_maxlen"
W_VALUE = "w_sens_value"          # sum | mean
W_LOG = "w_sens_log"
W_DRILL_LAYER = "w_drill_layer"
W_DRILL_MODULE = "w_drill_module"
W_DRILL_LOG = "w_drill_log"
W_DRILL_MAX = "w_drill_max"      # max pooling instead of mean in the drill-down
W_GRID_CHART = "w_grid_chart"     # the clickable heatmap's selection state
W_CMP_TASK = "w_cmp_task"
W_CMP_MODE = "w_cmp_mode"
SOURCE_TASK, SOURCE_UPLOAD, SOURCE_PASTE, SOURCE_FILE = "Built-in task", "Upload JSONL", "Paste JSONL", "JSONL file"
SOURCES = (SOURCE_TASK, SOURCE_UPLOAD, SOURCE_PASTE, SOURCE_FILE)

# Mapping page
W_STRATEGY = "w_map_strategy"
W_MAP_SEED = "w_map_seed"
W_STRUCTURE = "w_map_structure"
W_COHERENT = "w_map_coherent"
W_COMPARE_METRIC = "w_map_compare_metric"  # the comparison chart's colour (viz.COMPARE_METRICS)
W_MODULE_PREFIX = "w_map_mod_"    # + role: one checkbox per module role
W_PREVIEW = "w_map_preview"       # student module shown in the preview
W_OVR_ON = "w_map_ovr_on"         # + module suffix added by the page
W_OVR_ROW = "w_map_ovr_row"
W_OVR_COL = "w_map_ovr_col"
W_MAP_EDITOR = "w_map_editor"     # + version: st.data_editor (not persisted; see MANUAL_BASE)

# Export page
W_RANK = "w_exp_rank"
W_ALPHA = "w_exp_alpha"
W_SPLIT_MODE = "w_exp_split"
W_MODE = "w_exp_mode"
W_NAME = "w_exp_name"
W_OVERWRITE = "w_exp_overwrite"
W_SPEC_MODULES = "w_exp_spec_modules"


# Playground page
PG_SOURCES = ("Built-in test item", "Type a prompt")
W_PG_SOURCE = "w_pg_source"
W_PG_TASK = "w_pg_task"
W_PG_INDEX = "w_pg_index"
W_PG_PROMPT = "w_pg_prompt"
W_PG_REFERENCE = "w_pg_reference"
W_PG_ADAPTER = "w_pg_adapter"      # adapter path for "student + adapter" ("" = none; unset: the newest)
W_PG_TOKENS = "w_pg_tokens"        # max new tokens
W_PG_DIFF_A = "w_pg_diff_a"        # the two outputs whose difference is highlighted
W_PG_DIFF_B = "w_pg_diff_b"

# Lesson page
W_LESSON_STEP = "w_lesson_step"        # the step shown (a paraknow.lesson.STEP_KEYS key)
W_LESSON_PRESENT = "w_lesson_present"  # presentation mode: larger fonts and charts
W_LESSON_PREDICT = "w_lesson_predict_"  # + step key: the option predicted before the step runs
W_LESSON_TASK = "w_lesson_task"        # the lesson's task (follows the session's map: follow_task)


def default_refs() -> tuple[str, str]:
    """(teacher, student) references preselected everywhere: the demo pair unless overridden."""
    return (os.environ.get("PARAKNOW_APP_TEACHER") or "demo:teacher",
            os.environ.get("PARAKNOW_APP_STUDENT") or "demo:student")


def kind_of(ref: str) -> str:
    if ref.startswith("demo:"):
        return KIND_DEMO
    if ref.startswith("bundled:"):
        return KIND_BUNDLED
    if ref.lower().endswith(".gguf"):
        return KIND_GGUF
    if ref.startswith(("/", ".", "~")) or os.path.isdir(os.path.expanduser(ref)):
        return KIND_LOCAL
    return KIND_HUB


def preset_model_widgets(role: str, ref: str, dtype: str = "float32", device: str = "cpu") -> None:
    """Point a model picker at `ref` (quick start and first visit)."""
    ss = st.session_state
    kind = kind_of(ref)
    ss[model_key(role, "kind")] = kind
    field = {KIND_DEMO: "demo", KIND_LOCAL: "local", KIND_GGUF: "gguf", KIND_HUB: "hub"}.get(kind)
    if field:
        ss[model_key(role, field)] = ref
    ss[model_key(role, "dtype")] = dtype
    ss[model_key(role, "device")] = device


def widget_defaults() -> dict:
    """Widget defaults; every pipeline setting is read from its config dataclass (paraknow.core.options)."""
    from paraknow.core.architecture import EMBED_ROLES, LAYER_ROLES
    from paraknow.core.compatibility import default_roles
    from paraknow.core.options import default_of
    from paraknow.lesson import STEP_KEYS, LessonConfig
    from paraknow.runs.playground import DEFAULT_MAX_NEW_TOKENS
    from paraknow.transfer.plan import TransferConfig
    from paraknow.transfer.sensitivity import SensitivityConfig

    sens = lambda name: default_of(SensitivityConfig, name)  # noqa: E731
    transfer = lambda name: default_of(TransferConfig, name)  # noqa: E731
    d = {
        W_SOURCE: SOURCE_TASK, W_TASK: "arith", W_SPLIT: "seed", W_PASTE: "", W_DATA_PATH: "", W_SAMPLES: sens("samples"),
        W_METRIC: sens("metric"), W_MAXLEN: sens("max_length"), W_VALUE: "sum", W_LOG: False, W_DRILL_LOG: False,
        W_DRILL_MAX: False, W_CMP_TASK: "instruct", W_CMP_MODE: "difference",
        W_STRATEGY: transfer("layers"), W_MAP_SEED: transfer("seed"), W_STRUCTURE: transfer("structure"),
        W_COHERENT: transfer("coherent"), W_COMPARE_METRIC: "lift",
        W_RANK: transfer("rank"), W_ALPHA: float(transfer("alpha")), W_SPLIT_MODE: transfer("split"),
        W_MODE: transfer("mode"), W_NAME: "", W_OVERWRITE: False,
        W_PG_SOURCE: PG_SOURCES[0], W_PG_TASK: "arith", W_PG_INDEX: 0, W_PG_PROMPT: "", W_PG_REFERENCE: "",
        W_PG_TOKENS: DEFAULT_MAX_NEW_TOKENS, W_LESSON_STEP: STEP_KEYS[0], W_LESSON_PRESENT: False,
        W_LESSON_TASK: LessonConfig.task,
    }
    defaults = default_roles()  # embeddings included: dropped at plan time when the tokenizers differ
    for role in LAYER_ROLES + EMBED_ROLES:
        d[W_MODULE_PREFIX + role] = role in defaults
    for role in ROLES:
        d[model_key(role, "local")] = ""
        d[model_key(role, "gguf")] = ""
        d[model_key(role, "hub")] = ""
        d[model_key(role, "demo")] = f"demo:{role}"
    return d


def init() -> None:
    """Fill in every default that is missing (called by app.py on every run, before any page)."""
    ss = st.session_state
    for key, value in RESULT_DEFAULTS.items():
        if key not in ss:
            ss[key] = value.copy() if isinstance(value, (dict, list)) else value
    for key, value in widget_defaults().items():
        if key not in ss:
            ss[key] = value
    refs = default_refs()
    for role, ref in zip(ROLES, refs):
        if model_key(role, "kind") not in ss:
            preset_model_widgets(role, ref)


def get(key: str):
    return st.session_state.get(key, RESULT_DEFAULTS.get(key))


def put(key: str, value) -> None:
    st.session_state[key] = value


def reset_after_models() -> None:
    """New models: everything computed from the old ones is stale."""
    for key in (SENS, SENS_B, MANUAL_MAP, MANUAL_BASE, PLAN, CKA, EXPORT, VERIFY):
        st.session_state[key] = None
    st.session_state[OVERRIDES] = {}
    st.session_state[MANUAL_VERSION] = get(MANUAL_VERSION) + 1


def reset_after_sensitivity() -> None:
    """A new sensitivity map: plans, overrides and exports made from the old one are stale."""
    for key in (PLAN, SENS_B, EXPORT, VERIFY):
        st.session_state[key] = None
    st.session_state[OVERRIDES] = {}


def progress_summary() -> dict[str, bool]:
    """Which pipeline steps are done (for the home page's diagram and the sidebar)."""
    return {"Models": bool(get(TEACHER) and get(STUDENT)), "Sensitivity": bool(get(SENS)),
            "Mapping": bool(get(PLAN)), "Export": bool(get(EXPORT)), "Fine-tune": has_finished_run()}


# ---- Where queued runs and study cells execute (Fine-tune and Study pages, ui/executor.py) ----
# One choice for both pages: the fields of paraknow.runs.executors.ExecutorConfig.
W_EXEC = "w_exec"                   # executor name (a key of paraknow.runs.executors.EXECUTORS)
W_EXEC_ADDRESS = "w_exec_address"   # Ray address text ("" = Ray's own lookup)
W_EXEC_CPUS = "w_exec_cpus"
W_EXEC_GPUS = "w_exec_gpus"


def executor_defaults() -> dict:
    from paraknow.core.options import default_of
    from paraknow.runs.executors import ExecutorConfig

    executor = lambda name: default_of(ExecutorConfig, name)  # noqa: E731
    return {W_EXEC: executor("executor"), W_EXEC_ADDRESS: executor("address") or "",
            W_EXEC_CPUS: float(executor("cpus")), W_EXEC_GPUS: float(executor("gpus"))}


# ---- Fine-tune page (page 6) ------------------------------------------------------------
# Runs themselves live on disk (paraknow.runs.jobs, cache/runs/<id>/); the session only keeps the
# form's values, which runs are overlaid and the last launch's message.
FT_NOTICE = "pk_ft_notice"        # message about the last launch / comparison (shown once)
FT_UPLOADS = "pk_ft_uploads"      # {"train"|"eval": saved path} of uploaded JSONL data
FT_SOURCES = ("Built-in task", "JSONL file", "Upload JSONL")
FT_EVAL_NONE = "No evaluation"
FT_INITS = ("vanilla", "pissa", "pkt")  # pkt = a PKT export (W_FT_EXPORT)
W_FT_STUDENT = "w_ft_student"
W_FT_DEVICE = "w_ft_device"
W_FT_DTYPE = "w_ft_dtype"
W_FT_SRC = "w_ft_src_"            # + "train" | "eval": data source radio
W_FT_TASK = "w_ft_task_"          # + "train" | "eval"
W_FT_SPLIT = "w_ft_split_"        # + "train" | "eval"
W_FT_PATH = "w_ft_path_"          # + "train" | "eval"
W_FT_UPLOAD = "w_ft_upload_"      # + "train" | "eval" (file_uploader, not persisted)
W_FT_EVAL_LIMIT = "w_ft_eval_limit"
W_FT_EVAL_EVERY = "w_ft_eval_every"   # 0 = only at the end
W_FT_EVAL_TOKENS = "w_ft_eval_tokens"
W_FT_INIT = "w_ft_init"
W_FT_EXPORT = "w_ft_export"       # export name under cache/exports/
W_FT_EPOCHS = "w_ft_epochs"
W_FT_LR = "w_ft_lr"
W_FT_BATCH = "w_ft_batch"
W_FT_MICRO = "w_ft_micro"
W_FT_RANK = "w_ft_rank"
W_FT_ALPHA = "w_ft_alpha"
W_FT_DROPOUT = "w_ft_dropout"
W_FT_WARMUP = "w_ft_warmup"
W_FT_MAXLEN = "w_ft_maxlen"
W_FT_DISTILL = "w_ft_distill"     # FT_NO_DISTILL or one of TrainConfig's distill choices
FT_NO_DISTILL = "none"
W_FT_DISTILL_TEACHER = "w_ft_distill_teacher"
W_FT_DISTILL_WEIGHT = "w_ft_distill_weight"
W_FT_TEMPERATURE = "w_ft_temperature"
W_FT_SEEDS = "w_ft_seeds"         # "0" or "0, 1, 2": one run per seed
W_FT_CMP_SEEDS = "w_ft_cmp_seeds"
W_FT_SHOW = "w_ft_show"           # run ids overlaid in the charts (None: not chosen yet)
W_FT_DETAIL = "w_ft_detail"       # run id shown in detail
W_FT_GROUP = "w_ft_group"         # comparison group shown


def finetune_defaults() -> dict:
    from paraknow.core.options import default_of
    from paraknow.runs.train_config import TrainConfig
    from paraknow.transfer.plan import TransferConfig

    train = lambda name: default_of(TrainConfig, name)  # noqa: E731
    student = (get(STUDENT) or {}).get("ref") or default_refs()[1]
    d = {FT_NOTICE: None, FT_UPLOADS: {}, W_FT_STUDENT: student, W_FT_DEVICE: train("device"),
         W_FT_DTYPE: train("dtype") or "float32", W_FT_EVAL_LIMIT: train("eval_limit"),
         W_FT_EVAL_EVERY: train("eval_every") or 0, W_FT_EVAL_TOKENS: train("eval_max_new_tokens"),
         W_FT_INIT: train("init"), W_FT_EPOCHS: float(train("epochs")), W_FT_LR: train("lr"),
         W_FT_BATCH: train("batch"), W_FT_MICRO: train("micro_batch"),
         W_FT_RANK: train("rank") or default_of(TransferConfig, "rank"),
         W_FT_ALPHA: float(train("alpha") or default_of(TransferConfig, "alpha")), W_FT_DROPOUT: train("dropout"),
         W_FT_WARMUP: train("warmup"), W_FT_MAXLEN: train("max_length"), W_FT_SEEDS: str(train("seed")),
         W_FT_CMP_SEEDS: "0, 1, 2", W_FT_SHOW: None, W_FT_DISTILL: train("distill") or FT_NO_DISTILL,
         W_FT_DISTILL_TEACHER: train("distill_teacher") or (get(TEACHER) or {}).get("ref") or default_refs()[0],
         W_FT_DISTILL_WEIGHT: train("distill_weight"), W_FT_TEMPERATURE: train("temperature"), **executor_defaults()}
    for role, split in (("train", "train"), ("eval", "test")):
        d.update({W_FT_SRC + role: FT_SOURCES[0], W_FT_TASK + role: "arith", W_FT_SPLIT + role: split,
                  W_FT_PATH + role: ""})
    return d


def init_finetune() -> None:
    """Defaults of the Fine-tune page (called by the page). The student defaults to the one loaded
    on the Models page, else to the default student (demo:student)."""
    ss = st.session_state
    for key, value in finetune_defaults().items():
        if key not in ss:
            ss[key] = value.copy() if isinstance(value, (dict, list)) else value


# ---- Study page (page 7) -----------------------------------------------------------------
# Studies live on disk (paraknow.study.control, cache/studies/<name>/); the session keeps the
# grid builder's values, a pasted recipe, the study shown and the last estimate.
ST_RECIPE = "pk_st_recipe"          # a recipe loaded or pasted (dict), used instead of the builder; or None
ST_ESTIMATE = "pk_st_estimate"      # {"recipe": dict, "text": str} of the last estimate
ST_NOTICE = "pk_st_notice"          # message about the last launch (shown once)
W_ST_NAME = "w_st_name"
W_ST_TEACHER = "w_st_teacher"
W_ST_STUDENT = "w_st_student"
W_ST_TASK = "w_st_task"
W_ST_EPOCHS = "w_st_epochs"
W_ST_LR = "w_st_lr"
W_ST_BATCH = "w_st_batch"
W_ST_MICRO = "w_st_micro"
W_ST_RANK = "w_st_rank"
W_ST_ALPHA = "w_st_alpha"
W_ST_EVAL_LIMIT = "w_st_eval_limit"   # the recipe's val_limit (0: all)
W_ST_TEST_LIMIT = "w_st_test_limit"   # the recipe's test_limit (0: all)
W_ST_TOKENS = "w_st_tokens"
W_ST_SEEDS = "w_st_seeds"           # number of seeds (0, 1, ...)
W_ST_SWEEP = "w_st_sweep"           # "1e-4, 3e-4, 1e-3": vanilla and PiSSA learning rates
W_ST_CONTROLS = "w_st_controls"
W_ST_FACTOR = "w_st_factor_"        # + factor name: chosen levels
W_ST_BASELINE = "w_st_baseline"
W_ST_BUDGET = "w_st_budget"
W_ST_PASTE = "w_st_paste"           # recipe text (JSON or YAML) to load
W_ST_VIEW = "w_st_view"             # study shown
W_ST_WORKERS = "w_st_workers"       # cells at a time


def study_defaults() -> dict:
    """The builder starts from the training defaults (TrainConfig) and the recipe's budget; five
    seeds (the recipe's default is three, five see differences of a few points)."""
    from dataclasses import fields

    from paraknow.runs.train_config import TrainConfig
    from paraknow.study.recipe import DEFAULT_BUDGET_MINUTES
    from paraknow.study.runner import DEFAULT_WORKERS
    from paraknow.transfer.plan import TransferConfig
    from ui.study import DEFAULT_CONTROLS, SWEEP_DEFAULT, factor_levels

    train = {f.name: f.default for f in fields(TrainConfig)}
    transfer = {f.name: f.default for f in fields(TransferConfig)}  # LoRA rank/alpha: the extract defaults
    teacher, student = default_refs()
    d = {ST_RECIPE: None, ST_ESTIMATE: None, ST_NOTICE: None, W_ST_NAME: "", W_ST_TEACHER: teacher,
         W_ST_STUDENT: student, W_ST_TASK: "arith", W_ST_EPOCHS: float(train["epochs"]), W_ST_LR: train["lr"],
         W_ST_BATCH: train["batch"], W_ST_MICRO: train["micro_batch"], W_ST_RANK: transfer["rank"],
         W_ST_ALPHA: float(transfer["alpha"]), W_ST_EVAL_LIMIT: train["eval_limit"], W_ST_TEST_LIMIT: 0,
         W_ST_TOKENS: train["eval_max_new_tokens"], W_ST_SEEDS: 5, W_ST_SWEEP: SWEEP_DEFAULT,
         W_ST_CONTROLS: list(DEFAULT_CONTROLS), W_ST_BASELINE: "vanilla",
         W_ST_BUDGET: float(DEFAULT_BUDGET_MINUTES), W_ST_PASTE: "", W_ST_VIEW: None,
         W_ST_WORKERS: DEFAULT_WORKERS, **executor_defaults()}
    d.update({W_ST_FACTOR + factor: [] for factor in factor_levels()})
    return d


def follow_task(label: str) -> None:
    """A new map's built-in task (its seed data `task:NAME[:SPLIT]`) becomes the task of the pages downstream:
    Fine-tune's training and evaluation data, the Playground's prompts, the Study's builder and the Lesson's
    seed, training and test data. A page's own
    pick stays until the next map; seed data of another kind (a file, a paste) changes nothing."""
    from paraknow.core.tasks import TASKS

    kind, _, rest = label.partition(":")
    task = rest.split(":")[0]
    if kind == "task" and task in TASKS:
        st.session_state.update({key: task for key in (W_FT_TASK + "train", W_FT_TASK + "eval", W_PG_TASK,
                                                       W_ST_TASK, W_LESSON_TASK)})


def follow_export(name: str) -> None:
    """A new export becomes the Fine-tune page's initialisation (a PKT run from it)."""
    st.session_state.update({W_FT_INIT: "pkt", W_FT_EXPORT: name})


def apply_quick_preset() -> None:
    """The builder set to the "quick" preset (ui.study.QUICK_PRESET): a study that fits a class hour."""
    from ui.study import QUICK_PRESET, factor_levels

    q, ss = QUICK_PRESET, st.session_state
    ss.update({W_ST_SEEDS: q["seeds"], W_ST_CONTROLS: list(q["controls"]), W_ST_SWEEP: q["sweep"],
               W_ST_EPOCHS: q["epochs"],
               W_ST_EVAL_LIMIT: q["val_limit"], W_ST_TEST_LIMIT: q["test_limit"], W_ST_BUDGET: q["budget_minutes"],
               W_ST_BASELINE: q["controls"][0]})
    ss.update({W_ST_FACTOR + factor: [] for factor in factor_levels()})


def init_study() -> None:
    ss = st.session_state
    for key, value in study_defaults().items():
        if key not in ss:
            ss[key] = value.copy() if isinstance(value, (dict, list)) else value
