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

import dataclasses
import gc
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from tqdm import tqdm

from optiml_plugin import __version__
from optiml_plugin.conventions import LEVEL_INSTANCES, LEVEL_TRAIN
from optiml_plugin.data import benchfiles, outdir
from optiml_plugin.data.decontam import (REVIEW_FILE, DecontamConfig, EvalNgrams, ExactInputFilter, OverlapPair,
                                         flagged_rows, source_conflicts)
from optiml_plugin.data.idindex import IdIndex
from optiml_plugin.data.multiplex import multiplex_train
from optiml_plugin.data.official import MODES as OFFICIAL_MODES, official_instances
from optiml_plugin.data.reading import read_sources, source_bytes, validated
from optiml_plugin.data.records import Record
from optiml_plugin.data.spill import (INPUT, META, TEMPLATE, Incoming, SpillWriter, close_readers, incoming,
                                      read_rows, to_record)
from optiml_plugin.data.splits import (EVAL, TRAIN, SplitConfig, TaskInfo, TaskKey, absent_from_lists,
                                       assign_levels, eval_draw, assign_roles, cap_indices, read_task_list,
                                       split_eval_instances, split_train_instances)
from optiml_plugin.data.templates import PROMPT_FORMATS, Rendered, render
from optiml_plugin.data.workers import default_workers, ordered_map
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError, OptimlError
from optiml_plugin.fsio import replace_dir, write_error
from optiml_plugin.yamlio import read_yaml

DEFAULT_CAP = 100_000
DEFAULT_BENCHMARK_CAPS = {"flan": 30_000}  # the paper's per-task caps (§2.1)
_TOP_KEYS = ("sources", "taxonomy", "split", "caps", "decontamination", "seed", "on_bad_record",
             "multiplex", "heldout_instances", "prompt_format")
_LIST_KEYS = ("heldout_categories", "heldout_tasks", "valid_tasks", "eval_test_all")
_FILE_LIST_KEYS = ("heldout_tasks", "valid_tasks")


@dataclass(frozen=True)
class BuildConfig:
    """A validated build config. `caps` maps a benchmark to its per-task training cap ("default" for
    the rest); `multiplex`: draw a training task's examples from all its templates' instantiations
    (data/multiplex.py); `heldout_instances`: training tasks' held-out instances are "random" rows or
    the release's "official" dev/test splits (data/official.py); `prompt_format`: how `src` is rendered,
    "paper" or "sni" (Tk-Instruct's prompt for SNI tasks, data/templates.py); `raw` is the config as given (it
    goes into the manifest); relative paths resolve against `base_dir` (the config file's directory)."""

    sources: Tuple[Mapping[str, Any], ...]
    split: SplitConfig = SplitConfig()
    decontamination: DecontamConfig = DecontamConfig()
    caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BENCHMARK_CAPS,
                                                                 default=DEFAULT_CAP))
    taxonomy: Optional[str] = None
    seed: int = 0
    on_bad_record: str = "error"
    multiplex: bool = True
    heldout_instances: str = "random"
    prompt_format: str = "paper"
    base_dir: str = "."
    raw: Mapping[str, Any] = field(default_factory=dict)

    def cap_for(self, benchmark: str) -> int:
        return int(self.caps.get(benchmark, self.caps.get("default", DEFAULT_CAP)))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def load_build_config(source: Union[str, Path, Mapping[str, Any]],
                      base_dir: Optional[Union[str, Path]] = None) -> BuildConfig:
    """Validate a YAML file or a mapping into a `BuildConfig`; any unknown key is a ConfigError."""
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        origin = "build config"
        base = Path(base_dir) if base_dir is not None else Path(".")
    else:
        path = Path(source)
        raw = read_yaml(path, "build config")
        origin = str(path)
        base = Path(base_dir) if base_dir is not None else path.parent
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: a build config must be a mapping, got {type(raw).__name__}")
    _unknown(raw, _TOP_KEYS, origin, "")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, Mapping) for s in sources):
        raise ConfigError(f"{origin}: 'sources' must be a non-empty list of mappings "
                          f"(e.g. - {{type: sni, path: data/sni/tasks}})")
    seed = _int(raw.get("seed", 0), origin, "seed")
    on_bad = raw.get("on_bad_record", "error")
    BadRecordPolicy(on_bad)  # validates the value with the same message everywhere
    taxonomy = raw.get("taxonomy")
    if taxonomy is not None and not isinstance(taxonomy, str):
        raise ConfigError(f"{origin}: 'taxonomy' must be a path, got {taxonomy!r}")
    multiplex = raw.get("multiplex", True)
    if not isinstance(multiplex, bool):
        raise ConfigError(f"{origin}: 'multiplex' must be true or false, got {multiplex!r}")
    prompt_format = raw.get("prompt_format", "paper")
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"{origin}: 'prompt_format' must be one of {', '.join(PROMPT_FORMATS)}, "
                          f"got {prompt_format!r}")
    heldout = raw.get("heldout_instances", "random")
    if heldout not in OFFICIAL_MODES:
        raise ConfigError(f"{origin}: 'heldout_instances' must be one of {', '.join(OFFICIAL_MODES)}, "
                          f"got {heldout!r}")
    return BuildConfig(
        sources=tuple(dict(s) for s in sources), multiplex=multiplex, heldout_instances=heldout,
        prompt_format=prompt_format,
        split=_split_config(raw.get("split") or {}, origin, base),
        decontamination=_decontam_config(raw.get("decontamination") or {}, origin),
        caps=_caps(raw.get("caps") or {}, origin), taxonomy=taxonomy, seed=seed,
        on_bad_record=on_bad, base_dir=str(base), raw=raw)


def _unknown(section: Mapping[str, Any], allowed: Sequence[str], origin: str, prefix: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (allowed: {', '.join(allowed)})")


def _int(value: Any, origin: str, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{origin}: '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _str_list(value: Any, origin: str, name: str) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{origin}: '{name}' must be a list of names, got {value!r}")
    return tuple(v.strip() for v in value)


def _split_config(section: Any, origin: str, base: Path) -> SplitConfig:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'split' must be a mapping")
    names = [f.name for f in dataclasses.fields(SplitConfig) if f.name != "origins"]
    _unknown(section, names, origin, "split.")
    values: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    for key, value in section.items():
        if key in _FILE_LIST_KEYS and isinstance(value, str):  # a split file, one task per line
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.is_file():
                raise ConfigError(f"{origin}: split file 'split.{key}' = '{value}' does not exist")
            values[key] = read_task_list(path)
            origins[key] = str(path)
        elif key in _LIST_KEYS:
            values[key] = _str_list(value, origin, f"split.{key}")
        elif key == "sni_split_dir":
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: 'split.sni_split_dir' must be a path, got {value!r}")
            values[key] = str(Path(value) if Path(value).is_absolute() else base / value)
        elif key == "sni_lists_complete":
            if not isinstance(value, bool):
                raise ConfigError(f"{origin}: 'split.sni_lists_complete' must be true or false")
            values[key] = value
        else:
            values[key] = _int(value, origin, f"split.{key}")
    return SplitConfig(origins=origins, **values)


def _decontam_config(section: Any, origin: str) -> DecontamConfig:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'decontamination' must be a mapping")
    _unknown(section, [f.name for f in dataclasses.fields(DecontamConfig)], origin, "decontamination.")
    values: Dict[str, Any] = dict(section)
    if "ngram" in values:
        _int(values["ngram"], origin, "decontamination.ngram", minimum=1)
    th = values.get("threshold", 0.01)
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0 <= th <= 1:
        raise ConfigError(f"{origin}: 'decontamination.threshold' must be a fraction in [0, 1], got {th!r}")
    values["threshold"] = float(th)
    if not isinstance(values.get("drop_flagged", False), bool):
        raise ConfigError(f"{origin}: 'decontamination.drop_flagged' must be true or false")
    if values.get("source_overlap", "drop") not in ("drop", "move"):
        raise ConfigError(f"{origin}: 'decontamination.source_overlap' must be 'drop' or 'move', "
                          f"got {values.get('source_overlap')!r}")
    for key in ("allowed_shared_sources", "allowed_pairs"):
        if key in values:
            values[key] = _str_list(values[key], origin, f"decontamination.{key}")
    return DecontamConfig(**values)


def _caps(section: Any, origin: str) -> Dict[str, int]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'caps' must map benchmark names (or 'default') to per-task caps")
    caps = dict(DEFAULT_BENCHMARK_CAPS, default=DEFAULT_CAP)
    for key, value in section.items():
        caps[str(key)] = _int(value, origin, f"caps.{key}", minimum=1)
    return caps


# --------------------------------------------------------------------------------------- build


SPILL_DIR = ".spill"
ROWS_CACHED = 32 << 20  # bytes of one task's spill a worker holds in memory while on it
SMALL_BUILD = 20_000  # records below which the default is one process (3 pools cost ~0.3 s)
SMALL_SOURCE_BYTES = 16 << 20  # sources below this are read in one process by default


@dataclass
class _Facts:
    """What the plan needs of one task while its records wait in the spill (data/spill.py)."""

    key: TaskKey
    category: str
    index: int
    size: int = 0
    sources: Set[str] = field(default_factory=set)
    source_indices: Set[int] = field(default_factory=set)
    positive_examples: Any = None  # the first record's (SNI's k-shot demonstrations)

    def info(self) -> TaskInfo:
        return TaskInfo(self.key, self.category, tuple(sorted(self.sources)), self.size)


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
    Memory stays bounded: records wait in a spill file (data/spill.py) inside the temporary build folder."""
    out = Path(out)
    outdir.prepare_out(out, _input_paths(config) if records is None else (), overwrite)
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
        manifest = _Build(config, facts, spill, tmp, workers, bar).run(policy, problems, merged)
        close_readers(spill.path)
        shutil.rmtree(spill.root)
        replace_dir(tmp, out)
    except OSError as e:
        if reading and not str(e.filename or "").startswith(str(tmp)):
            raise
        raise write_error(e, e.filename or tmp) from None
    finally:
        if spill is not None:
            spill.close()
            close_readers(spill.path)
        if collecting:
            gc.enable()
        if tmp.exists():
            shutil.rmtree(tmp)
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


def _merged_tasks(config: BuildConfig, facts: Mapping[TaskKey, _Facts]) -> List[Dict[str, Any]]:
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
             ) -> Dict[TaskKey, _Facts]:
    """Spill records by task; refuse records without a category and ids seen in another record."""
    facts: Dict[TaskKey, _Facts] = {}
    owners: List[TaskKey] = []
    ids = IdIndex()
    for key, category, rid, sources, path, where, source, positives, data in tqdm(
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
            task = facts[key] = _Facts(key, category, len(owners))
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
            task.positive_examples = positives  # the same on every row of a task: kept once
        spill.add(key, data)
    return facts


@dataclass
class _Plan:
    roles: Dict[TaskKey, str]
    levels: Dict[TaskKey, str] = field(default_factory=dict)
    dropped: Dict[TaskKey, str] = field(default_factory=dict)


@dataclass
class _Survey:
    """Phase 1 of a task (`_survey`): its held-out parts and what evaluation instances it gives."""

    key: TaskKey
    valid: List[int]
    test: List[int]
    removed: Counter
    inputs: List[str]  # raw inputs of its valid and test instances (exact-input check)
    hashes: Optional[Tuple[Any, Any]] = None  # eval tasks: n-gram hashes of their rendered instances


@dataclass
class _Written:
    """Phase 2 or 3 of a task: the files written (none when dropped) and what it reports."""

    key: TaskKey
    files: Dict[str, str]
    counts: Dict[str, int]
    removed: Counter
    exact_removed: int = 0
    pairs: List[OverlapPair] = field(default_factory=list)
    dropped: bool = False
    examples: Dict[int, Tuple[str, str]] = field(default_factory=dict)  # eval instance -> (id, text)
    multiplexed: Optional[Dict[str, Any]] = None
    official: bool = False  # its held-out instances came from the release's dev/test splits
    instruction: str = ""  # the task's instruction (its first record's), stored once in the manifest


_BUILD: Optional["_Build"] = None  # the build the worker functions serve (inherited through fork)


def _survey(key: TaskKey) -> _Survey:
    assert _BUILD is not None
    return _BUILD.survey(key)


def _write_train(key: TaskKey) -> _Written:
    assert _BUILD is not None
    return _BUILD.write_train(key)


def _write_eval(item: Tuple[TaskKey, str, Tuple[int, ...]]) -> _Written:
    assert _BUILD is not None
    return _BUILD.write_eval(*item)


class _Build:
    """Plan, decontaminate and write a bench from spilled records, one task at a time per worker.

    Phase 1 (`survey`, every task) draws the held-out parts and collects the evaluation inputs and
    eval n-grams; the parent then builds the exact-input set and the eval n-gram index. Phase 2
    (`write_train`) drops exact-input matches, caps, looks the task's n-grams up, and writes the task
    unless a flagged pair drops it. Phase 3 (`write_eval`) writes eval tasks once their levels are
    known (they depend on which training tasks survived). Every seeded draw is keyed by (seed, task),
    so the bench does not depend on which worker ran which task."""

    def __init__(self, config: BuildConfig, facts: Dict[TaskKey, _Facts], spill: SpillWriter, root: Path,
                 workers: int, bar: Optional[bool]) -> None:
        self.config, self.facts, self.spill, self.root = config, facts, spill, root
        self.workers, self.bar = workers, bar
        self.plan = _Plan(roles={})
        self.surveys: Dict[TaskKey, _Survey] = {}
        self.exact = ExactInputFilter()
        self.ngrams = EvalNgrams(config.decontamination.ngram)
        self._cached: Tuple[Optional[TaskKey], List[Tuple[Any, ...]]] = (None, [])

    def _map(self, fn: Any, items: List[Any], desc: str) -> Iterator[Any]:
        global _BUILD
        _BUILD = self
        try:
            done = ordered_map(fn, items, self.workers)
            for _, result in tqdm(done, total=len(items), desc=desc, unit=" tasks", disable=self.bar):
                yield result
        finally:
            _BUILD = None

    def run(self, policy: BadRecordPolicy, problems: BadRecordPolicy,
            merged: List[Dict[str, Any]]) -> Dict[str, Any]:
        config, cfg, dc = self.config, self.config.split, self.config.decontamination
        removed: Counter = Counter()
        sni_lists = None
        names = {k[1] for k in self.facts}
        if cfg.sni_split_dir:
            from optiml_plugin.data.sources.sni import absent_split_tasks, read_split_lists
            sni_lists = read_split_lists(cfg.sni_split_dir)
            if cfg.sni_lists_complete:
                for path, line, name in absent_split_tasks(cfg.sni_split_dir, names):
                    problems.handle(BadRecordError(path, line, "task", "listed_task_absent",
                                                   f"task '{name}' is listed but no source has it"))
        infos = {k: f.info() for k, f in self.facts.items()}
        roles = assign_roles(infos, cfg, sni_lists, problems)
        plan = self.plan = _Plan(roles=dict(roles.roles), dropped=dict(roles.dropped))
        for key, reason in roles.dropped.items():
            removed[reason] += self.facts[key].size
        conflicts = _source_overlap(plan, infos, dc, removed)
        order = sorted(plan.roles, key=lambda k: (k[0], self.facts[k].category, k[1]))
        _check_stems(order, self.facts)  # before any file is written
        for s in self._map(_survey, sorted(plan.roles), "planning"):
            self.surveys[s.key] = s
            removed.update(s.removed)
            self.exact.add_all(s.inputs)
            s.inputs = []
            if s.hashes is not None:
                self.ngrams.add(s.key, len(s.valid) + len(s.test), s.hashes)
                s.hashes = None
        self.ngrams.freeze()
        train_keys = sorted(k for k, r in plan.roles.items() if r == TRAIN)
        n_eval = sum(1 for r in plan.roles.values() if r == EVAL)
        written: Dict[TaskKey, _Written] = {}
        by_task: Dict[str, int] = {}
        pairs: List[OverlapPair] = []
        dropped: List[str] = []
        for w in self._map(_write_train, train_keys, "writing training tasks"):
            written[w.key] = w
            removed.update(w.removed)
            pairs.extend(w.pairs)
            if w.exact_removed:
                by_task[w.key[1]] = w.exact_removed
            if w.dropped:
                del plan.roles[w.key]
                plan.dropped[w.key] = "ngram_overlap"
                dropped.append(w.key[1])
        plan.levels = assign_levels(plan.roles, {k: f.category for k, f in self.facts.items()},
                                    cfg.heldout_categories)
        wanted: Dict[TaskKey, Set[int]] = {}
        for p in pairs:
            wanted.setdefault(p.eval_task, set()).update(p.examples)
        eval_items = [(k, plan.levels[k], tuple(sorted(wanted.get(k, ())))) for k in sorted(plan.roles)
                      if plan.roles[k] == EVAL]
        for w in self._map(_write_eval, eval_items, "writing eval tasks"):
            written[w.key] = w
        by_ngram = {k for k, reason in plan.dropped.items() if reason == "ngram_overlap"}
        flagged, review = flagged_rows(pairs, dc, by_ngram, lambda k, j: written[k].examples[j])
        total_exact = sum(by_task.values())
        report = {
            "split_plan": {
                "sni_split_dir": cfg.sni_split_dir,
                "eval_draw": eval_draw(cfg),
                "absent_from_sni_lists": absent_from_lists(sni_lists, names),
                "unlisted_tasks": [k[1] for k in roles.unlisted],
                "dropped_tasks": [{"benchmark": k[0], "task": k[1], "reason": r}
                                  for k, r in sorted(plan.dropped.items())],
                "heldout_instances": {
                    "mode": config.heldout_instances,
                    "from": ("the release's dev/test splits where a task has them, else random rows"
                             if config.heldout_instances == "official"
                             else "random rows of every training task"),
                    "official_split_tasks": [k[1] for k, w in sorted(written.items()) if w.official]},
                "merged_tasks": merged,
            },
            "multiplexing": {"enabled": config.multiplex,
                             "tasks": [w.multiplexed for _, w in sorted(written.items()) if w.multiplexed]},
            "decontamination": {
                "source_overlap": {"action": dc.source_overlap,
                                   "allowed_shared_sources": list(dc.allowed_shared_sources),
                                   "tasks": [{"benchmark": k[0], "task": k[1], "shared_sources": s}
                                             for k, s in sorted(conflicts.items())]},
                "exact_input": {"removed": total_exact, "by_task": by_task},
                "ngram": {"n": dc.ngram, "threshold": dc.threshold, "drop_flagged": dc.drop_flagged,
                          "pairs_checked": len(train_keys) * n_eval, "flagged": flagged,
                          "dropped_tasks": dropped, "pairs_file": REVIEW_FILE},
            },
        }
        return self._manifest(order, written, removed, report, review, policy, problems)

    # ------------------------------------------------------------------ work on one task (workers)

    def _rows(self, key: TaskKey) -> Iterable[Tuple[Any, ...]]:
        """The task's spilled rows; a task of up to `ROWS_CACHED` bytes is read once per phase and
        kept while the worker is on it, a larger one is streamed on each pass (bounded memory)."""
        if self._cached[0] == key:
            return self._cached[1]
        if self.spill.size(key) > ROWS_CACHED:
            return read_rows(self.spill.path, self.spill.chunks(key))
        rows = list(read_rows(self.spill.path, self.spill.chunks(key)))
        self._cached = (key, rows)
        return rows

    def _records(self, key: TaskKey, wanted: Set[int]) -> Dict[int, Record]:
        """The task's records at `wanted` indices; rows elsewhere are skipped, not decoded, unless the
        task's rows are already in memory."""
        category = self.facts[key].category
        if self._cached[0] == key:
            rows: Iterable[Tuple[int, Tuple[Any, ...]]] = ((i, r) for i, r in enumerate(self._cached[1]) if i in wanted)
        else:
            rows = read_rows(self.spill.path, self.spill.chunks(key), wanted)
        return {i: to_record(row, key, category) for i, row in rows}

    def _train_parts(self, key: TaskKey, multiplex: bool) -> Tuple[List[int], List[int], List[int], Counter,
                                                                   Optional[Dict[str, Any]], bool]:
        """(train, valid, test, removed, multiplexing entry, used release splits) of a training task;
        without `multiplex` the train part is not multiplexed (a caller that needs only valid/test)."""
        config, cfg, seed = self.config, self.config.split, self.config.seed
        removed: Counter = Counter()
        official = config.heldout_instances == "official"
        multiplex = multiplex and config.multiplex
        templates: List[str] = []
        splits: List[str] = []
        if official or multiplex:
            for row in self._rows(key):
                templates.append(row[TEMPLATE])
                if official:
                    splits.append(row[META].get("split", ""))
        by_release = official_instances(splits, cfg, seed, key) if official else None
        if by_release is None:
            train, valid, test = split_train_instances(self.facts[key].size, cfg, seed, key)
        else:
            train, valid, test, unused = by_release
            removed["official_split_unused"] += unused
        mux = None
        if multiplex:
            train, drawn = multiplex_train(templates, train, seed, key)
            if drawn is not None:
                removed["multiplex"] += drawn.instantiations - drawn.drawn
                mux = drawn.to_dict()
        return train, valid, test, removed, mux, by_release is not None

    def survey(self, key: TaskKey) -> _Survey:
        cfg, seed, f = self.config.split, self.config.seed, self.facts[key]
        if self.plan.roles[key] == EVAL:
            valid, test = split_eval_instances(f.size, cfg, key[1] in cfg.valid_tasks, seed, key)
            recs = self._records(key, set(valid) | set(test))
            texts = [_text(render(recs[i], seed, self.config.prompt_format)) for i in valid + test]
            return _Survey(key, valid, test, Counter(eval_cap=f.size - len(valid) - len(test)),
                           [recs[i].input for i in valid + test], hashes=self.ngrams.hashes(texts))
        _, valid, test, _, _, _ = self._train_parts(key, multiplex=False)
        recs = self._records(key, set(valid) | set(test))
        return _Survey(key, valid, test, Counter(), [recs[i].input for i in valid + test])

    def write_train(self, key: TaskKey) -> _Written:
        config, dc, seed = self.config, self.config.decontamination, self.config.seed
        train, valid, test, removed, mux, official = self._train_parts(key, multiplex=True)
        wanted = set(train)
        hits: Set[int] = set()
        batch: List[Tuple[int, str]] = []
        for i, row in enumerate(self._rows(key)):
            if i in wanted:
                batch.append((i, row[INPUT]))
                if len(batch) >= 4096:
                    hits.update(self._exact_hits(batch))
                    batch = []
        hits.update(self._exact_hits(batch))
        kept = [i for i in train if i not in hits]
        capped = cap_indices(kept, config.cap_for(key[0]), seed, key)
        removed.update(exact_input_match=len(hits), train_cap=len(kept) - len(capped))
        recs = self._records(key, set(capped) | set(valid) | set(test) | {0})
        rendered = {i: render(r, seed, config.prompt_format) for i, r in recs.items()}
        pairs = self.ngrams.pairs(key, [_text(rendered[i]) for i in capped], dc.threshold)
        if dc.drop_flagged and any(not dc.cleared(p.train_task[1], p.eval_task[1]) for p in pairs):
            removed["ngram_overlap"] += len(capped) + len(valid) + len(test)
            return _Written(key, {}, {}, removed, len(hits), pairs, dropped=True, multiplexed=mux,
                            official=official)
        instruction = recs[0].instruction
        files, counts = self._write_parts(key, LEVEL_TRAIN, {"train": capped, "valid": valid, "test": test},
                                          recs, rendered, instruction)
        return _Written(key, files, counts, removed, len(hits), pairs, multiplexed=mux, official=official,
                        instruction=instruction)

    def _exact_hits(self, batch: List[Tuple[int, str]]) -> List[int]:
        matches = self.exact.matches_all([text for _, text in batch])
        return [i for (i, _), hit in zip(batch, matches) if hit]

    def write_eval(self, key: TaskKey, level: str, examples: Tuple[int, ...]) -> _Written:
        s, seed = self.surveys[key], self.config.seed
        recs = self._records(key, set(s.valid) | set(s.test) | {0})
        rendered = {i: render(r, seed, self.config.prompt_format) for i, r in recs.items()}
        instruction = recs[0].instruction
        files, counts = self._write_parts(key, level, {"valid": s.valid, "test": s.test}, recs, rendered,
                                          instruction)
        both = s.valid + s.test
        shown = {j: (recs[both[j]].id, _text(rendered[both[j]])) for j in examples}
        return _Written(key, files, counts, Counter(), examples=shown, instruction=instruction)

    def _write_parts(self, key: TaskKey, level: str, parts: Mapping[str, List[int]], recs: Mapping[int, Record],
                     rendered: Mapping[int, Rendered], instruction: str) -> Tuple[Dict[str, str], Dict[str, int]]:
        stem = benchfiles.file_stem(key[0], self.facts[key].category, key[1])
        files, counts = {}, {}
        for part in ("train", "valid", "test"):
            idx = parts.get(part) or []
            if not idx:
                continue
            split = split_name(level, part)
            path = benchfiles.split_path(self.root, split, stem)
            rows = (_row(recs[i], rendered[i], split, instruction) for i in idx)
            counts[split] = benchfiles.write_jsonl_with_index(path, rows, atomic=False,  # inside `root`
                                                              dumps=benchfiles.dumps_text_line)
            files[split] = path.relative_to(self.root).as_posix()
        return files, counts

    # ------------------------------------------------------------------------------- the manifest

    def _manifest(self, order: List[TaskKey], written: Dict[TaskKey, _Written],
                  removed: Counter, report: Dict[str, Any], review: List[Dict[str, Any]],
                  policy: BadRecordPolicy, problems: BadRecordPolicy) -> Dict[str, Any]:
        config, root = self.config, self.root
        entries = []
        splits = {s: {"tasks": 0, "examples": 0} for s in benchfiles.SPLITS}
        kept = 0
        for key in order:
            if key not in self.plan.roles:
                continue
            w, f = written[key], self.facts[key]
            for split, n in w.counts.items():
                splits[split]["tasks"] += 1
                splits[split]["examples"] += n
                kept += n
            entry = {"task": key[1], "benchmark": key[0], "category": f.category, "level": self.plan.levels[key],
                     "sources": list(f.info().sources), "files": w.files, "counts": w.counts}
            if w.instruction:  # rows with this instruction leave it out (`_row`)
                entry["instruction"] = w.instruction
            if f.positive_examples:  # SNI's k-shot demonstrations (eval/prompts.py)
                entry["positive_examples"] = f.positive_examples
            entries.append(entry)
        skipped = dict(sorted(policy.skipped.items()))
        removed_d = {k: v for k, v in sorted(removed.items()) if v}
        balanced = policy.read == kept + sum(skipped.values()) + sum(removed_d.values())
        if not balanced:
            raise OptimlError(f"bench accounting does not balance: read {policy.read} != kept {kept} + "
                              f"skipped {skipped} + removed {removed_d} (this is a bug in optiml)")
        report["split_plan"]["problems"] = problems.to_dict()
        benchfiles.atomic_write_bytes(root / REVIEW_FILE, b"".join(benchfiles.dumps_line(r) for r in review))
        manifest = {
            "format": benchfiles.FORMAT_NAME, "version": benchfiles.FORMAT_VERSION, "seed": config.seed,
            "optiml_version": __version__, "config": _jsonable(config.raw), "prompt_format": config.prompt_format,
            "tasks": entries, "splits": splits,
            "split_plan": report["split_plan"],
            "multiplexing": report["multiplexing"],
            "decontamination": report["decontamination"],
            "accounting": {"read": policy.read, "kept": kept, "skipped": skipped, "removed": removed_d,
                           "balanced": balanced, "skipped_examples": list(policy.messages)},
        }
        data = json.dumps(manifest, ensure_ascii=False, allow_nan=False, indent=1) + "\n"
        benchfiles.atomic_write_bytes(root / benchfiles.MANIFEST, data.encode("utf-8"))
        return manifest


def _text(r: Rendered) -> str:
    """What the n-gram check compares: the rendered prompt and target."""
    return f"{r.src} {r.tgt}"


def _check_stems(order: List[TaskKey], facts: Mapping[TaskKey, _Facts]) -> None:
    """Refuse two tasks whose names normalize to one file stem."""
    stems: Dict[str, TaskKey] = {}
    for key in order:
        stem = benchfiles.file_stem(key[0], facts[key].category, key[1])
        if stem in stems:
            raise OptimlError(f"tasks {stems[stem]} and {key} map to the same file name '{stem}'; "
                              f"rename one (benchmark, category and task names are normalized)")
        stems[stem] = key


def _source_overlap(plan: _Plan, infos: Mapping[TaskKey, TaskInfo], dc: DecontamConfig,
                    removed: Counter) -> Dict[TaskKey, List[str]]:
    """(a): drop training tasks sharing a source with an eval task, or move them to eval (repeated
    until stable, since a moved task's other sources can conflict with further training tasks)."""
    found: Dict[TaskKey, List[str]] = {}
    while True:
        train = {k: infos[k].sources for k, r in plan.roles.items() if r == TRAIN}
        evals = {k: infos[k].sources for k, r in plan.roles.items() if r == EVAL}
        conflicts = source_conflicts(train, evals, dc.allowed_shared_sources)
        if not conflicts:
            return found
        for key, shared in conflicts.items():
            found[key] = shared
            if dc.source_overlap == "move":
                plan.roles[key] = EVAL
            else:
                del plan.roles[key]
                plan.dropped[key] = "source_overlap"
                removed["source_overlap"] += infos[key].size


def split_name(level: str, part: str) -> str:
    """The bench split of a task part: train, or valid/test + level (training tasks: heldout_instances)."""
    if part == "train":
        return benchfiles.TRAIN_SPLIT
    return f"{part}_{LEVEL_INSTANCES if level == LEVEL_TRAIN else level}"


def _row(r: Record, rendered: Rendered, split: str, task_instruction: str) -> Dict[str, Any]:
    """A bench line; an instruction equal to its task's (the manifest entry's `instruction`, e.g. an
    SNI definition, a quarter of such a row) is left out: `Bench.read` puts it back."""
    row = {"id": r.id, "benchmark": r.benchmark, "category": r.category, "task": r.task, "split": split,
           "src": rendered.src, "tgt": rendered.tgt, "references": list(r.outputs),
           "candidates": None if r.candidates is None else list(r.candidates),
           "instruction": r.instruction, "input": r.input, "template": r.template,
           "language": r.language, "output_language": r.meta.get("output_language", r.language)}
    if task_instruction and r.instruction == task_instruction:
        del row["instruction"]
    return row


def _jsonable(value: Any) -> Any:
    """The config as given, made JSON-safe (YAML can hold dates, tuples, non-string keys)."""
    return json.loads(json.dumps(value, default=str, allow_nan=False))
