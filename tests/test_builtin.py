from __future__ import annotations

from collections import Counter, defaultdict

from optiml_plugin.data.build import build_bench, load_build_config
from optiml_plugin.data.builtin import HELDOUT_CATEGORY, HELDOUT_TASKS, builtin_config, builtin_records


def test_builtin_records_deterministic_and_shaped():
    a = list(builtin_records(0))
    assert a == list(builtin_records(0))
    assert [r.input for r in a] != [r.input for r in builtin_records(1)]
    by_cat = defaultdict(set)
    for r in a:
        assert not r.problems() and r.instruction
        assert len((r.instruction + " " + r.input).split()) < 40 and len(r.outputs[0].split()) <= 8
        by_cat[r.category].add(r.task)
    assert len(by_cat) == 8 and all(len(t) == 5 for t in by_cat.values())
    with_candidates = {r.task for r in a if r.candidates}
    assert 10 <= len(with_candidates) < 40
    for r in a:
        if r.candidates:
            assert r.outputs[0] in r.candidates
    assert len({r.id for r in a}) == len(a)


def test_rules_are_right_on_samples():
    recs = {r.task: r for r in builtin_records(0)}
    r = recs["reverse_words"]
    assert r.outputs[0] == " ".join(reversed(r.input.split()))
    r = recs["larger_number"]
    a, b = (int(x) for x in r.input.split(" or "))
    assert r.outputs[0] == str(max(a, b))
    r = recs["parity"]
    assert r.outputs[0] == ("even" if int(r.input.split()[-1]) % 2 == 0 else "odd")


def test_labels_are_roughly_balanced_for_candidate_tasks():
    labels = defaultdict(Counter)
    for r in builtin_records(0):
        if r.candidates and len(r.candidates) == 2 and r.category != HELDOUT_CATEGORY:
            labels[r.task][r.outputs[0]] += 1
    for task, c in labels.items():
        assert min(c.values()) / sum(c.values()) > 0.3, task


def test_builtin_bench_has_all_three_levels(tmp_path):
    m = build_bench(load_build_config(builtin_config()), tmp_path / "b", progress=False)
    levels = {t["task"]: t["level"] for t in m["tasks"]}
    assert {levels[t] for t in HELDOUT_TASKS} == {"heldout_tasks"}
    assert Counter(levels.values())["heldout_categories"] == 5
    s = m["splits"]
    assert s["train"]["tasks"] >= 30 and s["train"]["examples"] / s["train"]["tasks"] > 250
    assert s["valid_heldout_instances"]["examples"] >= 20 * 30
    for split in ("valid_heldout_tasks", "test_heldout_tasks", "valid_heldout_categories",
                  "test_heldout_categories"):
        assert s[split]["examples"] == 20 * s[split]["tasks"] > 0
    assert m["accounting"]["balanced"]
