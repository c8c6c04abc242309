from __future__ import annotations

import random
from collections import Counter, defaultdict

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.builtin import (COLORS, HELDOUT_CATEGORY, HELDOUT_CATEGORY_TASKS, HELDOUT_NOTES,
                                         HELDOUT_TASK_LIST, HELDOUT_TASKS, KINDS, TASKS, TRAIN_TASKS,
                                         builtin_config, builtin_records)


def test_builtin_records_deterministic_and_shaped():
    a = list(builtin_records(0))
    assert a == list(builtin_records(0))
    assert [r.input for r in a] != [r.input for r in builtin_records(1)]
    by_cat = defaultdict(set)
    for r in a:
        assert not r.problems() and r.instruction and r.outputs[0]
        assert len((r.instruction + " " + r.input).split()) < 30 and len(r.outputs[0].split()) <= 5
        by_cat[r.category].add(r.task)
    assert len(by_cat) == 7 and all(len(t) >= 2 for t in by_cat.values())
    with_candidates = {r.task for r in a if r.candidates}
    assert len(with_candidates) == 11 and all(r.outputs[0] in r.candidates for r in a if r.candidates)
    assert len({r.id for r in a}) == len(a)


def test_rules_are_right_on_samples():
    recs = {r.task: r for r in builtin_records(0)}
    words = recs["reverse"].input.split()
    assert recs["reverse"].outputs[0] == " ".join(reversed(words))
    r = recs["foods_then_reverse"]
    assert r.instruction == "Keep only the foods. Then write the words in reverse order."
    assert r.outputs[0].split() == [w for w in reversed(r.input.split()) if w in KINDS["food"]]
    r = recs["kind_of_last"]
    assert r.input.split()[-1] in KINDS[r.outputs[0]] and r.candidates == tuple(KINDS)
    yes = [x for x in builtin_records(0) if x.task == "has_thing" and x.outputs[0] == "yes"]
    assert yes and all(set(x.input.split()) & set(KINDS["thing"]) for x in yes)
    r = recs["which_color"]
    assert [w for w in r.input.split() if w in COLORS] == [r.outputs[0]]
    assert sorted(r.candidates) == sorted(r.input.split())


def _inputs(task, n=200):
    rng = random.Random(task.name)
    return [task.sample(rng) for _ in range(n)]


def test_held_out_tasks_are_new_tasks_not_reworded_training_tasks():
    """By construction: no held-out task shares an operation or an instruction with a training task, and on
    the held-out task's own inputs every training operation gives a different answer most of the time (so
    none is a reworded training task, as a reordered label list or a renamed question would be)."""
    held = HELDOUT_TASK_LIST + HELDOUT_CATEGORY_TASKS
    assert {t.op for t in held}.isdisjoint({t.op for t in TRAIN_TASKS})
    assert {p for t in held for p in t.phrasings}.isdisjoint({p for t in TRAIN_TASKS for p in t.phrasings})
    assert {t.name for t in held} == set(HELDOUT_NOTES) and len(TASKS) == len(TRAIN_TASKS) + len(held)
    for h in held:
        inputs = _inputs(h)
        answers = [h.answer(w) for w in inputs]
        for t in TRAIN_TASKS:
            agree = sum(_safe(t.answer, w) == a for w, a in zip(inputs, answers)) / len(inputs)
            assert agree <= 0.65, (h.name, t.name, agree)
        nearest, _ = HELDOUT_NOTES[h.name]
        assert nearest in {t.name for t in TRAIN_TASKS}


def _safe(answer, words):
    try:
        return answer(words)
    except StopIteration:   # e.g. "which word is a food" on a list without a food: no answer
        return None


def test_held_out_levels_have_several_tasks_and_their_words_are_trained():
    """What makes transfer possible: every word of a held-out instruction occurs in training instructions,
    and each held-out level holds several tasks (a level carried by one task says little)."""
    vocab = {w.strip(".?,:").lower() for t in TRAIN_TASKS for p in t.phrasings for w in p.split()}
    for t in HELDOUT_TASK_LIST + HELDOUT_CATEGORY_TASKS:
        words = {w.strip(".?,:").lower() for p in t.phrasings for w in p.split()}
        assert words - vocab <= {"then", "things"}, (t.name, words - vocab)
    assert len(HELDOUT_TASK_LIST) >= 3 and len({t.category for t in HELDOUT_TASK_LIST}) >= 2
    assert len(HELDOUT_CATEGORY_TASKS) >= 3 and {t.category for t in HELDOUT_CATEGORY_TASKS} == {HELDOUT_CATEGORY}
    assert HELDOUT_CATEGORY not in {t.category for t in TRAIN_TASKS}


def test_builtin_bench_has_all_three_levels(tmp_path):
    m = build_bench(load_build_config(builtin_config()), tmp_path / "b", progress=False)
    levels = {t["task"]: t["level"] for t in m["tasks"]}
    assert {levels[t] for t in HELDOUT_TASKS} == {"heldout_tasks"}
    assert Counter(levels.values())["heldout_categories"] == len(HELDOUT_CATEGORY_TASKS)
    s = m["splits"]
    assert s["train"]["tasks"] == len(TRAIN_TASKS) and s["train"]["examples"] / s["train"]["tasks"] > 250
    assert s["valid_heldout_instances"]["examples"] == 20 * s["train"]["tasks"]
    for split in ("valid_heldout_tasks", "test_heldout_tasks", "valid_heldout_categories",
                  "test_heldout_categories"):
        assert s[split]["examples"] == 40 * s[split]["tasks"] > 0
    assert m["accounting"]["balanced"]


def test_labels_are_roughly_balanced_for_yes_no_tasks():
    labels = defaultdict(Counter)
    for r in builtin_records(0):
        if r.candidates == ("yes", "no"):
            labels[r.task][r.outputs[0]] += 1
    assert labels and all(min(c.values()) / sum(c.values()) > 0.3 for c in labels.values())
