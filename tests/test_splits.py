from __future__ import annotations

import pytest

from optiml_plugin.bench.splits import (EVAL, LEVEL_CATEGORIES, LEVEL_TASKS, TRAIN, SplitConfig, TaskInfo,
                                       assign_levels, assign_roles, cap_indices, eval_draw, split_eval_instances,
                                       split_train_instances)
from optiml_plugin.errors import BadRecordError, BadRecordPolicy

TASKS = {
    ("niv2", "qa1"): TaskInfo(("niv2", "qa1"), "Question Answering", ("squad",), 50),
    ("niv2", "qa2"): TaskInfo(("niv2", "qa2"), "Question Answering", ("race",), 50),
    ("niv2", "te1"): TaskInfo(("niv2", "te1"), "Textual Entailment", ("snli",), 50),
    ("niv2", "te2"): TaskInfo(("niv2", "te2"), "Textual Entailment", ("mnli",), 50),
    ("niv2", "sum1"): TaskInfo(("niv2", "sum1"), "Summarization", ("cnn",), 50),
    ("niv2", "tr1"): TaskInfo(("niv2", "tr1"), "Translation", ("wmt",), 50),
    ("p3", "gen"): TaskInfo(("p3", "gen"), "Summarization", ("xsum",), 50),
    ("niv2", "misc"): TaskInfo(("niv2", "misc"), "Misc.", ("misc",), 50),
}


def plan(cfg, sni=None, mode="error"):
    return assign_roles(TASKS, cfg, sni, BadRecordPolicy(mode))


def test_roles_from_sni_lists_heldout_tasks_and_categories():
    sni = {"train": ["qa1", "qa2", "te1"], "test": ["sum1"], "excluded": ["tr1"]}
    cfg = SplitConfig(heldout_categories=("textual entailment",), heldout_tasks=("qa2",))
    p = plan(cfg, sni)
    assert p.dropped == {("niv2", "tr1"): "sni_excluded"}
    assert p.roles == {("niv2", "qa1"): TRAIN, ("niv2", "qa2"): EVAL, ("niv2", "te1"): EVAL,
                       ("niv2", "te2"): EVAL, ("niv2", "sum1"): EVAL, ("p3", "gen"): TRAIN,
                       ("niv2", "misc"): TRAIN}
    assert p.unlisted == [("niv2", "misc")]  # an SNI task in no list trains; p3 tasks are not SNI's
    levels = assign_levels(p.roles, {k: v.category for k, v in TASKS.items()}, cfg.heldout_categories)
    assert levels[("niv2", "qa2")] == LEVEL_TASKS          # QA still trained through qa1
    assert levels[("niv2", "te1")] == LEVEL_CATEGORIES     # listed held-out category
    assert levels[("niv2", "sum1")] == LEVEL_TASKS         # p3's summarization task trains
    assert levels[("niv2", "qa1")] == "train"


def test_category_without_training_task_is_fully_held_out():
    roles = {("b", "x"): EVAL, ("b", "y"): TRAIN}
    cats = {("b", "x"): "Rare", ("b", "y"): "Common"}
    assert assign_levels(roles, cats, ())[("b", "x")] == LEVEL_CATEGORIES


@pytest.mark.parametrize("cfg,reason", [
    (SplitConfig(heldout_tasks=("nope",)), "listed_task_absent"),
    (SplitConfig(valid_tasks=("nope",)), "listed_task_absent"),
    (SplitConfig(heldout_categories=("Astrology",)), "unknown_category"),
])
def test_bad_plan_entries_error_or_count(cfg, reason):
    with pytest.raises(BadRecordError) as e:
        plan(cfg)
    assert e.value.reason == reason and ("nope" in str(e.value) or "Astrology" in str(e.value))
    problems = BadRecordPolicy("skip")
    assign_roles(TASKS, cfg, None, problems)
    assert problems.skipped == {reason: 1}


def one_each(n):
    """Example numbers of `n` rows that are each their own example."""
    return list(range(n))


def test_eval_sets_drawn_as_the_paper_draws_them():
    cfg = SplitConfig(eval_valid=5, eval_test=3, test_tasks_give_valid=True)
    rows = one_each(20)
    # SNI test: the first N in file order; valid: a seeded random draw from the rest
    valid, test = split_eval_instances(rows, rows, cfg, False, 0, ("niv2", "t"))
    assert test == [0, 1, 2] and len(valid) == 5 and min(valid) >= 3 and valid == sorted(valid)
    assert len({tuple(split_eval_instances(rows, rows, cfg, False, s, ("niv2", "t"))[0]) for s in range(4)}) > 1
    assert split_eval_instances(rows, rows, cfg, False, 0, ("niv2", "t")) == (valid, test)  # reproducible
    assert split_eval_instances([0, 1], [0, 1], cfg, False, 0, ("niv2", "t")) == ([], [0, 1])
    # FLAN / PromptSource test: every prompt and example
    for bench in ("flan", "PromptSource"):
        assert split_eval_instances(rows, rows, cfg, False, 0, (bench, "t")) == ([], list(range(20)))
    # valid tasks: a random sample of all their prompts merged
    v, t = split_eval_instances(one_each(40), one_each(40), cfg, True, 0, ("flan", "t"))
    assert t == [] and len(v) == 5 and v != list(range(5))
    draw = eval_draw(cfg)
    assert "first 3" in draw["test"] and "flan" in draw["test"] and "5 instances" in draw["valid"]


def test_test_tasks_give_no_valid_rows_by_default():
    """The paper's dev tasks are apart from its test tasks: a test task has no valid rows."""
    rows = one_each(20)
    cfg = SplitConfig(eval_valid=5, eval_test=3)
    assert split_eval_instances(rows, rows, cfg, False, 0, ("niv2", "t")) == ([], [0, 1, 2])
    assert len(split_eval_instances(rows, rows, cfg, True, 0, ("niv2", "t"))[0]) == 5  # a dev task
    assert "test tasks give no valid" in eval_draw(cfg)["valid"]


def test_eval_draws_keep_examples_whole_and_use_only_usable_rows():
    # 4 templates x 6 examples, rows grouped by template as P3 files are; rows 0-3 are train-split rows
    groups = [e for _ in range(4) for e in range(6)]
    usable = list(range(4, 24))
    cfg = SplitConfig(eval_valid=50, eval_test=2, test_tasks_give_valid=True)
    valid, test = split_eval_instances(groups, usable, cfg, False, 0, ("niv2", "t"))
    assert {groups[i] for i in test} == {4, 5}  # the first two examples of the usable rows, every rendering
    assert len(test) == 8 and not {groups[i] for i in test} & {groups[i] for i in valid}
    assert set(valid) | set(test) == set(usable)


def test_train_instances_seeded_disjoint_and_bounded():
    cfg = SplitConfig(heldout_valid=10, heldout_test=10)
    a = split_train_instances(one_each(100), cfg, 1, ("b", "t"))
    assert a == split_train_instances(one_each(100), cfg, 1, ("b", "t"))
    assert a != split_train_instances(one_each(100), cfg, 2, ("b", "t"))
    train, valid, test = a
    assert (len(valid), len(test)) == (10, 10)
    assert sorted(train + valid + test) == list(range(100))
    small = split_train_instances(one_each(12), cfg, 1, ("b", "t"))
    assert [len(x) for x in small] == [6, 3, 3]  # at most a quarter each


def test_train_holdout_draws_examples_with_all_their_renderings():
    groups = [e for _ in range(12) for e in range(40)]  # 12 templates x 40 examples
    train, valid, test = split_train_instances(groups, SplitConfig(heldout_valid=3, heldout_test=2), 4, ("b", "t"))
    sides = [{groups[i] for i in part} for part in (train, valid, test)]
    assert [len(s) for s in sides] == [35, 3, 2] and len(test) == 24 and len(valid) == 36
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])


def test_cap_indices_seeded_subset_in_order():
    idx = list(range(0, 200, 2))
    kept = cap_indices(idx, 10, 5, ("b", "t"))
    assert len(kept) == 10 and kept == sorted(kept) and set(kept) <= set(idx)
    assert kept == cap_indices(idx, 10, 5, ("b", "t")) and kept != cap_indices(idx, 10, 6, ("b", "t"))
    assert cap_indices(idx, 1000, 5, ("b", "t")) == idx
