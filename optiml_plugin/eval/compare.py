"""Several evaluation runs side by side: per level, category and shot count, as markdown and one chart.

Why: the paper's ablations (EPS, proportions, reasoning data, model size) are read as one table and one
figure per generalization level across runs; each `optiml eval` run directory holds one column of it.
Runs that kept predictions.jsonl get 95% bootstrap intervals on their level scores (eval/intervals.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.report import PREDICTIONS, RESULTS, _fmt, _levels, interval_chart, read_predictions

TABLE = "compare.md"
CHART = "compare.png"


@dataclass
class Run:
    name: str
    path: Path
    results: Dict[str, Any]
    intervals: Dict[Tuple[str, int], Dict[str, Any]]   # (level, shots) -> level_intervals row; {} if none


def load_run(path: str, name: Optional[str] = None, seed: int = 0) -> Run:
    """An eval run directory (or its results.json); intervals when its predictions.jsonl is there."""
    from optiml_plugin.eval.intervals import level_intervals

    p = Path(path)
    results_file = p / RESULTS if p.is_dir() else p
    try:
        results = json.loads(results_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{results_file}: not a readable eval results file ({err})") from None
    if "aggregate" not in results:
        raise ConfigError(f"{results_file}: no 'aggregate' field; is it an `optiml eval` results.json?")
    intervals: Dict[Tuple[str, int], Dict[str, Any]] = {}
    if (results_file.parent / PREDICTIONS).is_file():
        records = read_predictions(results_file.parent)
        intervals = {(r["level"], r["shots"]): r for r in level_intervals(records, seed=seed)}
    label = name or (p.name if p.is_dir() else p.parent.name)
    return Run(label, results_file.parent, results, intervals)


def _in_level_order(keys: Iterable[tuple]) -> List[tuple]:
    """(level, ...) keys with levels in the paper's order, then by the rest of the key."""
    keys = list(keys)
    order = {name: i for i, name in enumerate(_levels([{"level": k[0]} for k in keys]))}
    return sorted(keys, key=lambda k: (order[k[0]],) + tuple(k[1:]))


def _cell(run: Run, level: str, shots: int, score: Optional[float]) -> str:
    row = run.intervals.get((level, shots))
    return _fmt(score) + (f" [{row['ci'][0]:.1f}, {row['ci'][1]:.1f}]" if row else "")


def markdown(runs: Sequence[Run]) -> str:
    """Levels x shots, then every (level, category) x shots, one column per run."""
    names = [r.name for r in runs]
    head = ["| level | shots | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(runs)]
    lv = [{(x["level"], x["shots"]): x["score"] for x in r.results["aggregate"]["levels"]} for r in runs]
    keys = _in_level_order({k for d in lv for k in d})
    lines = ["# Comparison", "", "Runs: " + ", ".join(f"`{r.name}` ({r.path})" for r in runs), "",
             "## Generalization levels", "",
             "Scores 0-100 (accuracy for option tasks, Rouge-L for generation); in brackets the 95% bootstrap "
             "interval over instances where the run kept predictions.jsonl.", "", f"![levels per run]({CHART})",
             ""] + head
    for level, shots in keys:
        lines.append(f"| {level} | {shots} | "
                     + " | ".join(_cell(r, level, shots, d.get((level, shots))) for r, d in zip(runs, lv)) + " |")
    cats = [{(c["level"], c["category"], c["shots"]): c["score"] for c in r.results["aggregate"]["categories"]}
            for r in runs]
    ckeys = _in_level_order({k for d in cats for k in d})
    lines += ["", "## Task categories", "", "| level | category | shots | " + " | ".join(names) + " |",
              "|---|---|---|" + "---|" * len(runs)]
    for level, cat, shots in ckeys:
        lines.append(f"| {level} | {cat} | {shots} | " + " | ".join(_fmt(d.get((level, cat, shots))) for d in cats)
                     + " |")
    sel = [r.results["aggregate"].get("model_selection", {}).get("overall") for r in runs]
    lines += ["", "Model selection (mean over categories): " + ", ".join(
        f"`{n}` {_fmt(s)}" for n, s in zip(names, sel)), ""]
    return "\n".join(lines)


def chart(runs: Sequence[Run], path: Path) -> str:
    """One group per (level, shots), one bar per run, with intervals where known."""
    scores = [{(x["level"], x["shots"]): x["score"] for x in r.results["aggregate"]["levels"]} for r in runs]
    keys = _in_level_order({k for d in scores for k in d})
    series = [(r.name, [d.get(k) for k in keys], [r.intervals[k]["ci"] if k in r.intervals else None for k in keys])
              for r, d in zip(runs, scores)]
    return interval_chart(path, [f"{lv}\n{k}-shot" for lv, k in keys], series,
                     title="score per generalization level (95% bootstrap intervals)")


def shot_means(run: Run) -> Dict[int, Optional[float]]:
    """Per shot count, the mean of the run's generalization-level scores (the figure set beside a paper
    ablation's column)."""
    by_shots: Dict[int, List[float]] = {}
    for x in run.results["aggregate"]["levels"]:
        if x.get("score") is not None:
            by_shots.setdefault(int(x["shots"]), []).append(float(x["score"]))
    return {k: sum(v) / len(v) for k, v in by_shots.items()}


def compare(paths: Sequence[str], out: Path, names: Optional[Sequence[str]] = None, seed: int = 0,
            reference: Optional[Any] = None) -> Tuple[Path, Path]:
    """Write compare.md and compare.png into `out`; returns their paths. `reference` (an
    `ablations.Ablation`) adds the paper's column for the table it reproduces."""
    from optiml_plugin.benchfiles import atomic_write_bytes

    if len(paths) < 1:
        raise ConfigError("compare needs at least one eval run")
    if names and len(names) != len(paths):
        raise ConfigError(f"--names gives {len(names)} names for {len(paths)} runs")
    runs = [load_run(p, names[i] if names else None, seed) for i, p in enumerate(paths)]
    if len({r.name for r in runs}) < len(runs):
        raise ConfigError("two runs have the same name; give --names")
    out.mkdir(parents=True, exist_ok=True)
    chart(runs, out / CHART)
    text = markdown(runs)
    if reference is not None:
        from optiml_plugin.ablations import reference_table

        text += "\n" + "\n".join(reference_table(reference, [(r.name, shot_means(r)) for r in runs])) + "\n"
    atomic_write_bytes(out / TABLE, text.encode("utf-8"))
    return out / TABLE, out / CHART
