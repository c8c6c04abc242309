"""The training log (`log.jsonl`): one JSON record per line, read back tolerantly on resume.

Why tolerant of the last line only: a run killed mid-write leaves a half-written last line, which is
harmless and is dropped (and said); a damaged line elsewhere means the file was edited, which is an
error naming the line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from optiml_plugin.errors import CorruptFileError
from optiml_plugin.fsio import atomic_write_bytes


def parse_log(path: Union[str, Path]) -> Tuple[List[Tuple[Dict[str, Any], str]], bool]:
    """((record, its line) for every complete line, whether a half-written last line was dropped)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    records: List[Tuple[Dict[str, Any], str]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as e:
            if n == len(lines):  # no newline after it: the write was cut off
                return records, True
            raise CorruptFileError(f"{path}:{n}: field 'step': not a training-log record ({e}); "
                                   f"remove the line or start a new run.out_dir") from None
        records.append((record, line))
    return records, False


def read_log(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """Every complete record of a training log."""
    return [record for record, _ in parse_log(path)[0]]


def trim_log(path: Path, step: int) -> Tuple[int, bool]:
    """Keep the records up to `step` (those after it are redone by the resumed run); atomic.
    Returns (records dropped, whether a half-written last line was among them)."""
    records, partial = parse_log(path)
    kept = [line for record, line in records if record["step"] <= step]
    atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))
    return len(records) - len(kept), partial
