"""SNI metrics: hand-computed values and rouge-score / sacrebleu called directly."""
from __future__ import annotations

import pytest
import sacrebleu
from hypothesis import given, settings, strategies as st
from rouge_score import rouge_scorer

from optiml_plugin.eval import metrics as M
from optiml_plugin.eval.scoring import cut_at_stops


def test_normalize_keeps_articles_and_drops_punctuation():
    assert M.normalize_answer("  The Cat, sat!\n on  a mat. ") == "the cat sat on a mat"


def test_exact_match_is_max_over_references():
    assert M.exact_match("Yes.", ["no", "yes"]) == 100.0
    assert M.exact_match("the yes", ["yes"]) == 0.0  # articles are not removed (SNI)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5 of 6 and 6 tokens
    assert M.rouge_l("the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(100 * 5 / 6)
    # stemming: running/run and dogs/dog match; max over references
    assert M.rouge_l("Running dogs", ["cats", "run dog"]) == pytest.approx(100.0)
    assert M.rouge_l("abc", ["xyz"]) == 0.0


words = st.lists(st.sampled_from("the a cat cats running run sat on mat dog Dogs, blue!".split()),
                 min_size=0, max_size=8).map(" ".join)


@settings(max_examples=30, deadline=None)
@given(words, st.lists(words, min_size=1, max_size=3))
def test_rouge_l_equals_rouge_score(pred, refs):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = max(scorer.score(target=r, prediction=pred)["rougeL"].fmeasure for r in refs) * 100
    assert M.rouge_l(pred, refs) == pytest.approx(want)


def test_non_english_rouge_uses_whitespace_tokens():
    # rouge-score's default tokenizer deletes non-ASCII text entirely (score 0)
    assert M.rouge_l("猫 が 好き", ["猫 が 嫌い"], language="ja") == pytest.approx(100 * 2 / 3)
    assert M.rouge_l("猫 が 好き", ["猫 が 嫌い"], language="en") == 0.0


def test_corpus_bleu_matches_sacrebleu_and_allows_uneven_references():
    preds = ["the cat sat on the mat today", "a dog ran in the big park"]
    refs = [["the cat sat on the mat today"], ["a dog ran in the park", "the dog ran in a big park"]]
    want = sacrebleu.corpus_bleu(preds, [["the cat sat on the mat today", "a dog ran in the park"],
                                         [None, "the dog ran in a big park"]]).score
    assert M.corpus_bleu(preds, refs) == pytest.approx(want)
    assert 0 < want < 100
    assert M.is_translation("Translation") and not M.is_translation("Question Answering")


def test_stop_strings_cut_the_continuation():
    assert cut_at_stops(" yes\n\nQuestion: more", ["\n\n"]) == "yes"
    assert cut_at_stops("\n answer. Next:", ["Next", "."]) == "answer"
    assert cut_at_stops(" plain ", []) == "plain"
