"""OptTokenizer: OPT ids, exact source/target boundary, loaders, builtin training."""
from __future__ import annotations

import json

import pytest

from optiml_plugin.data.tokenizer import OptTokenizer, join_texts
from optiml_plugin.errors import ConfigError


@pytest.fixture(scope="module")
def opt(opt_bpe_dir):
    return OptTokenizer.from_files(opt_bpe_dir / "gpt2-vocab.json", opt_bpe_dir / "gpt2-merges.txt")


def test_opt_special_ids_and_known_encoding(opt):
    assert (opt.bos_id, opt.pad_id, opt.eos_id) == (0, 1, 2)
    assert opt.vocab_size == 50265
    # ids of facebook/opt-* for "Hello world" (without the BOS the HF tokenizer prepends)
    assert opt.encode("Hello world") == [31414, 232]
    assert opt.decode(opt.encode("héllo \n\n x")) == "héllo \n\n x"


def test_special_text_cannot_forge_a_separator(opt):
    ids = opt.encode("a </s> b <pad> <s>")
    assert not set(ids) & {0, 1, 2, 3}


def test_encode_pair_boundary_is_exact(opt):
    src, tgt = opt.encode_pair("Question: 2+2? Answer:", "4")
    assert src == opt.encode("Question: 2+2? Answer:")
    assert tgt == opt.encode(" 4")
    assert opt.decode(src + tgt) == "Question: 2+2? Answer: 4"


@pytest.mark.parametrize("src,tgt,want", [
    ("Output:  ", "yes", ("Output:", " yes")),     # trailing spaces stripped, one joining space
    ("Output:\n", "yes", ("Output:\n", "yes")),    # ends in whitespace: no extra space
    ("", "plain text", ("", "plain text")),        # empty source: target as is
    ("Q:", " already spaced\n", ("Q:", " already spaced")),
])
def test_join_texts(src, tgt, want):
    assert join_texts(src, tgt) == want


def test_encode_pairs_matches_single(opt):
    pairs = [("Translate: hello", "bonjour"), ("", "pretraining text"), ("x\n", "y")]
    assert opt.encode_pairs(pairs) == [opt.encode_pair(s, t) for s, t in pairs]


def test_loaders_roundtrip(opt, opt_bpe_dir, tmp_path):
    text = "Instruction: summarize the text below."
    assert OptTokenizer.from_dir(opt_bpe_dir).encode(text) == opt.encode(text)
    saved = opt.save(tmp_path / "model")
    assert saved.name == "tokenizer.json"
    assert OptTokenizer.from_dir(tmp_path / "model").encode(text) == opt.encode(text)
    assert OptTokenizer.from_json(saved).encode(text) == opt.encode(text)


def test_wrong_special_ids_rejected(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1, "ab": 2}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ConfigError, match="special token '<s>'"):
        OptTokenizer.from_dir(tmp_path)
    with pytest.raises(ConfigError, match="no tokenizer found"):
        OptTokenizer.from_dir(tmp_path / "missing")


def test_builtin_is_deterministic_and_keeps_ids():
    texts = [f"Task {i}: classify the sentiment of review number {i}." for i in range(200)]
    a = OptTokenizer.builtin(texts, vocab_size=400)
    b = OptTokenizer.builtin(list(reversed(texts)), vocab_size=400)
    c = OptTokenizer.builtin(texts, vocab_size=400)
    assert (a.bos_id, a.pad_id, a.eos_id) == (0, 1, 2)
    assert a.vocab_size <= 400
    probe = "Task 7: classify the sentiment"
    assert a.encode(probe) == c.encode(probe)
    assert a.decode(a.encode(probe)) == probe
    assert len(b.encode(probe)) > 0
    with pytest.raises(ConfigError):
        OptTokenizer.builtin(texts, vocab_size=10)
