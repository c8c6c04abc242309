"""Rows of JSON Lines and Parquet files, with 1-based line (row) numbers and bad lines reported.

Why: P3, FLAN, generic and text-JSONL sources are all "one JSON object per row"; reading them in one
place gives every format the same handling of malformed JSON, invalid UTF-8 and non-object rows.
pyarrow is imported only when a Parquet file is read, so JSONL users do not need it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import RecordGate, SourceSpec, release_split
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError, OptimlError

#: suffixes read as JSON Lines (`.json` too: `datasets.Dataset.to_json` writes JSON Lines) or Parquet
JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
TABLE_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
_PARQUET_BATCH = 4096

TaskOf = Callable[[Dict[str, Any], SourceSpec, Path], Any]
Build = Callable[[Dict[str, Any], Path, int, Any, RecordGate], Optional[Record]]


def iter_rows(path: Path, policy: BadRecordPolicy, byte_range: Optional[Tuple[int, int, int]] = None
              ) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """Yield (line or row number, object) for each row that parses to a JSON object; `byte_range`
    (start, end, first line number) reads one part of a JSONL file (see `SourceSpec.byte_range`).

    Blank lines are not records. A row that cannot be parsed is counted as read here and reported
    through `policy` (it never reaches the caller); the caller counts the rows it receives, after
    applying its task filter, so every attempted record is counted exactly once.
    """
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        yield from _parquet_rows(path)
    else:
        yield from _jsonl_rows(path, policy, byte_range)


def _jsonl_rows(path: Path, policy: BadRecordPolicy, byte_range: Optional[Tuple[int, int, int]]
                ) -> Iterator[Tuple[int, Dict[str, Any]]]:
    start, end, first = byte_range or (0, -1, 1)
    with open(path, "rb") as f:
        f.seek(start)
        lines: Iterable[bytes] = f if end < 0 else _lines_until(f, end - start)
        for lineno, raw in enumerate(lines, start=first):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                policy.count_read()
                policy.handle(BadRecordError(str(path), lineno, None, "invalid_utf8",
                                             f"invalid UTF-8 at byte {e.start + 1} of the line"))
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                policy.count_read()
                policy.handle(BadRecordError(str(path), lineno, None, "malformed_json",
                                             f"malformed JSON at column {e.colno}: {e.msg}"))
                continue
            if not isinstance(obj, dict):
                policy.count_read()
                policy.handle(BadRecordError(str(path), lineno, None, "wrong_type",
                                             f"each line must be a JSON object, got {type(obj).__name__}"))
                continue
            yield lineno, obj


def _lines_until(f: Any, size: int) -> Iterator[bytes]:
    """The lines of the next `size` bytes of `f` (a part ends at a line boundary)."""
    left = size
    for raw in f:
        if left <= 0:
            return
        left -= len(raw)
        yield raw


def _parquet_rows(path: Path) -> Iterator[Tuple[int, Dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise OptimlError(f"{path}: reading Parquet needs pyarrow (pip install 'optiml[parquet]' "
                          f"or pip install pyarrow)") from e
    try:
        table = pq.ParquetFile(str(path))
    except Exception as e:  # pyarrow raises several types for a file that is not Parquet
        raise OptimlError(f"{path}: not a readable Parquet file ({e})") from e
    row = 0
    for batch in table.iter_batches(batch_size=_PARQUET_BATCH):
        for obj in batch.to_pylist():
            row += 1
            yield row, obj


def load_rows(spec: SourceSpec, policy: BadRecordPolicy, task_of: TaskOf, build: Build) -> Iterator[Record]:
    """Records from every row of every file of `spec`, through one record gate."""
    gate = RecordGate(spec, policy)
    for path in spec.files:
        yield from file_records(gate, path, task_of, build)
    gate.finish()


def file_records(gate: RecordGate, path: Path, task_of: TaskOf, build: Build) -> Iterator[Record]:
    """Records from the rows of one file (see `rows_records`); the file's name may give the split."""
    return rows_records(gate, path, iter_rows(path, gate.policy, gate.spec.byte_range), task_of, build,
                        release_split(path))


def rows_records(gate: RecordGate, path: Path, rows: Iterable[Tuple[int, Dict[str, Any]]],
                 task_of: TaskOf, build: Build, split: Optional[str] = None) -> Iterator[Record]:
    """Records from (row number, row) pairs read from `path`, through the task filter and `gate`.

    A record keeps its release split in `meta["split"]`: the row's `split` field, else `split`.

    `task_of(row, spec, path)` names the row's task (see `base.task_name`) before the row is
    counted, so rows of tasks outside the `tasks` filter are not read.
    `build(row, path, line, task, gate)` makes the Record (or reports a missing field via
    `gate.bad` and returns None); the gate then validates it and refuses duplicate ids.
    """
    fields = example_fields(gate.spec)
    for line, row in rows:
        task = task_of(row, gate.spec, path)
        if isinstance(task, str) and task and not gate.wanted(task):
            continue
        gate.policy.count_read()
        record = build(row, path, line, task, gate)
        if record is not None:
            kept = gate.admit(record, path, line)
            if kept is not None:
                row_split = row.get("split")
                if isinstance(row_split, str) or split is not None:
                    kept.meta["split"] = row_split if isinstance(row_split, str) else split
                example = example_of(row, fields)
                if example is not None:
                    kept.meta["example"] = example
                yield kept


def example_fields(spec: SourceSpec) -> Optional[Tuple[str, ...]]:
    """The source's `example_fields`: the columns that name a row's underlying example."""
    value = spec.option("example_fields")
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"source '{spec.path}': 'example_fields' must be a list of column names, got {value!r}")
    return tuple(value)


def example_of(row: Mapping[str, Any], fields: Optional[Tuple[str, ...]]) -> Optional[str]:
    """The underlying example a row renders (bench/examples.py): the values of `fields` when the source
    names them, else the row's `example_id`; None when the row names none (the record's own `meta`
    may still hold one: P3's `idx`)."""
    if fields is not None:
        return json.dumps([row.get(f) for f in fields], sort_keys=True, default=str, ensure_ascii=False)
    value = row.get("example_id")
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def text_column(row: Mapping[str, Any], name: str, path: Path, line: int, gate: RecordGate,
                lists: bool = False) -> Tuple[bool, Any]:
    """(True, text) of column `name` of a P3/FLAN-style row, or of its `<name>_pretokenized` twin (P3
    exports keep token ids in `name` and the text in the twin); `lists` also accepts a list of strings
    (several references). Else report it and return (False, None): `missing_field` when neither
    column is there, `wrong_type` naming the column, the type it must have and the type it has."""
    value, twin_name = row.get(name), f"{name}_pretokenized"
    twin = row.get(twin_name)
    if _is_text(value, lists):
        return True, value
    if isinstance(twin, str):
        return True, twin
    if value is None and twin is None:
        gate.bad(path, line, name, "missing_field", f"row has no '{name}'")
        return False, None
    column, got = (twin_name, twin) if twin is not None else (name, value)
    want = "a string or a list of strings" if lists and column == name else "a string"
    gate.bad(path, line, column, "wrong_type", f"column '{column}' must be {want}, got {type_name(got)}")
    return False, None


def _is_text(value: Any, lists: bool) -> bool:
    return isinstance(value, str) or (lists and isinstance(value, list) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def type_name(value: Any) -> str:
    """`int`, `list of int`, `dict`: what a wrong-typed value is, for messages."""
    if isinstance(value, (list, tuple)) and value:
        inner = sorted({type(v).__name__ for v in value})
        return f"{type(value).__name__} of {'/'.join(inner)}"
    return type(value).__name__


def inputs_and_targets(row: Mapping[str, Any], path: Path, line: int,
                       gate: RecordGate) -> Optional[Tuple[Any, Any]]:
    """The `inputs` and `targets` of a P3/FLAN-style row, or None after reporting the missing one."""
    ok, inputs = text_column(row, "inputs", path, line, gate)
    if not ok:
        return None
    ok, targets = text_column(row, "targets", path, line, gate, lists=True)
    return (inputs, targets) if ok else None
