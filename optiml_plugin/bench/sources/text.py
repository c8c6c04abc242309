"""Plain-text pretraining documents: empty instruction and input, the whole text is `outputs[0]`.

Why: the paper mixes 5% pretraining text into instruction tuning with the whole sequence as target.
`.txt` files hold one document per file (`documents: file`, the default) or one per blank-line
separated block (`documents: paragraphs`); `.jsonl`/`.json`/`.parquet` rows hold one document in a
`text` field (`text_field` to rename it). A trailing newline is not part of a document. Ids are
`<task>-<file path under the source root>` (plus `-<first line>` for paragraphs and rows).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import RecordGate, SourceSpec, has_suffix
from optiml_plugin.bench.sources.tabular import TABLE_SUFFIXES, file_records
from optiml_plugin.errors import BadRecordPolicy, ConfigError

KEYS = ("task", "documents", "text_field")
SUFFIXES = (".txt",) + TABLE_SUFFIXES
DEFAULT_BENCHMARK = "pretrain"
DEFAULT_CATEGORY = "Pretraining"
DOCUMENT_MODES = ("file", "paragraphs")


#: a row's text, or None after reporting it bad: (row, path, line, gate) -> text
RowText = Callable[[Dict[str, Any], Path, int, RecordGate], Optional[str]]


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    text_field = spec.option("text_field", "text")
    if not isinstance(text_field, str) or not text_field:
        raise ConfigError(f"source '{spec.path}': 'text_field' must be a non-empty string")

    def row_text(row: Dict[str, Any], path: Path, line: int, gate: RecordGate) -> Optional[str]:
        if text_field not in row:
            gate.bad(path, line, text_field, "missing_field", f"row has no '{text_field}'")
            return None
        if not isinstance(row[text_field], str):
            gate.bad(path, line, text_field, "wrong_type", f"'{text_field}' must be a string")
            return None
        return row[text_field]

    return load_documents(spec, policy, DEFAULT_BENCHMARK, DEFAULT_CATEGORY, "file", row_text)


def load_documents(spec: SourceSpec, policy: BadRecordPolicy, default_benchmark: str, default_category: str,
                   default_mode: str, row_text: RowText) -> Iterator[Record]:
    """Records whose whole text is the target (empty instruction and input): `.txt` files by
    `documents` mode, table rows through `row_text` (shared by the `text` and `dialogue` sources)."""
    mode = spec.option("documents", default_mode)
    if mode not in DOCUMENT_MODES:
        raise ConfigError(f"source '{spec.path}': 'documents' must be one of {DOCUMENT_MODES}, got {mode!r}")
    benchmark = spec.benchmark or default_benchmark
    task = spec.option("task") or benchmark
    root = Path(os.path.commonpath([str(f.parent) for f in spec.files]))

    def make(text: Any, rid: str, meta: Optional[Dict[str, Any]] = None) -> Record:
        return Record(benchmark=benchmark, task=task, category=spec.category or default_category,
                      sources=(task,), instruction="", input="",
                      outputs=(text.rstrip("\n"),) if isinstance(text, str) else text, id=rid,
                      language=spec.language or "en", meta=meta or {})

    def build_row(row: Dict[str, Any], path: Path, line: int, _task: Any, gate: RecordGate) -> Optional[Record]:
        text = row_text(row, path, line, gate)
        if text is None:
            return None
        rid = row["id"] if isinstance(row.get("id"), str) else f"{task}-{_relative(path, root)}-{line}"
        return make(text, rid)

    gate = RecordGate(spec, policy)
    if gate.wanted(task):
        for path in spec.files:
            if not has_suffix(path, (".txt",)):
                yield from file_records(gate, path, lambda row, s, p: task, build_row)
                continue
            blocks = [(1, path.read_bytes())] if mode == "file" else _paragraphs(path)
            for line, raw in blocks:
                policy.count_read()
                where = line if mode == "paragraphs" else None
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    gate.bad(path, line + raw.count(b"\n", 0, e.start), None, "invalid_utf8",
                             f"invalid UTF-8 at byte {e.start + 1} of the document")
                    continue
                rid = f"{task}-{_relative(path, root)}" + (f"-{line}" if mode == "paragraphs" else "")
                kept = gate.admit(make(text, rid), path, where)
                if kept is not None:
                    yield kept
    gate.finish()


def _relative(path: Path, root: Path) -> str:
    rel = path.relative_to(root).as_posix()
    return rel[: -len(path.suffix)] if path.suffix else rel


def _paragraphs(path: Path) -> List[Tuple[int, bytes]]:
    """(first line number, bytes) of each block of non-blank lines."""
    blocks: List[Tuple[int, bytes]] = []
    start, lines = 0, []  # type: int, List[bytes]
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                if not lines:
                    start = lineno
                lines.append(raw)
            elif lines:
                blocks.append((start, b"".join(lines)))
                lines = []
    if lines:
        blocks.append((start, b"".join(lines)))
    return blocks
