"""Per-task spill files: the builder's records on disk between reading and writing the bench.

Why: the build needs global facts (roles, duplicate ids, evaluation inputs) before it can write any
task, so the in-memory builder held every record (3.6 KB each, 3.4 GB at 1M records). Spilling each
accepted record to the spill keeps memory bounded: the writer holds at most `buffer_bytes` of rows,
and a reader streams one task's chunks. A row is a `marshal`-ed tuple of builtins (5x faster to read
than a pickled dataclass: 0.8 vs 4.1 us), length-prefixed; benchmark, task and category live in the task's key.
"""
from __future__ import annotations

import marshal
import os
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.splits import TaskKey

_LEN = struct.Struct("<I")
#: positions in a spilled row
ID, SOURCES, INSTRUCTION, INPUT, OUTPUTS, CANDIDATES, LANGUAGE, TEMPLATE, OPTIONS_BLOCK, META = range(10)
Row = Tuple[Any, ...]


#: a record on its way to the spill: (benchmark, task), category, id, sources, the path and where
#: (line or instance) for messages, its `sources:` entry (None for records given in memory), its
#: task-level meta (`TASK_META`: kept once per task, not spilled) and the encoded row
Incoming = Tuple[TaskKey, str, str, Tuple[str, ...], Any, Any, Optional[int], Dict[str, Any], bytes]
#: meta fields that are the same on every row of a task (SNI's examples): the manifest holds them once
TASK_META = ("positive_examples", "negative_examples")


def incoming(r: Record, source: Optional[int] = None) -> Incoming:
    """What the builder's reading stage needs of `r`, its row encoded once (in a worker, if any)."""
    meta = r.meta
    if source is not None:
        meta["source_index"] = source
    task_meta = {k: meta[k] for k in TASK_META if meta.get(k)}
    spilled = {k: v for k, v in meta.items() if k not in TASK_META}
    return ((r.benchmark, r.task), r.category, r.id, r.sources, meta.get("path", f"<{r.benchmark}/{r.task}>"),
            meta.get("where", r.id), source, task_meta,
            marshal.dumps((r.id, r.sources, r.instruction, r.input, r.outputs, r.candidates, r.language,
                           r.template, r.options_block, spilled)))


def to_record(row: Row, key: TaskKey, category: str) -> Record:
    """The record a row was spilled from (it was validated before it was spilled)."""
    return Record(key[0], key[1], category, row[SOURCES], row[INSTRUCTION], row[INPUT], row[OUTPUTS], row[ID],
                  row[CANDIDATES], row[LANGUAGE], row[TEMPLATE], row[OPTIONS_BLOCK], row[META])


class SpillWriter:
    """Appends rows to one spill file, buffering up to `buffer_bytes` in all and writing each task's
    buffered rows as one chunk; a task is the list of its chunks. One file, not one per task: opening
    a file costs ~0.3 ms on some file systems, and a paper-scale build has thousands of tasks."""

    def __init__(self, root: Path, buffer_bytes: int = 64 << 20) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.path = root / "rows.spill"
        self._file = open(self.path, "wb")
        self._chunks: Dict[TaskKey, List[Tuple[int, int]]] = {}
        self._buffers: Dict[TaskKey, List[bytes]] = {}
        self._buffered = 0
        self._limit = buffer_bytes

    def add(self, key: TaskKey, data: bytes) -> None:
        """Append one encoded row (`incoming(...)[-1]`) to `key`'s rows."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = []
        buf.append(_LEN.pack(len(data)))
        buf.append(data)
        self._buffered += len(data) + 4
        if self._buffered >= self._limit:
            self.flush()

    def flush(self) -> None:
        for key, buf in self._buffers.items():
            data = b"".join(buf)
            self._chunks.setdefault(key, []).append((self._file.tell(), len(data)))
            self._file.write(data)
        self._file.flush()
        self._buffers = {}
        self._buffered = 0

    def close(self) -> None:
        """Write what is buffered and close the file (again: nothing); readers open it themselves."""
        if not self._file.closed:
            try:
                self.flush()
            finally:  # closed even when the disk is full, so the build can remove the spill
                self._file.close()

    def chunks(self, key: TaskKey) -> List[Tuple[int, int]]:
        """(offset, length) of each chunk of `key`'s rows, in order."""
        return self._chunks[key]

    def size(self, key: TaskKey) -> int:
        return sum(n for _, n in self._chunks[key])


_FDS: Dict[Tuple[int, str], int] = {}  # (process id, path) -> descriptor: one open per process


def close_readers(path: Path) -> None:
    """Close this process's descriptor on `path` (the spill is deleted with the build folder)."""
    fd = _FDS.pop((os.getpid(), str(path)), None)
    if fd is not None:
        os.close(fd)


def read_rows(path: Path, chunks: List[Tuple[int, int]], wanted: Optional[Set[int]] = None) -> Iterator[Any]:
    """The rows of one task (its `chunks` of the spill file at `path`), in the order they were added;
    with `wanted`, (index, row) of those indices only (other rows are skipped undecoded)."""
    fd = _FDS.get((os.getpid(), str(path)))
    if fd is None:
        fd = _FDS[(os.getpid(), str(path))] = os.open(path, os.O_RDONLY)
    index = 0
    for offset, length in chunks:
        data = os.pread(fd, length, offset)
        pos = 0
        while pos + 4 <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if pos + 4 + n > len(data):
                break
            if wanted is None:
                yield marshal.loads(data[pos + 4:pos + 4 + n])
            elif index in wanted:
                yield index, marshal.loads(data[pos + 4:pos + 4 + n])
            index += 1
            pos += 4 + n
        if pos != length:
            raise ValueError(f"{path}: truncated spill file (a chunk at byte {offset} ends after {pos} of "
                             f"{length} bytes)")
