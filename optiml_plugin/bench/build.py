"""`optiml bench build`: a build config -> a bench directory with its manifest.

Why one module orchestrates: the steps (load, categorize, plan splits, decontaminate, render, cap,
write) each live in their own module, but the accounting that proves nothing was lost silently
(read = kept + skipped + removed by reason) must see every step, so it is kept here. The bench is
written into a temporary sibling directory and renamed into place only once complete and balanced.
Records never sit in memory together: they wait in a spill file, and worker processes read the sources
and write the tasks (docs/bench.md, "How the build scales"), so memory does not grow with the records'
text and every core works.
"""
from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from tqdm import tqdm

from optiml_plugin.bench import outdir
from optiml_plugin.bench.build_config import BuildConfig, load_build_config
from optiml_plugin.bench.build_tasks import Phases, TaskFacts
from optiml_plugin.bench.idindex import IdIndex
from optiml_plugin.bench.reading import read_sources, source_bytes, validated
from optiml_plugin.bench.records import Record
from optiml_plugin.bench.spill import Incoming, SpillWriter, close_readers, incoming
from optiml_plugin.bench.splits import TaskKey
from optiml_plugin.bench.workers import default_workers
from optiml_plugin.errors import BadRecordError, BadRecordPolicy
from optiml_plugin.fsio import replace_dir, write_error
from optiml_plugin.outlock import locked

__all__ = ["BuildConfig", "build_bench", "load_build_config"]

SPILL_DIR = ".spill"
SMALL_BUILD = 20_000  # records below which the default is one process (3 pools cost ~0.3 s)
SMALL_SOURCE_BYTES = 16 << 20  # sources below this are read in one process by default


def build_bench(config: BuildConfig, out: Union[str, Path], records: Optional[Iterable[Record]] = None,
                overwrite: bool = False, progress: Optional[bool] = None,
                workers: Optional[int] = None) -> Dict[str, Any]:
    """Build the bench described by `config` into `out`; returns the manifest.

    `records` replaces the config's sources (tests and benchmarks feed records directly).
    `progress=None` shows tqdm bars only on a terminal. `workers` processes read the sources and
    write the tasks (default: every core, at most 8; but one process reads sources under
    `SMALL_SOURCE_BYTES` and writes builds under `SMALL_BUILD` records, where starting a pool costs
    more than it saves: a fork of a process holding torch takes tens of ms); the bench does not
    depend on it.
    Memory stays bounded: records wait in a spill file (bench/spill.py) inside the temporary build folder.
    A second build into the same `out` while this one runs is refused (outlock.py)."""
    out = Path(out)
    with locked(out, "optiml bench build"):
        outdir.prepare_out(out, _input_paths(config) if records is None else (), overwrite)
        return _build(config, out, records, progress, workers)


def _build(config: BuildConfig, out: Path, records: Optional[Iterable[Record]], progress: Optional[bool],
           workers: Optional[int]) -> Dict[str, Any]:
    policy = BadRecordPolicy(config.on_bad_record)
    problems = BadRecordPolicy(config.on_bad_record)
    bar = None if progress is None else not progress
    auto = workers is None
    workers = default_workers() if workers is None else max(1, workers)
    tmp = out.parent / f"{outdir.building_prefix(out)}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    reading = True
    collecting = gc.isenabled()
    gc.disable()  # millions of short-lived tuples, no cycles (exceptions are kept without frames): 13%
    spill = None
    try:
        spill = SpillWriter(tmp / SPILL_DIR)
        if records is None:
            taxonomy = config.resolve(config.taxonomy) if config.taxonomy else None
            small = auto and source_bytes(config.sources, Path(config.base_dir)) < SMALL_SOURCE_BYTES
            stream = read_sources(config.sources, Path(config.base_dir), config.seed, taxonomy, policy,
                                  1 if small else workers)
        else:
            stream = (incoming(r) for r in validated(records, policy))
        facts = _collect(stream, policy, spill, bar)
        del stream  # the readers' id indexes go with it, before workers are forked
        spill.close()
        reading = False
        merged = _merged_tasks(config, facts)
        if auto and sum(f.size for f in facts.values()) < SMALL_BUILD:
            workers = 1
        manifest = Phases(config, facts, spill, tmp, workers, bar).run(policy, problems, merged)
        close_readers(spill.path)
        shutil.rmtree(spill.root)
        replace_dir(tmp, out)
    except OSError as e:
        if reading and not str(e.filename or "").startswith(str(tmp)):
            raise
        raise write_error(e, e.filename or tmp) from None
    finally:  # each step on its own: a full disk must not keep the temp folder (spill included) behind
        if spill is not None:
            try:
                spill.close()
            except OSError:
                pass
            close_readers(spill.path)
        if collecting:
            gc.enable()
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp.exists():
            print(f"optiml: could not remove {tmp}; remove it yourself", file=sys.stderr)
    return manifest


def _input_paths(config: BuildConfig) -> List[Path]:
    """Every file or folder the build reads: sources, taxonomy, split lists (never to be replaced)."""
    paths = [config.resolve(str(s["path"])) for s in config.sources if isinstance(s.get("path"), str)]
    if config.taxonomy:
        paths.append(config.resolve(config.taxonomy))
    paths += [Path(p) for p in config.split.origins.values()]
    if config.split.sni_split_dir:
        paths.append(Path(config.split.sni_split_dir))
    return paths


def _merged_tasks(config: BuildConfig, facts: Mapping[TaskKey, TaskFacts]) -> List[Dict[str, Any]]:
    """Tasks whose records came from two or more `sources:` entries (likely the same data twice): warned
    about on stderr and listed in the manifest, since they are merged into one task."""
    out = []
    for key, f in sorted(facts.items()):
        found = sorted(f.source_indices)
        if len(found) > 1:
            paths = [str(config.sources[i].get("path", config.sources[i].get("type"))) for i in found]
            out.append({"benchmark": key[0], "task": key[1], "sources": paths, "records": f.size})
            print(f"optiml: warning: task '{key[1]}' ({key[0]}) comes from {len(found)} sources "
                  f"({', '.join(paths)}); their {f.size} records are merged into one task",
                  file=sys.stderr)
    return out


def _collect(records: Iterable[Incoming], policy: BadRecordPolicy, spill: SpillWriter, bar: Optional[bool]
             ) -> Dict[TaskKey, TaskFacts]:
    """Spill records by task; refuse records without a category and ids seen in another record."""
    facts: Dict[TaskKey, TaskFacts] = {}
    owners: List[TaskKey] = []
    ids = IdIndex()
    for key, category, rid, sources, path, where, source, task_meta, data in tqdm(
            records, desc="reading", unit=" records", disable=bar, mininterval=0.5):
        if not category.strip():
            policy.handle(BadRecordError(path, where, "category", "unknown_category",
                                         f"task '{key[1]}' has no category (add it to the taxonomy)"))
            continue
        first = ids.get(rid)
        if first is not None:
            policy.handle(BadRecordError(path, where, "id", "duplicate_id",
                                         f"id '{rid}' is already used by task '{owners[first][1]}'"))
            continue
        task = facts.get(key)
        if task is None:
            task = facts[key] = TaskFacts(key, category, len(owners))
            owners.append(key)
        elif category != task.category:
            policy.handle(BadRecordError(path, where, "category", "inconsistent_category",
                                         f"category '{category}' differs from the task's '{task.category}'"))
            continue
        ids.add(rid, task.index)
        task.size += 1
        task.sources.update(sources)
        if source is not None:
            task.source_indices.add(source)
        if task.size == 1:
            task.task_meta = task_meta  # the same on every row of a task: kept once
        spill.add(key, data)
    return facts


