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
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import orjson

from optiml_plugin.conventions import EVAL_SPLITS, LEVELS, SPLITS, TRAIN_SPLIT  # noqa: F401
from optiml_plugin.errors import CorruptFileError, OptimlError, first_line
from optiml_plugin.fsio import atomic_write_bytes

FORMAT_NAME = "optiml-bench"
FORMAT_VERSION = 2  # 2: a row leaves out an instruction equal to its task's (manifest `instruction`)
READ_VERSIONS = (1, 2)  # the format versions `Bench` reads (1: every row holds its instruction)
MANIFEST = "manifest.json"
SHARD = "00"
MIN_OPEN_READERS = 64
_OFFSET = struct.Struct("<Q")
_OFFSET_PAIR = struct.Struct("<QQ")
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


_LINE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))  # one, not one per row


def dumps_line(obj: Dict[str, Any]) -> bytes:
    """Canonical JSONL line: insertion-ordered keys, UTF-8, no NaN; same input -> same bytes."""
    return (_LINE.encode(obj) + "\n").encode("utf-8")


def dumps_text_line(obj: Dict[str, Any]) -> bytes:
    """`dumps_line` of a row whose values are strings, lists of strings, booleans or null (a bench row):
    orjson writes those exact bytes 9x faster (0.7 vs 6.3 us a row). Numbers are excluded because
    orjson spells some floats differently (1e-5, json 1e-05); a row orjson refuses (a lone surrogate)
    goes through json."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
    except (TypeError, orjson.JSONEncodeError):
        return dumps_line(obj)


def write_jsonl_with_index(path: Union[str, Path], rows: Iterable[Dict[str, Any]], atomic: bool = True,
                           dumps: Callable[[Dict[str, Any]], bytes] = dumps_line) -> int:
    """Write rows as JSONL (each line `dumps(row)`) plus its `.idx` offsets, both atomically; returns
    the row count.

    `atomic=False` writes in place, for a writer whose whole folder appears at once when done (the
    bench builder's temporary folder): a temp file and rename per file cost 3 opens on slow file systems."""
    chunks: List[bytes] = [dumps(row) for row in rows]
    offsets = np.zeros(len(chunks) + 1, dtype="<u8")
    np.cumsum([len(c) for c in chunks], out=offsets[1:])
    if atomic:
        atomic_write_bytes(path, b"".join(chunks))
        atomic_write_bytes(f"{path}.idx", offsets.tobytes())
        return len(chunks)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
    with open(f"{path}.idx", "wb") as f:
        f.write(offsets.tobytes())
    return len(chunks)


class IndexedJsonl:
    """Random access to one JSONL file through its `.idx`.

    A row costs two `os.pread` calls on descriptors opened on first use: 16 bytes of the index, then
    the row. No offsets live on the heap (a 17.9M-row bench costs no memory per worker), and opening
    is two `os.open` plus two `fstat` (about 20 us), so a reader that was closed to bound the open
    descriptors reopens cheaply (mapping the index with numpy cost 4x that, and a descriptor more).
    """

    def __init__(self, path: Union[str, Path]) -> None:
        self._fds: Optional[Tuple[int, int]] = None
        self.path = Path(path)
        self._idx = Path(f"{self.path}.idx")
        if not self._idx.exists():
            raise CorruptFileError(f"{self._idx}: offset index missing (rebuild the bench with "
                                   f"`optiml bench build`)")
        if not self.path.is_file():
            raise CorruptFileError(f"{self.path}: bench file missing (its index exists); rebuild the bench")
        self._rows = -1
        self._size = -1
        self._open()

    def _open(self) -> Tuple[int, int]:
        """Open both files and check the index against the data file (again on every reopen: a bench
        replaced in place must not be read through a stale row count)."""
        idx_fd = os.open(self._idx, os.O_RDONLY)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except BaseException:
            os.close(idx_fd)
            raise
        self._fds = (idx_fd, fd)
        try:
            idx_size, size = os.fstat(idx_fd).st_size, os.fstat(fd).st_size
            if self._rows < 0:
                self._check(idx_fd, idx_size, size)
            elif (idx_size, size) != (8 * (self._rows + 1), self._size):
                raise CorruptFileError(f"{self.path}: changed on disk since it was first opened "
                                       f"(a bench must not be rebuilt under a running reader)")
        except BaseException:
            self.close()
            raise
        return self._fds

    def _check(self, idx_fd: int, idx_size: int, size: int) -> None:
        if idx_size < 8 or idx_size % 8:
            raise CorruptFileError(f"{self._idx}: size is not a whole number of 8-byte offsets (truncated index?); "
                                   f"rebuild the bench")
        last = _OFFSET.unpack(os.pread(idx_fd, 8, idx_size - 8))[0]
        if last != size:
            raise CorruptFileError(f"{self._idx}: index does not match {self.path.name} "
                                   f"(index ends at {last}, file has {size} bytes; truncated or edited?): "
                                   f"rebuild the bench")
        self._rows, self._size = idx_size // 8 - 1, size

    def __len__(self) -> int:
        return self._rows

    def _span(self, i: int) -> Tuple[int, int]:
        """Row i's byte range, read from the index."""
        if not 0 <= i < self._rows:
            raise IndexError(f"{self.path}: row {i} out of range 0..{self._rows - 1}")
        idx_fd = (self._fds or self._open())[0]
        start, end = _OFFSET_PAIR.unpack(os.pread(idx_fd, 16, 8 * i))
        if end < start:
            raise CorruptFileError(f"{self._idx}: offsets {i} and {i + 1} decrease ({start} > {end}); the "
                                   f"index is corrupt: rebuild the bench")
        return start, end

    def read_bytes(self, i: int) -> bytes:
        start, end = self._span(i)
        return os.pread((self._fds or self._open())[1], end - start, start)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        data = self.read_bytes(i)
        try:
            row = json.loads(data.decode("utf-8"))  # str skips json's encoding sniffing
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            start, end = self._span(i)
            raise CorruptFileError(
                f"{self.path}: row {i} (bytes {start}..{end} per {self._idx.name}) is not one JSON line ({e}); "
                f"the file or its index was changed after the build: rebuild the bench with "
                f"`optiml bench build`") from None
        if not isinstance(row, dict):
            raise CorruptFileError(f"{self.path}: row {i} is not a JSON object; rebuild the bench")
        return row

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def verify(self) -> None:
        """Check every index entry against its row: offsets start at 0 and increase, and each span is one
        JSON object ending its line. One sequential read of the file, so `bench stats`
        finds what train and eval would stop at (an index shifted by a few bytes, a garbage row of the
        same length), before a run starts."""
        offsets = np.fromfile(self._idx, dtype="<u8")
        if len(offsets) == 0 or offsets[0] != 0:
            raise CorruptFileError(f"{self._idx}: the first offset is not 0; the index is corrupt: rebuild the bench")
        sizes = np.diff(offsets.astype(np.int64))
        bad = np.flatnonzero(sizes <= 0)
        if len(bad):
            i = int(bad[0])
            raise CorruptFileError(f"{self._idx}: offsets {i} and {i + 1} do not increase ({offsets[i]}, "
                                   f"{offsets[i + 1]}); the index is corrupt: rebuild the bench")
        with open(self.path, "rb") as f:
            for i, n in enumerate(sizes.tolist()):
                data = f.read(n)
                try:
                    if not data.endswith(b"\n") or b"\n" in data[:-1]:
                        raise ValueError("the span is not exactly one line")
                    if not isinstance(orjson.loads(data), dict):
                        raise ValueError("not a JSON object")
                except ValueError as e:
                    raise CorruptFileError(
                        f"{self.path}: row {i} (bytes {offsets[i]}..{offsets[i + 1]} per {self._idx.name}) is "
                        f"not one JSON line ({first_line(e)}); the file or its index was changed after the "
                        f"build: rebuild the bench with `optiml bench build`") from None

    def close(self) -> None:
        if self._fds is not None:
            fds, self._fds = self._fds, None
            for fd in fds:
                os.close(fd)

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> Dict[str, Any]:  # picklable for DataLoader workers: reopen lazily
        state = dict(self.__dict__)
        state["_fds"] = None
        return state


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
    instruction: Optional[str] = None  # the task's instruction, for rows that leave it out (format 2)


def with_instruction(row: Dict[str, Any], instruction: str) -> Dict[str, Any]:
    """`row` with `instruction` before its `input`, the key order the builder writes."""
    out: Dict[str, Any] = {}
    for k, v in row.items():
        if k == "input":
            out["instruction"] = instruction
        out[k] = v
    out.setdefault("instruction", instruction)
    return out


_TASK_STRINGS = ("task", "benchmark", "category", "level")


def _manifest_error(mpath: Path, where: str, detail: str) -> CorruptFileError:
    return CorruptFileError(f"{mpath}: field '{where}': {detail}; the manifest was changed after the build: "
                            f"rebuild the bench with `optiml bench build`")


def check_manifest(manifest: Dict[str, Any], mpath: Path) -> None:
    """Refuse a manifest whose task list has the wrong shape, or whose file paths leave the bench.

    Why here: every reader (stats, train, eval, metaseq) goes through `Bench`, and a hand-edited manifest
    once gave a TypeError deep in a reader, or a task file `../../../../etc/passwd` that was followed."""
    tasks = manifest.get("tasks")
    if not isinstance(tasks, list):
        raise _manifest_error(mpath, "tasks", f"expected a list of tasks, got {type(tasks).__name__}")
    root = mpath.parent.resolve()
    for i, t in enumerate(tasks):
        if not isinstance(t, dict):
            raise _manifest_error(mpath, f"tasks[{i}]", f"expected an object, got {type(t).__name__}")
        for key in _TASK_STRINGS:
            if not isinstance(t.get(key), str):
                raise _manifest_error(mpath, f"tasks[{i}].{key}", f"expected a string, got {t.get(key)!r}")
        files, counts = t.get("files"), t.get("counts")
        if not isinstance(files, dict) or not isinstance(counts, dict):
            raise _manifest_error(mpath, f"tasks[{i}].files/counts", "expected two objects keyed by split")
        for split, rel in files.items():
            where = f"tasks[{i}].files.{split}"
            if not isinstance(rel, str) or not rel:
                raise _manifest_error(mpath, where, f"expected a path inside the bench, got {rel!r}")
            if root not in (root / rel).resolve().parents:
                raise _manifest_error(mpath, where, f"{rel!r} is outside the bench {root}; refused")
            n = counts.get(split)
            if type(n) is not int or n < 0:
                raise _manifest_error(mpath, f"tasks[{i}].counts.{split}", f"expected a row count, got {n!r}")
        if not isinstance(t.get("instruction", ""), str):
            raise _manifest_error(mpath, f"tasks[{i}].instruction", "expected a string")
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
        raise _manifest_error(mpath, "splits", "expected an object of per-split objects")


def default_max_open_readers() -> int:
    """A quarter of the process's descriptor limit (a reader holds two): at the usual soft limit of
    1024 that is 256 readers, at 65536 a paper-scale bench of ~2,000 task files stays open throughout."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # no `resource` module (Windows)
        return MIN_OPEN_READERS * 4
    if soft == resource.RLIM_INFINITY or soft < 0:
        return 1 << 14
    return max(MIN_OPEN_READERS, soft // 4)


class Bench:
    """Read side of a bench directory: the manifest and O(1) example access.

    Readers of every task file read so far are kept (a few hundred bytes each, no offsets on the
    heap); at most `max_open` of them hold descriptors, the least recently used is closed and reopens
    on its next read, so throughput does not fall off a cliff with the number of task files.
    """

    def __init__(self, root: Union[str, Path], max_open: Optional[int] = None) -> None:
        self.root = Path(root)
        self.max_open = default_max_open_readers() if max_open is None else max(1, int(max_open))
        mpath = self.root / MANIFEST
        if not mpath.exists():
            raise OptimlError(f"{self.root}: not a bench directory ({MANIFEST} missing; "
                              f"build one with `optiml bench build CONFIG --out DIR`)")
        try:
            self.manifest: Dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise OptimlError(f"{mpath}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT_NAME:
            found = self.manifest.get("format") if isinstance(self.manifest, dict) else self.manifest
            raise OptimlError(f"{mpath}: field 'format' is {found!r}, expected {FORMAT_NAME!r}")
        version = self.manifest.get("version")
        if type(version) is not int or version not in READ_VERSIONS:
            raise OptimlError(f"{mpath}: field 'version' is {version!r}; this optiml reads bench format "
                              f"versions {', '.join(map(str, READ_VERSIONS))}: rebuild the bench with this "
                              f"optiml, or read it with the optiml that built it "
                              f"({self.manifest.get('optiml_version', 'unknown')})")
        check_manifest(self.manifest, mpath)
        self._readers: Dict[Path, IndexedJsonl] = {}
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
                                count=int(t["counts"][split]), instruction=t.get("instruction")))
        return out

    def splits(self) -> List[str]:
        return [s for s in SPLITS if any(s in t["files"] for t in self.manifest["tasks"])]

    def reader(self, task_file: TaskFile) -> IndexedJsonl:
        """The file's reader, counted as open (most recently used); the oldest beyond `max_open` is closed."""
        path = task_file.path
        r = self._open.get(path)
        if r is not None:
            self._open.move_to_end(path)
            return r
        r = self._readers.get(path)
        if r is None:
            r = IndexedJsonl(path)
            if len(r) != task_file.count:
                r.close()
                raise CorruptFileError(
                    f"{task_file.path}: has {len(r)} rows but {MANIFEST} field 'counts.{task_file.split}' of "
                    f"task '{task_file.task}' says {task_file.count}; the bench was changed after it was "
                    f"built: rebuild it with `optiml bench build`")
            self._readers[path] = r
        self._open[path] = r
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)[1].close()
        return r

    def read(self, task_file: TaskFile, i: int) -> Dict[str, Any]:
        """Row `i`, whole: an instruction the row leaves out (its task's) is put back in its place."""
        row = self.reader(task_file)[i]
        if "instruction" in row or task_file.instruction is None:
            return row
        return with_instruction(row, task_file.instruction)

    def close(self) -> None:
        for r in self._open.values():
            r.close()
        self._open.clear()

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_open"] = {}, OrderedDict()
        return state

