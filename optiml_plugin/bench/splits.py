"""The three-level split planner (OPT-IML §2.3): which tasks train, which evaluate, at which level,
and which instances of each task go to which split.

Why: the paper's generalization levels are a property of the whole task set (a held-out task's level
depends on whether any training task of its category remains), so the plan is computed here, from
task metadata only, and re-evaluated after decontamination removes training tasks. Every random
choice comes from a generator seeded by (seed, task key), so the plan does not depend on the order
tasks were read in.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from optiml_plugin.conventions import LEVEL_CATEGORIES, LEVEL_INSTANCES, LEVEL_TASKS, LEVEL_TRAIN
from optiml_plugin.benchfiles import normalize_name
from optiml_plugin.errors import BadRecordError, BadRecordPolicy

TRAIN, EVAL = "train", "eval"
TaskKey = Tuple[str, str]  # (benchmark, task)


@dataclass(frozen=True)
class SplitConfig:
    """The split plan. `sni_split_dir` holds SNI's train/test/excluded lists (test -> eval tasks,
    excluded -> dropped); `heldout_categories`/`heldout_tasks` add eval tasks; `valid_tasks` are eval
    tasks that go wholly to the valid splits, and every other eval task gives only test instances:
    the paper's 35 dev tasks are apart from its 87 test tasks (§4.1, Tab 15); `test_tasks_give_valid`
    brings back the behaviour before issue 22 (a test task also gives up to `eval_valid` of its
    non-test instances to valid). Eval tasks' test instances are drawn as the paper draws them
    (§4.1, §5): every instance (all prompts and examples) for benchmarks in `eval_test_all` (FLAN,
    PromptSource), the first `eval_test` examples in file order elsewhere (SNI: first 100); valid
    sets are `eval_valid` instances (paper: 250) drawn at random from all of a task's prompts merged,
    among those not in test (see `eval_draw`). Training tasks hold out the instances of
    `heldout_valid`/`heldout_test` random examples each (at most a quarter of the task's examples
    each, so training keeps the rest). The unit of every draw is the underlying example
    (bench/examples.py): all renderings of an example go to one side.
    `sni_lists_complete`: the data should hold every task SNI's lists name (a full checkout); a
    partial copy (the default) only counts the absent ones. `origins` names the split file a task
    list was read from, for error messages."""

    sni_split_dir: Optional[str] = None
    heldout_categories: Tuple[str, ...] = ()
    heldout_tasks: Tuple[str, ...] = ()
    valid_tasks: Tuple[str, ...] = ()
    eval_valid: int = 250
    eval_test: int = 100
    eval_test_all: Tuple[str, ...] = ("flan", "promptsource")
    heldout_valid: int = 50
    heldout_test: int = 50
    test_tasks_give_valid: bool = False
    sni_lists_complete: bool = False
    origins: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskInfo:
    key: TaskKey
    category: str
    sources: Tuple[str, ...]
    size: int


@dataclass
class RolePlan:
    """Task roles before decontamination; `dropped` maps a task to the reason it left the bench."""

    roles: Dict[TaskKey, str]
    dropped: Dict[TaskKey, str]
    unlisted: List[TaskKey]


def task_rng(seed: int, key: TaskKey, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, task, purpose): reproducible and order-free."""
    tag = zlib.crc32("\x1f".join((purpose,) + tuple(key)).encode("utf-8"))
    return np.random.default_rng([int(seed), tag])


def assign_roles(tasks: Mapping[TaskKey, TaskInfo], cfg: SplitConfig,
                 sni_lists: Optional[Mapping[str, Sequence[str]]],
                 problems: BadRecordPolicy) -> RolePlan:
    """Train or eval for every task. A task or category the config names but the data lacks is a
    bad input (`problems` raises it, or counts it when skipping); SNI's own lists cover the whole
    release, so their tasks missing from a partial copy are only counted (see `absent_from_lists`)."""
    names = {key[1] for key in tasks}
    for listed, fld in ((cfg.heldout_tasks, "heldout_tasks"), (cfg.valid_tasks, "valid_tasks")):
        for name in listed:
            if name not in names:
                problems.handle(BadRecordError(cfg.origins.get(fld, "build config"), name, fld, "listed_task_absent",
                                               f"task '{name}' is listed but no source has it"))
    categories = {normalize_name(t.category) for t in tasks.values()}
    held_cats = set()
    for cat in cfg.heldout_categories:
        if normalize_name(cat) not in categories:
            problems.handle(BadRecordError("build config", cat, "heldout_categories", "unknown_category",
                                           f"category '{cat}' is held out but no task has it"))
        held_cats.add(normalize_name(cat))
    sni = _sni_membership(sni_lists)
    held_tasks = set(cfg.heldout_tasks) | set(cfg.valid_tasks)
    sni_benchmarks = {key[0] for key in tasks if key[1] in sni}
    roles: Dict[TaskKey, str] = {}
    dropped: Dict[TaskKey, str] = {}
    unlisted: List[TaskKey] = []
    for key in sorted(tasks):
        name = key[1]
        listed = sni.get(name)
        if listed == "excluded":
            dropped[key] = "sni_excluded"
        elif (name in held_tasks or normalize_name(tasks[key].category) in held_cats
              or listed == "test"):
            roles[key] = EVAL
        else:
            roles[key] = TRAIN
            if listed is None and key[0] in sni_benchmarks:
                unlisted.append(key)
    return RolePlan(roles=roles, dropped=dropped, unlisted=unlisted)


def _sni_membership(sni_lists: Optional[Mapping[str, Sequence[str]]]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for which in ("train", "test", "excluded"):
        for name in (sni_lists or {}).get(which, ()):
            out[name] = which
    return out


def absent_from_lists(sni_lists: Optional[Mapping[str, Sequence[str]]],
                      present: Iterable[str]) -> Dict[str, int]:
    """How many tasks of each SNI list have no data here (normal for a partial copy)."""
    have = set(present)
    return {which: sum(1 for n in names if n not in have)
            for which, names in sorted((sni_lists or {}).items())}


def assign_levels(roles: Mapping[TaskKey, str], categories: Mapping[TaskKey, str],
                  heldout_categories: Iterable[str]) -> Dict[TaskKey, str]:
    """An eval task is at `heldout_categories` when its category is held out or no training task of
    it remains, else at `heldout_tasks`; training tasks are at `train`."""
    held = {normalize_name(c) for c in heldout_categories}
    trained = {normalize_name(categories[k]) for k, r in roles.items() if r == TRAIN}
    out: Dict[TaskKey, str] = {}
    for key, role in roles.items():
        cat = normalize_name(categories[key])
        if role == TRAIN:
            out[key] = LEVEL_TRAIN
        elif cat in held or cat not in trained:
            out[key] = LEVEL_CATEGORIES
        else:
            out[key] = LEVEL_TASKS
    return out


def split_eval_instances(groups: Sequence[int], usable: Sequence[int], cfg: SplitConfig, valid_only: bool,
                         seed: int, key: TaskKey) -> Tuple[List[int], List[int]]:
    """(valid, test) instance indices of an eval task, drawn as the paper draws them (`SplitConfig`);
    `usable` are the indices of rows from the release's evaluation splits (bench/examples.py), in
    file order, `groups[i]` is row i's example.

    Test keeps file order (SNI's "first 100", counted in examples); valid is a seeded random sample
    of renderings, sorted, from examples not in test, so no example is on both sides. A test task
    gives no valid rows unless `cfg.test_tasks_give_valid`.
    """
    if valid_only:
        test: List[int] = []
    elif normalize_name(key[0]) in {normalize_name(b) for b in cfg.eval_test_all}:
        test = list(usable)
    else:
        first = set(first_examples(groups, usable, cfg.eval_test))
        test = [i for i in usable if groups[i] in first]
    if not (valid_only or cfg.test_tasks_give_valid):
        return [], test
    in_test = {groups[i] for i in test}
    rest = [i for i in usable if groups[i] not in in_test]
    pick = task_rng(seed, key, "eval_valid").permutation(len(rest))[:min(len(rest), cfg.eval_valid)]
    return sorted(rest[int(i)] for i in pick), test


def first_examples(groups: Sequence[int], indices: Iterable[int], n: int) -> List[int]:
    """The first `n` distinct examples of `indices`, in order of appearance."""
    seen: Dict[int, None] = {}
    for i in indices:
        if len(seen) >= n:
            break
        seen.setdefault(groups[i], None)
    return list(seen)


def eval_draw(cfg: SplitConfig) -> Dict[str, str]:
    """How eval tasks' test and valid sets were drawn, in words, for the manifest."""
    every = ", ".join(cfg.eval_test_all) or "none"
    valid = (f"{cfg.eval_valid} instances per task drawn at random (seeded) from all of its prompts merged, "
             f"from examples not in test, for valid_tasks (all their instances enter this draw)")
    if cfg.test_tasks_give_valid:
        valid += " and for every test task (test_tasks_give_valid: dev and test tasks overlap)"
    else:
        valid += "; test tasks give no valid instances (dev tasks apart from test tasks, paper §4.1)"
    return {"test": f"every instance (all prompts and examples) for benchmarks [{every}]; the instances "
                    f"of the first {cfg.eval_test} examples in file order for other benchmarks; only "
                    f"rows of the release's evaluation splits (or rows without a split)",
            "valid": valid}


def split_train_instances(groups: Sequence[int], cfg: SplitConfig, seed: int,
                          key: TaskKey) -> Tuple[List[int], List[int], List[int]]:
    """(train, valid, test) indices of a training task: the instances of seeded random held-out
    examples (`groups[i]`: row i's example, numbered 0.. in order of appearance), each split sorted."""
    size = max(groups, default=-1) + 1
    n_valid = min(cfg.heldout_valid, size // 4)
    n_test = min(cfg.heldout_test, size // 4)
    perm = task_rng(seed, key, LEVEL_INSTANCES).permutation(size)
    part = [0] * size  # 0 train, 1 valid, 2 test
    for g in perm[:n_test]:
        part[int(g)] = 2
    for g in perm[n_test:n_test + n_valid]:
        part[int(g)] = 1
    out: Tuple[List[int], List[int], List[int]] = ([], [], [])
    for i, g in enumerate(groups):
        out[part[g]].append(i)
    return out


def cap_indices(indices: Sequence[int], cap: int, seed: int, key: TaskKey) -> List[int]:
    """At most `cap` of `indices`, a seeded random subset in the original order (paper: 100k/task)."""
    if len(indices) <= cap:
        return list(indices)
    pick = task_rng(seed, key, "train_cap").choice(len(indices), size=cap, replace=False)
    return [indices[i] for i in sorted(int(p) for p in pick)]


def read_task_list(path: Path) -> Tuple[str, ...]:
    """A split file: one task name per line, blank lines and '#' comments ignored."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return tuple(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
