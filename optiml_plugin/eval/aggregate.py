"""The paper's aggregation (recipe §4.2): instance -> task -> same task across benchmarks ->
category -> generalization level, per shot count, plus the model-selection number.

Why a separate module: the arithmetic is what users compare with the paper's tables, so it is pure
(lists of dicts in, dicts out) and tested on hand-made numbers.

Each instance record carries `shots`, `level`, `benchmark`, `category`, `task`, `score` (its primary
metric: accuracy for candidates, Rouge-L otherwise) and `metrics` (every metric of the instance).
Sub-tasks merge by the macro mean of their task scores; BLEU comes in per task from the caller.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

Record = Mapping[str, Any]


def _mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _primary(kinds: Iterable[str]) -> str:
    kinds = set(kinds)
    if kinds == {"rank"}:
        return "accuracy"
    if kinds == {"generate"}:
        return "rougeL"
    return "mixed"


def task_table(records: Iterable[Record],
               extra: Optional[Mapping[Tuple[int, str, str, str], Dict[str, float]]] = None
               ) -> List[Dict[str, Any]]:
    """Per (shots, level, benchmark, task): instance means of the score and of every metric.

    `extra[(shots, level, benchmark, task)]` adds task-level metrics (corpus BLEU).
    """
    groups: Dict[Tuple[int, str, str, str], List[Record]] = OrderedDict()
    for r in records:
        groups.setdefault((int(r["shots"]), r["level"], r["benchmark"], r["task"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        names = sorted({m for r in recs for m in r["metrics"]})
        metrics = {m: _mean(r["metrics"][m] for r in recs if m in r["metrics"]) for m in names}
        metrics.update((extra or {}).get(key, {}))
        rows.append({"shots": key[0], "level": key[1], "benchmark": key[2], "task": key[3],
                     "category": recs[0]["category"], "n": len(recs),
                     "metric": _primary(r["kind"] for r in recs),
                     "score": _mean(r["score"] for r in recs), "metrics": metrics})
    return rows


def merge_subtasks(tasks: Iterable[Mapping[str, Any]],
                   task_groups: Mapping[str, str]) -> List[Dict[str, Any]]:
    """Sub-tasks of one task (per `task_groups`: sub-task name -> task name) as their macro mean."""
    groups: Dict[Tuple[int, str, str, str, str], List[Mapping[str, Any]]] = OrderedDict()
    for t in tasks:
        name = task_groups.get(t["task"], t["task"])
        groups.setdefault((t["shots"], t["level"], t["benchmark"], t["category"], name), []).append(t)
    out = []
    for (shots, level, bench, cat, name), parts in groups.items():
        metrics = {m: _mean(p["metrics"][m] for p in parts if m in p["metrics"])
                   for m in sorted({m for p in parts for m in p["metrics"]})}
        kinds = {p["metric"] for p in parts}
        out.append({"shots": shots, "level": level, "benchmark": bench, "category": cat,
                    "task": name, "n": sum(p["n"] for p in parts),
                    "subtasks": sorted(p["task"] for p in parts) if len(parts) > 1 else [],
                    "metric": kinds.pop() if len(kinds) == 1 else "mixed",
                    "score": _mean(p["score"] for p in parts), "metrics": metrics})
    return out


def aggregate(records: Iterable[Record], task_groups: Optional[Mapping[str, str]] = None,
              extra: Optional[Mapping[Tuple[int, str, str, str], Dict[str, float]]] = None
              ) -> Dict[str, Any]:
    """Every level of the paper's aggregation; see the module docstring."""
    per_bench = merge_subtasks(task_table(records, extra), task_groups or {})
    # the same task in several benchmarks: average over those benchmarks
    cross: Dict[Tuple[int, str, str, str], List[Mapping[str, Any]]] = OrderedDict()
    for t in per_bench:
        cross.setdefault((t["shots"], t["level"], t["category"], t["task"]), []).append(t)
    tasks = [{"shots": s, "level": lv, "category": c, "task": name,
              "benchmarks": sorted(t["benchmark"] for t in ts),
              "score": _mean(t["score"] for t in ts)} for (s, lv, c, name), ts in cross.items()]
    cats: Dict[Tuple[int, str, str], List[float]] = defaultdict(list)
    for t in tasks:
        cats[(t["shots"], t["level"], t["category"])].append(t["score"])
    categories = [{"shots": s, "level": lv, "category": c, "tasks": len(v), "score": _mean(v)}
                  for (s, lv, c), v in sorted(cats.items())]
    lvls: Dict[Tuple[int, str], List[float]] = defaultdict(list)
    for c in categories:
        lvls[(c["shots"], c["level"])].append(c["score"])
    levels = [{"shots": s, "level": lv, "categories": len(v), "score": _mean(v)}
              for (s, lv), v in sorted(lvls.items())]
    by_level: Dict[str, List[float]] = defaultdict(list)
    for c in categories:
        by_level[c["level"]].append(c["score"])
    selection = {"overall": _mean(c["score"] for c in categories),
                 "per_level": {lv: _mean(v) for lv, v in sorted(by_level.items())}}
    return {"benchmark_tasks": per_bench, "tasks": tasks, "categories": categories,
            "levels": levels, "model_selection": selection}
