"""FLAN-collection-style rows: `inputs`, `targets`, `task_name`, `template_type`, `task_source`.

Why: the Flan Collection exports one row per (example, template) with the instruction already in
`inputs`, so the prompt becomes `input` and `instruction` stays empty. `task_name` may carry a
TFDS version suffix (`anli_r1:0.1.0`), which is dropped so all versions form one task;
`template_type` (zsopt, fsnoopt, ...) is kept as the record's template, `task_source` in meta.
Options are taken from an explicit `candidates`/`options` list for rank classification; FLAN's
options templates (zsopt, fsopt) already hold the `OPTIONS:` block in `inputs`, so rendering adds
it only to an options-template row whose `inputs` lack it, and never to a no-options template.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import (RecordGate, SourceSpec, candidates_value, first_present,
                                             outputs_value, row_fields, task_name)
from optiml_plugin.bench.sources.tabular import (TABLE_SUFFIXES, Build, TaskOf, inputs_and_targets,
                                                load_rows)
from optiml_plugin.bench.templates import OPTIONS_HEADER
from optiml_plugin.errors import BadRecordPolicy

KEYS = ("task", "example_fields")
SUFFIXES = TABLE_SUFFIXES
#: bench/reading.py may read each file, and parts of a JSONL file, in its own process
PARTS = "lines"
DEFAULT_BENCHMARK = "flan"
TASK_KEYS = ("task_name", "task")
_VERSION = re.compile(r":\d+(\.\d+)*$")


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    return load_rows(spec, policy, *row_builder(spec))


def row_builder(spec: SourceSpec) -> Tuple[TaskOf, Build]:
    """The task namer and record builder of FLAN rows (the `datasets` source reuses them)."""

    def build(row: Dict[str, Any], path: Path, line: int, task: Any, gate: RecordGate) -> Optional[Record]:
        pair = inputs_and_targets(row, path, line, gate)
        if pair is None:
            return None
        inputs, targets = pair
        _, options = first_present(row, ("candidates", "options"))
        meta = {"task_source": row["task_source"]} if isinstance(row.get("task_source"), str) else {}
        return Record(benchmark=spec.benchmark or DEFAULT_BENCHMARK, task=task, instruction="",
                      input=inputs, outputs=outputs_value(targets), candidates=candidates_value(options),
                      options_block=_needs_options_block(row, inputs), meta=meta,
                      **row_fields(row, spec, path, line, task))

    return _flan_task, build


def _needs_options_block(row: Dict[str, Any], inputs: Any) -> bool:
    """Only an options template (`zsopt`, `fsopt`) whose `inputs` do not show the block yet."""
    _, template = first_present(row, ("template_type", "template"))
    is_opt = isinstance(template, str) and template.endswith("opt") and not template.endswith("noopt")
    return is_opt and isinstance(inputs, str) and OPTIONS_HEADER not in inputs


def _flan_task(row: Dict[str, Any], spec: SourceSpec, path: Path) -> Any:
    task = task_name(row, spec, path, TASK_KEYS)
    return _VERSION.sub("", task) if isinstance(task, str) else task
