"""Each setting is written once: the CLI's options are the config dataclasses' fields, with their defaults,
choices, ranges and help; config.problems checks a config built in code against the same bounds."""

import dataclasses

import click
import pytest

from edgeq import cli
from edgeq.bench import BenchConfig
from edgeq.build import BuildConfig
from edgeq.calibrate import CalibrateConfig
from edgeq.chat import RunConfig
from edgeq.compare import CompareConfig
from edgeq.config import problems
from edgeq.evaluate import EvalConfig
from edgeq.export.gguf import GgufExport
from edgeq.export.onnx import OnnxExport
from edgeq.finetune import FinetuneConfig
from edgeq.merge import MergeConfig
from edgeq.plan import PlanConfig
from edgeq.task import TaskConfig

CONFIGS = [
    (FinetuneConfig, "finetune"),
    (MergeConfig, "merge"),
    (GgufExport, "export"),
    (OnnxExport, "export"),
    (BenchConfig, "bench"),
    (PlanConfig, "plan"),
    (BuildConfig, "build"),
    (CalibrateConfig, "calibrate"),
    (RunConfig, "run"),
    (EvalConfig, "eval"),
    (TaskConfig, "eval-task"),
    (CompareConfig, "compare-methods"),
]


@pytest.mark.parametrize("cls, command", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_every_option_is_its_field(cls, command):
    params = {p.name: p for p in cli.cli.commands[command].params}
    for f in dataclasses.fields(cls):
        assert f.metadata["help"], f"{cls.__name__}.{f.name} has no help"
        if f.metadata["flag"] == "" or (command == "export" and f.name == "quant"):  # not offered / composed
            continue
        p = params[f.name]
        if f.metadata["argument"]:
            assert p.required == (f.default is dataclasses.MISSING)
            continue
        assert p.help.startswith(f.metadata["help"][:1].upper() + f.metadata["help"][1:]), (f.name, p.help)
        if f.default is dataclasses.MISSING:
            assert p.required, f.name
            continue
        default = p.default
        if f.metadata["choices"] is not None and default is not None:
            default = type(f.default)(default)  # a Choice holds strings
        if f.metadata["listed"]:
            default = f.default  # given as one comma-separated string; None keeps the field's tuple
        assert default == f.default, (f.name, p.default, f.default)


@pytest.mark.parametrize("cls, command", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_a_required_setting_left_out_is_refused(cls, command):
    """Click (8.5) takes an explicit default, even None, as a value: a required field's option must have none."""
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    cmd = cli.cli.commands[command]
    for name in required:
        param = next(p for p in cmd.params if p.name == name)
        ctx = click.Context(cmd)
        with pytest.raises(click.MissingParameter):
            param.process_value(ctx, param.get_default(ctx))


def test_problems_names_each_setting_out_of_bounds():
    cfg = FinetuneConfig(data="d", out="o", quant="int3", lora_r=0, lora_dropout=float("nan"), seq_len=10**9)
    got = problems(cfg)
    assert got == [
        "--quant 'int3': expected one of nf4, fp4",
        "--lora-r 0: must be in [1, 4096]",
        "--lora-dropout nan: must be a finite number",
        "--seq-len 1000000000: must be in [8, 1048576]",
    ]
    assert problems(FinetuneConfig(data="d", out="o")) == []


def test_the_cli_refuses_what_the_field_refuses(capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["edgeq", "finetune", "--data", "d", "--out", "o", "--lora-r", "0"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2 and "0 is not in the range 1<=x<=4096" in capsys.readouterr().err
