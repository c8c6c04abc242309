"""Dialogue data (paper §4.7): each dialogue's turns joined by one newline, empty source, the whole
dialogue as target, under its own benchmark so a recipe gives it a share (the paper: 0.5% of BlenderBot 3
data).

Why a source of its own: the turns must be joined exactly one way, and a dialogue is not an instruction
task (no instruction, no held-out instances: it only trains). `.jsonl`/`.json`/`.parquet` rows hold the
turns as a list of strings in `turns` (`turns_field` to rename it); `.txt` files hold one dialogue per
blank-line separated block, one turn per line (`documents: paragraphs`, the default here).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import RecordGate, SourceSpec
from optiml_plugin.bench.sources.text import SUFFIXES, load_documents  # noqa: F401  (SUFFIXES: the same files)
from optiml_plugin.errors import BadRecordPolicy, ConfigError

KEYS = ("task", "documents", "turns_field")
DEFAULT_BENCHMARK = "dialogue"
DEFAULT_CATEGORY = "Dialogue Data"   # not SNI's "Dialogue Generation": never an eval category
TURN_SEPARATOR = "\n"


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    turns_field = spec.option("turns_field", "turns")
    if not isinstance(turns_field, str) or not turns_field:
        raise ConfigError(f"source '{spec.path}': 'turns_field' must be a non-empty string")

    def row_text(row: Dict[str, Any], path: Path, line: int, gate: RecordGate) -> Optional[str]:
        turns = row.get(turns_field)
        if turns is None:
            gate.bad(path, line, turns_field, "missing_field", f"row has no '{turns_field}'")
            return None
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            gate.bad(path, line, turns_field, "wrong_type", f"'{turns_field}' must be a list of strings")
            return None
        return TURN_SEPARATOR.join(t.strip("\n") for t in turns)

    return load_documents(spec, policy, DEFAULT_BENCHMARK, DEFAULT_CATEGORY, "paragraphs", row_text)
