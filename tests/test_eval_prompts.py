"""k-shot prompts: zero-shot is `src`, deterministic demonstrations, placement, dropping from the front."""
from __future__ import annotations

import test_eval_support as S
from optiml_plugin.eval.prompts import Pool, build_prompt, demo_indices, demonstration, split_instruction


def _rows(n, task="t", bench="niv2"):
    return [S.row(bench, "QA", task, "train", i, "Name the color.", f"input {i}", [f"out {i}"])
            for i in range(n)]


def test_zero_shot_is_the_rendered_prompt():
    r = _rows(1)[0]
    for task_level in (True, False):
        assert build_prompt(r, [], task_level, "\n\n", lambda t: True).text == r["src"]


def test_task_level_puts_demonstrations_between_instruction_and_example():
    rows = _rows(3)
    target, demos = rows[0], rows[1:]
    text = build_prompt(target, demos, True, "\n\n", lambda t: True).text
    assert text == ("Name the color.\n\ninput 1\nAnswer: out 1\n\ninput 2\nAnswer: out 2"
                    "\n\ninput 0\nAnswer:")
    assert text.count("Name the color.") == 1
    header, gap, body = split_instruction(target, True)
    assert header + gap + body == target["src"]


def test_instance_level_puts_full_demonstrations_before_the_example():
    rows = _rows(3, bench="flan")
    text = build_prompt(rows[0], rows[1:], False, "\n###\n", lambda t: True).text
    assert text == "\n###\n".join([demonstration(rows[1], False), demonstration(rows[2], False),
                                   rows[0]["src"]])
    assert demonstration(rows[1], False) == rows[1]["src"] + " out 1"


def test_demonstrations_dropped_from_the_front_until_they_fit():
    rows = _rows(5)
    limit = len(build_prompt(rows[0], rows[3:], True, "\n\n", lambda t: True).text)
    p = build_prompt(rows[0], rows[1:], True, "\n\n", lambda t: len(t) <= limit)
    assert p.dropped == 2 and p.demo_ids == (rows[3]["id"], rows[4]["id"])
    nothing_fits = build_prompt(rows[0], rows[1:], True, "\n\n", lambda t: False)
    assert nothing_fits.text == rows[0]["src"] and nothing_fits.dropped == 4


def test_demo_draw_is_deterministic_excludes_self_and_nests():
    pool = Pool(size=6, get=lambda i: {}, same_file=True)
    for own in range(6):
        five = demo_indices(pool, 5, seed=0, key="b/t", instance_id=f"id{own}", own_index=own)
        assert own not in five and len(set(five)) == 5
        assert demo_indices(pool, 5, 0, "b/t", f"id{own}", own) == five
        assert demo_indices(pool, 2, 0, "b/t", f"id{own}", own) == five[:2]
    assert demo_indices(pool, 9, 0, "b/t", "x", 0) != []  # short pool: all 5 others
    assert len(demo_indices(pool, 9, 0, "b/t", "x", 0)) == 5
    draws = {tuple(demo_indices(pool, 3, s, "b/t", "x", 0)) for s in range(8)}
    assert len(draws) > 1  # the seed matters
    train = Pool(size=3, get=lambda i: {}, same_file=False)
    assert sorted(demo_indices(train, 3, 0, "b/t", "x", 0)) == [0, 1, 2]  # index 0 of another file is fine
