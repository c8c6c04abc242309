"""The lm-eval suites' part of a run directory: a markdown section and one chart per suite.

Why apart from report.py: the bench report is per generalization level and category, the suites
are the paper's flat task tables (Tab 9, Tab 14), with their preset's choices printed under them
so a reader sees what differs from the paper next to the numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from optiml_plugin.eval.report import _fmt, bar_chart


def _table(suite: Mapping[str, Any]) -> Dict[str, Dict[int, float]]:
    table: Dict[str, Dict[int, float]] = {}
    for r in suite["tasks"]:
        table.setdefault(r["task"], {})[r["shots"]] = r["score"]
    return table


def markdown(results: Mapping[str, Any]) -> str:
    """'## lm-eval suites' with one table per suite (tasks x shots, then Avg); '' without suites."""
    suites = results.get("suites") or {}
    if not suites:
        return ""
    lines = ["## lm-eval suites", ""]
    for name, s in suites.items():
        preset = s["preset"]
        shots = list(preset["shots"])
        lines += [f"### {preset['title']}", "",
                  f"model `{s.get('model', '?')}`, preset `{name}` ({preset['source']}), "
                  f"lm-eval {s['lm_eval_version']}"
                  + (f", first {s['limit']} documents per task" if s.get("limit") else ""), "",
                  "| task | lm-eval task | metric | n | " + " | ".join(f"{k}-shot" for k in shots) + " |",
                  "|---" * (4 + len(shots)) + "|"]
        meta = {r["task"]: r for r in s["tasks"]}
        for task, by_shot in _table(s).items():
            r = meta[task]
            lines.append(f"| {task} | {r['lmeval_task']} | {r['metric']} | {r['n']} | "
                         + " | ".join(_fmt(by_shot.get(k)) for k in shots) + " |")
        avg = {a["shots"]: a for a in s["average"]}
        lines.append("| **Avg** | | | | " + " | ".join(
            "–" if k not in avg else f"**{_fmt(avg[k]['score'])}**" + (
                "" if avg[k]["complete"] else f" ({avg[k]['tasks']}/{len(preset['tasks'])} tasks)")
            for k in shots) + " |")
        notes = [("Failed (not in the table or the average)",
                  [f"{f['task']} ({f['lmeval_task']}), {f['shots']}-shot: {f['error']}" for f in s["failed"]]),
                 ("Chosen where the paper is silent", preset["chosen"]),
                 ("Differs from the paper", preset["differences"])]
        for head, items in notes:
            if items:
                lines += ["", f"{head}:", ""] + [f"- {x}" for x in items]
        lines.append("")
    return "\n".join(lines) + "\n"


def charts(results: Mapping[str, Any], out_dir: Path) -> List[str]:
    """One bar chart per suite: task scores, one bar per shot count."""
    written = []
    for name, s in (results.get("suites") or {}).items():
        table = _table(s)
        avg = {a["shots"]: a["score"] for a in s["average"]}
        written.append(bar_chart(out_dir / f"chart_suite_{name}.png",
                                 f"{results['model_id']}: {s['preset']['title']}",
                                 "score (lm-eval metric x100)", list(table) + ["Avg"], list(s["preset"]["shots"]),
                                 lambda t, k, table=table, avg=avg: table[t].get(k) if t in table else avg.get(k)))
    return written
