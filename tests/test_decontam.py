from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from optiml_plugin.bench.decontam import (EvalNgrams, ExactInputFilter, NgramHasher, normalize_many,
                                         normalize_text, source_conflicts)


def words(rng: random.Random, n: int) -> str:
    return " ".join(f"w{rng.randint(0, 10_000)}" for _ in range(n))


def ngram_overlap(train_texts, eval_texts, n=13, min_fraction=0.0):
    """Every (train task, eval task) pair above `min_fraction` through the build's `EvalNgrams` index,
    sorted by (eval task, train task) order of the inputs (the build does the same, task by task)."""
    index = EvalNgrams(n)
    for key, texts in eval_texts.items():
        index.add(key, len(texts), index.hashes(texts))
    index.freeze()
    order = {key: i for i, key in enumerate(eval_texts)}
    found = [(order[p.eval_task], t, p) for t, key in enumerate(train_texts)
             for p in index.pairs(key, train_texts[key], min_fraction)]
    return [p for _, _, p in sorted(found, key=lambda x: (x[0], x[1]))]


def brute_force(train, evals, n):
    def grams(text):
        toks = normalize_text(text).split()
        return {tuple(toks)} if 0 < len(toks) < n else {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}
    out = {}
    for tk, ttexts in train.items():
        tg = set().union(*(grams(t) for t in ttexts)) if ttexts else set()
        for ek, etexts in evals.items():
            hit = sum(1 for e in etexts if grams(e) & tg)
            if hit:
                out[(tk, ek)] = hit
    return out


def test_normalize_text():
    assert normalize_text("  Hello,   WORLD!\n(yes) ") == "hello world yes"


def test_source_conflicts_normalized_and_allowed():
    train = {"t1": ["SQuAD v1", "wiki"], "t2": ["copa"], "t3": ["wikipedia"]}
    evals = {"e1": ["squad_v1"], "e2": ["wikipedia"]}
    assert source_conflicts(train, evals) == {"t1": ["SQuAD v1"], "t3": ["wikipedia"]}
    assert source_conflicts(train, evals, allowed=["Wikipedia"]) == {"t1": ["SQuAD v1"]}


def test_exact_input_filter():
    f = ExactInputFilter()
    f.add_all(["What is  2 + 2?", "  "])
    assert f.matches_all(["what is 2 2", "what is 2 3", "", "WHAT is 2+2"]) == [True, False, False, True]


def test_normalize_many_equals_normalize_text():
    texts = ["A\nb,  C!", "", "x\ue000y", "Ünïcode — dash_under"]
    assert normalize_many(texts) == [normalize_text(t) for t in texts]
    assert normalize_many(texts[:2] + texts[3:]) == [normalize_text(t) for t in texts[:2] + texts[3:]]


def test_ngram_overlap_finds_shared_13gram_and_fraction():
    rng = random.Random(0)
    shared = words(rng, 13)
    train = {"t": [f"{words(rng, 5)} {shared} {words(rng, 3)}", words(rng, 30)], "u": [words(rng, 40)]}
    evals = {"e": [f"x {shared} y", words(rng, 20), words(rng, 20), words(rng, 20)]}
    pairs = ngram_overlap(train, evals, n=13)
    assert [(p.train_task, p.eval_task, p.overlapping, p.eval_instances) for p in pairs] == [("t", "e", 1, 4)]
    assert pairs[0].fraction == 0.25
    assert ngram_overlap(train, evals, n=13, min_fraction=0.25) == []
    # 12 shared tokens are not a 13-gram
    evals12 = {"e": [" ".join(shared.split()[:12]) + " zz"]}
    assert ngram_overlap(train, evals12, n=13) == []


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 6))
def test_ngram_overlap_matches_brute_force(seed, n):
    rng = random.Random(seed)
    vocab = [f"v{i}" for i in range(8)]  # small vocabulary: many real overlaps

    def text():
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12)))
    train = {f"t{i}": [text() for _ in range(rng.randint(0, 4))] for i in range(3)}
    evals = {f"e{i}": [text() for _ in range(rng.randint(1, 4))] for i in range(3)}
    got = {(p.train_task, p.eval_task): p.overlapping for p in ngram_overlap(train, evals, n=n)}
    assert got == brute_force(train, evals, n)


def test_hasher_unique_pairs_and_short_texts():
    h = NgramHasher(3)
    hashes, owners = h.hashes(["a b c a b c", "a b", "", "a b c"])
    assert sorted(set(owners.tolist())) == [0, 1, 3]
    assert len(hashes[owners == 0]) == 3  # abc, bca, cab
    assert set(hashes[owners == 3].tolist()) <= set(hashes[owners == 0].tolist())


def test_build_removes_flagged_training_tasks_writes_the_review_file_and_counts_removals(tmp_path):
    import json

    from optiml_plugin.bench.build import build_bench, load_build_config
    from optiml_plugin.bench.decontam import REVIEW_FILE
    from optiml_plugin.bench.records import Record

    def recs(task, n, inputs):
        return [Record(benchmark="b", task=task, category=task.upper(), sources=(task,), instruction="Do it.",
                       input=inputs(i), outputs=(f"out {i}",), id=f"{task}-{i}") for i in range(n)]

    long = "the quick brown fox jumps over the lazy dog near the river bank today again"
    records = (recs("train_c", 20, lambda i: f"{long} {i}") + recs("train_d", 20, lambda i: f"plain {i}")
               + recs("eval_y", 4, lambda i: [long, "a", "b", "c"][i]))

    def build(out, **dc):
        raw = {"sources": [{"type": "builtin"}], "seed": 3, "decontamination": dc,
               "split": {"heldout_tasks": ["eval_y"], "heldout_valid": 0, "heldout_test": 0}}
        return build_bench(load_build_config(raw), tmp_path / out, records=records, progress=False)

    m = build("drop", drop_flagged=True, threshold=0.01)
    ngram = m["decontamination"]["ngram"]
    assert ngram["dropped_tasks"] == ["train_c"] and ngram["pairs_file"] == REVIEW_FILE
    assert {t["task"] for t in m["tasks"]} == {"train_d", "eval_y"}
    assert m["accounting"]["removed"] == {"ngram_overlap": 20} and m["accounting"]["balanced"]
    [pair] = [json.loads(line) for line in (tmp_path / "drop" / REVIEW_FILE).read_text().splitlines()]
    assert (pair["train_task"], pair["eval_task"], pair["fraction"], pair["action"]) == (
        "train_c", "eval_y", 0.25, "removed_train_task")
    # both sides of the pair and the 13-grams they share, so a reviewer can judge it from the file
    [shown] = pair["examples"]
    assert shown["eval"] == {"id": "eval_y-0", "text": shown["eval"]["text"]} and long in shown["eval"]["text"]
    assert shown["train"]["id"].startswith("train_c-") and long in shown["train"]["text"]
    assert "the quick brown fox jumps over the lazy dog near the river bank" in shown["shared_13grams"]
    assert all(g in normalize_text(shown["train"]["text"]) and g in normalize_text(shown["eval"]["text"])
               for g in shown["shared_13grams"]) and len(shown["shared_13grams"]) >= 1
    assert ngram["flagged"] == [{k: v for k, v in pair.items() if k != "examples"}]
    # a pair a review cleared stays, reported as cleared; reporting only removes nothing
    m = build("cleared", drop_flagged=True, allowed_pairs=["train_c/eval_y"])
    assert m["decontamination"]["ngram"]["flagged"][0]["action"] == "cleared"
    assert "ngram_overlap" not in m["accounting"]["removed"]
    m = build("report", drop_flagged=False)
    assert m["decontamination"]["ngram"]["flagged"][0]["action"] == "reported"
    assert {t["task"] for t in m["tasks"]} == {"train_c", "train_d", "eval_y"}
