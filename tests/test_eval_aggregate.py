"""Aggregation arithmetic: instance -> task -> across benchmarks -> category -> level -> selection."""
from __future__ import annotations

import pytest

from optiml_plugin.eval.aggregate import aggregate


def rec(shots, level, bench, cat, task, score, kind="generate"):
    m = {"accuracy": score} if kind == "rank" else {"rougeL": score, "exact_match": 0.0}
    return {"shots": shots, "level": level, "benchmark": bench, "category": cat, "task": task,
            "score": score, "kind": kind, "metrics": m}


def test_paper_aggregation_by_hand():
    L = "heldout_categories"
    records = [
        # task "nli" in two benchmarks: flan mean 50, promptsource mean 100 -> task 75
        rec(0, L, "flan", "NLI", "nli", 0.0, "rank"), rec(0, L, "flan", "NLI", "nli", 100.0, "rank"),
        rec(0, L, "promptsource", "NLI", "nli", 100.0, "rank"),
        # sub-tasks wino_a (mean 20) and wino_b (mean 40) merge into "wino" = 30
        rec(0, L, "flan", "NLI", "wino_a", 10.0), rec(0, L, "flan", "NLI", "wino_a", 30.0),
        rec(0, L, "flan", "NLI", "wino_b", 40.0),
        # another category: one task = 60
        rec(0, L, "niv2", "Coref", "c1", 60.0),
        # 5-shot: NLI = 80, Coref = 20
        rec(5, L, "flan", "NLI", "nli", 80.0, "rank"), rec(5, L, "niv2", "Coref", "c1", 20.0),
        # another level
        rec(0, "heldout_tasks", "niv2", "QA", "q", 10.0),
    ]
    agg = aggregate(records, {"wino_a": "wino", "wino_b": "wino"}, extra={(0, L, "niv2", "c1"): {"bleu": 7.0}})
    bt = {(t["shots"], t["benchmark"], t["task"]): t for t in agg["benchmark_tasks"]}
    assert bt[(0, "flan", "nli")]["score"] == 50.0 and bt[(0, "flan", "nli")]["metric"] == "accuracy"
    assert bt[(0, "flan", "wino")]["score"] == 30.0 and bt[(0, "flan", "wino")]["subtasks"] == ["wino_a", "wino_b"]
    assert bt[(0, "flan", "wino")]["n"] == 3 and bt[(0, "niv2", "c1")]["metrics"]["bleu"] == 7.0
    tasks = {(t["shots"], t["task"]): t for t in agg["tasks"]}
    assert tasks[(0, "nli")]["score"] == 75.0 and tasks[(0, "nli")]["benchmarks"] == ["flan", "promptsource"]
    cats = {(c["shots"], c["level"], c["category"]): c["score"] for c in agg["categories"]}
    assert cats[(0, L, "NLI")] == pytest.approx((75 + 30) / 2)
    assert cats[(0, L, "Coref")] == 60.0 and cats[(5, L, "NLI")] == 80.0
    lv = {(r["shots"], r["level"]): r["score"] for r in agg["levels"]}
    assert lv[(0, L)] == pytest.approx((52.5 + 60) / 2) and lv[(5, L)] == pytest.approx(50.0)
    assert lv[(0, "heldout_tasks")] == 10.0
    sel = agg["model_selection"]
    assert sel["per_level"][L] == pytest.approx((52.5 + 60 + 80 + 20) / 4)
    assert sel["overall"] == pytest.approx((52.5 + 60 + 80 + 20 + 10) / 5)


def test_instance_means_beside_task_means_each_labeled():
    """Identical instance scores: the paper's macro mean and the official instance mean differ."""
    L = "heldout_tasks"
    records = ([rec(0, L, "niv2", "QA", "big", 90.0) for _ in range(9)] + [rec(0, L, "niv2", "QA", "small", 10.0)]
               + [rec(0, L, "niv2", "Title", "t", 50.0)])
    for r in records[:10]:
        r["track"] = "default"
    records[-1]["track"] = "xlingual"
    agg = aggregate(records)
    assert set(agg["averaging"]) >= {"categories", "levels", "instance_means", "model_selection"}
    assert "instances" in agg["averaging"]["instance_means"] and "tasks" in agg["averaging"]["categories"]
    cats = {c["category"]: c["score"] for c in agg["categories"]}
    assert cats["QA"] == pytest.approx(50.0)  # (90 + 10) / 2 tasks
    inst = agg["instance_means"]
    icats = {c["category"]: c for c in inst["categories"]}
    assert icats["QA"]["score"] == pytest.approx((9 * 90 + 10) / 10) and icats["QA"]["n"] == 10
    assert icats["QA"]["metrics"]["exact_match"] == 0.0
    (overall,) = inst["overall"]
    assert overall["score"] == pytest.approx((9 * 90 + 10 + 50) / 11)
    assert agg["levels"][0]["score"] == pytest.approx(50.0)  # mean of categories 50 and 50
    tracks = {t["track"]: t["n"] for t in inst["tracks"]}
    assert tracks == {"default": 10, "xlingual": 1}
