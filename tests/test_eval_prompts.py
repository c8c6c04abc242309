"""k-shot prompts: the paper's format (one delimiter, placement, dropping from the front), Tk-Instruct's
SNI format (checked against the official collator's renderings of real SNI tasks), demo sources."""
from __future__ import annotations

import hashlib

import pytest

import eval_support as S
from optiml_plugin.bench.sources import load_source
from optiml_plugin.bench.templates import render
from optiml_plugin.errors import BadRecordPolicy
from optiml_plugin.eval.prompts import (Demo, Pool, build_prompt, demo_indices, demonstration,
                                        sni_demos, row_template, split_instruction)


def _rows(n, task="t", bench="niv2", delimiter="\nAnswer:"):
    rows = [S.row(bench, "QA", task, "train", i, "Name the color.", f"input {i}", [f"out {i}"])
            for i in range(n)]
    for r in rows:
        r["src"] = r["src"][:-len("\nAnswer:")] + delimiter
    return rows


def _demos(rows):
    return [Demo.from_row(r) for r in rows]


def _paper(row, demos, task_level, separator="\n\n", fits=lambda t: True):
    return build_prompt(row, demos, task_level, "paper", separator, fits)


def test_zero_shot_is_the_rendered_prompt():
    r = _rows(1)[0]
    for task_level in (True, False):
        for fmt in ("paper", "sni"):
            if fmt == "paper" or not task_level:
                assert build_prompt(r, [], task_level, fmt, "\n\n", lambda t: True).text == r["src"]


def test_task_level_puts_demonstrations_between_instruction_and_example_with_one_delimiter():
    target = _rows(1)[0]
    demos = _demos(_rows(3, delimiter=" A:")[1:])  # demonstrations drawn with another delimiter
    p = _paper(target, demos, True)
    assert p.text == ("Name the color.\n\ninput 1\nAnswer: out 1\n\ninput 2\nAnswer: out 2"
                      "\n\ninput 0\nAnswer:")
    assert p.text.count("Name the color.") == 1 and " A:" not in p.text and p.format == "paper"
    header, gap, body = split_instruction(target, True)
    assert header + gap + body == target["src"]
    assert row_template(target) == (False, "\nAnswer:")


def test_instance_level_puts_full_demonstrations_before_the_example():
    rows = _rows(3, bench="flan", delimiter="\nOutput:")
    demos = _demos(_rows(3, bench="flan", delimiter=" Answer:")[1:])
    text = _paper(rows[0], demos, False, "\n###\n").text
    template = (False, "\nOutput:")
    assert text == "\n###\n".join([demonstration(demos[0], False, template),
                                   demonstration(demos[1], False, template), rows[0]["src"]])
    assert demonstration(demos[0], False, template) == "Name the color.\n\ninput 1\nOutput: out 1"
    # a row whose src is not the bench's rendering keeps each demonstration's own rendering
    odd = dict(rows[0], src="Q: input 0\nA:")
    assert row_template(odd) is None
    assert _paper(odd, demos[:1], False).text == demos[0].src + " out 1\n\nQ: input 0\nA:"


def test_demonstrations_follow_the_targets_options_block():
    cands = ["red", "blue"]
    with_opts = S.row("flan", "QA", "t", "test", 0, "Name the color.", "sky", ["blue"], cands)
    demo = Demo.from_row(S.row("flan", "QA", "t", "train", 1, "Name the color.", "sea", ["blue"], cands))
    assert row_template(with_opts) == (True, "\nAnswer:")
    assert _paper(with_opts, [demo], False).text.count("OPTIONS:") == 2
    # a prompt rendered without the block (PromptSource's own text): demonstrations without it too
    bare = dict(with_opts, src="Name the color.\n\nsky A:")
    assert row_template(bare) == (False, " A:")
    assert _paper(bare, [demo], False).text == "Name the color.\n\nsea A: blue\n\nName the color.\n\nsky A:"


def test_demonstrations_dropped_from_the_front_until_they_fit():
    rows = _rows(5)
    demos = _demos(rows[1:])
    limit = len(_paper(rows[0], demos[2:], True).text)
    p = _paper(rows[0], demos, True, fits=lambda t: len(t) <= limit)
    assert p.dropped == 2 and p.demo_ids == (rows[3]["id"], rows[4]["id"])
    nothing_fits = _paper(rows[0], demos, True, fits=lambda t: False)
    assert nothing_fits.text == rows[0]["src"] and nothing_fits.dropped == 4


def test_demo_draw_is_deterministic_and_nests():
    pool = Pool(size=6, get=lambda i: {})
    five = demo_indices(pool, 5, seed=0, key="b/t", instance_id="id0")
    assert len(set(five)) == 5 and demo_indices(pool, 5, 0, "b/t", "id0") == five
    assert demo_indices(pool, 2, 0, "b/t", "id0") == five[:2]
    assert sorted(demo_indices(pool, 9, 0, "b/t", "x")) == list(range(6))  # short pool: all of it
    draws = {tuple(demo_indices(pool, 3, s, "b/t", "x")) for s in range(8)}
    assert len(draws) > 1  # the seed matters


def test_sni_format_by_hand():
    row = {"src": "ignored", "instruction": " Say the color ", "input": "sky?", "tgt": "blue"}
    demos = sni_demos([{"input": "grass", "output": "green!"}, {"input": "sun", "output": "yellow"},
                            {"input": "x", "output": "y"}], 2)
    p = build_prompt(row, demos, True, "sni", "\n\n", lambda t: True)
    assert p.text == ("Definition: Say the color.\n\n"
                      " Positive Example 1 -\nInput: grass.\n Output: green!\n\n"
                      " Positive Example 2 -\nInput: sun.\n Output: yellow.\n\n"
                      "Now complete the following example -\nInput: sky?\nOutput: ")
    assert p.demo_ids == ("positive_example_1", "positive_example_2") and p.format == "sni"
    # examples are added while they fit; the first that does not fit ends the list (Tk-Instruct)
    one = build_prompt(row, demos, True, "sni", "\n\n", lambda t: "Example 2" not in t)
    assert one.demo_ids == ("positive_example_1",) and one.dropped == 1
    # the sni format is for task-level benchmarks; instance-level rows keep the paper format
    flan = _rows(1, bench="flan")[0]
    assert build_prompt(flan, [], False, "sni", "\n\n", lambda t: True).format == "paper"


# sha256 and length of the source text that Tk-Instruct's DataCollatorForNI (yizhongw/Tk-Instruct
# src/ni_collator.py, text_only=True, add_task_definition=True, num_pos_examples=k, no negative
# examples, max_source_length=100000) renders for Instances[i] of the real SNI task file, run in a
# scratch directory with transformers' GPT2TokenizerFast.
TK_RENDERED = [
    ("task1557_jfleg_answer_generation", 0, 0, 310, "d7809d4fa784728dab6d4e969ed6dba30d9f4eb1fd86c6282c899354f09e58d5"),
    ("task1557_jfleg_answer_generation", 2, 0, 511, "6f360a8d88f48a09c75deb91f4f8eb1688665b70f1c8066b1667365524eb5541"),
    ("task1557_jfleg_answer_generation", 5, 0, 583, "ac3d031fe8489c0990762f03ea7c3d5389ee6473c729dc159635e71cbd01cda2"),
    ("task190_snli_classification", 0, 1, 519, "94f6f3983b17ccf9ce090d75d7e07ec792cf9401d7bb138f8ac616c462cf081f"),
    ("task190_snli_classification", 2, 0, 809, "43def1713b2fdfbc8f770bff35dacbdb25ec8142c8945d76c78da9ee29f0a9eb"),
    ("task190_snli_classification", 5, 1, 1296, "45ad3b6fbb4c9d70000c2ca7017b682794e312e895f89e59a744d8589a8f3e02"),
    ("task050_multirc_answerability", 2, 0, 1081, "5c86d80af7a09c6d5a212dd1a0f6fcf65a05ac12919f271a001b50e8197d1b63"),
    ("task050_multirc_answerability", 5, 0, 1081, "5c86d80af7a09c6d5a212dd1a0f6fcf65a05ac12919f271a001b50e8197d1b63"),
]


@pytest.fixture(scope="module")
def sni_records(sni_dir):
    records = {}
    for task in sorted({t for t, *_ in TK_RENDERED}):
        spec = {"type": "sni", "path": f"tasks/{task}.json"}
        records[task] = list(load_source(spec, BadRecordPolicy("error"), base_dir=sni_dir))
    return records


@pytest.mark.parametrize("task,k,i,length,digest", TK_RENDERED)
def test_sni_format_equals_tk_instruct_on_real_sni_tasks(sni_records, task, k, i, length, digest):
    record = sni_records[task][i]
    rendered = render(record, seed=0)
    row = {"src": rendered.src, "tgt": rendered.tgt, "instruction": record.instruction,
           "input": record.input, "candidates": None}
    demos = sni_demos(record.meta["positive_examples"], k)
    text = build_prompt(row, demos, True, "sni", "\n\n", lambda t: True).text
    assert len(text) == length and hashlib.sha256(text.encode("utf-8")).hexdigest() == digest
    if k == 0:  # a bench built with `prompt_format: sni` trains on the very same 0-shot prompt
        assert render(record, seed=0, prompt_format="sni").src == text
    # the paper format of the same demonstrations: one delimiter, the definition once
    paper = build_prompt(row, demos, True, "paper", "\n\n", lambda t: True).text
    if k:
        assert paper.count(record.instruction.strip()) == 1
        assert paper.count(rendered.delimiter) == len(demos) + 1


def test_sni_negative_examples_and_explanations_by_hand():
    row = {"src": "ignored", "instruction": "Say the color", "input": "sky", "tgt": "blue"}
    pos = sni_demos([{"input": "grass", "output": "green", "explanation": "Grass is green"},
                     {"input": "sun", "output": "yellow"}], 2)
    neg = sni_demos([{"input": "snow", "output": "black", "explanation": "Snow is white."}], 2,
                    "negative")
    p = build_prompt(row, pos, True, "sni", "\n\n", lambda t: True, neg, explanations=True)
    assert p.text == ("Definition: Say the color.\n\n"
                      " Positive Example 1 -\nInput: grass.\n Output: green.\n Explanation: Grass is green.\n\n"
                      " Positive Example 2 -\nInput: sun.\n Output: yellow.\n\n"
                      " Negative Example 1 -\nInput: snow.\n Output: black.\n Explanation: Snow is white.\n\n"
                      "Now complete the following example -\nInput: sky.\nOutput: ")
    assert p.demo_ids == ("positive_example_1", "positive_example_2", "negative_example_1")
    assert "Explanation" not in build_prompt(row, pos, True, "sni", "\n\n", lambda t: True, neg).text
    # the negative list stops at its own first example that does not fit; the positives stay
    short = build_prompt(row, pos, True, "sni", "\n\n", lambda t: "Negative" not in t, neg, True)
    assert short.demo_ids == ("positive_example_1", "positive_example_2") and short.dropped == 1


# Tk-Instruct's DataCollatorForNI (yizhongw/Tk-Instruct 7c0e400, src/ni_collator.py, text_only=True,
# add_task_definition=True), run in a scratch directory with transformers' GPT2TokenizerFast on OPT's
# BPE files over EVERY instance of the 30 real SNI sample task files (sorted by file name, instances in
# file order): (num_pos_examples, num_neg_examples, add_explanation, max_source_length) -> instances,
# sha256 of the renderings joined by NUL bytes. At 512 tokens some examples do not fit and are left out
# (no rendering is cut: each fits in 512 tokens).
TK_ENCODINGS = [
    (2, 0, False, 100000, 1350, "f9d9d1a8a4f86a0df384f6b8e758136a7db5da3eaa139274c0b3f563f611756f"),
    (2, 0, True, 100000, 1350, "56e619acf2140215b2862f9c6cd6cc1c0130cc789e691d3f7ed89da30646c929"),
    (2, 2, False, 100000, 1350, "bde2d1903e9438d631b2547a5455387ad392ca3470623664f07177c2a5dec84c"),
    (2, 2, True, 100000, 1350, "ba16f3581711c9f4ada303ce71842b259e23d2404ba08373730d76e5e61638c5"),  # pos_2_neg_2_expl
    (5, 3, True, 100000, 1350, "8a849b40fa9f8753f655d236d024bc39df15a3ff274e06d67fa35d270bc7a91e"),
    (2, 2, True, 512, 1350, "c5c19e457025b04d571829b999aabb4954e62cb6fa2c456834547ace74adab74"),
]


@pytest.fixture(scope="module")
def all_sni_records(sni_dir):
    spec = {"type": "sni", "path": "tasks/*.json"}
    records = list(load_source(spec, BadRecordPolicy("error"), base_dir=sni_dir))
    return sorted(records, key=lambda r: r.task)  # file order within a task (stable sort)


@pytest.mark.parametrize("k,negatives,explanations,limit,count,digest", TK_ENCODINGS)
def test_sni_format_with_negatives_and_explanations_equals_tk_instruct_on_every_sample_instance(
        all_sni_records, opt_bpe_dir, k, negatives, explanations, limit, count, digest):
    from optiml_plugin.data.tokenizer import OptTokenizer

    encode = OptTokenizer.from_dir(opt_bpe_dir).encode

    def fits(text):  # byte-level BPE: never more tokens than bytes, so short texts need no encoding
        return len(text.encode("utf-8")) <= limit or len(encode(text)) <= limit

    h = hashlib.sha256()
    for r in all_sni_records:
        row = {"src": "", "instruction": r.instruction, "input": r.input}
        p = build_prompt(row, sni_demos(r.meta["positive_examples"], k), True, "sni", "\n\n", fits,
                         sni_demos(r.meta["negative_examples"], negatives, "negative"), explanations)
        h.update(p.text.encode("utf-8") + b"\0")
    assert len(all_sni_records) == count and h.hexdigest() == digest
