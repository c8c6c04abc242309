from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optiml_plugin.benchfiles import (Bench, IndexedJsonl, dumps_line, dumps_text_line, file_stem,
                                           normalize_name, write_jsonl_with_index)
from optiml_plugin.errors import OptimlError

rows_st = st.lists(st.fixed_dictionaries({"id": st.text(max_size=5), "src": st.text(max_size=30),
                                          "n": st.integers()}), max_size=20)


@settings(max_examples=40, deadline=None)
@given(rows_st)
def test_roundtrip_random_access_any_text(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("b") / "x.jsonl"
    assert write_jsonl_with_index(path, rows) == len(rows)
    r = IndexedJsonl(path)
    assert len(r) == len(rows) and [r[i] for i in reversed(range(len(r)))] == rows[::-1]
    assert path.read_bytes() == b"".join(dumps_line(x) for x in rows)


def test_names_are_file_safe_and_stems_split_on_double_underscore():
    assert normalize_name("  Question Answering / QA ") == "question_answering_qa"
    assert normalize_name("a__b") == "a_b" and normalize_name("***") == "unnamed"
    assert file_stem("NIV2", "Textual Entailment", "task190_snli").split("__") == [
        "niv2", "textual_entailment", "task190_snli"]


def test_dumps_line_is_canonical_and_refuses_nan():
    assert dumps_line({"b": "é", "a": 1}) == '{"b":"é","a":1}\n'.encode("utf-8")
    with pytest.raises(ValueError):
        dumps_line({"x": float("nan")})


def test_index_mismatch_and_missing_index_are_clear(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl_with_index(path, [{"a": 1}, {"a": 2}])
    with path.open("ab") as f:
        f.write(b'{"a":3}\n')
    with pytest.raises(OptimlError, match="does not match"):
        IndexedJsonl(path)
    (tmp_path / "x.jsonl.idx").unlink()
    with pytest.raises(OptimlError, match="index missing"):
        IndexedJsonl(path)
    write_jsonl_with_index(path, [{"a": 1}])
    with pytest.raises(IndexError):
        IndexedJsonl(path)[1]


def test_bench_reader_errors(tmp_path):
    with pytest.raises(OptimlError, match="not a bench directory"):
        Bench(tmp_path)
    (tmp_path / "manifest.json").write_text("{oops")
    with pytest.raises(OptimlError, match="invalid JSON"):
        Bench(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(OptimlError, match="'format'"):
        Bench(tmp_path)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_text, st.one_of(_text, st.none(), st.booleans(), st.lists(_text, max_size=3)), max_size=6))
def test_text_rows_are_written_byte_for_byte_as_json_writes_them(row):
    assert dumps_text_line(row) == dumps_line(row)


def test_a_row_orjson_refuses_is_written_by_json():
    row = {"a": "x\ud800"}  # a lone surrogate: both refuse it, json with json's own error
    with pytest.raises(UnicodeEncodeError):
        dumps_line(row)
    with pytest.raises(UnicodeEncodeError):
        dumps_text_line(row)
