"""Every flag of every verb has help that states its default; the common flags are on every working verb."""
from __future__ import annotations

import argparse
import os

import pytest

from optiml_plugin.cli import HelpFormatter, _parsers, build_parser, main
from optiml_plugin.recipe import load_config

WORKING_VERBS = {("bench", "build"), ("demo",), ("eval",), ("train",)}   # build, train or evaluate


def _verbs():
    """{path of sub-commands: parser} for every parser under `optiml`."""
    out = {}

    def walk(parser, path):
        out[path] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + (name,))
    walk(build_parser(), ())
    return out


def test_every_action_has_help_and_states_its_default():
    fmt = HelpFormatter("optiml")
    for path, parser in _verbs().items():
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):   # each sub-command's one-line help
                assert all(c.help for c in action._choices_actions), path
                continue
            assert action.help, f"optiml {' '.join(path)}: {action.option_strings or action.dest} has no help"
            default = action.default
            trivial = default is None or default is False or (isinstance(default, (list, tuple)) and not default)
            if action.option_strings and not trivial:
                assert "default" in fmt._get_help_string(action), (path, action.option_strings)


def test_common_flags_on_every_working_verb():
    verbs = _verbs()
    for path in WORKING_VERBS:
        flags = {o for a in verbs[path]._actions for o in a.option_strings}
        assert {"--out", "--seed", "--no-progress"} <= flags, path
    assert {"--out", "--seed"} <= {o for a in verbs[("compare",)]._actions for o in a.option_strings}


def test_eval_usage_shows_model_and_bench_required_and_action_optional(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: optiml eval --model DIR --bench DIR [options]")
    assert "optional ACTION" in out and "required (unless ACTION)" in out
    assert all(p.formatter_class is HelpFormatter for p in _parsers(build_parser()))


def test_train_common_flags_become_config_overrides(tmp_path):
    from optiml_plugin.commands.train import _flag_overrides

    args = build_parser().parse_args(["train", "configs/train_tiny.yaml", "--out", str(tmp_path / "a: b"),
                                      "--seed", "7", "--no-progress"])
    config = load_config(args.config, _flag_overrides(args))
    assert config.run.out_dir == str(tmp_path / "a: b") and config.run.seed == 7 and config.run.progress is False
    assert load_config(args.config).run.threads == "auto"


def test_tokenizers_parallelism_off_on_small_machines_unless_set(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    with pytest.raises(SystemExit):
        main(["--version"])
    assert os.environ["TOKENIZERS_PARALLELISM"] == "true"


def test_auto_threads_is_one_for_small_models_on_cpu():
    import torch

    from optiml_plugin.local.trainer import cpu_threads

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cpu_threads("auto", cpu, 800_000) == 1
    assert cpu_threads("auto", cpu, 125_000_000) == 0 and cpu_threads("auto", cuda, 800_000) == 0
    assert cpu_threads(3, cpu, 800_000) == 3 and cpu_threads(0, cpu, 800_000) == 0
