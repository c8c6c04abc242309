"""Per-task spill files: the builder's records on disk between reading and writing the bench.

Why: the build needs global facts (roles, duplicate ids, evaluation inputs) before it can write any
task, so the in-memory builder held every record (3.6 KB each, 3.4 GB at 1M records). Spilling each
accepted record to its task's file keeps memory bounded: the writer holds at most `buffer_bytes` of
rows, and a reader streams one task. A row is a `marshal`-ed tuple of builtins (10x faster to read
than a pickled dataclass), length-prefixed; benchmark, task and category live in the task's key.
"""
from __future__ import annotations

import marshal
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from optiml_plugin.data.records import Record
from optiml_plugin.data.splits import TaskKey

_LEN = struct.Struct("<I")
_CHUNK = 8 << 20
#: positions in a spilled row
ID, SOURCES, INSTRUCTION, INPUT, OUTPUTS, CANDIDATES, LANGUAGE, TEMPLATE, OPTIONS_BLOCK, META = range(10)
Row = Tuple[Any, ...]


#: a record on its way to the spill: (benchmark, task), category, id, sources, the path and where
#: (line or instance) for messages, its `sources:` entry (None for records given in memory), its
#: positive examples (kept once per task, not spilled) and the encoded row
Incoming = Tuple[TaskKey, str, str, Tuple[str, ...], Any, Any, Optional[int], Any, bytes]


def to_row(r: Record) -> Row:
    return (r.id, r.sources, r.instruction, r.input, r.outputs, r.candidates, r.language, r.template,
            r.options_block, r.meta)


def incoming(r: Record, source: Optional[int] = None) -> Incoming:
    """What the builder's reading stage needs of `r`, its row encoded once (in a worker, if any)."""
    meta = r.meta
    spilled = {k: v for k, v in meta.items() if k != "positive_examples"}
    if source is not None:
        spilled["source_index"] = source
    return ((r.benchmark, r.task), r.category, r.id, r.sources, meta.get("path", f"<{r.benchmark}/{r.task}>"),
            meta.get("where", r.id), source, meta.get("positive_examples"),
            marshal.dumps(to_row(r)[:META] + (spilled,)))


def to_record(row: Row, key: TaskKey, category: str) -> Record:
    """The record a row was spilled from (it was validated before it was spilled)."""
    return Record.trusted(key[0], key[1], category, row[SOURCES], row[INSTRUCTION], row[INPUT], row[OUTPUTS],
                          row[ID], row[CANDIDATES], row[LANGUAGE], row[TEMPLATE], row[OPTIONS_BLOCK], row[META])


class SpillWriter:
    """Appends rows to one file per task (`<n>.spill`, n in order of first appearance), buffering up
    to `buffer_bytes` in all; files are opened only while flushing, so thousands of tasks need no
    more than one descriptor."""

    def __init__(self, root: Path, buffer_bytes: int = 64 << 20) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._files: Dict[TaskKey, Path] = {}
        self._buffers: Dict[TaskKey, List[bytes]] = {}
        self._buffered = 0
        self._limit = buffer_bytes

    def add(self, key: TaskKey, data: bytes) -> None:
        """Append one encoded row (`incoming(...)[-1]`) to `key`'s file."""
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = []
            if key not in self._files:
                self._files[key] = self.root / f"{len(self._files)}.spill"
        buf.append(_LEN.pack(len(data)))
        buf.append(data)
        self._buffered += len(data) + 4
        if self._buffered >= self._limit:
            self.flush()

    def flush(self) -> None:
        for key, buf in self._buffers.items():
            with open(self._files[key], "ab") as f:
                f.write(b"".join(buf))
        self._buffers = {}
        self._buffered = 0

    def path(self, key: TaskKey) -> Path:
        return self._files[key]


def read_rows(path: Path) -> Iterator[Row]:
    """The rows of one spill file, in the order they were added, read `_CHUNK` bytes at a time."""
    with open(path, "rb") as f:
        rest = b""
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            data = rest + chunk if rest else chunk
            pos, end = 0, len(data)
            while pos + 4 <= end:
                (n,) = _LEN.unpack_from(data, pos)
                if pos + 4 + n > end:
                    break
                yield marshal.loads(data[pos + 4:pos + 4 + n])
                pos += 4 + n
            rest = data[pos:]
        if rest:
            raise ValueError(f"{path}: truncated spill file ({len(rest)} bytes left over)")
