"""PromptSource / P3-style rows: `inputs`, `targets`, optional `answer_choices`, JSONL or Parquet.

Why: P3 holds instance-level instructions (the template already wrote the instruction into the
prompt), so the prompt becomes `input` and `instruction` stays empty. P3 exports keep token ids in
`inputs`/`targets` and the text in `inputs_pretokenized`/`targets_pretokenized`; either works.
`answer_choices` become candidates for rank classification; the prompt stays the template's own text
(no FLAN `OPTIONS:` block: a template that shows its choices words them itself, paper §2.4).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from optiml_plugin.data.records import Record
from optiml_plugin.data.sources.base import (RecordGate, SourceSpec, candidates_value, outputs_value,
                                             row_fields, task_name)
from optiml_plugin.data.sources.tabular import TABLE_SUFFIXES, inputs_and_targets, load_rows
from optiml_plugin.errors import BadRecordPolicy

KEYS = ("task",)
SUFFIXES = TABLE_SUFFIXES
DEFAULT_BENCHMARK = "promptsource"
TASK_KEYS = ("task", "task_name")


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    def build(row: Dict[str, Any], path: Path, line: int, task: Any, gate: RecordGate) -> Optional[Record]:
        pair = inputs_and_targets(row, path, line, gate)
        if pair is None:
            return None
        inputs, targets = pair
        return Record(benchmark=spec.benchmark or DEFAULT_BENCHMARK, task=task, instruction="",
                      input=inputs, outputs=outputs_value(targets),
                      candidates=candidates_value(row.get("answer_choices")), options_block=False,
                      **row_fields(row, spec, path, line, task))

    return load_rows(spec, policy, partial(task_name, keys=TASK_KEYS), build)
