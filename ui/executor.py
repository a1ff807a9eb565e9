"""Where queued runs and study cells execute: the executor picker of the Fine-tune and Study pages.

The choices, defaults and help texts are those of `paraknow.runs.executors.ExecutorConfig` (its field
metadata and the EXECUTORS registry), the same ones the `--executor/--address/--cpus/--gpus` flags
of `train` and `study` read (docs/cluster.md). The widgets' values live under the ui.state keys
W_EXEC*, shared by both pages.
"""
from __future__ import annotations

import streamlit as st

from paraknow.core.errors import ParaknowError
from paraknow.core.options import choices_of, default_of, help_of
from paraknow.runs.executors import EXECUTORS, ExecutorConfig, LocalExecutor
from ui import state as S
from ui.state import PERSIST
from ui.widgets import page_message

DEFAULT = default_of(ExecutorConfig, "executor")


def _help(name: str) -> str:
    return page_message(help_of(ExecutorConfig, name))


def executor_picker(what: str) -> ExecutorConfig | None:
    """The picker; `what` names what executes ("runs", "study's cells"). Returns `chosen()`, after
    showing what to do when the choice cannot be used (e.g. Ray is not installed)."""
    ss = st.session_state
    names = choices_of(ExecutorConfig, "executor")
    if ss.get(S.W_EXEC) not in names:
        ss[S.W_EXEC] = DEFAULT
    name = st.radio(f"Where the {what} execute", names, key=S.W_EXEC, horizontal=True, **PERSIST,
                    captions=[page_message(EXECUTORS[n].summary) for n in names], help=_help("executor"))
    if EXECUTORS[name] is not LocalExecutor:  # the local executor has nothing more to choose
        c1, c2, c3 = st.columns([3, 1, 1])
        c1.text_input("Ray address", key=S.W_EXEC_ADDRESS, **PERSIST, help=_help("address"),
                      placeholder="HOST:PORT")
        c2.number_input("CPUs per task", min_value=0.0, step=1.0, key=S.W_EXEC_CPUS, **PERSIST, help=_help("cpus"))
        c3.number_input("GPUs per task", min_value=0.0, step=1.0, key=S.W_EXEC_GPUS, **PERSIST, help=_help("gpus"))
    try:
        return _chosen()
    except ParaknowError as exc:
        st.error(page_message(str(exc)) + " Nothing is started until then.", icon=":material/error:")
        return None


def chosen() -> ExecutorConfig | None:
    """The executor the picker's values name, validated; None when it cannot be used (the picker
    says why). Whether a Ray address answers is checked when work is queued (the library's
    `check_reachable`), not on every rerun."""
    try:
        return _chosen()
    except ParaknowError:
        return None


def _chosen() -> ExecutorConfig:
    ss = st.session_state
    name = ss.get(S.W_EXEC, DEFAULT)
    if EXECUTORS.get(name) is LocalExecutor:
        return ExecutorConfig(executor=name)
    return ExecutorConfig(executor=name, address=(ss[S.W_EXEC_ADDRESS] or "").strip() or None,
                          cpus=float(ss[S.W_EXEC_CPUS]), gpus=float(ss[S.W_EXEC_GPUS])).validate()


def where_text(recorded: dict | None) -> str:
    """Where a run or a study's cells execute, from the `executor` its status.json or study.json
    records: 'on this machine' or 'on ray at HOST:PORT · 1 CPU, 0 GPU per task'."""
    try:
        executor = ExecutorConfig.from_dict(recorded)
    except ParaknowError:
        return "on an executor this version does not know"
    if EXECUTORS.get(executor.executor) is LocalExecutor:
        return "on this machine"
    where = f"at {executor.address}" if executor.address else "(address from RAY_ADDRESS or this machine)"
    return f"on {executor.executor} {where} · {executor.cpus:g} CPU, {executor.gpus:g} GPU per task"
