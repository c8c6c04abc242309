"""Plain-text pretraining loader: whole files, paragraphs, JSONL `text` rows, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiml_plugin.bench.sources import load_source
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError


def _load(spec, base, mode="error"):
    policy = BadRecordPolicy(mode)
    return list(load_source(spec, policy, base_dir=base)), policy


def _docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "page.txt").write_text("First para\nstill first.\n\n\nSecond para.\n", encoding="utf-8")
    (root / "b" / "page.txt").write_text("Only one.\n", encoding="utf-8")
    (root / "notes.md").write_text("not a source file")
    return root


def test_one_document_per_file(tmp_path):
    _docs(tmp_path)
    records, policy = _load({"type": "text", "path": "docs"}, tmp_path)
    assert [r.outputs for r in records] == [("First para\nstill first.\n\n\nSecond para.",), ("Only one.",)]
    assert [r.id for r in records] == ["pretrain-a/page", "pretrain-b/page"]  # same stem, distinct ids
    assert all(r.is_text and r.benchmark == "pretrain" and r.category == "Pretraining" for r in records)
    assert policy.read == 2


def test_paragraphs(tmp_path):
    _docs(tmp_path)
    spec = {"type": "text", "path": "docs/a/*.txt", "documents": "paragraphs", "task": "web",
            "benchmark": "pretrain", "category": "Misc."}
    records, policy = _load(spec, tmp_path)
    assert [(r.id, r.outputs[0]) for r in records] == [("web-page-1", "First para\nstill first."),
                                                       ("web-page-5", "Second para.")]
    assert records[1].meta["where"] == 5 and records[0].category == "Misc."


def test_jsonl_text_rows(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "doc one"}) + "\n" + json.dumps({"body": "doc two", "id": "x"}) + "\n")
    records, _ = _load({"type": "text", "path": "c.jsonl"}, tmp_path, mode="skip")
    assert [r.outputs for r in records] == [("doc one",)]
    with pytest.raises(BadRecordError, match=r"c\.jsonl:2: field 'text'.*missing_field"):
        _load({"type": "text", "path": "c.jsonl"}, tmp_path)
    records, _ = _load({"type": "text", "path": "c.jsonl", "text_field": "body"}, tmp_path, mode="skip")
    assert [(r.id, r.outputs) for r in records] == [("x", ("doc two",))]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good para\n\nline three\nline \xff four\n\nlast\n")
    with pytest.raises(BadRecordError, match=r"bad\.txt:4: invalid UTF-8.*invalid_utf8"):
        _load({"type": "text", "path": "bad.txt", "documents": "paragraphs"}, tmp_path)
    records, policy = _load({"type": "text", "path": "bad.txt", "documents": "paragraphs"}, tmp_path, "skip")
    assert [r.outputs[0] for r in records] == ["good para", "last"]
    assert policy.skipped == {"invalid_utf8": 1} and policy.read == 3
    with pytest.raises(BadRecordError, match=r"bad\.txt:4:"):
        _load({"type": "text", "path": "bad.txt"}, tmp_path)


def test_empty_document_and_bad_mode(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(BadRecordError, match="empty_field"):
        _load({"type": "text", "path": "empty.txt"}, tmp_path)
    with pytest.raises(ConfigError, match="'documents' must be one of"):
        _load({"type": "text", "path": "empty.txt", "documents": "lines"}, tmp_path)
