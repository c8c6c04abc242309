"""`optiml bench stats`: what a bench holds, per benchmark, category and level, as text and a PNG.

Why: before training on a bench a user needs to see its composition (how much of each benchmark,
which categories are held out, how the decontamination changed it) without opening the manifest.
Reads the manifest, and checks every file against its index and its manifest count (a stat and a few
bytes per file), so a truncated or edited bench is reported here rather than mid-training.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from optiml_plugin.conventions import LEVEL_CATEGORIES, LEVEL_TASKS, LEVEL_TRAIN, SPLITS
from optiml_plugin.benchfiles import Bench
from optiml_plugin.errors import OptimlError
from optiml_plugin.fsio import save_figure

LEVEL_ORDER = (LEVEL_TRAIN, LEVEL_TASKS, LEVEL_CATEGORIES)


def composition(bench: Bench) -> List[Dict[str, Any]]:
    """One row per (benchmark, category, level): task count and examples per split."""
    rows: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    for t in bench.manifest["tasks"]:
        key = (t["benchmark"], t["category"], t["level"])
        row = rows.setdefault(key, {"benchmark": key[0], "category": key[1], "level": key[2],
                                    "tasks": 0, "counts": defaultdict(int)})
        row["tasks"] += 1
        for split, n in t["counts"].items():
            row["counts"][split] += int(n)
    out = []
    for key in sorted(rows, key=lambda k: (k[0], LEVEL_ORDER.index(k[2]) if k[2] in LEVEL_ORDER else 9, k[1])):
        row = rows[key]
        row["counts"] = {s: row["counts"].get(s, 0) for s in SPLITS}
        out.append(row)
    return out


def check_files(bench: Bench, verify: bool = True) -> List[str]:
    """One message per damaged task file (missing, truncated, index mismatch, row count changed; with
    `verify`, every index entry against its row, else only the last row, where a truncation shows)."""
    problems = []
    for split in bench.splits():
        for tf in bench.task_files(split):
            try:
                reader = bench.reader(tf)
                if verify:
                    reader.verify()
                elif len(reader):
                    reader[len(reader) - 1]
            except OptimlError as e:
                problems.append(str(e))
    bench.close()
    return problems


def format_stats(bench: Bench) -> str:
    """A fixed-width table of `composition` plus split totals and the build accounting."""
    rows = composition(bench)
    short = {s: s.replace("heldout_", "").replace("instances", "inst").replace("categories", "cats")
             for s in SPLITS}
    head = ["benchmark", "category", "level", "tasks"] + [short[s] for s in SPLITS]
    table = [head] + [[r["benchmark"], r["category"], r["level"], str(r["tasks"])]
                      + [str(r["counts"][s]) for s in SPLITS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in table]
    lines.insert(1, "-" * len(lines[0]))
    m = bench.manifest
    lines.append("")
    lines.append("splits: " + ", ".join(f"{s}={v['examples']} ({v['tasks']} task{'s' if v['tasks'] != 1 else ''})"
                                        for s, v in m["splits"].items() if v["tasks"]))
    acc = m.get("accounting", {})
    lines.append(f"accounting: read={acc.get('read')} kept={acc.get('kept')} skipped={acc.get('skipped')} "
                 f"removed={acc.get('removed')} balanced={acc.get('balanced')}")
    flagged = m.get("decontamination", {}).get("ngram", {}).get("flagged", [])
    lines.append(f"n-gram overlap pairs above threshold: {len(flagged)}")
    return "\n".join(lines)


def plot_composition(bench: Bench, png: Union[str, Path]) -> Path:
    """Horizontal stacked bars: examples per category, one color per split (Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = composition(bench)
    labels = [f"{r['benchmark']} / {r['category']} [{r['level']}]" for r in rows]
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(rows) + 1.5)))
    left = [0] * len(rows)
    for split in SPLITS:
        values = [r["counts"][split] for r in rows]
        if any(values):
            ax.barh(range(len(rows)), values, left=left, label=split)
            left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("examples")
    ax.set_title(f"bench composition: {bench.root.name}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    png = save_figure(fig, chart_path(png), dpi=100)
    plt.close(fig)
    return png


def chart_path(png: Union[str, Path]) -> Path:
    """The file the chart goes to: `png` itself, `png`/composition.png for a folder, and with `.png` added to a
    name without a suffix (matplotlib would add it, and the caller would name a file it did not write)."""
    png = Path(png)
    if png.is_dir():
        return png / "composition.png"
    return png if png.suffix else png.with_name(png.name + ".png")
