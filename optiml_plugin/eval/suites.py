"""lm-evaluation-harness suites (the paper's Tab 9 and Tab 14 evaluations) as presets, and how
their scores fold into an `optiml eval` run directory.

Why presets: the paper fixes, per suite, the tasks, shot counts and metric; a preset YAML (shipped
in `optiml_plugin/eval/presets/`, or any file with the same fields) records those choices and says
where the paper is silent. This module is pure (no lm-eval import): `backends/lmeval.py` runs the
tasks, `fold` turns lm-eval's result dict into task rows with the aggregation of recipe §4.2
(sub-tasks macro-averaged into their task, tasks averaged per shot count).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pydantic import Field

from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.aggregate import merge_subtasks
from optiml_plugin.recipe import Bool, NonNegInt, Section, located, setting, validate
from optiml_plugin.yamlio import read_yaml_mapping_lines

PRESETS = Path(__file__).with_name("presets")


@dataclass(frozen=True)
class SuiteTask:
    name: str     # the paper's column name
    lmeval: str   # lm-eval task or group name
    metric: str


@dataclass(frozen=True)
class Suite:
    """One preset: `shots` are run in turn; `include` is a folder of extra lm-eval task configs."""

    name: str
    title: str
    paper: str
    shots: Tuple[int, ...]
    tasks: Tuple[SuiteTask, ...]
    include: Optional[Path]
    builtin_tasks: bool
    chosen: Tuple[str, ...]
    differences: Tuple[str, ...]
    source: str

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "title": self.title, "paper": self.paper, "shots": list(self.shots),
                "tasks": [{"name": t.name, "lmeval": t.lmeval, "metric": t.metric} for t in self.tasks],
                "include": None if self.include is None else str(self.include),
                "builtin_tasks": self.builtin_tasks, "chosen": list(self.chosen),
                "differences": list(self.differences), "source": self.source}


def available() -> List[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


class _TaskEntry(Section):
    name: Annotated[str, Field(min_length=1)] = setting(..., "the paper's column name")
    lmeval: Annotated[str, Field(min_length=1)] = setting(..., "lm-eval task or group name")
    metric: Optional[str] = setting(None, "its metric (default: the suite's)")


class SuiteFile(Section):
    """A suite preset file, checked by the recipe's schema rules (errors name file, line and key)."""

    name: Annotated[str, Field(min_length=1)] = setting(..., "suite name")
    title: Optional[str] = setting(None, "display title (default: name)")
    paper: str = setting("", "where in the paper")
    metric: Annotated[str, Field(min_length=1)] = setting(..., "lm-eval metric")
    shots: Annotated[List[NonNegInt], Field(min_length=1)] = setting(..., "shot counts, run in turn")
    tasks: Annotated[List[_TaskEntry], Field(min_length=1)] = setting(..., "the suite's tasks")
    include: Optional[str] = setting(None, "a folder of extra lm-eval task configs, relative to the file")
    builtin_tasks: Bool = setting(True, "also use lm-eval's own task configs")
    chosen: List[str] = setting([], "what the preset chose where the paper is silent")
    differences: List[str] = setting([], "where it differs from the paper")


def load_suite(name_or_path: str) -> Suite:
    """A shipped preset by name, or a preset YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESETS / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown suite {name_or_path!r}; presets: {', '.join(available())} "
                              f"(or give a preset YAML path)")
    if not path.is_file():
        raise ConfigError(f"suite preset not found: {path}")
    values, lines = read_yaml_mapping_lines(path, "suite preset")
    raw = validate(SuiteFile, values, str(path), lines)
    include = None
    if raw.include is not None:
        include = (path.parent / raw.include).resolve()
        if not include.is_dir():
            raise ConfigError(f"{located(str(path), lines, ('include',))}: include: not a directory: {include}")
    return Suite(name=raw.name, title=raw.title or raw.name, paper=raw.paper, shots=tuple(sorted(set(raw.shots))),
                 tasks=tuple(SuiteTask(t.name, t.lmeval, t.metric or raw.metric) for t in raw.tasks),
                 include=include, builtin_tasks=raw.builtin_tasks, chosen=tuple(raw.chosen),
                 differences=tuple(raw.differences), source=str(path))


def _leaves(name: str, group_subtasks: Mapping[str, Sequence[str]]) -> List[str]:
    """The tasks under a group (recursively); a plain task is its own leaf."""
    if name not in group_subtasks:
        return [name]
    return [leaf for sub in group_subtasks[name] for leaf in _leaves(sub, group_subtasks)]


def _metric(entry: Mapping[str, Any], metric: str) -> Optional[float]:
    """lm-eval keys metrics as 'name,filter' (the first filter listed wins); a group without its own
    aggregate has none."""
    for key, value in entry.items():
        if key.split(",")[0] == metric and "_stderr" not in key and isinstance(value, (int, float)):
            return float(value)
    return None


def fold(suite: Suite, shots: int, raw: Mapping[str, Any], tasks: Optional[Sequence[SuiteTask]] = None
         ) -> List[Dict[str, Any]]:
    """Task rows (scores x100) for one shot count from `lm_eval.simple_evaluate`'s result dict
    (of `tasks`, default all the suite's)."""
    tasks = suite.tasks if tasks is None else tasks
    results, groups = raw["results"], raw.get("group_subtasks", {})
    versions, samples = raw.get("versions", {}), raw.get("n-samples", {})
    leaf_rows, groups_of = [], {}
    for t in tasks:
        for leaf in _leaves(t.lmeval, groups):
            value = _metric(results.get(leaf, {}), t.metric)
            if value is None:
                raise ConfigError(f"suite {suite.name}: lm-eval returned no '{t.metric}' for task {leaf} "
                                  f"(has {sorted(results.get(leaf, {}))}); fix 'metric' in {suite.source}")
            groups_of[leaf] = t.name
            n = samples.get(leaf, {}).get("effective", results[leaf].get("sample_len"))
            leaf_rows.append({"shots": shots, "level": suite.name, "benchmark": "lm-eval",
                              "category": t.name, "task": leaf, "n": n, "metric": t.metric,
                              "score": 100.0 * value,
                              "metrics": {k.split(",")[0]: 100.0 * v for k, v in results[leaf].items()
                                          if isinstance(v, (int, float)) and "," in k and "_stderr" not in k}})
    rows = []
    for row in merge_subtasks(leaf_rows, groups_of):
        task = next(t for t in tasks if t.name == row["task"])
        leaves = sorted(leaf for leaf, name in groups_of.items() if name == task.name)
        is_group = task.lmeval in groups
        group = _metric(results.get(task.lmeval, {}), task.metric) if is_group else None
        rows.append({"shots": shots, "task": task.name, "lmeval_task": task.lmeval, "metric": task.metric,
                     "n": row["n"], "score": row["score"], "metrics": row["metrics"],
                     "subtasks": leaves if is_group else [],
                     "task_versions": {leaf: versions.get(leaf) for leaf in leaves},
                     "lmeval_group_score": None if group is None else 100.0 * group,
                     "n_shot": raw.get("n-shot", {}).get(task.lmeval)})
    return rows


def averages(rows: Sequence[Mapping[str, Any]], expected: int) -> List[Dict[str, Any]]:
    """The suite's 'Avg' column: mean task score per shot count, and whether every one of the
    `expected` tasks is in it."""
    out = []
    for k in sorted({r["shots"] for r in rows}):
        scores = [r["score"] for r in rows if r["shots"] == k]
        out.append({"shots": k, "tasks": len(scores), "complete": len(scores) == expected,
                    "score": sum(scores) / len(scores)})
    return out


def run_suites(model_dir: str, suites: Sequence[Suite], out_dir: str, batch_size: int = 8,
               device: Optional[str] = None, dtype: Optional[str] = None, limit: Optional[int] = None,
               seed: int = 1234, charts: bool = True) -> Dict[str, Any]:
    """Run every suite on a transformers model directory and fold the scores into `out_dir`.

    An existing `results.json` there (from `optiml eval --bench`) keeps its bench results: the
    suites are added beside them, and results.md and the charts are rewritten with both.
    """
    from optiml_plugin.eval.backends import lmeval
    from optiml_plugin.eval.report import RESULTS, write_summary

    lm_eval = lmeval.require()
    out = Path(out_dir)
    path = out / RESULTS
    if path.is_file():
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not a results file ({err})") from None
    else:
        from optiml_plugin import __version__

        results = {"model_id": Path(model_dir).resolve().name, "optiml_version": __version__}
    model = lmeval.load_model(model_dir, batch_size=batch_size, device=device, dtype=dtype)
    results.setdefault("suites", {})
    results["out_dir"] = str(out)
    for suite in suites:
        started = time.time()
        entry = results["suites"][suite.name] = {
            "model": str(model_dir), "lm_eval_version": lm_eval.__version__, "limit": limit, "seed": seed,
            "preset": suite.to_dict(), "tasks": [], "failed": [], "average": []}
        for k in suite.shots:
            for task in suite.tasks:  # one task per call: a task that cannot load spoils no other
                try:
                    entry["tasks"].extend(fold(suite, k, lmeval.evaluate(model, [task.lmeval], k, suite,
                                                                         limit=limit, seed=seed), [task]))
                except Exception as err:  # lm-eval and datasets raise many types; recorded, reported
                    entry["failed"].append({"task": task.name, "lmeval_task": task.lmeval, "shots": k,
                                            "error": f"{type(err).__name__}: {err}"})
                entry["average"] = averages(entry["tasks"], len(suite.tasks))
                entry["elapsed_s"] = round(time.time() - started, 3)
                write_summary(results, out, with_charts=False)  # progress survives an interrupted run
    write_summary(results, out, with_charts=charts)
    return results
