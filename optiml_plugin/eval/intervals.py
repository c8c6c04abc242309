"""Chance scores and seeded bootstrap intervals for the level scores of an evaluation.

Why: a level score from a few hundred instances moves by several points between draws, so a gain
is only claimed when its 95% interval excludes zero. And a level is a sample of TASKS: a gain that one
task carries while the others do not move says little about a new task. So the bootstrap has two
levels (a cluster bootstrap): each draw resamples the level's tasks with replacement, then the
instances within each drawn task, and recombines them with the paper's weights (task -> category ->
level, recipe §4.2, renormalized over the drawn tasks), so its centre is the level score `aggregate`
reports and its width holds task-to-task variance. `resample_tasks=False` keeps the tasks fixed
(instances only: the narrower interval of "these tasks, other instances"). Comparisons with a
baseline model and with chance are paired: the same resampled tasks and instances score both sides.

Chance, per instance: for option ranking, the share of gold answers among the options (the
accuracy of a uniform random pick); for generation, the mean score of answering with the reference
of another instance of the same task (a model that knows the output format but ignores the input).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from optiml_plugin.eval import metrics as M

Record = Mapping[str, Any]
Stratum = Tuple[int, str, str, str, str]   # shots, level, category, task, benchmark
CHANCE_OTHERS = 20   # other instances a generation instance's chance is scored against (cost: n x 20)


def chance_scores(records: Iterable[Record]) -> Dict[Tuple[str, str, str], float]:
    """{(benchmark, task, instance id): chance score in 0-100} for every instance in `records`."""
    by_task: Dict[Tuple[str, str], Dict[str, Record]] = defaultdict(dict)
    for r in records:
        by_task[(r["benchmark"], r["task"])].setdefault(str(r["id"]), r)
    out: Dict[Tuple[str, str, str], float] = {}
    for (bench, task), insts in by_task.items():
        for iid, r in insts.items():
            refs = list(r["references"])
            if r.get("kind") == "rank":
                cands = list(r["candidates"])
                out[(bench, task, iid)] = 100.0 * sum(c in refs for c in cands) / len(cands)
                continue
            others = [o["references"][0] for j, o in insts.items() if j != iid and o["references"]]
            others = others[:CHANCE_OTHERS]
            out[(bench, task, iid)] = (sum(M.rouge_l(o, refs) for o in others) / len(others)
                                       if others else 0.0)
    return out


def _strata(records: Iterable[Record]) -> Dict[Stratum, Dict[str, float]]:
    groups: Dict[Stratum, Dict[str, float]] = defaultdict(dict)
    for r in records:
        key = (int(r["shots"]), r["level"], r["category"], r["task"], r["benchmark"])
        groups[key][str(r["id"])] = float(r["score"])
    return groups


def _weights(keys: Sequence[Stratum]) -> np.ndarray:
    """Each stratum's weight in its level score: 1 / (categories x tasks in category x benchmarks)."""
    cats: Dict[Tuple[int, str], set] = defaultdict(set)
    tasks: Dict[Tuple[int, str, str], set] = defaultdict(set)
    benches: Dict[Tuple[int, str, str, str], set] = defaultdict(set)
    for s, lv, c, t, b in keys:
        cats[(s, lv)].add(c)
        tasks[(s, lv, c)].add(t)
        benches[(s, lv, c, t)].add(b)
    return np.array([1.0 / (len(cats[(s, lv)]) * len(tasks[(s, lv, c)]) * len(benches[(s, lv, c, t)]))
                     for s, lv, c, t, b in keys])


def _interval(draws: np.ndarray) -> List[float]:
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return [round(float(lo), 3), round(float(hi), 3)]


def level_intervals(records: Iterable[Record], baseline: Optional[Iterable[Record]] = None,
                    n_boot: int = 1000, seed: int = 0, resample_tasks: bool = True) -> List[Dict[str, Any]]:
    """Per (shots, level): score and 95% interval; chance and the paired gain over it; with `baseline`
    (records of another model on the same instances, scored at its lowest shot count), its score and the
    paired gain over it. Each row says what was resampled (`resampled`) and over how many `tasks`."""
    records = list(records)
    groups = _strata(records)
    chance = chance_scores(records)
    base: Dict[Tuple[str, str, str, str], float] = {}
    if baseline is not None:
        baseline = list(baseline)
        low = min(int(r["shots"]) for r in baseline) if baseline else 0
        base = {(r["level"], r["benchmark"], r["task"], str(r["id"])): float(r["score"])
                for r in baseline if int(r["shots"]) == low}
    rng = np.random.default_rng(seed)
    by_level: Dict[Tuple[int, str], List[Stratum]] = defaultdict(list)
    for key in sorted(groups):
        by_level[key[:2]].append(key)
    rows = []
    for (shots, level), keys in sorted(by_level.items()):
        weights = _weights(keys)
        # task draws: how often each task is picked in each bootstrap draw (all once: tasks fixed)
        picks = (rng.multinomial(len(keys), [1.0 / len(keys)] * len(keys), size=n_boot) if resample_tasks
                 else np.ones((n_boot, len(keys))))
        total = picks @ weights
        sums = {name: np.zeros(n_boot) for name in ("score", "chance", "baseline")}
        point = {name: 0.0 for name in sums}
        paired = True
        for k, (w, key) in enumerate(zip(weights, keys)):
            ids = sorted(groups[key])
            cols = {"score": np.array([groups[key][i] for i in ids]),
                    "chance": np.array([chance[(key[4], key[3], i)] for i in ids])}
            if base:
                found = [base.get((level, key[4], key[3], i)) for i in ids]
                paired = paired and all(v is not None for v in found)
                cols["baseline"] = np.array([v if v is not None else np.nan for v in found])
            idx = rng.integers(0, len(ids), size=(n_boot, len(ids)))
            for name, col in cols.items():
                sums[name] += picks[:, k] * w * col[idx].mean(axis=1) / total
                point[name] += w * float(col.mean())
        row: Dict[str, Any] = {
            "shots": shots, "level": level, "n": sum(len(groups[k]) for k in keys), "tasks": len(keys),
            "resampled": "tasks, then instances" if resample_tasks else "instances",
            "score": round(point["score"], 3), "ci": _interval(sums["score"]),
            "chance": round(point["chance"], 3),
            "gain_over_chance": round(point["score"] - point["chance"], 3),
            "gain_over_chance_ci": _interval(sums["score"] - sums["chance"])}
        if base and not paired:   # said, not dropped: the baseline scored other instances
            row["baseline_unpaired"] = True
        if base and paired:
            row.update(baseline=round(point["baseline"], 3), baseline_ci=_interval(sums["baseline"]),
                       gain_over_baseline=round(point["score"] - point["baseline"], 3),
                       gain_over_baseline_ci=_interval(sums["score"] - sums["baseline"]))
        rows.append(row)
    return rows


def _versus(name: str, value: float, gain_ci: Sequence[float]) -> Tuple[str, int]:
    """'above/below/not distinguishable from NAME' and +1/-1/0, from the paired gain's interval."""
    ci = f"gain [{gain_ci[0]:.1f}, {gain_ci[1]:.1f}]"
    if gain_ci[0] > 0:
        return f"above {name} {value:.1f} ({ci})", 1
    if gain_ci[1] < 0:
        return f"below {name} {value:.1f} ({ci})", -1
    return f"not distinguishable from {name} {value:.1f} ({ci} includes 0)", 0


def verdict(row: Mapping[str, Any], baseline_name: str = "untrained") -> str:
    """One line: is the level above chance (and above the baseline, when given) at 95%?"""
    parts = [_versus("chance", row["chance"], row["gain_over_chance_ci"])]
    if "gain_over_baseline_ci" in row:
        parts.append(_versus(baseline_name, row["baseline"], row["gain_over_baseline_ci"]))
    if row.get("baseline_unpaired"):
        parts.append((f"not compared with {baseline_name} (it scored other instances)", 0))
    head = "shown" if all(sign > 0 for _, sign in parts) else "not shown"
    return (f"{head}: {row['score']:.1f} [{row['ci'][0]:.1f}, {row['ci'][1]:.1f}] is "
            + " and ".join(text for text, _ in parts))
