"""The run directory: results.json, predictions.jsonl, results.md and one PNG chart per level.

Why files and not just stdout: checkpoints are compared after the fact, and the paper's tables are
per level and category, so the markdown mirrors them and the JSON keeps every number and the config.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from optiml_plugin.conventions import LEVELS
from optiml_plugin.benchfiles import atomic_write_bytes, dumps_line, normalize_name
from optiml_plugin.fsio import save_figure

RESULTS = "results.json"
PREDICTIONS = "predictions.jsonl"
TABLE = "results.md"


def default_run_dir(model: Union[str, Path], split: str, root: Union[str, Path] = "eval_runs") -> Path:
    """`<root>/<parent>_<model>_<split>_<UTC time>`, created here so no other run takes it.

    Why the parent and the time: every trained model is `.../final`, and a second evaluation must never
    overwrite the first one's results; two runs in the same second get `-2`, `-3`, ..."""
    path = Path(model).expanduser().resolve()
    name = "_".join(normalize_name(p) for p in path.parts[-2:] if p not in ("/", ""))
    stem = f"{name}_{split}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    Path(root).mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        out = Path(root) / (stem if n == 1 else f"{stem}-{n}")
        try:
            out.mkdir()
            return out
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}/{stem}: 999 runs in one second")


def read_predictions(run_dir: Path) -> List[Dict[str, Any]]:
    """The instance records of a run directory (what `write_run` wrote to predictions.jsonl)."""
    with open(Path(run_dir) / PREDICTIONS, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _finite(obj: Any) -> Any:
    """JSON has no NaN: undefined means become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _levels(rows: Iterable[Mapping[str, Any]]) -> List[str]:
    """Levels present, in the paper's order (supervised -> fully held out)."""
    order = {lv: i for i, lv in enumerate(LEVELS)}
    return sorted({r["level"] for r in rows}, key=lambda lv: (order.get(lv, len(order)), lv))


def _fmt(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def _interval_table(rows: List[Mapping[str, Any]]) -> List[str]:
    """Level scores with 95% bootstrap intervals, chance, and the gain over chance (eval/intervals.py)."""
    if not rows:
        return []
    ci = "[{:.1f}, {:.1f}]".format
    lines = ["", "95% bootstrap intervals over instances; chance: a uniform pick among the options, or for "
             "generation the reference of another instance of the task.", "",
             "| level | shots | n | score [95% interval] | chance | gain over chance [95% interval] |",
             "|---|---|---|---|---|---|"]
    order = {lv: i for i, lv in enumerate(_levels(rows))}
    for r in sorted(rows, key=lambda r: (order[r["level"]], r["shots"])):
        lines.append(f"| {r['level']} | {r['shots']} | {r['n']} | {r['score']:.1f} {ci(*r['ci'])} | "
                     f"{r['chance']:.1f} | {r['gain_over_chance']:.1f} {ci(*r['gain_over_chance_ci'])} |")
    return lines


def _official_table(official: Optional[Mapping[str, Any]]) -> List[str]:
    """The official SNI script's numbers: per benchmark and Rouge-L track over all levels, then per
    category within each track (the script never averages the two tracks together)."""
    if not official or not official["overall"]:
        return []
    lines = ["## Per Rouge-L track (official SNI averaging: instances of all levels)", "",
             "| benchmark | track | shots | n | Rouge-L | EM | instances per level |", "|---|---|---|---|---|---|---|"]
    for r in official["overall"]:
        levels = ", ".join(f"{lv} {n}" for lv, n in r["levels"].items())
        lines.append(f"| {r['benchmark']} | {r['track']} | {r['shots']} | {r['n']} | {_fmt(r['score'])} | "
                     f"{_fmt(r['metrics'].get('exact_match'))} | {levels} |")
    lines += ["", "| benchmark | track | shots | category | n | Rouge-L | EM |", "|---|---|---|---|---|---|---|"]
    for r in official["categories"]:
        lines.append(f"| {r['benchmark']} | {r['track']} | {r['shots']} | {r['category']} | {r['n']} | "
                     f"{_fmt(r['score'])} | {_fmt(r['metrics'].get('exact_match'))} |")
    return lines + [""]


def markdown(results: Mapping[str, Any]) -> str:
    """Level x shots table, then categories per level, then tasks; then the lm-eval suites."""
    from optiml_plugin.eval import suite_report

    if "aggregate" not in results:  # a run of lm-eval suites only
        return f"# Evaluation of `{results['model_id']}`\n\n" + suite_report.markdown(results)
    agg = results["aggregate"]
    shots = sorted({r["shots"] for r in agg["levels"]})
    head = "| | " + " | ".join(f"{k}-shot" for k in shots) + " |\n|---|" + "---|" * len(shots) + "\n"
    lines = [f"# Evaluation of `{results['model_id']}`", "",
             f"bench `{results['config']['bench']}`, split `{results['config']['split']}`, "
             f"{results['counts']['instances']} instances", "", "## Generalization levels", "", head.rstrip()]
    lv = {(r["level"], r["shots"]): r["score"] for r in agg["levels"]}
    for level in _levels(agg["levels"]):
        lines.append(f"| {level} | " + " | ".join(_fmt(lv.get((level, k))) for k in shots) + " |")
    lines += _interval_table(results.get("intervals") or [])
    sel = agg["model_selection"]
    lines += ["", f"Model selection (mean over categories of all shot counts): **{_fmt(sel['overall'])}**", ""]
    inst = {(r["level"], r["shots"]): r["score"] for r in agg.get("instance_means", {}).get("overall", [])}
    if inst:  # the official SNI script's averaging, beside the paper's macro means above
        lines += ["Mean over instances (as SNI's official script averages):", "", head.rstrip()]
        for level in _levels({"level": lv} for lv, _ in inst):
            lines.append(f"| {level} | " + " | ".join(_fmt(inst.get((level, k))) for k in shots) + " |")
        lines.append("")
    lines += _official_table(agg.get("official"))
    cat = {(r["level"], r["category"], r["shots"]): r["score"] for r in agg["categories"]}
    for level in _levels(agg["categories"]):
        lines += [f"## {level}: categories", "", head.rstrip()]
        for c in sorted({r["category"] for r in agg["categories"] if r["level"] == level}):
            lines.append(f"| {c} | " + " | ".join(_fmt(cat.get((level, c, k))) for k in shots) + " |")
        lines.append("")
    lines += ["## Tasks (per benchmark)", "",
              "| level | benchmark | category | task | metric | n | " + " | ".join(f"{k}-shot" for k in shots)
              + " | EM (0-shot) |", "|---" * (6 + len(shots) + 1) + "|"]
    tasks: Dict[tuple, Dict[int, Mapping[str, Any]]] = {}
    for t in agg["benchmark_tasks"]:
        tasks.setdefault((t["level"], t["benchmark"], t["category"], t["task"]), {})[t["shots"]] = t
    for key in sorted(tasks):
        by_shot = tasks[key]
        any_t = next(iter(by_shot.values()))
        em = by_shot.get(shots[0], any_t)["metrics"].get("exact_match")
        lines.append("| " + " | ".join(key) + f" | {any_t['metric']} | {any_t['n']} | "
                     + " | ".join(_fmt(by_shot[k]["score"]) if k in by_shot else "–" for k in shots)
                     + f" | {_fmt(em)} |")
    suites = suite_report.markdown(results)
    return "\n".join(lines) + "\n" + (f"\n{suites}" if suites else "")


def bar_chart(path: Path, title: str, ylabel: str, labels: List[str], shots: List[int],
              value: Callable[[str, int], Optional[float]]) -> str:
    """Grouped bars: one group per label, one bar per shot count; returns the file name."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(labels) + 2), 3.5))
    width = 0.8 / max(len(shots), 1)
    for j, k in enumerate(shots):
        xs = [i + j * width for i in range(len(labels))]
        ax.bar(xs, [value(c, k) or 0.0 for c in labels], width=width, label=f"{k}-shot")
    ax.set_xticks([i + width * (len(shots) - 1) / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path.name


def charts(results: Mapping[str, Any], out_dir: Path) -> List[str]:
    """One bar chart per level: category scores, one bar per shot count."""
    if "aggregate" not in results:
        return []
    agg = results["aggregate"]
    shots = sorted({r["shots"] for r in agg["categories"]})
    written = []
    for level in _levels(agg["categories"]):
        cats = sorted({r["category"] for r in agg["categories"] if r["level"] == level})
        score = {(r["category"], r["shots"]): r["score"] for r in agg["categories"] if r["level"] == level}
        written.append(bar_chart(out_dir / f"chart_{level}.png", f"{results['model_id']}: {level}",
                                 "score (accuracy / Rouge-L)", cats, shots,
                                 lambda c, k, score=score: score.get((c, k))))
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def interval_chart(path: Path, groups: Sequence[str], series: Sequence[Tuple[str, Sequence[Optional[float]],
              Sequence[Optional[Sequence[float]]]]], title: str, chance: Optional[Sequence[float]] = None,
              ylabel: str = "score (accuracy / Rouge-L)") -> str:
    """Grouped bars (one group per level or category, one bar per series) with 95% intervals as error
    bars and chance as a dashed mark over each group; the legend sits below the axes, off the bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(groups) * max(1, len(series)) / 2 + 2.5), 4.2))
    width = 0.8 / max(len(series), 1)
    for j, (label, values, cis) in enumerate(series):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        err = [[max(0.0, y - ci[0]) if ci else 0.0 for y, ci in zip(ys, cis)],
               [max(0.0, ci[1] - y) if ci else 0.0 for y, ci in zip(ys, cis)]]
        bars = ax.bar(xs, ys, width=width * 0.95, yerr=err, capsize=3, label=label)
        for bar, v, top in zip(bars, values, [y + e for y, e in zip(ys, err[1])]):
            if v is not None:
                ax.annotate(f"{v:.1f}", (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=7)
    for i, c in enumerate(chance or []):
        ax.hlines(c, i - 0.45, i + 0.45, colors="black", linestyles="dashed",
                  label="chance" if i == 0 else None)
    ax.set_xticks(range(len(groups)))
    tilt = len(groups) > 8
    ax.set_xticklabels(groups, rotation=20 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylim(0, 109)   # room for the value labels over a full bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    lines = max(g.count("\n") for g in groups) + 1 if groups else 1
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08 - 0.06 * lines - 0.1 * tilt),
              ncol=min(4, len(series) + 1), frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path.name


def write_run(results: Dict[str, Any], predictions: Iterable[Mapping[str, Any]], out_dir: Path,
              with_charts: bool = True) -> Dict[str, str]:
    """Write every report file atomically; returns {kind: file name}."""
    from optiml_plugin.eval.intervals import level_intervals

    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = list(predictions)
    results["intervals"] = level_intervals(predictions, seed=int(results.get("config", {}).get("seed", 0)))
    atomic_write_bytes(out_dir / PREDICTIONS, b"".join(dumps_line(_finite(dict(p))) for p in predictions))
    for stale in written_charts(out_dir):  # an earlier run's charts must not pass for this run's
        stale.unlink()
    return write_summary(results, out_dir, with_charts)


def written_charts(out_dir: Path) -> List[Path]:
    """The charts an earlier run wrote into `out_dir`, as its results.json lists them (a chart the user
    put there is never in that list, so it is never deleted)."""
    try:
        listed = json.loads((out_dir / RESULTS).read_text(encoding="utf-8")).get("files", {}).get("charts", "")
    except (OSError, ValueError, AttributeError):
        return []
    names = [n.strip() for n in str(listed).split(",") if n.strip()]
    return [out_dir / n for n in names if n.startswith("chart_") and "/" not in n and (out_dir / n).is_file()]


def write_summary(results: Dict[str, Any], out_dir: Path, with_charts: bool = True) -> Dict[str, str]:
    """results.md, the charts and results.json (predictions.jsonl, if any, is left as it is)."""
    from optiml_plugin.eval import suite_report

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"table": TABLE, "results": RESULTS}
    if (out_dir / PREDICTIONS).is_file():
        files["predictions"] = PREDICTIONS
    if with_charts:
        files["charts"] = ", ".join(charts(results, out_dir) + suite_report.charts(results, out_dir))
    results["files"] = files
    atomic_write_bytes(out_dir / TABLE, markdown(results).encode("utf-8"))
    atomic_write_bytes(out_dir / RESULTS, (json.dumps(_finite(results), indent=1, ensure_ascii=False)
                                           + "\n").encode("utf-8"))
    return files
