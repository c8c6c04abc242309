"""What every loader shares: the parsed `sources:` entry, path resolution, and the record gate.

Why: all loaders must resolve paths the same way, validate records with `Record.problems()`, refuse
duplicate ids and report through the `BadRecordPolicy`; doing it once keeps the error messages and the
read = kept + skipped accounting identical across formats.
"""
from __future__ import annotations

import glob
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple, Union

from optiml_plugin.bench.idindex import IdIndex
from optiml_plugin.bench.records import Record
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError

#: keys every `sources:` entry accepts; loaders add their own (`KEYS` in each module).
COMMON_KEYS = ("type", "path", "benchmark", "tasks", "category", "language")
_GLOB_CHARS = set("*?[")
_SPLIT_STEMS = {"train", "training", "validation", "valid", "dev", "test", "data"}
_SHARD = re.compile(r"-\d+-of-\d+$")

Where = Union[int, str, None]


@dataclass(frozen=True)
class SourceSpec:
    """One validated entry of the build config's `sources:` list, paths already resolved."""

    type: str
    path: str
    files: Tuple[Path, ...]
    benchmark: Optional[str] = None
    tasks: Optional[FrozenSet[str]] = None
    category: Optional[str] = None
    language: Optional[str] = None
    options: Mapping[str, Any] = field(default_factory=dict)
    #: (start byte, end byte, line number at start) of the one JSONL file in `files` to read, set
    #: where bench/reading.py splits a large file between processes; None reads whole files
    byte_range: Optional[Tuple[int, int, int]] = None
    #: entries under `path` with the loader's suffix that cannot be read, and why (dangling link, FIFO,
    #: no permission): each is reported through the policy (`report_unreadable`), never passed over
    unreadable: Tuple[Tuple[Path, str], ...] = ()

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def _str_option(spec: Mapping[str, Any], key: str) -> Optional[str]:
    value = spec.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"source '{spec.get('path')}': '{key}' must be a non-empty string, got {value!r}")
    return value.strip()


Locate = Callable[[Mapping[str, Any], Path], Tuple[str, Tuple[Path, ...]]]


def parse_spec(spec: Mapping[str, Any], base_dir: Path, extra_keys: Sequence[str],
               suffixes: Sequence[str], locate: Optional[Locate] = None) -> SourceSpec:
    """Check keys and types of one `sources:` entry and resolve its `path` to a sorted file list
    (`locate(spec, base_dir)` -> (shown path, files) replaces that for sources read otherwise)."""
    allowed = tuple(COMMON_KEYS) + tuple(extra_keys)
    for key in spec:
        if key not in allowed:
            raise ConfigError(f"source entry {dict(spec)!r}: unknown key '{key}' for type "
                              f"'{spec.get('type')}' (allowed: {', '.join(allowed)})")
    path = spec.get("path")
    if locate is None and (not isinstance(path, str) or not path.strip()):
        raise ConfigError(f"source entry {dict(spec)!r}: 'path' is required (a file, directory or glob)")
    tasks = spec.get("tasks")
    if tasks is not None:
        if (not isinstance(tasks, (list, tuple)) or not tasks
                or not all(isinstance(t, str) and t.strip() for t in tasks)):
            raise ConfigError(f"source '{path}': 'tasks' must be a non-empty list of task names, got {tasks!r}")
        tasks = frozenset(t.strip() for t in tasks)
    benchmark, category, language = (_str_option(spec, k) for k in ("benchmark", "category", "language"))
    unreadable: Tuple[Tuple[Path, str], ...] = ()
    if locate is not None:
        path, files = locate(spec, base_dir)
    else:
        unreadable = unreadable_entries(path, base_dir, suffixes)
        skip = {f for f, _ in unreadable}
        try:
            files = tuple(f for f in resolve_paths(path, base_dir, suffixes) if f not in skip)
        except ConfigError:  # nothing readable: the unreadable entries are what to report
            if not unreadable:
                raise
            files = ()
    return SourceSpec(
        type=str(spec.get("type")), path=path, files=files, unreadable=unreadable,
        benchmark=benchmark, tasks=tasks, category=category, language=language,
        options={k: v for k, v in spec.items() if k in extra_keys})


def resolve_paths(path: str, base_dir: Path, suffixes: Sequence[str]) -> Tuple[Path, ...]:
    """A file, a directory (files with one of `suffixes`, recursively) or a glob; sorted, never empty.

    Sorting makes the record order, and so every seeded step after it, independent of the file system.
    """
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    if _GLOB_CHARS & set(str(p)):
        found = [Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file()]
    elif p.is_dir():
        found = [f for f in p.rglob("*") if f.is_file() and has_suffix(f, suffixes)]
    elif p.is_file():
        found = [p]
    else:
        raise ConfigError(f"source path '{path}' does not exist (resolved to {p})")
    if not found:
        raise ConfigError(f"source path '{path}' matches no {'/'.join(suffixes)} files (resolved to {p})")
    return tuple(sorted(found))


def _why_unreadable(path: Path) -> Optional[str]:
    """Why an entry found under a source path cannot be read as a file (None: it can)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "dangling symbolic link" if path.is_symlink() else "vanished while listed"
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device"
        return f"not a regular file ({kind})"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def unreadable_entries(path: str, base_dir: Path, suffixes: Sequence[str]) -> Tuple[Tuple[Path, str], ...]:
    """Entries a source path names (or holds, with one of `suffixes`) that `resolve_paths` cannot use:
    dangling links, FIFOs and other non-files, files and folders without read permission. Sorted."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir) / p
    out: List[Tuple[Path, str]] = []
    if _GLOB_CHARS & set(str(p)):
        candidates = [Path(f) for f in glob.glob(str(p), recursive=True)]
    elif p.is_dir():
        candidates = []

        def unlistable(err: OSError) -> None:
            out.append((Path(err.filename), f"folder not readable ({err.strerror})"))

        for folder, dirs, names in os.walk(p, onerror=unlistable):
            candidates += [Path(folder) / n for n in names + dirs if has_suffix(Path(n), suffixes)]
    elif p.exists() or p.is_symlink():  # one named entry (a FIFO, a dangling link)
        candidates = [p]
    else:
        candidates = []
    for f in candidates:
        why = _why_unreadable(f)
        if why is not None:
            out.append((f, why))
    return tuple(sorted(out))


def report_unreadable(spec: SourceSpec, policy: BadRecordPolicy) -> None:
    """Each unreadable entry of `spec` through `policy`: an error naming it, or (skip) one unit read and
    skipped as `unreadable_file`, since how many records it held cannot be known."""
    for path, why in spec.unreadable:
        policy.count_read()
        policy.handle(BadRecordError(str(path), None, None, "unreadable_file",
                                     f"cannot be read ({why}); fix or remove it, or pass --on-bad-record skip"))


def has_suffix(path: Path, suffixes: Sequence[str]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


class RecordGate:
    """Validates records, refuses duplicate ids, applies the `tasks` filter, and reports problems.

    One gate serves one `load_source` call, so ids must be unique across all files of a source.
    """

    def __init__(self, spec: SourceSpec, policy: BadRecordPolicy) -> None:
        self.spec = spec
        self.policy = policy
        self._ids = IdIndex()
        self._paths: List[Union[str, Path]] = []
        self._path_index: Dict[Union[str, Path], int] = {}
        self._odd: List[Tuple[Union[str, Path], Where]] = []  # locations not packed into a payload
        self.tasks_seen: Set[str] = set()
        #: field -> the data's column it was read from, where they differ (a `datasets` source's
        #: `columns`): messages name the column the user has
        self.columns: Mapping[str, str] = {}

    def wanted(self, task: str) -> bool:
        """Whether the spec's `tasks` filter keeps `task` (rows of other tasks are not read)."""
        if self.spec.tasks is None:
            return True
        if task in self.spec.tasks:
            self.tasks_seen.add(task)
            return True
        return False

    def bad(self, path: Path, where: Where, fld: Optional[str], reason: str, detail: str,
            records: int = 1) -> None:
        column = self.columns.get(fld or "") or (self.columns.get("output") if fld == "outputs" else None)
        if column and column != fld:
            fld, detail = column, f"{detail} (column '{column}', read as '{fld}')"
        self.policy.handle(BadRecordError(str(path), where, fld, reason, detail), records)

    def admit(self, record: Record, path: Path, where: Where) -> Optional[Record]:
        """The record if valid and its id is new; otherwise report it and return None.

        Kept records carry `meta["path"]` and `meta["where"]`, so later stages (taxonomy, splits)
        can name the file and line of a record they reject.
        """
        problems = record.problems()
        if problems:
            fld, reason, detail = problems[0]
            self.bad(path, where, fld, reason, detail)
            return None
        if not self.policy.partial_source and not self.claim_id(record.id, path, where):
            return None
        record.meta["path"] = str(path)
        record.meta["where"] = where
        return record

    def claim_id(self, id: str, path: Union[str, Path], where: Where) -> bool:
        """False (and reported) when `id` was already used in this source, else remember where."""
        first = self._ids.get(id)
        if first is not None:
            self.bad(path, where, "id", "duplicate_id", f"id '{id}' was already used at "
                     f"{_location(*self._unpack(first, id))}")
            return False
        self._ids.add(id, self._pack(path, where, id))
        return True

    def _pack(self, path: Union[str, Path], where: Where, id: str) -> int:
        """A location as one int: file index << 40 | 0 (no where), 1 (the where is the id: SNI), or
        line + 2; other locations are kept in a list and packed as its negative index."""
        if isinstance(where, int) and 0 <= where < (1 << 40) - 2:
            code = where + 2
        elif where is None or where == id:
            code = 0 if where is None else 1
        else:
            self._odd.append((path, where))
            return -len(self._odd)
        index = self._path_index.get(path)
        if index is None:
            index = self._path_index[path] = len(self._paths)
            self._paths.append(path)
        return (index << 40) | code

    def _unpack(self, payload: int, id: str) -> Tuple[Union[str, Path], Where]:
        if payload < 0:
            return self._odd[-payload - 1]
        code = payload & ((1 << 40) - 1)
        return self._paths[payload >> 40], (None if code == 0 else id if code == 1 else code - 2)

    def finish(self) -> None:
        """After the last file: a task named in `tasks` that never appeared is a config error. A
        worker reading part of a source (`policy.partial_source`) leaves that to the reader that
        merges the parts (bench/reading.py), which gets the tasks seen from `tasks_seen`."""
        if self.policy.partial_source:
            self.policy.tasks_seen.update(self.tasks_seen)  # type: ignore[attr-defined]
        else:
            missing_tasks(self.spec, self.tasks_seen)


def missing_tasks(spec: SourceSpec, seen: Set[str]) -> None:
    """Raise the ConfigError of a `tasks` filter naming tasks the source does not have."""
    missing = sorted((spec.tasks or frozenset()) - seen)
    if missing:
        raise ConfigError(f"source '{spec.path}': tasks not found: {', '.join(missing)}")


def _location(path: Union[str, Path], where: Where) -> str:
    return f"{path}:{where}" if isinstance(where, int) else f"{path} ({where})"


def first_present(row: Mapping[str, Any], names: Sequence[str]) -> Tuple[Optional[str], Any]:
    """(name, value) of the first of `names` whose value in `row` is not None; (None, None) if none."""
    for name in names:
        value = row.get(name)
        if value is not None:
            return name, value
    return None, None


def outputs_value(value: Any) -> Any:
    """A string or a list of strings as a tuple; anything else unchanged so validation names it."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def candidates_value(value: Any) -> Any:
    """A list of strings as a tuple; None or [] as None (no options); anything else unchanged."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def sources_value(row: Mapping[str, Any], default: str) -> Any:
    """`sources` (list) or `source`/`dataset` (str) of a row; the task name when none is given."""
    name, value = first_present(row, ("sources", "source", "dataset"))
    if name is None:
        return (default,)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return value


def default_id(task: str, path: Path, line: int) -> str:
    """`<task>-<line>`, or `<task>-<file stem>-<line>` when the file is not named after the task; a
    split file (`copa/train.jsonl`) adds its own name, so the splits of one task cannot collide."""
    stem, own = file_stem(path), path.name.split(".")[0]
    parts = [task] + ([stem] if stem != task else []) + ([own] if own != stem else [])
    return "-".join(parts + [str(line)])


def release_split(path: Path) -> Optional[str]:
    """The release split a file's name gives (`validation.jsonl`, `test-00000-of-00001.parquet`)."""
    split = _SHARD.sub("", path.name.split(".")[0]).lower()
    return split if split in _SPLIT_STEMS and split != "data" else None


def file_stem(path: Path) -> str:
    """`a.jsonl` -> `a`; generic split file names (`train.jsonl`, the hub's sharded
    `train-00000-of-00002.parquet`) -> the parent folder's name."""
    stem = path.name.split(".")[0]
    split = _SHARD.sub("", stem).lower()
    return path.parent.name if split in _SPLIT_STEMS and path.parent.name else stem


def task_name(row: Mapping[str, Any], spec: SourceSpec, path: Path, keys: Sequence[str]) -> Any:
    """The row's task (first of `keys`), else the source's `task` option, else the file's name."""
    name, value = first_present(row, keys)
    if name is not None:
        return value.strip() if isinstance(value, str) else value
    return spec.option("task") or file_stem(path)


def row_fields(row: Mapping[str, Any], spec: SourceSpec, path: Path, line: int, task: Any) -> Dict[str, Any]:
    """id, category, language, sources and template of a table row, with the source's defaults.

    A string `id` is kept; an integer `id`/`idx` (per-dataset counters, as in P3) is prefixed with the
    task so tasks sharing a file cannot collide; without one the id is `default_id`.
    """
    task_str = task if isinstance(task, str) else str(task)
    _, raw_id = first_present(row, ("id", "idx"))
    if raw_id is None:
        rid: Any = default_id(task_str, path, line)
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        rid = f"{task_str}-{raw_id}"
    else:
        rid = raw_id
    _, category = first_present(row, ("category", "cluster"))
    _, template = first_present(row, ("template", "template_name", "template_type"))
    return {
        "id": rid,
        "category": category if category is not None else (spec.category or ""),
        "language": row.get("language") or spec.language or "en",
        "sources": sources_value(row, task_str),
        "template": template if template is not None else "",
    }
