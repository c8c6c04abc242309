from __future__ import annotations

from collections import Counter

from optiml_plugin.data.records import Record
from optiml_plugin.data.templates import DELIMITERS, format_options, render, render_prompt


def rec(i: int = 0, instruction: str = "Classify the review.", input: str = "great food", candidates=None,
        outputs=("positive",)) -> Record:
    return Record(benchmark="b", task="t", category="c", sources=("s",), instruction=instruction,
                  input=input, outputs=tuple(outputs), id=f"t-{i}", candidates=candidates)


def test_delimiters_are_the_papers_eight():
    assert len(DELIMITERS) == 8 and len(set(DELIMITERS)) == 8
    assert "\noutput:" in DELIMITERS and " A:" in DELIMITERS


def test_instruction_input_options_delimiter_and_target():
    r = render(rec(candidates=("positive", "negative"), outputs=("positive", "good")), seed=3)
    body = "Classify the review.\n\ngreat food\n\nOPTIONS:\n- positive\n- negative"
    assert r.src == body + r.delimiter and r.delimiter in DELIMITERS
    assert r.tgt == "positive"


def test_no_delimiter_when_prompt_ends_with_colon():
    r = render(rec(instruction="Answer the question.", input="Question: what is 2+2? Answer:"), seed=0)
    assert r.delimiter == "" and r.src.endswith("Answer:")
    assert render_prompt("Say it:", "", None, "\nA:") == "Say it:"


def test_text_record_has_empty_source():
    r = render(rec(instruction="", input="", outputs=("a whole document",)), seed=0)
    assert (r.src, r.tgt) == ("", "a whole document")


def test_delimiter_is_seeded_per_example_and_uses_all_variants():
    a = [render(rec(i), seed=1).delimiter for i in range(400)]
    b = [render(rec(i), seed=1).delimiter for i in range(400)]
    c = [render(rec(i), seed=2).delimiter for i in range(400)]
    assert a == b and a != c
    counts = Counter(a)
    assert set(counts) == set(DELIMITERS) and min(counts.values()) > 20


def test_format_options_is_flans():
    assert format_options(["a", "b"]) == "OPTIONS:\n- a\n- b"
