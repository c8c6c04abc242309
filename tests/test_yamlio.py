"""The one YAML reader behind every config: errors name the file and the line."""
from __future__ import annotations

import pytest

from optiml_plugin.errors import ConfigError
from optiml_plugin.yamlio import read_yaml, read_yaml_mapping


def test_reads_mappings_and_empty_files(tmp_path):
    (tmp_path / "a.yaml").write_text("seed: 3\nsources: [x]\n")
    assert read_yaml_mapping(tmp_path / "a.yaml") == {"seed": 3, "sources": ["x"]}
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}


def test_errors_name_file_line_and_kind(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: preset file not found"):
        read_yaml(tmp_path / "nope.yaml", "preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: train config is not valid YAML"):
        read_yaml(bad, "train config")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping, got list"):
        read_yaml_mapping(tmp_path / "list.yaml", "taxonomy")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        read_yaml(tmp_path / "latin1.yaml")
