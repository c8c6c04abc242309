"""The bench build's per-task phases: plan, decontaminate and write tasks from spilled records.

Why its own module: `bench/build.py` reads the sources into the spill and keeps the accounting; this
module works on one task at a time, in worker processes (bench/workers.py), so memory holds one task's
rows, never the bench. Phase 1 (`survey`, every task) draws the held-out parts and collects the
evaluation inputs and eval n-grams; the parent builds the exact-input set and the eval n-gram index.
Phase 2 (`write_train`) drops exact-input matches, caps, looks the task's n-grams up and writes the task
unless a flagged pair drops it. Phase 3 (`write_eval`) writes eval tasks once their levels are known
(they depend on which training tasks survived). Every seeded draw is keyed by (seed, task), so the bench
does not depend on which worker ran which task.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple

from tqdm import tqdm

from optiml_plugin import __version__
from optiml_plugin.conventions import LEVEL_INSTANCES, LEVEL_TRAIN
from optiml_plugin import benchfiles
from optiml_plugin.bench.build_config import BuildConfig, jsonable
from optiml_plugin.bench.decontam import (REVIEW_FILE, DecontamConfig, EvalNgrams, ExactInputFilter, OverlapPair,
                                         flagged_rows, source_conflicts)
from optiml_plugin.bench.examples import KEY_WORDS, Layout, layout
from optiml_plugin.bench.multiplex import multiplex_train
from optiml_plugin.bench.official import eval_rows, official_instances
from optiml_plugin.bench.records import Record
from optiml_plugin.bench.spill import INPUT, INSTRUCTION, SpillWriter, read_rows, to_record
from optiml_plugin.bench.splits import (EVAL, TRAIN, TaskInfo, TaskKey, absent_from_lists, assign_levels,
                                       assign_roles, cap_indices, eval_draw, split_eval_instances,
                                       split_train_instances)
from optiml_plugin.bench.templates import Rendered, render
from optiml_plugin.bench.workers import ordered_map
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, OptimlError

ROWS_CACHED = 32 << 20  # bytes of one task's spill a worker holds in memory while on it


@dataclass
class TaskFacts:
    """What the plan needs of one task while its records wait in the spill (bench/spill.py)."""

    key: TaskKey
    category: str
    index: int
    size: int = 0
    sources: Set[str] = field(default_factory=set)
    source_indices: Set[int] = field(default_factory=set)
    task_meta: Dict[str, Any] = field(default_factory=dict)  # the first record's (spill.TASK_META)

    def info(self) -> TaskInfo:
        return TaskInfo(self.key, self.category, tuple(sorted(self.sources)), self.size)


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
    examples: Dict[str, int] = field(default_factory=dict)  # eval tasks: distinct examples of valid, test
    keyed_by_input: bool = False  # several templates, and no row names its example (bench/examples.py)
    dropped_rows: Dict[str, int] = field(default_factory=dict)  # eval tasks: rows of non-eval splits


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
    example_counts: Dict[str, int] = field(default_factory=dict)  # split -> distinct examples written
    multiplexed: Optional[Dict[str, Any]] = None
    official: Optional[bool] = None  # training tasks: held-out instances from the release's dev/test splits
    instruction: str = ""  # the task's instruction (its first record's), stored once in the manifest


_BUILD: Optional["Phases"] = None  # the build the worker functions serve (inherited through fork)


def _survey(key: TaskKey) -> _Survey:
    assert _BUILD is not None
    return _BUILD.survey(key)


def _write_train(key: TaskKey) -> _Written:
    assert _BUILD is not None
    return _BUILD.write_train(key)


def _write_eval(item: Tuple[TaskKey, str, Tuple[int, ...]]) -> _Written:
    assert _BUILD is not None
    return _BUILD.write_eval(*item)


class Phases:
    """The three phases of one build (see the module docstring), and the manifest they add up to."""

    def __init__(self, config: BuildConfig, facts: Dict[TaskKey, TaskFacts], spill: SpillWriter, root: Path,
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
            from optiml_plugin.bench.sources.sni import absent_split_tasks, read_split_lists
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
            if plan.roles[s.key] == EVAL and not s.valid and not s.test:
                del plan.roles[s.key]  # no row of an evaluation split: nothing to evaluate on
                plan.dropped[s.key] = "no_eval_rows"
            elif s.hashes is not None:
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
        _warn_unnamed(sorted(k for k, w in written.items() if w.official is False and self.surveys[k].keyed_by_input))
        report = {
            "split_plan": {
                "sni_split_dir": cfg.sni_split_dir,
                "eval_draw": eval_draw(cfg),
                "eval_splits": {
                    "from": "eval tasks' valid and test rows come only from the release's evaluation splits "
                            "(validation/dev/test, or rows without a split, e.g. SNI's task files); "
                            "rows of its training split are dropped (eval_task_train_split), rows of "
                            "other named splits too (eval_task_other_split)",
                    "train_split_rows_dropped": _by_task(self.surveys, "eval_task_train_split"),
                    "other_split_rows_dropped": _by_task(self.surveys, "eval_task_other_split")},
                "holdout_unit": {
                    "unit": "example: all renderings (templates) of one example go to one side",
                    "key": KEY_WORDS,
                    "templated_tasks_keyed_by_input": [k[1] for k, s in sorted(self.surveys.items())
                                                       if s.keyed_by_input and k in plan.roles]},
                "absent_from_sni_lists": absent_from_lists(sni_lists, names),
                "unlisted_tasks": [k[1] for k in roles.unlisted],
                "dropped_tasks": [{"benchmark": k[0], "task": k[1], "reason": r}
                                  for k, r in sorted(plan.dropped.items())],
                "heldout_instances": self._heldout_report(written),
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

    def _heldout_report(self, written: Mapping[TaskKey, _Written]) -> Dict[str, Any]:
        """Where training tasks' held-out instances came from; in `official` mode also the tasks,
        and the sources, without dev/test rows (they fell back to random examples)."""
        official = self.config.heldout_instances == "official"
        out: Dict[str, Any] = {
            "mode": self.config.heldout_instances,
            "from": ("the release's dev/test splits where a task has them, else random examples" if official
                     else "random examples of every training task"),
            "official_split_tasks": [k[1] for k, w in sorted(written.items()) if w.official]}
        if official:
            fallback = [k for k, w in sorted(written.items()) if w.official is False]
            out["random_fallback_tasks"] = [k[1] for k in fallback]
            used = {i for k, w in written.items() if w.official for i in self.facts[k].source_indices}
            without = {i for k in fallback for i in self.facts[k].source_indices} - used
            out["sources_without_dev_test"] = [str(self.config.sources[i].get("path", self.config.sources[i].get(
                "type"))) for i in sorted(without)]
        return out

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
                                                                   Optional[Dict[str, Any]], bool, Layout]:
        """(train, valid, test, removed, multiplexing entry, used release splits, layout) of a training
        task; without `multiplex` the train part is not multiplexed (a caller that needs only
        valid/test). Held-out draws pick examples (bench/examples.py)."""
        config, cfg, seed = self.config, self.config.split, self.config.seed
        removed: Counter = Counter()
        rows = self._rows(key)
        lay = layout(rows)
        if rows and all(not r[INSTRUCTION] and not r[INPUT] for r in rows):
            # pre-training text and dialogue data (empty source, whole text the target): training data
            # only, never a held-out instance scored as if it were an instruction task (§4.5, §4.7)
            return list(range(len(rows))), [], [], removed, None, False, lay
        by_release = None
        if config.heldout_instances == "official":
            by_release = official_instances(lay.splits, lay.groups, cfg, seed, key)
        if by_release is None:
            train, valid, test = split_train_instances(lay.groups, cfg, seed, key)
        else:
            train, valid, test, unused = by_release
            removed["official_split_unused"] += unused
        mux = None
        if multiplex and config.multiplex:
            train, drawn = multiplex_train(lay.templates, train, seed, key)
            if drawn is not None:
                removed["multiplex"] += drawn.instantiations - drawn.drawn
                mux = drawn.to_dict()
        return train, valid, test, removed, mux, by_release is not None, lay

    def survey(self, key: TaskKey) -> _Survey:
        cfg, seed = self.config.split, self.config.seed
        if self.plan.roles[key] == EVAL:
            lay = layout(self._rows(key))
            usable, dropped = eval_rows(lay.splits)
            valid, test = split_eval_instances(lay.groups, usable, cfg, key[1] in cfg.valid_tasks, seed, key)
            recs = self._records(key, set(valid) | set(test))
            texts = [_text(render(recs[i], seed, self.config.prompt_format)) for i in valid + test]
            removed = Counter(eval_cap=len(usable) - len(valid) - len(test), **dropped)
            return _Survey(key, valid, test, removed, [recs[i].input for i in valid + test],
                           hashes=self.ngrams.hashes(texts), keyed_by_input=_keyed_by_input(lay),
                           examples={"valid": lay.count(valid), "test": lay.count(test)},
                           dropped_rows=dropped)
        _, valid, test, _, _, _, lay = self._train_parts(key, multiplex=False)
        recs = self._records(key, set(valid) | set(test))
        return _Survey(key, valid, test, Counter(), [recs[i].input for i in valid + test],
                       keyed_by_input=_keyed_by_input(lay))

    def write_train(self, key: TaskKey) -> _Written:
        config, dc, seed = self.config, self.config.decontamination, self.config.seed
        train, valid, test, removed, mux, official, lay = self._train_parts(key, multiplex=True)
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
        pairs = [dataclasses.replace(p, train_texts=tuple((recs[capped[j]].id, _text(rendered[capped[j]]))
                                                          for j in p.train_examples))
                 for p in self.ngrams.pairs(key, [_text(rendered[i]) for i in capped], dc.threshold)]
        if dc.drop_flagged and any(not dc.cleared(p.train_task[1], p.eval_task[1]) for p in pairs):
            removed["ngram_overlap"] += len(capped) + len(valid) + len(test)
            return _Written(key, {}, {}, removed, len(hits), pairs, dropped=True, multiplexed=mux,
                            official=official)
        instruction = recs[0].instruction
        parts = {"train": capped, "valid": valid, "test": test}
        files, counts = self._write_parts(key, LEVEL_TRAIN, parts, recs, rendered, instruction)
        return _Written(key, files, counts, removed, len(hits), pairs, multiplexed=mux, official=official,
                        instruction=instruction,
                        example_counts={split_name(LEVEL_TRAIN, part): lay.count(idx) for part, idx in parts.items()
                                        if idx})

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
        example_counts = {split_name(level, part): n for part, n in s.examples.items() if n}
        return _Written(key, files, counts, Counter(), examples=shown, instruction=instruction,
                        example_counts=example_counts)

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
        units = {s: {"examples": 0, "renderings": 0} for s in benchfiles.SPLITS}
        kept = 0
        for key in order:
            if key not in self.plan.roles:
                continue
            w, f = written[key], self.facts[key]
            for split, n in w.counts.items():
                splits[split]["tasks"] += 1
                splits[split]["examples"] += n
                units[split]["renderings"] += n
                units[split]["examples"] += w.example_counts.get(split, 0)
                kept += n
            entry = {"task": key[1], "benchmark": key[0], "category": f.category, "level": self.plan.levels[key],
                     "sources": list(f.info().sources), "files": w.files, "counts": w.counts,
                     "example_counts": w.example_counts}
            if w.instruction:  # rows with this instruction leave it out (`_row`)
                entry["instruction"] = w.instruction
            entry.update(f.task_meta)  # SNI's positive/negative examples (eval/prompts.py)
            entries.append(entry)
        skipped = dict(sorted(policy.skipped.items()))
        removed_d = {k: v for k, v in sorted(removed.items()) if v}
        balanced = policy.read == kept + sum(skipped.values()) + sum(removed_d.values())
        if not balanced:
            raise OptimlError(f"bench accounting does not balance: read {policy.read} != kept {kept} + "
                              f"skipped {skipped} + removed {removed_d} (this is a bug in optiml)")
        report["split_plan"]["problems"] = problems.to_dict()
        report["split_plan"]["holdout_unit"]["splits"] = {s: u for s, u in units.items() if u["renderings"]}
        benchfiles.atomic_write_bytes(root / REVIEW_FILE, b"".join(benchfiles.dumps_line(r) for r in review))
        manifest = {
            "format": benchfiles.FORMAT_NAME, "version": benchfiles.FORMAT_VERSION, "seed": config.seed,
            "optiml_version": __version__, "config": jsonable(config.raw), "prompt_format": config.prompt_format,
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


def _check_stems(order: List[TaskKey], facts: Mapping[TaskKey, TaskFacts]) -> None:
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


def _keyed_by_input(lay: Layout) -> bool:
    """Several templates and no example named by the source: renderings whose prompts differ cannot
    be grouped (listed in the manifest; `heldout_instances: official` or an `example_id` fixes it)."""
    return not lay.named and len(set(lay.templates)) > 1


def _warn_unnamed(keys: List[TaskKey]) -> None:
    """Say on stderr which training tasks' random held-out rows may share examples with their training
    rows (several templates, no example named: bench/examples.py)."""
    if keys:
        names = ", ".join(k[1] for k in keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        print(f"optiml: warning: {len(keys)} training task(s) render examples with several templates but name no "
              f"example ({names}): a held-out rendering may share its example with a training one; give rows an "
              f"example_id (P3: idx), set the source's example_fields, or use heldout_instances: official "
              f"(split_plan.holdout_unit.templated_tasks_keyed_by_input)", file=sys.stderr)


def _by_task(surveys: Mapping[TaskKey, _Survey], reason: str) -> Dict[str, int]:
    return {k[1]: s.dropped_rows[reason] for k, s in sorted(surveys.items()) if s.dropped_rows.get(reason)}


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
