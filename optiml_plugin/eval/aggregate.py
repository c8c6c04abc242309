"""The paper's aggregation (recipe §4.2): instance -> task -> same task across benchmarks ->
category -> generalization level, per shot count, plus the model-selection number.

Why a separate module: the arithmetic is what users compare with the paper's tables, so it is pure
(lists of dicts in, dicts out) and tested on hand-made numbers.

Each instance record carries `shots`, `level`, `benchmark`, `category`, `task`, `score` (its primary
metric: accuracy for candidates, Rouge-L otherwise) and `metrics` (every metric of the instance).
Sub-tasks merge by the macro mean of their task scores; BLEU comes in per task from the caller.

Two averagings are reported side by side, each labeled in `averaging`: the paper's macro means
(task -> category -> level) and the official SNI script's instance means (its per-category and
overall numbers average instances, so a category with many instances weighs more). On the same
instance scores they differ whenever tasks have different sizes.

The official script never mixes its two Rouge-L tracks (`default`, `xlingual`): it reports an overall
and per-category numbers for each track, over every test task whatever its generalization level. So
the instance means are per track too, and `official` holds the script's numbers per (shots,
benchmark, track) over all levels; it is the per-level track means weighted by their instance counts.
"""
from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
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


def _track(recs: Iterable[Record]) -> Optional[str]:
    """The Rouge-L track shared by `recs` (None for ranked tasks, `mixed` if they differ)."""
    tracks = {r.get("track") for r in recs}
    return tracks.pop() if len(tracks) == 1 else "mixed"


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
                     "metric": _primary(r["kind"] for r in recs), "track": _track(recs),
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
                    "metric": kinds.pop() if len(kinds) == 1 else "mixed", "track": _track(parts),
                    "score": _mean(p["score"] for p in parts), "metrics": metrics})
    return out


AVERAGING = {
    "benchmark_tasks": "mean over the task's instances in one benchmark (sub-tasks: mean of their means)",
    "tasks": "mean over the benchmarks holding the task of its per-benchmark score",
    "categories": "mean over the category's tasks (paper, recipe 4.2)",
    "levels": "mean over the level's categories (paper)",
    "model_selection": "mean over categories of every level and shot count (paper)",
    "instance_means": "mean over instances, as the official SNI evaluation.py averages: per level, per "
                      "level and Rouge-L track, per level, track and category",
    "official": "the official SNI evaluation.py's overall and per-category numbers: mean over the "
                "instances of one benchmark and Rouge-L track, all levels together",
}


def _instance_group(key: Dict[str, Any], recs: List[Record]) -> Dict[str, Any]:
    names = sorted({m for r in recs for m in r["metrics"]})
    return dict(key, n=len(recs), score=_mean(r["score"] for r in recs),
                metrics={m: _mean(r["metrics"][m] for r in recs if m in r["metrics"]) for m in names})


def _grouped(records: List[Record], keys: Tuple[str, ...], tracked: bool) -> List[Dict[str, Any]]:
    """Instance means per value of `keys` (only records with a Rouge-L track when `tracked`)."""
    groups: Dict[Tuple, List[Record]] = defaultdict(list)
    for r in records:
        if not tracked or r.get("track"):
            groups[tuple(r.get(k) for k in keys)].append(r)
    order = sorted(groups, key=lambda k: tuple("" if v is None else v for v in k))
    return [_instance_group(dict(zip(keys, k)), groups[k]) for k in order]


def instance_means(records: Iterable[Record]) -> Dict[str, List[Dict[str, Any]]]:
    """Instance means per (shots, level), per track, and per track and category (official SNI);
    ranked instances have no track (`track: null`)."""
    records = list(records)
    return {"overall": _grouped(records, ("shots", "level"), False),
            "tracks": _grouped(records, ("shots", "level", "track"), True),
            "categories": _grouped(records, ("shots", "level", "track", "category"), False)}


def official(records: Iterable[Record]) -> Dict[str, List[Dict[str, Any]]]:
    """The official SNI script's overall and per-category numbers: per (shots, benchmark, track) over
    every level, with the instance count each level gave (`levels`)."""
    records = [r for r in records if r.get("track")]
    keys = ("shots", "benchmark", "track")
    levels: Dict[Tuple, Counter] = defaultdict(Counter)
    for r in records:
        levels[tuple(r[k] for k in keys)][r["level"]] += 1
    overall = _grouped(records, keys, True)
    for row in overall:
        row["levels"] = dict(sorted(levels[tuple(row[k] for k in keys)].items()))
    return {"overall": overall, "categories": _grouped(records, keys + ("category",), True)}


def aggregate(records: Iterable[Record], task_groups: Optional[Mapping[str, str]] = None,
              extra: Optional[Mapping[Tuple[int, str, str, str], Dict[str, float]]] = None
              ) -> Dict[str, Any]:
    """Every level of the paper's aggregation; see the module docstring."""
    records = list(records)
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
    return {"averaging": dict(AVERAGING), "benchmark_tasks": per_bench, "tasks": tasks,
            "categories": categories, "levels": levels, "model_selection": selection,
            "instance_means": instance_means(records), "official": official(records)}
