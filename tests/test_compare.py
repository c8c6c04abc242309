"""`optiml compare`: eval runs side by side per level, category and shots, with intervals."""
from __future__ import annotations

import json

from optiml_plugin.cli import main
from optiml_plugin.eval.aggregate import aggregate


def _run_dir(path, accuracy_by_task, predictions=True):
    """An eval run directory as `optiml eval` writes it, from per-task 0/100 scores."""
    recs = []
    for (level, cat, task), scores in accuracy_by_task.items():
        for shots in (0, 2):
            recs += [{"id": f"{task}-{i}", "benchmark": "b", "task": task, "category": cat, "level": level,
                      "shots": shots, "kind": "rank", "score": float(s), "references": ["yes"],
                      "candidates": ["yes", "no"], "metrics": {"accuracy": float(s)}} for i, s in enumerate(scores)]
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"model_id": path.name, "aggregate": aggregate(recs)}))
    if predictions:
        (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def test_compare_writes_one_column_per_run_and_a_chart(tmp_path, capsys):
    tasks = {("heldout_tasks", "A", "t1"): [100] * 18 + [0] * 2, ("heldout_categories", "B", "t2"): [100, 0] * 10}
    eps = _run_dir(tmp_path / "eps_128", tasks)
    base = _run_dir(tmp_path / "eps_4096", {k: [0] * 10 + [100] * 10 for k in tasks}, predictions=False)
    out = tmp_path / "cmp"
    assert main(["compare", str(eps), str(base / "results.json"), "--names", "EPS 128,EPS 4096",
                 "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "| level | shots | EPS 128 | EPS 4096 |" in md
    lines = md.splitlines()
    tasks_row = next(line for line in lines if line.startswith("| heldout_tasks | 0 |"))
    assert "90.00 [" in tasks_row and tasks_row.rstrip().endswith("| 50.00 |")   # interval only with predictions
    assert lines.index(tasks_row) < lines.index(next(x for x in lines if x.startswith("| heldout_categories | 0")))
    assert "| heldout_categories | B | 2 | 50.00 | 50.00 |" in md and "![levels per run](compare.png)" in md
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out


def test_compare_rejects_bad_inputs(tmp_path, capsys):
    (tmp_path / "x.json").write_text("{}")
    assert main(["compare", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")]) == 2
    assert "no 'aggregate'" in capsys.readouterr().err
    run = _run_dir(tmp_path / "r", {("heldout_tasks", "A", "t"): [100]})
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "o")]) == 2
    assert "same name" in capsys.readouterr().err
    assert main(["compare", str(run), "--names", "a,b", "--out", str(tmp_path / "o")]) == 2
