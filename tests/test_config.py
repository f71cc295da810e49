"""Config dataclasses -> flags and files: layering, unknown keys, type errors, help text."""

from __future__ import annotations

import argparse
import json

import pytest

from rlfl import config as cfglib
from rlfl.pretrain import PretrainConfig
from rlfl.trainer import TrainConfig


def _parse(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    cfglib.add_arguments(parser, PretrainConfig)
    return vars(parser.parse_args(argv))


def test_defaults_file_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_layer: 6\ntrain:\n  lr: 0.002\n  max_steps: 50\n")
    cfg = cfglib.build(PretrainConfig, cfglib.load_config_file(path), _parse(["--max-steps", "7", "--no-bias"]))
    assert cfg.n_layer == 6  # from the file
    assert cfg.train.lr == 0.002  # from the file's section
    assert cfg.train.max_steps == 7  # the flag beats the file
    assert cfg.bias is False
    assert cfg.n_embd == PretrainConfig().n_embd  # default untouched


def test_json_file_and_unknown_key_suggests_closest(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_layers": 3}))
    with pytest.raises(ValueError) as err:
        cfglib.build(PretrainConfig, cfglib.load_config_file(path), {})
    msg = str(err.value)
    assert str(path) in msg and "unknown config key 'n_layers'" in msg and "did you mean 'n_layer'" in msg
    assert "\n" not in msg


def test_type_error_names_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("n_layer: four\n")
    with pytest.raises(ValueError, match=r"field 'n_layer' expects int, got 'four'"):
        cfglib.build(PretrainConfig, cfglib.load_config_file(path), {})


def test_validation_runs_on_build():
    with pytest.raises(ValueError, match="max_steps=0 must be >= 1"):
        cfglib.build(TrainConfig, {}, {"max_steps": 0})


def test_every_flag_has_help():
    parser = argparse.ArgumentParser()
    cfglib.add_arguments(parser, PretrainConfig)
    helps = {a.dest: a.help for a in parser._actions if a.dest != "help"}
    assert set(helps) == set(cfglib.field_names(PretrainConfig))
    assert all(h and len(h) > 5 for h in helps.values())


def test_missing_and_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        cfglib.load_config_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="cannot parse config"):
        cfglib.load_config_file(bad)
    toml = tmp_path / "c.toml"
    toml.write_text("a = 1\n")
    with pytest.raises(ValueError, match="unsupported config format"):
        cfglib.load_config_file(toml)


def test_nested_config_keeps_the_stages_own_defaults():
    from dataclasses import dataclass, field

    @dataclass
    class Stage:
        data: str = field(default="d", metadata={"help": "data path"})
        train: TrainConfig = field(default_factory=lambda: TrainConfig(out_dir="runs/stage", lr=3e-4),
                                   metadata={"help": "loop"})

    parser = argparse.ArgumentParser()
    cfglib.add_arguments(parser, Stage)
    cfg = cfglib.build(Stage, {}, vars(parser.parse_args(["--max-steps", "5"])))
    assert (cfg.train.out_dir, cfg.train.lr, cfg.train.max_steps) == ("runs/stage", 3e-4, 5)
    assert any(a.dest == "lr" and a.help.endswith("(default: 0.0003)") for a in parser._actions)
