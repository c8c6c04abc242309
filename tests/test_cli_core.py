"""The `optiml` entry point and the shared error types."""
from __future__ import annotations

import subprocess
import sys

import pytest

from optiml_plugin.cli import main
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    import pkgutil

    import optiml_plugin.commands as commands

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for info in pkgutil.iter_modules(commands.__path__):
        assert info.name in out


def test_module_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "optiml_plugin", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("optiml ")


def test_bad_record_error_names_file_line_and_field() -> None:
    err = BadRecordError("data/x.jsonl", 7, "outputs", "outputs_not_list", "outputs must be a list")
    assert str(err) == "data/x.jsonl:7: field 'outputs': outputs must be a list [outputs_not_list]"
    by_id = BadRecordError("t.json", "task1-abc", "input", "empty_field", "empty")
    assert "t.json (instance task1-abc): field 'input'" in str(by_id)


def test_policy_raises_in_error_mode_and_counts_in_skip_mode() -> None:
    err = BadRecordError("f", 1, "id", "duplicate_id", "dup")
    with pytest.raises(BadRecordError):
        BadRecordPolicy("error").handle(err)
    policy = BadRecordPolicy("skip")
    policy.count_read(3)
    policy.handle(err)
    policy.handle(err)
    assert policy.to_dict()["skipped"] == {"duplicate_id": 2}
    assert policy.read == 3
    with pytest.raises(ConfigError):
        BadRecordPolicy("ignore")
