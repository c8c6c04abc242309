"""The generic JSONL (or Parquet) schema: CrossFit, ExMix, T5, UnifiedSKG, CoT data and users' tasks.

Why: those benchmarks have no common release format, so users convert them to one documented row
shape (docs/sources.md) instead of us guessing each layout. Per row:

    {"task": str, "benchmark": str, "instruction": str, "input": str,
     "output": str | "outputs": [str, ...], "candidates": [str, ...] (optional),
     "category": str, "sources": [str], "id": str, "language": str, "template": str,
     "options_block": bool (optional)}

`task`, `benchmark`, `instruction` and `category` may come from the source entry instead (the paper
hand-wrote one instruction per keyword-style task); a row with neither instruction nor input is
refused, because an empty prompt would silently turn it into pretraining text. Candidates are shown
as FLAN's `OPTIONS:` block unless `options_block` (row or entry) is false, for rows whose input
already shows them (CrossFit's `<input> (A) ... (B) ...`).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import (RecordGate, SourceSpec, candidates_value, first_present,
                                             outputs_value, row_fields, task_name)
from optiml_plugin.bench.sources.tabular import TABLE_SUFFIXES, Build, TaskOf, load_rows, type_name
from optiml_plugin.errors import BadRecordPolicy

KEYS = ("task", "instruction", "options_block", "example_fields")
SUFFIXES = TABLE_SUFFIXES
#: bench/reading.py may read each file, and parts of a JSONL file, in its own process
PARTS = "lines"
DEFAULT_BENCHMARK = None  # required per row or in the source entry
TASK_KEYS = ("task",)


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    return load_rows(spec, policy, *row_builder(spec))


def row_builder(spec: SourceSpec) -> Tuple[TaskOf, Build]:
    """The task namer and record builder of generic rows (the `datasets` source reuses them)."""

    def build(row: Dict[str, Any], path: Path, line: int, task: Any, gate: RecordGate) -> Optional[Record]:
        benchmark = _or(row.get("benchmark"), spec.benchmark)
        if benchmark is None:
            gate.bad(path, line, "benchmark", "missing_field",
                     "row has no 'benchmark' and the source entry sets none")
            return None
        if "input" not in row:
            gate.bad(path, line, "input", "missing_field", "row has no 'input'")
            return None
        out_key, outputs = first_present(row, ("outputs", "output"))
        if out_key is None:
            gate.bad(path, line, "outputs", "missing_field", "row has neither 'output' nor 'outputs'")
            return None
        if out_key == "outputs" and not isinstance(outputs, list):
            gate.bad(path, line, "outputs", "outputs_not_list",
                     f"'outputs' must be a list of strings, got {type(outputs).__name__}")
            return None
        if out_key == "output" and not isinstance(outputs, str):
            gate.bad(path, line, "output", "wrong_type", f"'output' must be a string, got {type_name(outputs)}")
            return None
        instruction = _or(row.get("instruction"), spec.option("instruction", ""))
        if instruction == "" and row["input"] == "":
            gate.bad(path, line, "input", "empty_field", "both 'instruction' and 'input' are empty")
            return None
        _, candidates = first_present(row, ("candidates", "options"))
        block = _or(row.get("options_block"), spec.option("options_block", True))
        if not isinstance(block, bool):
            gate.bad(path, line, "options_block", "wrong_type", "'options_block' must be true or false")
            return None
        return Record(benchmark=benchmark, task=task, instruction=instruction, input=row["input"],
                      outputs=outputs_value(outputs), candidates=candidates_value(candidates),
                      options_block=block,
                      **row_fields(row, spec, path, line, task))

    return partial(task_name, keys=TASK_KEYS), build


def _or(value: Any, default: Any) -> Any:
    """`value` unless it is None (a JSON null, or a Parquet column the row does not fill)."""
    return default if value is None else value
