"""The pages' side of background jobs (paraknow/runs/background.py): start, attach, show, adopt.

A page computes the content key of what it wants (`*_request`); the map, similarity, export or
verification then comes, in this order, from the session, from the content cache, or from a job
that is running for that key (its progress is drawn by a fragment that polls, with a Cancel
button). Clicks, widget changes and reloads rerun the page but never touch the job; when it ends,
the fragment reruns the page, which finds the result in the cache.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import streamlit as st

from paraknow.core import jobdir
from paraknow.core.errors import ParaknowError
from paraknow.runs import background
from paraknow.runs.background_work import RECORDS_FILE
from paraknow.transfer.lora import MANIFEST_FILE
from ui import state as S

POLL_S = 1.0  # how often a running job's progress is redrawn


# ---------------------------------------------------------------------------------------
# Progress of a running job


def progress_text(label: str, view: background.JobView) -> str:
    from ui.widgets import no_shortcodes

    step = f"{view.fraction:.0%} · {view.message}" if view.message else "starting (loading the models)…"
    return no_shortcodes(f"{label}: {step}")  # 'task:arith:train: ...' must not become an emoji


def follow(kind: str, key: str, label: str) -> background.JobView:
    """The job for `key` now; while it runs, a progress bar and a Cancel button that a fragment
    redraws every POLL_S seconds, rerunning the whole page once the job has ended."""
    view = background.read(kind, key)
    if not view.live:
        return view

    def panel() -> None:
        now = background.read(kind, key)
        if not now.live:
            st.rerun()  # the whole page: it reads the result from the cache
        bar, stop = st.columns([6, 1], vertical_alignment="bottom")
        bar.progress(now.fraction, text=progress_text(label, now))
        if stop.button("Cancel", icon=":material/cancel:", key=f"w_cancel_{kind}_{key[:12]}",
                       help="Stop this computation (clicks elsewhere and reloads never stop it)."):
            background.cancel(kind, key)
            st.rerun()

    st.fragment(panel, run_every=POLL_S)()
    return view


def ended_note(view: background.JobView, doing: str) -> None:
    """What became of a job that ended without a result the page could use."""
    if view.state == "finished":  # its result left the cache meanwhile (cleared or evicted)
        st.warning(f"{doing[:1].upper()}{doing[1:]} was computed but is no longer in the cache: compute it again.",
                   icon=":material/warning:")
    elif view.state == "failed":
        from ui.widgets import page_message

        st.error(page_message(f"{doing[:1].upper()}{doing[1:]} failed: {view.error}"), icon=":material/error:")
    elif view.state == "stopped":
        st.info(f"{doing[:1].upper()}{doing[1:]} was stopped.", icon=":material/cancel:")


def wait(kind: str, key: str, progress) -> background.JobView:
    """Block this script run until the job ends, feeding `progress` (the quick start). A click
    meanwhile reruns the script, and the job goes on: the pages attach to it by its key."""
    while (view := background.read(kind, key)).live:
        progress(view.done, max(view.total, view.done + 1), view.message)
        time.sleep(POLL_S / 4)
    return view


# ---------------------------------------------------------------------------------------
# Sensitivity


@st.cache_data(max_entries=8, show_spinner=False)
def _fingerprint(ref: str, dtype: str, device: str, stamp: str) -> str:
    from paraknow.core.models import model_fingerprint
    from ui.widgets import load_model_cached

    return model_fingerprint(load_model_cached(ref, dtype, device)[0])


def fingerprint(spec: dict) -> str:
    """Content hash of a loaded model's weights (memoised per model files)."""
    from ui.widgets import ref_stamp

    return _fingerprint(spec["ref"], spec["dtype"], spec["device"], ref_stamp(spec["ref"]))


@dataclass
class SeedData:
    """Seed records as the data picker gives them: `ref` reproduces them (a task or a JSONL path)."""
    records: list
    label: str
    ref: str


@dataclass
class SensitivityRequest:
    """One sensitivity map the page wants: its content key and what computes it."""
    key: str
    data: SeedData
    config: object  # SensitivityConfig
    teacher: dict  # {"ref", "dtype", "device"}

    @property
    def used(self) -> list:
        return self.data.records[:self.config.samples]


def sensitivity_request(data: SeedData, config) -> SensitivityRequest:
    """The map of the loaded teacher on `data` with `config`; raises ParaknowError on bad settings."""
    from paraknow.transfer.sensitivity_files import sensitivity_key

    config.validate()
    if len(data.records) < config.samples:
        raise ParaknowError(f"asked for {config.samples} seed samples but the data has only {len(data.records)}; "
                            "lower the sample count or give more data.")
    spec = dict(S.get(S.TEACHER))
    key = sensitivity_key(None, data.records, config, fingerprint=fingerprint(spec))
    return SensitivityRequest(key, data, config, spec)


def try_sensitivity_request(data: SeedData | None, config) -> SensitivityRequest | None:
    """The request, or None when the settings cannot make a map (the Compute button says why)."""
    if data is None or not S.get(S.TEACHER):
        return None
    try:
        return sensitivity_request(data, config)
    except ParaknowError:
        return None


def start_sensitivity(request: SensitivityRequest) -> None:
    from paraknow.core.records import to_jsonl

    if not sensitivity_cached(request):
        background.start("sensitivity", request.key,
                         {"model": request.teacher, "config": asdict(request.config), "label": request.data.label},
                         {RECORDS_FILE: to_jsonl(request.used)})


def sensitivity_cached(request: SensitivityRequest) -> bool:
    return _cached_map(request).is_file()


def _cached_map(request: SensitivityRequest) -> Path:
    from paraknow.transfer.sensitivity_files import cache_path

    return cache_path(request.key)


def sensitivity_file(sens: dict) -> Path:
    """The cached file of a map the session holds (its id is its content key)."""
    from paraknow.transfer.sensitivity_files import cache_path

    return cache_path(sens.id)


def sensitivity_result(request: SensitivityRequest, seconds: float | None):
    """The session's SensitivityMap, read from the content cache (`seconds` None: it was cached)."""
    from paraknow.core.records import records_sha256
    from paraknow.transfer.mapping import layer_scores
    from paraknow.transfer.sensitivity_files import load_sensitivity
    from paraknow.transfer.sensitivity_map import SensitivityMap, group_shares, module_table

    scores, meta = load_sensitivity(_cached_map(request))
    n_layers = S.get(S.TEACHER_INFO).n_layers
    return SensitivityMap(scores=scores, meta=meta, config=request.config, records=request.used,
                          label=request.data.label, data_sha256=records_sha256(request.used),
                          table=module_table(scores), layer_scores=layer_scores(scores, n_layers),
                          shares=group_shares(scores), teacher=request.teacher, seconds=seconds or 0.0,
                          cached=seconds is None, id=request.key, data_ref=request.data.ref)


def follow_sensitivity(request: SensitivityRequest | None, target: str, label: str) -> dict | None:
    """Bring the map of `request` into the session key `target` (S.SENS or S.SENS_B) when the cache
    has it; while its job runs, show the progress. Returns the map now held for the request."""
    from ui.widgets import set_sensitivity

    if request is None:
        return None
    held = S.get(target)
    if held and held.id == request.key and held.teacher == request.teacher:
        return held
    view = follow("sensitivity", request.key, label)
    if view.live or not _cached_map(request).is_file():
        if not view.live:
            ended_note(view, "the sensitivity map")
        return None
    result = sensitivity_result(request, view.seconds if view.state == "finished" else None)
    if target == S.SENS:
        set_sensitivity(result)
    else:
        S.put(target, result)
    return result


# ---------------------------------------------------------------------------------------
# Layer similarity (CKA), export and verification


def similarity_key() -> str | None:
    """Content key of the layer similarity: both models' weights and the map's seed samples."""
    sens = S.get(S.SENS)
    if not (sens and S.get(S.TEACHER) and S.get(S.STUDENT)):
        return None
    return background.content_key({"teacher": fingerprint(S.get(S.TEACHER)),
                                   "student": fingerprint(S.get(S.STUDENT)), "data": sens.data_sha256})


def start_similarity() -> None:
    from paraknow.core.records import to_jsonl

    background.start("similarity", similarity_key(), {"teacher": S.get(S.TEACHER), "student": S.get(S.STUDENT)},
                     {RECORDS_FILE: to_jsonl(S.get(S.SENS).records)})


def follow_similarity(show: bool = True):
    """The [L_T, L_S] similarity of the current models and seeds, or None (the job's progress is
    drawn while it runs, when `show`). Finished results come from the job folder, its cache."""
    import numpy as np

    key = similarity_key()
    if key is None:
        return None
    held = S.get(S.CKA)
    if held and held["key"] == key:
        return held["matrix"]
    view = follow("similarity", key, "Layer similarity") if show else background.read("similarity", key)
    if view.state != "finished":
        if show and not view.live:
            ended_note(view, "the layer similarity")
        return None
    S.put(S.CKA, {"key": key, "matrix": np.array(view.result["matrix"]), "info": view.result["info"]})
    return S.get(S.CKA)["matrix"]


def start_export(spec: dict) -> str:
    """Start writing an export (spec: the `export` kind's keys); returns its job key."""
    key = background.content_key(spec)
    S.put(S.EXPORT_JOB, key)
    background.start("export", key, spec)
    return key


def named_export(name: str | None) -> dict | None:
    """The session's export record of cache/exports/<name>, when it exists and was made from the
    loaded teacher for the loaded student (a reloaded page offers the export it made)."""
    from paraknow.core.paths import cache_dir
    from paraknow.transfer.lora import load_manifest

    teacher, student = S.get(S.TEACHER), S.get(S.STUDENT)
    out = cache_dir("exports") / (name or "")
    if not (name and teacher and student and (out / MANIFEST_FILE).is_file()):
        return None
    try:
        manifest = load_manifest(out)
    except ParaknowError:
        return None
    if (manifest.get("teacher"), manifest.get("student")) != (teacher["ref"], student["ref"]):
        return None
    return {"name": name, "dir": str(out), "manifest": manifest}


def _running_export(name: str | None) -> str | None:
    """The key of a running export job writing cache/exports/<name> (started before a reload)."""
    from paraknow.core.jobdir import read_json
    from paraknow.core.paths import cache_dir

    out = str(cache_dir("exports") / (name or ""))
    return next((v.key for v in background.live_jobs() if v.kind == "export"
                 and (read_json(v.dir / jobdir.SPEC_FILE) or {}).get("out") == out), None)


def follow_export(name: str | None) -> None:
    """The export started from this session, or one running for the export name (after a reload):
    progress while it runs; when it finished, it becomes the session's export. With none, an
    existing export of that name for these models is the session's export."""
    key = S.get(S.EXPORT_JOB) or (_running_export(name) if name else None)
    if not key:
        if S.get(S.EXPORT) is None:
            S.put(S.EXPORT, named_export(name))
        return
    view = follow("export", key, "Exporting")
    if view.live:
        return
    S.put(S.EXPORT_JOB, None)
    if view.state != "finished":
        ended_note(view, "the export")
        return
    export = named_export(Path(view.result["dir"]).name)
    S.put(S.EXPORT, export)
    if export:
        S.follow_export(export["name"])
    if export and export["name"] not in S.get(S.EXPORTS_MADE):
        S.get(S.EXPORTS_MADE).append(export["name"])
    S.put(S.VERIFY, None)


def verify_key(export: dict) -> str:
    sens = S.get(S.SENS)
    return background.content_key({"dir": export["dir"], "created": export["manifest"].get("created"),
                                   "student": S.get(S.STUDENT), "data": sens.data_sha256,
                                   "max_length": min(512, sens.config.max_length)})


def start_verify(export: dict) -> None:
    from paraknow.core.records import to_jsonl

    sens = S.get(S.SENS)
    background.start("verify", verify_key(export),
                     {"student": S.get(S.STUDENT), "export_dir": export["dir"],
                      "max_length": min(512, sens.config.max_length)},
                     {RECORDS_FILE: to_jsonl(sens.records)})


def follow_verify(export: dict):
    """The paraknow.transfer.export.Verification of `export` (from its job folder once finished), or None."""
    from paraknow.transfer.export import Verification

    key = verify_key(export)
    if S.get(S.VERIFY) is not None and S.get(S.VERIFY_KEY) == key:
        return S.get(S.VERIFY)
    view = follow("verify", key, "Comparing logits")
    if view.state != "finished":
        if not view.live:
            ended_note(view, "the verification")
        return None
    fields = {k: v for k, v in view.result.items() if k != "unchanged"}
    S.put(S.VERIFY, Verification(**fields))
    S.put(S.VERIFY_KEY, key)
    return S.get(S.VERIFY)
