"""Hugging Face `datasets` sources: `save_to_disk` folders, Arrow/Parquet files, cached hub datasets.

Why: P3, the FLAN collection and SNI are published on the Hugging Face hub, and most labs hold them
as `datasets` folders or in the hub cache rather than as the original releases. This source reads
them where they are and maps their columns onto a row format another loader already reads (`format`:
p3, flan, sni or generic), so every row goes through the same builders, checks and error messages.
`columns` maps a field of that format to a column of the data (`{input: question}`) for datasets
laid out otherwise. The `sni` format is the generic row read from the SNI mirrors' columns
(`task_name`, `definition`, `inputs`, `targets`, `id`) with benchmark `niv2`.

`path` is a `save_to_disk` folder (a Dataset or a DatasetDict), an `.arrow`/`.parquet` file, or a
folder holding any of these; `name` (with `config`, one name or a list, and `cache_dir` when the
cache is not the default one) instead loads a hub dataset from the local cache, offline unless
`HF_HUB_OFFLINE` (or `HF_DATASETS_OFFLINE`) is set to 0. `splits` restricts the splits read. A
location without a task column names the task: the saved folder, the file (as the other loaders
do) or the hub config. Every record keeps its split in `meta["split"]`.
`datasets` is imported only when this source is used (`pip install 'optiml[hf]'`).
"""
from __future__ import annotations

import dataclasses
import glob
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources import flan, generic, p3
from optiml_plugin.bench.sources.base import (RecordGate, SourceSpec, file_stem, has_suffix,
                                             release_split, resolve_paths)
from optiml_plugin.bench.sources.tabular import PARQUET_SUFFIXES, iter_rows, rows_records
from optiml_plugin.errors import BadRecordPolicy, ConfigError, OptimlError

KEYS = ("format", "columns", "name", "config", "cache_dir", "splits", "task", "dataset_prefixes",
        "group_templates", "instruction", "options_block", "example_fields")
SUFFIXES = (".arrow",) + PARQUET_SUFFIXES
DEFAULT_BENCHMARK = None  # the format's: p3 promptsource, flan flan, sni niv2, generic per row
_BATCH = 4096
_SAVED_MARKERS = ("dataset_dict.json", "state.json")
_TRUE = {"1", "ON", "YES", "TRUE"}

#: format -> (loader module with `row_builder`, default benchmark, field -> column of the published data)
FORMATS: Dict[str, Tuple[Any, Optional[str], Mapping[str, str]]] = {
    "p3": (p3, p3.DEFAULT_BENCHMARK, {}),
    "flan": (flan, flan.DEFAULT_BENCHMARK, {}),
    "sni": (generic, "niv2", {"task": "task_name", "instruction": "definition", "input": "inputs",
                              "output": "targets"}),
    "generic": (generic, None, {}),
}

Rows = Iterator[Tuple[int, Dict[str, Any]]]


def locate(spec: Mapping[str, Any], base_dir: Path) -> Tuple[str, Tuple[Path, ...]]:
    """(shown path, locations): `path` resolved to saved folders and files, or a hub `name`."""
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise ConfigError(f"source entry {dict(spec)!r}: 'format' must be one of "
                          f"{', '.join(sorted(FORMATS))}, got {fmt!r}")
    columns = spec.get("columns") or {}
    if not isinstance(columns, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in columns.items()):
        raise ConfigError(f"source entry {dict(spec)!r}: 'columns' must map field names to column names")
    for key in ("config", "splits"):
        value = spec.get(key)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and value and all(isinstance(v, str) and v for v in value)):
            raise ConfigError(f"source entry {dict(spec)!r}: '{key}' must be a name or a list of names")
    name, path = spec.get("name"), spec.get("path")
    if (name is None) == (path is None):
        raise ConfigError(f"source entry {dict(spec)!r}: give either 'path' (files or save_to_disk "
                          f"folders) or 'name' (a hub dataset in the local cache)")
    if name is not None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"source entry {dict(spec)!r}: 'name' must be a dataset name")
        cache = spec.get("cache_dir")
        if cache is None:
            return name, ()
        if not isinstance(cache, str) or not cache.strip():
            raise ConfigError(f"source entry {dict(spec)!r}: 'cache_dir' must be a folder")
        folder = Path(cache).expanduser()
        folder = folder if folder.is_absolute() else Path(base_dir) / folder
        if not folder.is_dir():
            raise ConfigError(f"source entry {dict(spec)!r}: 'cache_dir' {folder} is not a folder")
        return name, (folder,)  # with `name`, the one location is the datasets cache to read
    if spec.get("cache_dir") is not None:
        raise ConfigError(f"source entry {dict(spec)!r}: 'cache_dir' goes with 'name', not 'path'")
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(f"source entry {dict(spec)!r}: 'path' must be a file, folder or glob")
    return path, _resolve(path, base_dir)


def _resolve(path: str, base_dir: Path) -> Tuple[Path, ...]:
    """`save_to_disk` folders (outermost ones) and the `.arrow`/`.parquet` files outside them, in
    `path` or in what its glob matches."""
    p = Path(path).expanduser()
    p = p if p.is_absolute() else Path(base_dir) / p
    tops = [Path(m) for m in glob.glob(str(p), recursive=True)] if set("*?[") & set(str(p)) else [p]
    found = set()
    for top in tops:
        if top.is_file() and has_suffix(top, SUFFIXES):
            found.add(top)
        elif top.is_dir():
            saved = {f.parent for marker in _SAVED_MARKERS for f in top.rglob(marker)}
            roots = {d for d in saved if not any(o in d.parents for o in saved)}
            found |= roots
            found |= {f for f in top.rglob("*") if f.is_file() and has_suffix(f, SUFFIXES)
                      and not any(r == f.parent or r in f.parents for r in roots)}
    return tuple(sorted(found)) if found else resolve_paths(path, base_dir, SUFFIXES)


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    module, benchmark, ready = FORMATS[spec.option("format")]
    if spec.benchmark is None and benchmark is not None:
        spec = dataclasses.replace(spec, benchmark=benchmark)
    mapping = dict(ready, **dict(spec.option("columns") or {}))
    wanted = _names(spec.option("splits"))
    gate = RecordGate(spec, policy)
    gate.columns = {f: c for f, c in mapping.items() if f != c}
    for where, task, split, columns, rows in _locations(spec, wanted, policy):
        missing = sorted({c for c in mapping.values() if c not in columns})
        if missing:
            raise ConfigError(f"{where}: column(s) {', '.join(missing)} of the '{spec.option('format')}' "
                              f"mapping not found (columns: {', '.join(columns)}); set 'columns'")
        located = spec if spec.option("task") else dataclasses.replace(
            spec, options=dict(spec.options, task=task))
        task_of, build = module.row_builder(located)
        renamed = ((line, _renamed(row, mapping)) for line, row in rows)
        yield from rows_records(gate, where, renamed, task_of, build, split)
    gate.finish()


def _renamed(row: Dict[str, Any], mapping: Mapping[str, str]) -> Dict[str, Any]:
    out = dict(row)
    for fld, column in mapping.items():
        out[fld] = row[column]
    return out


def _names(value: Any) -> Optional[List[str]]:
    return None if value is None else [value] if isinstance(value, str) else list(value)


Location = Tuple[Path, str, Optional[str], List[str], Rows]


def _locations(spec: SourceSpec, wanted: Optional[List[str]], policy: BadRecordPolicy
               ) -> Iterator[Location]:
    """(path shown in errors, default task, split, column names, rows) of every split read."""
    if spec.option("name") is not None:  # a hub dataset by name, from the local cache
        cache = str(spec.files[0]) if spec.files else None
        for config in _names(spec.option("config")) or [None]:
            task = config or spec.path.rstrip("/").split("/")[-1]
            for split, ds in _splits(_load_cached(spec.path, config, cache), wanted, Path(spec.path) / (config or "")):
                yield Path(spec.path) / (config or "") / split, task, split, list(ds.column_names), _ds_rows(ds)
        return
    for path in spec.files:
        if path.is_dir():
            for split, ds in _splits(_datasets().load_from_disk(str(path)), wanted, path):
                shown = path / split if split else path
                yield shown, path.name, split, list(ds.column_names), _ds_rows(ds)
            continue
        split = release_split(path)
        if wanted is not None and split not in wanted:
            continue
        if path.name.lower().endswith(PARQUET_SUFFIXES):
            import pyarrow.parquet as pq
            columns = list(pq.ParquetFile(str(path)).schema_arrow.names)
            yield path, file_stem(path), split, columns, iter_rows(path, policy)
        else:
            ds = _datasets().Dataset.from_file(str(path))
            yield path, file_stem(path), split, list(ds.column_names), _ds_rows(ds)


def _splits(loaded: Any, wanted: Optional[List[str]], where: Path) -> Iterator[Tuple[Optional[str], Any]]:
    """(split name, Dataset) of a DatasetDict, or (None, it) of a single Dataset; `where` (the
    folder or hub name) is named when a wanted split is not there."""
    if not hasattr(loaded, "keys"):
        yield (loaded.split and str(loaded.split)) or None, loaded
        return
    unknown = sorted(set(wanted or ()) - set(loaded.keys()))
    if unknown:
        raise ConfigError(f"{where}: splits {', '.join(unknown)} not found (splits: {', '.join(loaded.keys())})")
    for split in sorted(loaded.keys()):
        if wanted is None or split in wanted:
            yield split, loaded[split]


def _ds_rows(ds: Any) -> Rows:
    """(1-based row number, row) of a Dataset, read in Arrow batches."""
    line = 0
    for batch in ds.iter(batch_size=_BATCH):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            line += 1
            yield line, dict(zip(names, values))


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise OptimlError("the 'datasets' source needs Hugging Face datasets "
                          "(pip install 'optiml[hf]' or pip install datasets)") from e
    return datasets


def _load_cached(name: str, config: Optional[str], cache_dir: Optional[str]) -> Any:
    """A hub dataset from the local cache only: offline unless the environment says otherwise."""
    datasets = _datasets()
    if os.environ.get("HF_HUB_OFFLINE", os.environ.get("HF_DATASETS_OFFLINE", "1")).upper() in _TRUE:
        # both libraries read these at import time, so setting the variables now would be too late
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(datasets.config, flag):
                setattr(datasets.config, flag, True)
    try:
        return datasets.load_dataset(name, config, cache_dir=cache_dir)
    except OptimlError:
        raise
    except Exception as e:  # datasets raises many types for a dataset that is not in the cache
        raise OptimlError(f"dataset '{name}'{f' config {config!r}' if config else ''} could not be "
                          f"loaded offline from the local cache ({type(e).__name__}: {e})") from e
