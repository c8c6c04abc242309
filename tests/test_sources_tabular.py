"""P3, FLAN and generic loaders on JSONL and Parquet files the tests write; bad rows in both modes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiml_plugin.bench.sources import load_source
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError

P3_ROWS = [
    {"inputs": [10, 11], "inputs_pretokenized": "Premise. Cause or effect?", "targets": [12],
     "targets_pretokenized": "cause", "answer_choices": ["cause", "effect"], "idx": 0,
     "task": "super_glue_copa", "template_name": "best_option"},
    {"inputs": "Summarize: a long text", "targets": "short", "answer_choices": [], "task": "cnn_dm"},
]
FLAN_ROWS = [
    {"inputs": "Is this true?\nOPTIONS:\n- yes\n- no", "targets": "yes", "task_name": "anli_r1:0.1.0",
     "template_type": "zsopt", "task_source": "Flan2021", "options": ["yes", "no"]},
    {"inputs": "Translate: hallo", "targets": "hello", "task_name": "wmt16_translate_de-en:1.0.0",
     "template_type": "fsnoopt", "task_source": "Flan2021"},
]
GENERIC_ROWS = [
    {"task": "cola", "benchmark": "crossfit", "instruction": "Is the sentence acceptable?",
     "input": "Him went.", "output": "no", "candidates": ["yes", "no"], "category": "linguistic phenomenon",
     "sources": ["glue-cola"], "id": "cola-a"},
    {"task": "gsm8k", "benchmark": "reasoning", "instruction": "Answer by reasoning step by step.",
     "input": "2+3?", "outputs": ["2 plus 3 is 5. The answer is 5."], "language": "en"},
]


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _parquet(path: Path, rows) -> Path:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    keys = sorted({k for r in rows for k in r})  # from_pylist takes its columns from the first row
    pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows]), str(path))
    return path


def _load(spec, mode="error", base=Path(".")):
    policy = BadRecordPolicy(mode)
    return list(load_source(spec, policy, base_dir=base)), policy


@pytest.mark.parametrize("writer", [_jsonl, _parquet])
def test_p3(tmp_path, writer):
    rows = [dict(r) for r in P3_ROWS]
    if writer is _parquet:  # one column type per Parquet column
        for r in rows:
            r["inputs"], r["targets"] = [1], [1]
            r.setdefault("inputs_pretokenized", "Summarize: a long text")
            r.setdefault("targets_pretokenized", "short")
    path = writer(tmp_path / ("p3.jsonl" if writer is _jsonl else "p3.parquet"), rows)
    records, policy = _load({"type": "p3", "path": str(path)})
    assert policy.read == 2 and len(records) == 2
    copa, cnn = records
    assert (copa.benchmark, copa.task, copa.instruction, copa.input, copa.outputs) == (
        "promptsource", "super_glue_copa", "", "Premise. Cause or effect?", ("cause",))
    assert copa.candidates == ("cause", "effect") and copa.template == "best_option"
    assert copa.id == "super_glue_copa_best_option-0" and copa.sources == ("super_glue_copa",)
    assert cnn.candidates is None and cnn.outputs == ("short",) and cnn.id == "cnn_dm-p3-2"
    assert copa.meta["path"] == str(path) and copa.meta["where"] == 1


@pytest.mark.parametrize("writer", [_jsonl, _parquet])
def test_flan(tmp_path, writer):
    path = writer(tmp_path / ("f.jsonl" if writer is _jsonl else "f.parquet"), FLAN_ROWS)
    records, _ = _load({"type": "flan", "path": str(path)})
    assert [r.task for r in records] == ["anli_r1", "wmt16_translate_de-en"]
    assert [r.template for r in records] == ["zsopt", "fsnoopt"]
    assert records[0].candidates == ("yes", "no") and records[1].candidates is None
    assert records[0].input == FLAN_ROWS[0]["inputs"] and records[0].benchmark == "flan"
    assert records[0].meta["task_source"] == "Flan2021"


@pytest.mark.parametrize("writer", [_jsonl, _parquet])
def test_generic(tmp_path, writer):
    path = writer(tmp_path / ("g.jsonl" if writer is _jsonl else "g.parquet"), GENERIC_ROWS)
    records, _ = _load({"type": "generic", "path": str(path)})
    cola, gsm = records
    assert (cola.benchmark, cola.task, cola.category, cola.sources, cola.id) == (
        "crossfit", "cola", "linguistic phenomenon", ("glue-cola",), "cola-a")
    assert cola.candidates == ("yes", "no") and cola.outputs == ("no",)
    assert gsm.outputs == ("2 plus 3 is 5. The answer is 5.",) and gsm.id == "gsm8k-g-2"
    assert gsm.instruction.startswith("Answer by reasoning")


def test_generic_spec_defaults(tmp_path):
    _jsonl(tmp_path / "sst2.jsonl", [{"input": "great film", "output": "positive"}])
    spec = {"type": "generic", "path": "sst2.jsonl", "benchmark": "t5", "category": "Sentiment Analysis",
            "instruction": "What is the sentiment?", "language": "en"}
    [rec], _ = _load(spec, base=tmp_path)
    assert (rec.benchmark, rec.task, rec.category, rec.instruction, rec.id) == (
        "t5", "sst2", "Sentiment Analysis", "What is the sentiment?", "sst2-1")


def test_glob_directory_and_task_filter(tmp_path):
    _jsonl(tmp_path / "a.jsonl", P3_ROWS)
    (tmp_path / "sub").mkdir()
    _jsonl(tmp_path / "sub" / "b.jsonl", [dict(P3_ROWS[1], task="other", idx=5)])
    records, policy = _load({"type": "p3", "path": "."}, base=tmp_path)
    assert [r.task for r in records] == ["super_glue_copa", "cnn_dm", "other"]
    records, policy = _load({"type": "p3", "path": "**/*.jsonl", "tasks": ["other"]}, base=tmp_path)
    assert [r.id for r in records] == ["other-5"] and policy.read == 1
    with pytest.raises(ConfigError, match="tasks not found: nope"):
        _load({"type": "p3", "path": ".", "tasks": ["nope"]}, base=tmp_path)


GOOD_LINE = json.dumps(GENERIC_ROWS[0]).encode()
# (bad line, reason, field); the bad line is line 2 of the file
BAD_LINES = {
    "malformed_json": (b'{"task": "x", "input": ', "malformed_json", None),
    "invalid_utf8": (b'{"task": "x", "input": "\xc3\x28"}', "invalid_utf8", None),
    "not_object": (b'["a", "b"]', "wrong_type", None),
    "missing_output": (json.dumps({"task": "x", "benchmark": "b", "input": "i"}).encode(),
                       "missing_field", "outputs"),
    "missing_input": (json.dumps({"task": "x", "benchmark": "b", "output": "o"}).encode(),
                      "missing_field", "input"),
    "missing_benchmark": (json.dumps({"task": "x", "input": "i", "output": "o"}).encode(),
                          "missing_field", "benchmark"),
    "empty_output": (json.dumps({"task": "x", "benchmark": "b", "input": "i", "output": "  "}).encode(),
                     "empty_field", "outputs"),
    "empty_task": (json.dumps({"task": " ", "benchmark": "b", "input": "i", "output": "o"}).encode(),
                   "empty_field", "task"),
    "empty_prompt": (json.dumps({"task": "x", "benchmark": "b", "input": "", "output": "o"}).encode(),
                     "empty_field", "input"),
    "input_not_str": (json.dumps({"task": "x", "benchmark": "b", "input": 3, "output": "o"}).encode(),
                      "wrong_type", "input"),
    "outputs_str": (json.dumps({"task": "x", "benchmark": "b", "input": "i", "outputs": "o"}).encode(),
                    "outputs_not_list", "outputs"),
    "outputs_ints": (json.dumps({"task": "x", "benchmark": "b", "input": "i", "outputs": [1]}).encode(),
                     "outputs_not_list", "outputs"),
    "bad_candidates": (json.dumps({"task": "x", "benchmark": "b", "input": "i", "output": "o",
                                   "candidates": ["only"]}).encode(), "bad_candidates", "candidates"),
    "duplicate_id": (json.dumps(dict(GENERIC_ROWS[0], input="other")).encode(), "duplicate_id", "id"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_error_mode(tmp_path, case):
    line, reason, fld = BAD_LINES[case]
    path = tmp_path / "g.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + line + b"\n")
    with pytest.raises(BadRecordError) as e:
        _load({"type": "generic", "path": str(path)})
    assert (e.value.reason, e.value.field, e.value.where) == (reason, fld, 2)
    assert str(e.value).startswith(f"{path}:2:")


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_line_skip_mode(tmp_path, case):
    line, reason, _ = BAD_LINES[case]
    path = tmp_path / "g.jsonl"
    path.write_bytes(GOOD_LINE + b"\n" + line + b"\n\n" + json.dumps(GENERIC_ROWS[1]).encode() + b"\n")
    records, policy = _load({"type": "generic", "path": str(path)}, mode="skip")
    assert [r.task for r in records] == ["cola", "gsm8k"]
    assert policy.skipped == {reason: 1}
    assert policy.read == 3 == len(records) + sum(policy.skipped.values())
    assert policy.messages[0].startswith(f"{path}:2:")


@pytest.mark.parametrize("kind", ["p3", "flan"])
def test_p3_flan_missing_targets(tmp_path, kind):
    row = {"inputs": "q", "task_name": "t"}
    path = _jsonl(tmp_path / "x.jsonl", [row])
    with pytest.raises(BadRecordError, match=r"x\.jsonl:1: field 'targets'.*missing_field"):
        _load({"type": kind, "path": str(path)})
    tokens_only = _jsonl(tmp_path / "y.jsonl", [{"inputs": [1, 2], "targets": "a", "task": "t"}])
    with pytest.raises(BadRecordError, match=r"y\.jsonl:1: field 'inputs': column 'inputs' must be a string, "
                                             r"got list of int \[wrong_type"):
        _load({"type": kind, "path": str(tokens_only)})


def test_parquet_bad_row_reports_row_number(tmp_path):
    rows = [dict(GENERIC_ROWS[0], id="p-1"), dict(GENERIC_ROWS[0], id="p-2", output=" ")]
    path = _parquet(tmp_path / "g.parquet", rows)
    with pytest.raises(BadRecordError, match=r"g\.parquet:2: field 'outputs'"):
        _load({"type": "generic", "path": str(path)})
    records, policy = _load({"type": "generic", "path": str(path)}, mode="skip")
    assert [r.id for r in records] == ["p-1"] and policy.skipped == {"empty_field": 1}


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins
    from optiml_plugin.errors import OptimlError
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(OptimlError, match="needs pyarrow"):
        _load({"type": "generic", "path": str(path), "benchmark": "b"})
