"""`load_source` entry validation: unknown type or key, missing path, paths matching nothing."""
from __future__ import annotations

import pytest

from optiml_plugin.bench.sources import DEFAULT_BENCHMARKS, load_source
from optiml_plugin.errors import BadRecordPolicy, ConfigError


@pytest.mark.parametrize("spec, message", [
    ({"type": "csv", "path": "x"}, "unknown 'type' 'csv'"),
    ({"path": "x"}, "unknown 'type' None"),
    ({"type": "sni", "path": "x", "instruction": "hi"}, "unknown key 'instruction'"),
    ({"type": "p3", "path": "x", "split": "train"}, "unknown key 'split'"),
    ({"type": "generic"}, "'path' is required"),
    ({"type": "generic", "path": "missing.jsonl"}, "does not exist"),
    ({"type": "generic", "path": "*.jsonl"}, "matches no"),
    ({"type": "generic", "path": ".", "tasks": "a"}, "'tasks' must be a non-empty list"),
    ({"type": "generic", "path": ".", "benchmark": ""}, "'benchmark' must be a non-empty string"),
])
def test_bad_entries(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        list(load_source(spec, BadRecordPolicy(), base_dir=tmp_path))


def test_default_benchmarks():
    assert DEFAULT_BENCHMARKS == {"sni": "niv2", "p3": "promptsource", "flan": "flan", "generic": None,
                                  "text": "pretrain", "dialogue": "dialogue", "datasets": None}
