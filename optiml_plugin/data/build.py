"""`optiml bench build`: a build config -> a bench directory with its manifest.

Why one module orchestrates: the steps (load, categorize, plan splits, decontaminate, render, cap,
write) each live in their own module, but the accounting that proves nothing was lost silently
(read = kept + skipped + removed by reason) must see every step, so it is kept here. The bench is
written into a temporary sibling directory and renamed into place only once complete and balanced.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from tqdm import tqdm

from optiml_plugin import __version__
from optiml_plugin.conventions import LEVEL_INSTANCES, LEVEL_TRAIN
from optiml_plugin.data import benchfiles, outdir
from optiml_plugin.data.decontam import (REVIEW_FILE, DecontamConfig, ExactInputFilter, flagged_rows,
                                         ngram_overlap, source_conflicts)
from optiml_plugin.data.multiplex import multiplex_train
from optiml_plugin.data.official import MODES as OFFICIAL_MODES, official_instances
from optiml_plugin.data.records import Record
from optiml_plugin.data.splits import (EVAL, TRAIN, SplitConfig, TaskInfo, TaskKey, absent_from_lists,
                                       assign_levels, eval_draw, assign_roles, cap_indices, read_task_list,
                                       split_eval_instances, split_train_instances)
from optiml_plugin.data.templates import PROMPT_FORMATS, Rendered, render
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


@dataclass
class _Task:
    key: TaskKey
    records: List[Record]
    parts: Dict[str, List[int]] = field(default_factory=dict)  # "train"/"valid"/"test" -> indices
    rendered: Dict[int, Rendered] = field(default_factory=dict)

    @property
    def category(self) -> str:
        return self.records[0].category

    def info(self) -> TaskInfo:
        sources = sorted({s for r in self.records for s in r.sources})
        return TaskInfo(self.key, self.category, tuple(sources), len(self.records))

    def text(self, i: int) -> str:
        r = self.rendered[i]
        return f"{r.src} {r.tgt}"


def build_bench(config: BuildConfig, out: Union[str, Path], records: Optional[Iterable[Record]] = None,
                overwrite: bool = False, progress: Optional[bool] = None) -> Dict[str, Any]:
    """Build the bench described by `config` into `out`; returns the manifest.

    `records` replaces the config's sources (tests and benchmarks feed records directly).
    `progress=None` shows tqdm bars only on a terminal."""
    out = Path(out)
    outdir.prepare_out(out, _input_paths(config) if records is None else (), overwrite)
    policy = BadRecordPolicy(config.on_bad_record)
    problems = BadRecordPolicy(config.on_bad_record)
    bar = None if progress is None else not progress
    stream = records if records is not None else _config_records(config, policy)
    if records is not None:
        stream = _counted(stream, policy)
    tasks = _collect(stream, policy, bar)
    merged = _merged_tasks(config, tasks)
    plan, removed, report = _plan(config, tasks, problems)
    report["split_plan"]["merged_tasks"] = merged
    tmp = out.parent / f"{outdir.building_prefix(out)}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        manifest = _write(config, tasks, plan, removed, report, policy, problems, tmp, bar)
        replace_dir(tmp, out)
    except OSError as e:
        raise write_error(e, e.filename or tmp) from None
    finally:
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


def _merged_tasks(config: BuildConfig, tasks: Mapping[TaskKey, "_Task"]) -> List[Dict[str, Any]]:
    """Tasks whose records came from two or more `sources:` entries (likely the same data twice): warned
    about on stderr and listed in the manifest, since they are merged into one task."""
    out = []
    for key, t in sorted(tasks.items()):
        found = sorted({r.meta["source_index"] for r in t.records if "source_index" in r.meta})
        if len(found) > 1:
            paths = [str(config.sources[i].get("path", config.sources[i].get("type"))) for i in found]
            out.append({"benchmark": key[0], "task": key[1], "sources": paths, "records": len(t.records)})
            print(f"optiml: warning: task '{key[1]}' ({key[0]}) comes from {len(found)} sources "
                  f"({', '.join(paths)}); their {len(t.records)} records are merged into one task",
                  file=sys.stderr)
    return out


def _counted(records: Iterable[Record], policy: BadRecordPolicy) -> Iterator[Record]:
    for r in records:
        policy.count_read()
        problems = r.problems()
        if problems:
            fld, reason, detail = problems[0]
            policy.handle(BadRecordError(r.meta.get("path", f"<{r.benchmark}>"), r.meta.get("where", r.id),
                                         fld, reason, detail))
            continue
        yield r


def _config_records(config: BuildConfig, policy: BadRecordPolicy) -> Iterator[Record]:
    """Records of every `sources:` entry, tagged with the entry's index (`meta["source_index"]`)."""
    for index, spec in enumerate(config.sources):
        for record in _spec_records(config, spec, policy):
            record.meta["source_index"] = index
            yield record


def _spec_records(config: BuildConfig, spec: Mapping[str, Any], policy: BadRecordPolicy) -> Iterator[Record]:
    """Records of one `sources:` entry; loaded sources go through the taxonomy, the built-in benchmark
    (type `builtin`) is categorized by construction."""
    from optiml_plugin.data.builtin import builtin_records

    if spec.get("type") == "builtin":
        _unknown(spec, ("type",), "build config", "sources[builtin].")
        yield from _counted(builtin_records(config.seed), policy)
        return
    from optiml_plugin.data.sources import load_source
    from optiml_plugin.data.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(config.resolve(config.taxonomy) if config.taxonomy else None)
    for record in load_source(spec, policy, Path(config.base_dir)):
        try:
            yield taxonomy.categorize(record)
        except BadRecordError as e:
            policy.handle(e)


def _collect(records: Iterable[Record], policy: BadRecordPolicy, bar: Optional[bool]
             ) -> Dict[TaskKey, _Task]:
    """Group records by task; refuse records without a category and ids seen in another record."""
    tasks: Dict[TaskKey, _Task] = {}
    ids: Dict[str, TaskKey] = {}
    for r in tqdm(records, desc="reading", unit=" records", disable=bar, mininterval=0.5):
        where = r.meta.get("where", r.id)
        path = r.meta.get("path", f"<{r.benchmark}/{r.task}>")
        key = (r.benchmark, r.task)
        if not r.category.strip():
            policy.handle(BadRecordError(path, where, "category", "unknown_category",
                                         f"task '{r.task}' has no category (add it to the taxonomy)"))
            continue
        first = ids.get(r.id)
        if first is not None:
            policy.handle(BadRecordError(path, where, "id", "duplicate_id",
                                         f"id '{r.id}' is already used by task '{first[1]}'"))
            continue
        task = tasks.get(key)
        if task is None:
            task = tasks[key] = _Task(key, [])
        elif r.category != task.category:
            policy.handle(BadRecordError(path, where, "category", "inconsistent_category",
                                         f"category '{r.category}' differs from the task's "
                                         f"'{task.category}'"))
            continue
        ids[r.id] = key
        task.records.append(r)
    return tasks


@dataclass
class _Plan:
    roles: Dict[TaskKey, str]
    levels: Dict[TaskKey, str] = field(default_factory=dict)
    dropped: Dict[TaskKey, str] = field(default_factory=dict)


def _plan(config: BuildConfig, tasks: Dict[TaskKey, _Task], problems: BadRecordPolicy
          ) -> Tuple[_Plan, Counter, Dict[str, Any]]:
    """Roles, instance splits, decontamination and caps; returns the plan, removals and the report."""
    cfg, dc, seed = config.split, config.decontamination, config.seed
    removed: Counter = Counter()
    sni_lists = None
    if cfg.sni_split_dir:
        from optiml_plugin.data.sources.sni import absent_split_tasks, read_split_lists
        sni_lists = read_split_lists(cfg.sni_split_dir)
        if cfg.sni_lists_complete:
            for path, line, name in absent_split_tasks(cfg.sni_split_dir, {k[1] for k in tasks}):
                problems.handle(BadRecordError(path, line, "task", "listed_task_absent",
                                               f"task '{name}' is listed but no source has it"))
    infos = {k: t.info() for k, t in tasks.items()}
    roles = assign_roles(infos, cfg, sni_lists, problems)
    plan = _Plan(roles=dict(roles.roles), dropped=dict(roles.dropped))
    for key, reason in roles.dropped.items():
        removed[reason] += len(tasks[key].records)
    conflicts = _source_overlap(plan, infos, dc, removed)
    multiplexed: List[Dict[str, Any]] = []
    official: List[str] = []
    for key in sorted(plan.roles):
        t = tasks[key]
        if plan.roles[key] == EVAL:
            valid, test = split_eval_instances(len(t.records), cfg, key[1] in cfg.valid_tasks, seed, key)
            t.parts = {"valid": valid, "test": test}
            removed["eval_cap"] += len(t.records) - len(valid) - len(test)
        else:
            by_release = (official_instances(t.records, cfg, seed, key)
                          if config.heldout_instances == "official" else None)
            if by_release is None:
                train, valid, test = split_train_instances(len(t.records), cfg, seed, key)
            else:
                train, valid, test, unused = by_release
                removed["official_split_unused"] += unused
                official.append(key[1])
            if config.multiplex:
                train, mux = multiplex_train(t.records, train, seed, key)
                if mux is not None:
                    removed["multiplex"] += mux.instantiations - mux.drawn
                    multiplexed.append(mux.to_dict())
            t.parts = {"train": train, "valid": valid, "test": test}
        t.rendered = {i: render(t.records[i], seed, config.prompt_format)
                      for part in t.parts.values() for i in part}
    exact = _exact_inputs(plan, tasks, removed)
    for key, role in plan.roles.items():
        if role == TRAIN:
            t = tasks[key]
            kept = cap_indices(t.parts["train"], config.cap_for(key[0]), seed, key)
            removed["train_cap"] += len(t.parts["train"]) - len(kept)
            t.parts["train"] = kept
    ngram = _ngram_report(plan, tasks, dc, removed)
    plan.levels = assign_levels(plan.roles, {k: t.category for k, t in tasks.items()}, cfg.heldout_categories)
    report = {
        "split_plan": {
            "sni_split_dir": cfg.sni_split_dir,
            "eval_draw": eval_draw(cfg),
            "absent_from_sni_lists": absent_from_lists(sni_lists, {k[1] for k in tasks}),
            "unlisted_tasks": [k[1] for k in roles.unlisted],
            "dropped_tasks": [{"benchmark": k[0], "task": k[1], "reason": r}
                              for k, r in sorted(plan.dropped.items())],
            "heldout_instances": {
                "mode": config.heldout_instances,
                "from": ("the release's dev/test splits where a task has them, else random rows"
                         if config.heldout_instances == "official"
                         else "random rows of every training task"),
                "official_split_tasks": official},
        },
        "multiplexing": {"enabled": config.multiplex, "tasks": multiplexed},
        "decontamination": {
            "source_overlap": {"action": dc.source_overlap,
                               "allowed_shared_sources": list(dc.allowed_shared_sources),
                               "tasks": [{"benchmark": k[0], "task": k[1], "shared_sources": s}
                                         for k, s in sorted(conflicts.items())]},
            "exact_input": exact,
            "ngram": ngram,
        },
    }
    return plan, removed, report


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


def _exact_inputs(plan: _Plan, tasks: Dict[TaskKey, _Task], removed: Counter) -> Dict[str, Any]:
    """(b): drop training instances whose normalized input equals any evaluation instance's
    (eval tasks and the held-out instances of training tasks alike)."""
    filt = ExactInputFilter()
    for key in plan.roles:
        t = tasks[key]
        filt.add_all([t.records[i].input for part in ("valid", "test") for i in t.parts[part]])
    by_task: Dict[str, int] = {}
    for key, role in sorted(plan.roles.items()):
        if role != TRAIN:
            continue
        t = tasks[key]
        hits = filt.matches_all([t.records[i].input for i in t.parts["train"]])
        kept = [i for i, hit in zip(t.parts["train"], hits) if not hit]
        if len(kept) != len(t.parts["train"]):
            by_task[key[1]] = len(t.parts["train"]) - len(kept)
            t.parts["train"] = kept
    total = sum(by_task.values())
    removed["exact_input_match"] += total
    return {"removed": total, "by_task": by_task}


def _ngram_report(plan: _Plan, tasks: Dict[TaskKey, _Task], dc: DecontamConfig,
                  removed: Counter) -> Dict[str, Any]:
    """(c): eval-instance share with a training task's n-grams, per pair, above the threshold."""
    train = {k: [tasks[k].text(i) for i in tasks[k].parts["train"]]
             for k, r in sorted(plan.roles.items()) if r == TRAIN}
    evals = {k: [tasks[k].text(i) for p in ("valid", "test") for i in tasks[k].parts[p]]
             for k, r in sorted(plan.roles.items()) if r == EVAL}
    pairs = ngram_overlap(train, evals, n=dc.ngram, min_fraction=dc.threshold)
    dropped: List[str] = []
    if dc.drop_flagged:
        for key in sorted({p.train_task for p in pairs if not dc.cleared(p.train_task[1], p.eval_task[1])}):
            t = tasks[key]
            removed["ngram_overlap"] += sum(len(v) for v in t.parts.values())
            t.parts = {}
            del plan.roles[key]
            plan.dropped[key] = "ngram_overlap"
            dropped.append(key[1])

    def eval_instance(key: TaskKey, j: int) -> Tuple[str, str]:
        t = tasks[key]
        i = [i for p in ("valid", "test") for i in t.parts[p]][j]
        return t.records[i].id, t.text(i)

    by_ngram = {k for k, reason in plan.dropped.items() if reason == "ngram_overlap"}
    flagged, review = flagged_rows(pairs, dc, by_ngram, eval_instance)
    return {"n": dc.ngram, "threshold": dc.threshold, "drop_flagged": dc.drop_flagged,
            "pairs_checked": len(train) * len(evals), "flagged": flagged, "dropped_tasks": dropped,
            "pairs_file": REVIEW_FILE, "review": review}


def split_name(level: str, part: str) -> str:
    """The bench split of a task part: train, or valid/test + level (training tasks: heldout_instances)."""
    if part == "train":
        return benchfiles.TRAIN_SPLIT
    return f"{part}_{LEVEL_INSTANCES if level == LEVEL_TRAIN else level}"


def _row(t: _Task, i: int, split: str) -> Dict[str, Any]:
    r, rendered = t.records[i], t.rendered[i]
    return {"id": r.id, "benchmark": r.benchmark, "category": r.category, "task": r.task, "split": split,
            "src": rendered.src, "tgt": rendered.tgt, "references": list(r.outputs),
            "candidates": None if r.candidates is None else list(r.candidates),
            "instruction": r.instruction, "input": r.input, "template": r.template,
            "language": r.language, "output_language": r.meta.get("output_language", r.language)}


def _write(config: BuildConfig, tasks: Dict[TaskKey, _Task], plan: _Plan, removed: Counter,
           report: Dict[str, Any], policy: BadRecordPolicy, problems: BadRecordPolicy, root: Path,
           bar: Optional[bool]) -> Dict[str, Any]:
    order = sorted(plan.roles, key=lambda k: (k[0], tasks[k].category, k[1]))
    stems: Dict[str, TaskKey] = {}
    entries = []
    splits = {s: {"tasks": 0, "examples": 0} for s in benchfiles.SPLITS}
    kept = 0
    for key in tqdm(order, desc="writing", unit=" tasks", disable=bar):
        t, level = tasks[key], plan.levels[key]
        stem = benchfiles.file_stem(key[0], t.category, key[1])
        if stem in stems:
            raise OptimlError(f"tasks {stems[stem]} and {key} map to the same file name '{stem}'; "
                              f"rename one (benchmark, category and task names are normalized)")
        stems[stem] = key
        files, counts = {}, {}
        for part in ("train", "valid", "test"):
            idx = t.parts.get(part) or []
            if not idx:
                continue
            split = split_name(level, part)
            path = benchfiles.split_path(root, split, stem)
            n = benchfiles.write_jsonl_with_index(path, (_row(t, i, split) for i in idx))
            files[split] = path.relative_to(root).as_posix()
            counts[split] = n
            splits[split]["tasks"] += 1
            splits[split]["examples"] += n
            kept += n
        entry = {"task": key[1], "benchmark": key[0], "category": t.category, "level": level,
                 "sources": list(t.info().sources), "files": files, "counts": counts}
        positives = t.records[0].meta.get("positive_examples") if t.records else None
        if positives:  # SNI's k-shot demonstrations (eval/prompts.py)
            entry["positive_examples"] = positives
        entries.append(entry)
    skipped = dict(sorted(policy.skipped.items()))
    removed_d = {k: v for k, v in sorted(removed.items()) if v}
    balanced = policy.read == kept + sum(skipped.values()) + sum(removed_d.values())
    if not balanced:
        raise OptimlError(f"bench accounting does not balance: read {policy.read} != kept {kept} + "
                          f"skipped {skipped} + removed {removed_d} (this is a bug in optiml)")
    report["split_plan"]["problems"] = problems.to_dict()
    review = report["decontamination"]["ngram"].pop("review")
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


def _jsonable(value: Any) -> Any:
    """The config as given, made JSON-safe (YAML can hold dates, tuples, non-string keys)."""
    return json.loads(json.dumps(value, default=str, allow_nan=False))
