"""One source of truth: a default lives in its config dataclass; the CLI's flags and the pages'
widgets are generated from / read it, so changing it there changes all of them."""
import inspect
import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from paraknow.cli import build_parser, main
from paraknow.core.options import choices_of, default_of
from paraknow.runs.train_config import CLI_FIELDS, TrainConfig
from paraknow.transfer.plan import TransferConfig
from paraknow.transfer.sensitivity import METRICS, SensitivityConfig
from ui import state as S

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def set_default(monkeypatch, cls, name, value):
    """What editing `name: ... = option(value, ...)` in the source does: the field and __init__ defaults."""
    monkeypatch.setattr(cls.__dataclass_fields__[name], "default", value)
    with_default = [p for p in inspect.signature(cls.__init__).parameters.values() if p.default is not p.empty]
    defaults = list(cls.__init__.__defaults__)
    defaults[[p.name for p in with_default].index(name)] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def _help(command: str) -> str:
    """`paraknow COMMAND --help` on one line."""
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    return " ".join(sub.format_help().split())


def _flag_help(command: str, flag: str) -> str:
    """The help text of one flag (after the usage lines)."""
    options = _help(command).split("options:", 1)[1]
    return options.split(f"{flag} {flag.lstrip('-').upper().replace('-', '_')} ", 1)[1].split(" --", 1)[0]


def test_changing_the_rank_default_changes_cli_help_behaviour_and_page(monkeypatch, tmp_path):
    assert _flag_help("extract", "--rank") == "LoRA rank r of the exported adapter (default: 16)"
    set_default(monkeypatch, TransferConfig, "rank", 8)
    assert TransferConfig().rank == 8 and default_of(TransferConfig, "rank") == 8
    assert _flag_help("extract", "--rank") == "LoRA rank r of the exported adapter (default: 8)"
    out = tmp_path / "export"
    assert main(["extract", "--teacher", "demo:teacher", "--student", "demo:student", "--data", "task:arith:seed",
                 "--out", str(out), "--samples", "4", "--device", "cpu"]) == 0
    assert json.loads((out / "paraknow.json").read_text())["rank"] == 8  # the CLI used it
    at = AppTest.from_file(APP, default_timeout=600)
    at.run()
    assert not at.exception
    assert at.session_state[S.W_RANK] == 8  # the Export page's widget default
    assert S.finetune_defaults()[S.W_FT_RANK] == 8  # vanilla/PiSSA train at the extract rank by default


def test_changing_a_training_default_changes_cli_and_finetune_page(monkeypatch):
    set_default(monkeypatch, TrainConfig, "dropout", 0.2)
    assert _flag_help("train", "--dropout").endswith("(default: 0.2)")
    args = build_parser().parse_args(["train", "--student", "demo:student", "--data", "task:arith:train",
                                      "--out", "x"])
    assert TrainConfig.from_args(args).dropout == 0.2
    assert S.finetune_defaults()[S.W_FT_DROPOUT] == 0.2


def test_choices_come_from_the_registries(monkeypatch):
    monkeypatch.setitem(METRICS, "my-metric", METRICS["magnitude"])
    assert "my-metric" in choices_of(SensitivityConfig, "metric")
    args = build_parser().parse_args(["sensitivity", "--model", "m", "--data", "d", "--out", "o.safetensors",
                                      "--metric", "my-metric"])
    assert args.metric == "my-metric"


def test_every_train_flag_is_a_config_field():
    args = build_parser().parse_args(["train", "--student", "s", "--data", "d", "--out", "o"])
    assert {name: getattr(args, name) for name in CLI_FIELDS} == \
        {name: default_of(TrainConfig, name) for name in CLI_FIELDS} | {"student": "s", "data": "d", "out": "o"}


def test_every_registry_entry_carries_its_help():
    """The pages' pickers read their help lines from the registries, so a new entry needs one."""
    from paraknow.extract import STRUCTURE_HELP, STRUCTURES
    from paraknow.transfer.mapping import LAYER_STRATEGIES, STRATEGY_HELP

    assert set(STRATEGY_HELP) == set(LAYER_STRATEGIES) and all(STRATEGY_HELP.values())
    assert set(STRUCTURE_HELP) == set(STRUCTURES) and all(STRUCTURE_HELP.values())
    assert all(metric.help for metric in METRICS.values())
