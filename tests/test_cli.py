"""`cft-rl`: a table of commands, and each command's flags generated from its config dataclass.

The flag tests go through ``cft_rl.cli.main`` with the job itself replaced by a function that captures
the config it was given, so what is checked is the command as a user runs it, minus the work.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest

from cft_rl.annotate.job import AnnotateConfig
from cft_rl.cli import COMMANDS, main
from cft_rl.compare.analysis import CompareConfig
from cft_rl.config_types import config_parser, field_types
from cft_rl.eval.job import EvalConfig


class Captured(Exception):  # noqa: N818 - not an error: it carries the config out of the command
    def __init__(self, config):
        self.config = config


def _capture(config, *args, **kwargs):
    raise Captured(config)


# command: config class, the job function replaced, the arguments of every run, and the same as fields
COMMANDS_UNDER_TEST = {
    "annotate": (
        AnnotateConfig,
        "cft_rl.annotate.job.run_annotation",
        ["--model", "m", "--dataset", "d", "--out", "o"],
        {"model": "m", "dataset": "d", "out": "o"},
    ),
    "eval": (  # with samples, so that --greedy false and --ks are valid
        EvalConfig,
        "cft_rl.eval.job.run_eval",
        ["m", "gsm8k_test", "--num-samples", "2"],
        {"model": "m", "benchmarks": ["gsm8k_test"], "num_samples": 2},
    ),
    "compare": (
        CompareConfig,
        "cft_rl.compare.run.build_report",
        ["runs/a-seed0"],
        {"runs": ["runs/a-seed0"]},
    ),
}
# Values that pass each config's own checks where the generic choice would not.
VALID = {
    "source": "dataset",
    "engine": "reference",
    "backend": "vllm",
    "suite": "paper",
    "band": "ci",
    "num_shards": "2",
    "shard_index": "0",  # with num_shards 1 (its default): the only valid index, yet not the default None
    "collapse_fraction": "0.25",
    "interval": "bootstrap",
    "smooth": "0.5",
    "vllm_gpu_memory_utilization": "0.5",
}


def _sample(name: str, kind, default) -> tuple[list[str], object]:
    """Command-line words for a value of ``kind`` other than ``default``, and the value they mean."""
    if typing.get_origin(kind) in (typing.Union, __import__("types").UnionType):
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    if name in VALID:
        return [VALID[name]], kind(VALID[name])
    if kind is bool:
        return [str(not default).lower()], not default
    if kind is int:
        return ["7"], 7
    if kind is float:
        return ["0.125"], 0.125
    if kind is str:
        return ["some-value"], "some-value"
    if typing.get_origin(kind) is dict:  # a YAML mapping, e.g. --controls '{a: same}'
        return ["{a: same}"], {"a": "same"}
    item = typing.get_args(kind)[0]  # list[int] / list[str]
    return (["1", "2"], [1, 2]) if item is int else (["x", "y"], ["x", "y"])


def _run(monkeypatch, command: str, argv: list[str]):
    target = COMMANDS_UNDER_TEST[command][1]
    monkeypatch.setattr(target, _capture)
    with pytest.raises(Captured) as caught:
        main([command, *argv])
    return caught.value.config


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_every_config_field_is_a_flag(monkeypatch, command):
    cls, _, required, _ = COMMANDS_UNDER_TEST[command]
    types_ = field_types(cls)
    for f in dataclasses.fields(cls):
        default = None if f.default is dataclasses.MISSING else f.default
        words, value = _sample(f.name, types_[f.name][1], default)
        for flag in {f"--{f.name}", f"--{f.name.replace('_', '-')}"}:
            config = _run(monkeypatch, command, [*required, flag, *words])
            got = getattr(config, f.name)
            got = list(got) if isinstance(got, tuple) else got
            if f.name in ("benchmarks", "runs"):  # the bare words are added to the flag's
                assert set(value) <= set(got), (flag, got)
            else:
                assert got == value, (flag, got)


@pytest.mark.parametrize("command", COMMANDS_UNDER_TEST)
def test_defaults_are_the_dataclass_defaults(monkeypatch, command):
    cls, _, required, values = COMMANDS_UNDER_TEST[command]
    assert _run(monkeypatch, command, required) == cls(**values)


@pytest.mark.parametrize("cls", [AnnotateConfig, EvalConfig, CompareConfig])
def test_every_flag_has_the_docstring_help(cls):
    parser = config_parser(cls, "test")
    helps = {a.dest: a.help for a in parser._actions if a.option_strings}
    missing = [f.name for f in dataclasses.fields(cls) if not helps.get(f.name)]
    assert not missing, f"document these fields in {cls.__name__}'s docstring: {missing}"


def test_a_misspelt_flag_fails_naming_it(monkeypatch, capsys):
    monkeypatch.setattr("cft_rl.annotate.job.run_annotation", _capture)
    with pytest.raises(SystemExit) as exit_info:
        main(["annotate", "--model", "m", "--dataset", "d", "--out", "o", "--num-alternativs", "3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--num-alternativs" in err and "did you mean --num-alternatives?" in err


def test_yaml_config_then_flags(monkeypatch, tmp_path, capsys):
    recipe = tmp_path / "annotate.yaml"
    recipe.write_text("model: m\ndataset: d\nout: o\nnum_alternatives: 3\nbatch_size: 8\n")
    config = _run(monkeypatch, "annotate", ["--config", str(recipe), "--batch-size", "16"])
    assert (config.model, config.num_alternatives, config.batch_size) == ("m", 3, 16)  # the flag wins
    recipe.write_text("model: m\ndataset: d\nout: o\nnum_alternatives: three\n")
    assert main(["annotate", "--config", str(recipe)]) == 2
    assert "num_alternatives = 'three'" in capsys.readouterr().err  # a wrong type, named before the job


def test_a_missing_required_setting_names_its_flag(capsys):
    assert main(["annotate", "--model", "m", "--out", "o"]) == 2
    assert "--dataset" in capsys.readouterr().err


def test_every_command_is_a_module_main():
    import importlib

    for name, (target, help_) in COMMANDS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        assert help_


def test_help_is_instant_and_an_unknown_command_is_named(capsys):
    code = (
        "import sys; from cft_rl.cli import main; main(['--help']); "
        "print('LOADED', [m for m in sys.modules if m.startswith('cft_rl.') or m in ('torch', 'numpy')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "eval" in out and "toy build" in out
    assert json.loads(out.split("LOADED ")[1].replace("'", '"')) == ["cft_rl.cli"]  # no command imported
    assert main(["evl"]) == 2
    assert "unknown command 'evl'; did you mean 'eval'?" in capsys.readouterr().err
