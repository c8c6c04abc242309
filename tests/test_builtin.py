from __future__ import annotations

from collections import Counter, defaultdict

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.builtin import (COLORS, HELDOUT_CATEGORY, HELDOUT_TASKS, KINDS, TASKS, builtin_config,
                                        builtin_records)


def test_builtin_records_deterministic_and_shaped():
    a = list(builtin_records(0))
    assert a == list(builtin_records(0))
    assert [r.input for r in a] != [r.input for r in builtin_records(1)]
    by_cat = defaultdict(set)
    for r in a:
        assert not r.problems() and r.instruction and r.outputs[0]
        assert len((r.instruction + " " + r.input).split()) < 30 and len(r.outputs[0].split()) <= 5
        by_cat[r.category].add(r.task)
    assert len(by_cat) == 8 and all(len(t) >= 2 for t in by_cat.values())
    with_candidates = {r.task for r in a if r.candidates}
    assert len(with_candidates) == 15 and all(r.outputs[0] in r.candidates for r in a if r.candidates)
    assert len({r.id for r in a}) == len(a)


def test_rules_are_right_on_samples():
    recs = {r.task: r for r in builtin_records(0)}
    words = recs["reverse"].input.split()
    assert recs["reverse"].outputs[0] == " ".join(reversed(words))
    r = recs["last_then_plural"]
    assert r.instruction == "Keep only the last word. Then add the letter s to every word."
    assert r.outputs[0] == r.input.split()[-1] + "s"
    r = recs["word_kind"]
    assert r.candidates == tuple(KINDS) and [r.input] == r.input.split() and r.input in KINDS[r.outputs[0]]
    r = recs["first_kind_reordered"]
    assert r.input.split()[0] in KINDS[r.outputs[0]] and r.instruction.endswith("a color or an animal?")
    yes = [x for x in builtin_records(0) if x.task == "word_is_food" and x.outputs[0] == "yes"]
    assert yes and all(x.input in KINDS["food"] for x in yes)
    r = recs["which_color"]
    assert [w for w in r.input.split() if w in COLORS] == [r.outputs[0]]
    assert sorted(r.candidates) == sorted(r.input.split())


def test_held_out_tasks_and_category_are_answerable_from_trained_instruction_words():
    """What makes transfer possible: every held-out instruction is built from words and operations that
    training covers in other combinations; the held-out category asks for the kind of a single word, which
    training covers only for words in lists ("Is the first word an animal, ...?")."""
    tasks = {task: (cat, " ".join(phrasings)) for cat, task, phrasings, _ in TASKS}
    trained = [instr for t, (cat, instr) in tasks.items() if cat != HELDOUT_CATEGORY and t not in HELDOUT_TASKS]
    vocab = {w.strip(".?,:").lower() for instr in trained for w in instr.split()}
    held = [t for t, (cat, _) in tasks.items() if cat == HELDOUT_CATEGORY or t in HELDOUT_TASKS]
    assert len(held) == len(HELDOUT_TASKS) + 4
    for t in held:   # the kind words are trained; only a question word may be new
        words = {w.strip(".?,:").lower() for w in tasks[t][1].split()}
        assert words & set(KINDS) and words - vocab <= {"this", "what"}, (t, words - vocab)
    assert {tasks[t][0] for t in HELDOUT_TASKS}.isdisjoint({HELDOUT_CATEGORY})
    assert all(any(tasks[o][0] == tasks[t][0] for o in tasks if o not in held) for t in HELDOUT_TASKS)


def test_builtin_bench_has_all_three_levels(tmp_path):
    m = build_bench(load_build_config(builtin_config()), tmp_path / "b", progress=False)
    levels = {t["task"]: t["level"] for t in m["tasks"]}
    assert {levels[t] for t in HELDOUT_TASKS} == {"heldout_tasks"}
    assert Counter(levels.values())["heldout_categories"] == 4
    s = m["splits"]
    assert s["train"]["tasks"] == len(TASKS) - 6 and s["train"]["examples"] / s["train"]["tasks"] > 250
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
