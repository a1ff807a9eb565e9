"""Fine-tune page helpers: data and export pickers, the form -> TrainConfig, runs-table rows.

The runs themselves live on disk (`paraknow.runs.jobs`, cache/runs/<id>/): the page reads them back on
every (live) rerun, so a browser reload or an app restart loses nothing. Everything below the
"Pure helpers" line works without a Streamlit session (tested directly).
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path

import streamlit as st

from paraknow.core.errors import ParaknowError
from paraknow.core.paths import cache_dir
from paraknow.runs import jobs
from paraknow.runs.executors import ExecutorConfig
from paraknow.runs.train_config import TrainConfig, method_of
from ui import ops
from ui import state as S
from ui.state import PERSIST

ACTIVE = ("queued", "running")
MAX_DATA_BYTES = 50 * 1024 * 1024  # training data uploads (the server's own upload limit)
INIT_LABELS = {"vanilla": "vanilla LoRA", "pissa": "PiSSA", "pkt": "PKT export"}
DISTILL_LABELS = {S.FT_NO_DISTILL: "none", "logits": "logits (online KD)",
                  "sequences": "sequences (offline KD)"}
LOGIT_KD = "logits"  # the kind that takes λ and τ (paraknow.runs.distill)


# ---------------------------------------------------------------------------------------
# Widgets


def data_picker(role: str, label: str, allow_none: bool = False) -> str | None:
    """A dataset reference for training (`role` "train") or evaluation ("eval"): a built-in task split,
    a JSONL path on the server, or an uploaded JSONL (saved under cache/uploads/). None when unset."""
    from paraknow.core.tasks import SPLITS, TASKS

    options = ((S.FT_EVAL_NONE,) if allow_none else ()) + S.FT_SOURCES
    source = st.radio(label, options, key=S.W_FT_SRC + role, horizontal=True, **PERSIST)
    if source == S.FT_EVAL_NONE:
        st.caption("No evaluation: the run reports its training loss only.")
        return None
    if source == S.FT_SOURCES[0]:
        c1, c2 = st.columns([2, 1])
        name = c1.selectbox("Task", list(TASKS), key=S.W_FT_TASK + role, **PERSIST,
                            format_func=lambda n: f"{n} ({TASKS[n].family})")
        split = c2.selectbox("Split", list(SPLITS), key=S.W_FT_SPLIT + role, **PERSIST)
        return f"task:{name}:{split}"
    if source == S.FT_SOURCES[1]:
        path = st.text_input("JSONL file on the server", key=S.W_FT_PATH + role, **PERSIST,
                             placeholder="/path/to/data.jsonl (messages, prompt+completion or text per line)")
        path = (path or "").strip()
        if not path:
            st.info("Enter the path of a JSONL file.", icon=":material/edit:")
            return None
        if not Path(path).expanduser().is_file():
            raise ParaknowError(f"{path} is not a file: give the path of a JSONL file on the machine running the app.")
        full = Path(path).expanduser().absolute()
        stat = full.stat()
        st.caption(f"{_count_records(str(full), stat.st_mtime_ns, stat.st_size)} records.")
        return str(full)
    up = st.file_uploader("JSONL file", type=["jsonl", "json", "txt"], key=S.W_FT_UPLOAD + role)
    uploads = S.get(S.FT_UPLOADS)
    if up is not None:
        uploads[role] = str(save_upload(up.getvalue(), up.name))
    saved = uploads.get(role)
    if not saved or not Path(saved).is_file():
        st.info("Upload a JSONL file (it is saved under cache/uploads/ so the background run can read it).",
                icon=":material/upload:")
        return None
    st.caption(f"Using `{Path(saved).name}`.")
    return saved


@st.cache_data(max_entries=16, show_spinner=False)
def _count_records(path: str, mtime_ns: int, size: int) -> int:
    """Records in a JSONL file (read once per version of the file; a malformed line raises)."""
    from paraknow.core.data import load_records

    return len(load_records(path))


def export_summary_md(entry: dict, student: str | None = None) -> str:
    """Markdown summary of an export's manifest (for the picker)."""
    m = entry.get("manifest") or {}
    text = (f"`{m.get('teacher')}` → `{m.get('student')}` · seeds `{m.get('data', '?')}` "
            f"({m.get('samples', '?')}, {m.get('metric', '?')}) · rank {m.get('rank')} / alpha {m.get('alpha')} · "
            f"{m.get('mode')} · {m.get('structure')} · {len(m.get('modules', {}))} modules · "
            f"layers {m.get('layer_map')} · {entry.get('created', '')[:19].replace('T', ' ')}")
    return text


def export_picker(entries: list[dict]) -> dict | None:
    """Select one of the exports under cache/exports/ (newest first) and show its manifest summary."""
    if not entries:
        st.caption("No exports yet: make one on the Export page (or `python -m paraknow extract ... "
                   "--out cache/exports/NAME`), then it is listed here.")
        return None
    names = [e["name"] for e in entries]
    if st.session_state.get(S.W_FT_EXPORT) not in names:
        st.session_state[S.W_FT_EXPORT] = names[0]
    name = st.selectbox("PKT export (cache/exports/)", names, key=S.W_FT_EXPORT, **PERSIST,
                        help="The LoRA initialisation made from the teacher; used by the PKT init and by Compare.")
    entry = next(e for e in entries if e["name"] == name)
    st.caption(export_summary_md(entry))
    return entry


def distill_widgets() -> None:
    """Distillation from a teacher's outputs: the kind (TrainConfig's `distill` choices, or none), the
    teacher, λ and τ; defaults, choices and help from TrainConfig's fields, ranges checked by it on launch."""
    from paraknow.core.options import choices_of, help_of

    ss = st.session_state
    kind = ss.get(S.W_FT_DISTILL)
    c = st.columns([2, 3, 1, 1])
    c[0].selectbox("Distillation", [S.FT_NO_DISTILL, *choices_of(TrainConfig, "distill")], key=S.W_FT_DISTILL,
                   **PERSIST, format_func=lambda k: DISTILL_LABELS.get(k, k), help=help_of(TrainConfig, "distill"))
    c[1].text_input("Distillation teacher", key=S.W_FT_DISTILL_TEACHER, **PERSIST,
                    disabled=kind == S.FT_NO_DISTILL,
                    help=help_of(TrainConfig, "distill_teacher") + "; logit KD needs the student's tokenizer.")
    c[2].number_input("distill weight λ", step=0.05, format="%.2f", key=S.W_FT_DISTILL_WEIGHT, **PERSIST,
                      disabled=kind != LOGIT_KD, help=help_of(TrainConfig, "distill_weight"))
    c[3].number_input("temperature τ", step=0.5, format="%.2f", key=S.W_FT_TEMPERATURE, **PERSIST,
                      disabled=kind != LOGIT_KD, help=help_of(TrainConfig, "temperature"))


# ---------------------------------------------------------------------------------------
# Pure helpers


def list_exports() -> list[dict]:
    """Exports under cache/exports/ (newest first), each with its full manifest."""
    return ops.list_exports(cache_dir("exports"))


def save_upload(data: bytes, name: str) -> Path:
    """Validate an uploaded JSONL and save it under cache/uploads/<sha12>-<name> (content-keyed)."""
    from paraknow.core.records import parse_jsonl

    if len(data) > MAX_DATA_BYTES:
        raise ParaknowError(f"{name} is {len(data) / 2**20:.1f} MB; uploads are limited to "
                            f"{MAX_DATA_BYTES >> 20} MB. Give a path on the server instead.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParaknowError(f"{name} is not UTF-8 text; save it as UTF-8 JSONL.") from None
    parse_jsonl(text, source=name)  # a malformed line is reported with its number
    path = cache_dir("uploads") / f"{hashlib.sha256(data).hexdigest()[:12]}-{ops.safe_file_name(name)}"
    if not path.exists():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def parse_seeds(text: str) -> list[int]:
    """'0, 1, 2' or '0 1 2' -> [0, 1, 2] (order kept, duplicates dropped)."""
    parts = [p for p in re.split(r"[,\s;]+", (text or "").strip()) if p]
    if not parts:
        raise ParaknowError("give at least one seed, e.g. 0 or 0, 1, 2.")
    seeds = []
    for p in parts:
        if not re.fullmatch(r"\d{1,9}", p):
            raise ParaknowError(f"seed '{p}' is not a non-negative integer; write seeds like 0, 1, 2.")
        if int(p) not in seeds:
            seeds.append(int(p))
    if len(seeds) > 32:
        raise ParaknowError(f"{len(seeds)} seeds is too many for one launch; use at most 32.")
    return seeds


def settings_from_state(ss, train_ref: str | None, eval_ref: str | None) -> dict:
    """TrainConfig fields shared by every run of a launch (no init/seed/rank/alpha) from the form."""
    if not train_ref:
        raise ParaknowError("choose the training data first (a built-in task, a JSONL path or an upload).")
    student = (ss[S.W_FT_STUDENT] or "").strip()
    if not student:
        raise ParaknowError("enter the student model (e.g. demo:student or a local model folder).")
    every = int(ss[S.W_FT_EVAL_EVERY] or 0)
    return dict(student=student, data=train_ref, eval_data=eval_ref, epochs=float(ss[S.W_FT_EPOCHS]),
                lr=float(ss[S.W_FT_LR]), batch=int(ss[S.W_FT_BATCH]), micro_batch=int(ss[S.W_FT_MICRO]),
                dropout=float(ss[S.W_FT_DROPOUT]), warmup=float(ss[S.W_FT_WARMUP]),
                max_length=int(ss[S.W_FT_MAXLEN]), eval_every=(every or None) if eval_ref else None,
                eval_limit=int(ss[S.W_FT_EVAL_LIMIT]), eval_max_new_tokens=int(ss[S.W_FT_EVAL_TOKENS]),
                device=ss[S.W_FT_DEVICE], dtype=ss[S.W_FT_DTYPE], **distill_settings(ss))


def distill_settings(ss) -> dict:
    """The TrainConfig distillation fields of the form ({} without distillation; λ and τ only for logit
    KD); TrainConfig.resolved() checks them (ranges, the teacher, its vocabulary) as it does the CLI's."""
    kind = ss[S.W_FT_DISTILL]
    if kind == S.FT_NO_DISTILL:
        return {}
    teacher = (ss[S.W_FT_DISTILL_TEACHER] or "").strip()
    if not teacher:
        raise ParaknowError("enter the distillation teacher (e.g. demo:teacher), or set Distillation to none.")
    weights = {"distill_weight": float(ss[S.W_FT_DISTILL_WEIGHT]), "temperature": float(ss[S.W_FT_TEMPERATURE])}
    return {"distill": kind, "distill_teacher": teacher, **(weights if kind == LOGIT_KD else {})}


def launch_runs(settings: dict, init: str, seeds: list[int], rank: int | None = None, alpha: float | None = None,
                export_name: str | None = None, executor: ExecutorConfig | None = None) -> list[Path]:
    """Queue one run per seed (`jobs.submit`) to execute on `executor` (default: this machine); all
    are validated before any is created (and `jobs.submit` refuses an executor that cannot take work).
    `init`: one of paraknow.runs.inits.INITS or an export directory (which brings its own rank
    and alpha)."""
    method = method_of(init)
    extra = {} if method == "pkt" else {"rank": rank, "alpha": alpha}
    tag = f"pkt {export_name}" if method == "pkt" and export_name else method
    tag += f" + {settings['distill']} KD" if settings.get("distill") else ""
    configs = [TrainConfig(init=init, seed=seed, label=f"{tag} seed {seed}", **settings, **extra) for seed in seeds]
    for config in configs:
        config.resolved(check_out=False)
    return [jobs.submit(config, executor=executor) for config in configs]


def compare(settings: dict, export_dir: str, seeds: list[int],
            executor: ExecutorConfig | None = None) -> tuple[str, list[Path]]:
    """vanilla, PiSSA and PKT over `seeds` with the same data and hyperparameters (`jobs.compare_runs`;
    vanilla and PiSSA train at the export's rank and alpha), executed on `executor`."""
    extra = {k: v for k, v in settings.items() if k not in ("student", "data")}
    return jobs.compare_runs(settings["student"], settings["data"], export_dir, seeds=seeds, executor=executor,
                             **extra)


def fmt_duration(seconds) -> str:
    """1234 -> '20 min 34 s'; None -> '–'."""
    if seconds is None:
        return "–"
    seconds = max(0, int(round(float(seconds))))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def is_active(run) -> bool:
    return run.state in ACTIVE


def stopping(run) -> bool:
    return run.state == "running" and (run.run_dir / jobs.STOP_FILE).exists()


def run_label(run) -> str:
    """'pkt arith-demo seed 0 · 04-12 03:10:59 #a3f' -- the label (or method), the run's time to the
    second and the start of its id's random part (ids are YYYYMMDD-HHMMSSffffff-xxxxxx), so two
    launches of one setting read apart."""
    rid = run.run_id
    if len(rid) < 24:
        return f"{run.label or run.method} · {rid}"
    return (f"{run.label or run.method} · {rid[4:6]}-{rid[6:8]} {rid[9:11]}:{rid[11:13]}:{rid[13:15]} "
            f"#{rid[22:25]}")


def progress_of(run) -> tuple[float, str]:
    """(fraction done, text) of a run for a progress bar."""
    st_ = run.status
    step, total = st_.get("step") or 0, st_.get("max_steps")
    phase = st_.get("phase") or run.state
    if run.state == "queued":
        return 0.0, "queued: waits for the runs before it"
    if stopping(run):
        phase = "stopping at the next step"
    if not total:
        return 0.0, f"{phase}…"
    text = f"step {step}/{total} · {phase}"
    if run.state == "running" and st_.get("eta_s") is not None:
        text += f" · ETA {fmt_duration(st_.get('eta_s'))}"
    return min(1.0, step / total), text


def _fmt(value, pattern: str) -> str:
    """A number for the runs table, or '–' where there is none yet."""
    return "–" if value is None else pattern.format(value)


def run_rows(runs) -> list[dict]:
    """The runs table: one row per run, newest first (cells are text: '–' where empty)."""
    rows = []
    for r in runs:
        s = r.status
        final = r.final_eval or {}
        total = s.get("max_steps")
        progress = f"{s.get('step') or 0}/{total}" if total else "–"
        init = r.spec.get("init", "")
        started, finished = s.get("started"), s.get("finished")
        took = (finished or time.time()) - started if started else None
        rows.append({
            "label": r.label or r.run_id, "state": ("stopping" if stopping(r) else r.state), "method": r.method,
            "export": Path(init).name if r.method == "pkt" else "–", "seed": _fmt(r.spec.get("seed"), "{}"),
            "progress": progress, "ETA": fmt_duration(s.get("eta_s")) if r.state == "running" else "–",
            "loss": _fmt(s.get("loss"), "{:.4f}"), "final accuracy": _fmt(final.get("accuracy"), "{:.1%}"),
            "final eval loss": _fmt(final.get("loss"), "{:.4f}"),
            "time": fmt_duration(took) if took is not None else "–", "run": r.run_id,
        })
    return rows


def default_overlay(runs, limit: int = 3) -> list[str]:
    """Runs to overlay when the user has not chosen: the newest comparison group, else the newest runs."""
    if not runs:
        return []
    newest = runs[0]
    if newest.group:
        return [r.run_id for r in runs if r.group == newest.group]
    return [r.run_id for r in runs[:limit]]


def groups(runs) -> list[str]:
    """Comparison group ids, newest first."""
    seen = []
    for r in runs:
        if r.group and r.group not in seen:
            seen.append(r.group)
    return seen


def group_label(group: str, runs) -> str:
    members = [r for r in runs if r.group == group]
    pkt = next((Path(r.spec.get("init", "")).name for r in members if r.method == "pkt"), "-")
    seeds = sorted({r.spec.get("seed") for r in members if r.spec.get("seed") is not None})
    stamp = group[1:9] + " " + group[10:14] if len(group) >= 14 else group
    done = sum(r.state in ("finished", "failed", "stopped") for r in members)
    return f"{stamp} · PKT {pkt} · seeds {seeds} · {done}/{len(members)} done"


def group_points(group: str, runs) -> dict[str, list[tuple[str, float]]]:
    """{method: [(run label, final accuracy), ...]} over the group's finished runs."""
    out: dict[str, list[tuple[str, float]]] = {}
    for r in sorted((r for r in runs if r.group == group), key=lambda r: r.run_id):
        acc = (r.final_eval or {}).get("accuracy")
        if r.state == "finished" and acc is not None:
            out.setdefault(r.method, []).append((r.label or r.run_id, float(acc)))
    return out
