from __future__ import annotations

from collections import Counter

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.templates import DELIMITERS, format_options, render, render_prompt


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


def _rendered_from(tmp_path, kind, row, **entry):
    import json

    from optiml_plugin.bench.sources import load_source
    from optiml_plugin.errors import BadRecordPolicy

    path = tmp_path / f"{kind}.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    [record] = load_source(dict({"type": kind, "path": str(path)}, **entry), BadRecordPolicy("error"))
    return record, render(record, seed=0)


COPA_PROMPT = ('The man broke his toe. What was the CAUSE of this?\n- He dropped a hammer on his foot.\n'
               '- He got a hole in his sock.')


def test_promptsource_row_renders_as_its_template(tmp_path):
    row = {"inputs_pretokenized": COPA_PROMPT, "targets_pretokenized": "He dropped a hammer on his foot.",
           "answer_choices": ["He dropped a hammer on his foot.", "He got a hole in his sock."],
           "task": "super_glue_copa", "template_name": "best_option", "idx": 0}
    record, r = _rendered_from(tmp_path, "p3", row)
    assert record.candidates == tuple(row["answer_choices"])  # kept for rank classification
    assert "OPTIONS" not in r.src and r.src == COPA_PROMPT + r.delimiter
    assert r.src.count("He got a hole in his sock.") == 1


def test_flan_options_template_shows_its_block_once(tmp_path):
    inputs = "Is the sky blue?\n\nOPTIONS:\n- yes\n- no"
    row = {"inputs": inputs, "targets": "yes", "task_name": "boolq", "template_type": "zsopt",
           "options": ["yes", "no"]}
    record, r = _rendered_from(tmp_path, "flan", row)
    assert r.src.count("OPTIONS:") == 1 and record.candidates == ("yes", "no")
    # an options template whose inputs lack the block gets FLAN's block; a no-options template never
    _, r = _rendered_from(tmp_path, "flan", dict(row, inputs="Is the sky blue?"))
    assert r.src.startswith("Is the sky blue?\n\nOPTIONS:\n- yes\n- no")
    record, r = _rendered_from(tmp_path, "flan", dict(row, inputs="Is the sky blue?", template_type="zsnoopt"))
    assert "OPTIONS" not in r.src and record.candidates == ("yes", "no")


def test_generic_rows_choose_the_options_block(tmp_path):
    row = {"task": "cola", "benchmark": "crossfit", "input": "Him went. (A) yes (B) no", "output": "no",
           "candidates": ["yes", "no"], "instruction": "Is the sentence acceptable?"}
    _, r = _rendered_from(tmp_path, "generic", row)
    assert r.src.startswith("Is the sentence acceptable?\n\nHim went. (A) yes (B) no\n\nOPTIONS:")
    record, r = _rendered_from(tmp_path, "generic", row, options_block=False)
    assert "OPTIONS" not in r.src and record.candidates == ("yes", "no")
