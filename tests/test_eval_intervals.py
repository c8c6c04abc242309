"""Bootstrap intervals, chance and verdicts on hand-made instance records."""
from __future__ import annotations

import pytest

from optiml_plugin.eval.aggregate import aggregate
from optiml_plugin.eval.intervals import chance_scores, level_intervals, verdict


def rec(task, i, score, level="heldout_tasks", category="C", shots=0, kind="rank", refs=("yes",),
        cands=("yes", "no"), bench="b"):
    r = {"id": f"{task}-{i}", "benchmark": bench, "task": task, "category": category, "level": level,
         "shots": shots, "kind": kind, "score": float(score), "references": list(refs),
         "metrics": {"accuracy": float(score)}}
    if kind == "rank":
        r["candidates"] = list(cands)
    return r


def records(scores_by_task, **kw):
    return [rec(t, i, s, category=c, **kw) for (c, t), scores in scores_by_task.items()
            for i, s in enumerate(scores)]


def test_point_is_the_papers_level_score_and_the_interval_holds_it():
    recs = records({("A", "t1"): [100] * 30 + [0] * 10, ("A", "t2"): [0, 100] * 10,
                    ("B", "t3"): [100] * 5 + [0] * 15})
    row, = level_intervals(recs, seed=3)
    paper = aggregate(recs)["levels"][0]["score"]
    assert row["score"] == pytest.approx(paper) and row["n"] == 80
    assert row["ci"][0] < row["score"] < row["ci"][1]
    fixed, = level_intervals(recs, seed=3, resample_tasks=False)   # these three tasks disagree (75/50/25)
    assert fixed["score"] == row["score"] and fixed["ci"][1] - fixed["ci"][0] < 30 < row["ci"][1] - row["ci"][0]
    assert row["chance"] == pytest.approx(50.0)
    assert level_intervals(recs, seed=3) == [row] and level_intervals(recs, seed=4) != [row]


def test_chance_of_options_and_of_generation():
    gen = [rec("g", i, 0, kind="generate", refs=(ref,)) for i, ref in enumerate(["a b", "a b", "c d", "e f"])]
    chance = chance_scores(gen + [rec("r", 0, 0, cands=("yes", "no", "maybe"))])
    assert chance[("b", "r", "r-0")] == pytest.approx(100 / 3)
    # "a b" against the three others: once identical (100), twice disjoint (0)
    assert chance[("b", "g", "g-0")] == pytest.approx(100 / 3)
    assert chance[("b", "g", "g-2")] == pytest.approx(0.0)


def test_paired_gain_over_a_baseline_and_the_verdicts():
    strong = records({("A", "t1"): [100] * 36 + [0] * 4, ("B", "t2"): [100] * 34 + [0] * 6})
    weak = records({("A", "t1"): [0, 100] * 20, ("B", "t2"): [100, 0] * 20})
    row, = level_intervals(strong, baseline=weak, seed=0)
    assert row["baseline"] == pytest.approx(50.0) and row["gain_over_baseline"] == pytest.approx(37.5)
    assert row["gain_over_baseline_ci"][0] > 0 and row["gain_over_chance_ci"][0] > 0
    assert verdict(row).startswith("shown:")
    same, = level_intervals(weak, baseline=weak, seed=0)
    assert same["gain_over_baseline_ci"] == [0.0, 0.0]
    assert verdict(same).startswith("not shown:") and "not distinguishable from untrained" in verdict(same)
    assert "below chance" in verdict(level_intervals(records({("A", "t"): [0] * 20}))[0])


def test_baseline_on_other_instances_gives_no_paired_gain():
    a = records({("A", "t1"): [100] * 10})
    b = [dict(r, id="other-" + r["id"]) for r in a]
    row, = level_intervals(a, baseline=b)
    assert "gain_over_baseline" not in row and row["baseline_unpaired"]
    assert verdict(row).startswith("not shown:") and "above chance" in verdict(row)
    assert verdict(row).endswith("not compared with untrained (it scored other instances)")


def _width(row, key="ci"):
    return row[key][1] - row[key][0]


def test_the_task_level_interval_widens_when_tasks_disagree():
    """Same level score (70) and instance counts; in one bench every task scores 70, in the other two tasks
    score 100 and two 40: resampling tasks shows that disagreement, resampling instances alone does not."""
    agree = records({("A", f"t{k}"): [100] * 28 + [0] * 12 for k in range(4)})
    disagree = records({("A", "t0"): [100] * 40, ("A", "t1"): [100] * 16 + [0] * 24,
                        ("A", "t2"): [100] * 40, ("A", "t3"): [100] * 16 + [0] * 24})
    calm, = level_intervals(agree, seed=1)
    split, = level_intervals(disagree, seed=1)
    fixed, = level_intervals(disagree, seed=1, resample_tasks=False)
    assert calm["score"] == split["score"] == fixed["score"] == pytest.approx(70.0)
    assert split["resampled"] == "tasks, then instances" and split["tasks"] == 4
    assert fixed["resampled"] == "instances"
    assert _width(split) > 2 * _width(calm) and _width(split) > 2 * _width(fixed)
    assert _width(split, "gain_over_chance_ci") > 2 * _width(fixed, "gain_over_chance_ci")
    # one task carrying a gain: the instance interval of the gain excludes 0, the task-level one does not
    base = records({("A", f"t{k}"): [0, 100] * 20 for k in range(4)})
    one = records({("A", "t0"): [100] * 40, **{("A", f"t{k}"): [0, 100] * 20 for k in (1, 2, 3)}})
    by_task, = level_intervals(one, baseline=base, seed=2)
    by_inst, = level_intervals(one, baseline=base, seed=2, resample_tasks=False)
    assert by_inst["gain_over_baseline_ci"][0] > 0 >= by_task["gain_over_baseline_ci"][0]
