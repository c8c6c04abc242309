"""The bench directory's on-disk format: JSONL split files with byte-offset indexes, atomically written.

Why: every consumer (stream, metaseq task, evaluator) must read any example in O(1) without loading
a file, and a half-written bench must never look complete. Layout (docs/ARCHITECTURE.md):

    BENCH/manifest.json
    BENCH/<split>/00/<benchmark>__<category>__<task>.jsonl
    BENCH/<split>/00/<benchmark>__<category>__<task>.jsonl.idx   (uint64 LE, n+1 offsets)
"""
from __future__ import annotations

import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np

from optiml_plugin.conventions import EVAL_SPLITS, LEVELS, SPLITS, TRAIN_SPLIT  # noqa: F401
from optiml_plugin.errors import CorruptFileError, OptimlError
from optiml_plugin.fsio import atomic_write_bytes

FORMAT_NAME = "optiml-bench"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD = "00"
MAX_OPEN_FILES = 256
_STEM_PART = re.compile(r"[^A-Za-z0-9._-]+")


def normalize_name(name: str) -> str:
    """A file-name-safe, lower-case form of a benchmark/category/task name (no '__' inside)."""
    out = _STEM_PART.sub("_", name.strip().lower())
    out = re.sub(r"_+", "_", out).strip("_.")
    return out or "unnamed"


def file_stem(benchmark: str, category: str, task: str) -> str:
    """`<benchmark>__<category>__<task>`: metaseq reads the benchmark from split('__')[0]."""
    return "__".join(normalize_name(p) for p in (benchmark, category, task))


def split_path(bench: Union[str, Path], split: str, stem: str) -> Path:
    return Path(bench) / split / SHARD / f"{stem}.jsonl"


def dumps_line(obj: Dict[str, Any]) -> bytes:
    """Canonical JSONL line: insertion-ordered keys, UTF-8, no NaN; same input -> same bytes."""
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n").encode(
        "utf-8")


def write_jsonl_with_index(path: Union[str, Path], rows: Iterable[Dict[str, Any]]) -> int:
    """Write rows as JSONL plus its `.idx` offsets, both atomically; returns the row count."""
    chunks: List[bytes] = [dumps_line(row) for row in rows]
    offsets = np.zeros(len(chunks) + 1, dtype="<u8")
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    atomic_write_bytes(path, b"".join(chunks))
    atomic_write_bytes(f"{path}.idx", offsets.tobytes())
    return len(chunks)


class IndexedJsonl:
    """Random access to one JSONL file through its `.idx`.

    The offsets are memory-mapped (the OS pages them in; a 17.9M-row bench costs no heap per
    worker) and rows are read with `os.pread` on a file descriptor opened on first use.
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self._fd: Optional[int] = None
        self.path = Path(path)
        self._idx = Path(f"{self.path}.idx")
        if not self._idx.exists():
            raise CorruptFileError(f"{self._idx}: offset index missing (rebuild the bench with "
                                   f"`optiml bench build`)")
        self._offsets = self._map_offsets()

    def _map_offsets(self) -> "np.ndarray":
        if not self.path.is_file():
            raise CorruptFileError(f"{self.path}: bench file missing (its index exists); rebuild the bench")
        if self._idx.stat().st_size < 8 or self._idx.stat().st_size % 8:
            raise CorruptFileError(f"{self._idx}: size is not a whole number of 8-byte offsets (truncated index?); "
                                   f"rebuild the bench")
        offsets = np.memmap(self._idx, dtype="<u8", mode="r")
        size = self.path.stat().st_size
        if len(offsets) == 0 or int(offsets[-1]) != size:
            last = int(offsets[-1]) if len(offsets) else "nothing"
            raise CorruptFileError(f"{self._idx}: index does not match {self.path.name} "
                                   f"(index ends at {last}, file has {size} bytes; truncated or edited?): "
                                   f"rebuild the bench")
        return offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    def read_bytes(self, i: int) -> bytes:
        if not 0 <= i < len(self):
            raise IndexError(f"{self.path}: row {i} out of range 0..{len(self) - 1}")
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        if end < start:
            raise CorruptFileError(f"{self._idx}: offsets {i} and {i + 1} decrease ({start} > {end}); the "
                                   f"index is corrupt: rebuild the bench")
        return os.pread(self._fd, end - start, start)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        data = self.read_bytes(i)
        try:
            row = json.loads(data.decode("utf-8"))  # str skips json's encoding sniffing
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(
                f"{self.path}: row {i} (bytes {int(self._offsets[i])}..{int(self._offsets[i + 1])} per "
                f"{self._idx.name}) is not one JSON line ({e}); the file or its index was changed after "
                f"the build: rebuild the bench with `optiml bench build`") from None
        if not isinstance(row, dict):
            raise CorruptFileError(f"{self.path}: row {i} is not a JSON object; rebuild the bench")
        return row

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        state = dict(self.__dict__)
        state["_fd"] = None
        state["_offsets"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._offsets = self._map_offsets()


@dataclass(frozen=True)
class TaskFile:
    """One task's file in one split, as the manifest lists it."""

    split: str
    task: str
    benchmark: str
    category: str
    level: str
    path: Path
    count: int


class Bench:
    """Read side of a bench directory: the manifest and O(1) example access."""

    def __init__(self, root: Union[str, Path]) -> None:
        self.root = Path(root)
        mpath = self.root / MANIFEST
        if not mpath.exists():
            raise OptimlError(f"{self.root}: not a bench directory ({MANIFEST} missing; "
                              f"build one with `optiml bench build CONFIG --out DIR`)")
        try:
            self.manifest: Dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise OptimlError(f"{mpath}:{e.lineno}: invalid JSON: {e.msg}") from None
        if self.manifest.get("format") != FORMAT_NAME:
            raise OptimlError(f"{mpath}: field 'format' is {self.manifest.get('format')!r}, "
                              f"expected {FORMAT_NAME!r}")
        self._open: "OrderedDict[Path, IndexedJsonl]" = OrderedDict()

    def task_files(self, split: str) -> List[TaskFile]:
        """Every task file of `split`, in manifest order (sorted by file stem at build time)."""
        out = []
        for t in self.manifest["tasks"]:
            rel = t["files"].get(split)
            if rel is None:
                continue
            out.append(TaskFile(split=split, task=t["task"], benchmark=t["benchmark"],
                                category=t["category"], level=t["level"], path=self.root / rel,
                                count=int(t["counts"][split])))
        return out

    def splits(self) -> List[str]:
        return [s for s in SPLITS if any(s in t["files"] for t in self.manifest["tasks"])]

    def reader(self, task_file: TaskFile) -> IndexedJsonl:
        """The file's reader; at most MAX_OPEN_FILES keep a descriptor (a full bench has ~2000 files)."""
        r = self._open.get(task_file.path)
        if r is None:
            r = IndexedJsonl(task_file.path)
            if len(r) != task_file.count:
                raise CorruptFileError(
                    f"{task_file.path}: has {len(r)} rows but {MANIFEST} field 'counts.{task_file.split}' of "
                    f"task '{task_file.task}' says {task_file.count}; the bench was changed after it was "
                    f"built: rebuild it with `optiml bench build`")
            self._open[task_file.path] = r
        self._open.move_to_end(task_file.path)
        if len(self._open) > MAX_OPEN_FILES:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return r

    def read(self, task_file: TaskFile, i: int) -> Dict[str, Any]:
        return self.reader(task_file)[i]

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = OrderedDict()
        return state

