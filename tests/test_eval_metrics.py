"""SNI metrics: hand-computed values and rouge-score / sacrebleu called directly."""
from __future__ import annotations

import json

import pytest
import sacrebleu
from hypothesis import given, settings, strategies as st

from optiml_plugin.errors import ConfigError
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
    # imported here, not at collection: a metaseq environment runs `pytest -m metaseq` without eval extras
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = max(scorer.score(target=r, prediction=pred)["rougeL"].fmeasure for r in refs) * 100
    assert M.rouge_l(pred, refs) == pytest.approx(want)


# Values printed by the official scorer: allenai/natural-instructions eval/automatic/evaluation.py
# (commit 8540acd), run in a scratch directory with rouge-score 0.1.2 and transformers'
# GPT2TokenizerFast loaded from OPT's gpt2-vocab.json/gpt2-merges.txt, as
# compute_metrics([prediction], [references], xlingual=(track == "xlingual")) -> (rougeL, exact_match).
OFFICIAL = [
    ("zh", "我爱北京", ["我爱北京天安门"], 78.2609, 0.0),
    ("zh", "我爱北京。", ["我爱北京"], 94.7368, 0.0),
    ("ja", "私は東京に住んでいます", ["私は東京に住んでいる"], 90.3226, 0.0),
    ("ja", "これはペンです", ["これはりんごです", "それはペンだ"], 62.5, 0.0),
    ("ko", "나는 학교에 갑니다", ["나는 집에 갑니다"], 79.0698, 0.0),
    ("th", "ฉันรักประเทศไทย", ["ฉันรักเมืองไทย"], 75.8621, 0.0),
    ("ru", "Я люблю Москву", ["Я очень люблю Москву"], 83.7209, 0.0),
    ("ar", "أنا أحب القراءة", ["أنا أحب الكتابة"], 81.25, 0.0),
    ("hi", "मैं घर जा रहा हूँ", ["मैं स्कूल जा रहा हूँ"], 81.4815, 0.0),
    ("el", "Καλημέρα κόσμε", ["Καλημέρα σε όλους"], 66.6667, 0.0),
    ("he", "אני אוהב ספרים", ["אני אוהב ספר"], 93.3333, 0.0),
    ("de", "Ich habe einen Hund.", ["Ich habe eine Katze.", "Ich besitze einen Hund."], 73.6842, 0.0),
    ("de", "Hello World", ["hello world"], 0.0, 100.0),  # xlingual does not lower-case
    ("fr", "le  chat", ["le chat noir"], 57.1429, 0.0),  # a lone space piece is an empty token
    ("es", "", ["algo"], 0.0, 0.0),
    ("en", "The cats are running quickly", ["the cat is running"], 66.6667, 0.0),
    ("en", "Yes.", ["yes"], 100.0, 100.0),
]


@pytest.fixture(scope="module")
def xlingual(opt_bpe_dir):
    from optiml_plugin.data.tokenizer import OptTokenizer

    return M.XlingualTokenizer(OptTokenizer.from_dir(opt_bpe_dir).pieces)


@pytest.mark.parametrize("lang,pred,refs,rouge,em", OFFICIAL)
def test_rouge_and_em_equal_the_official_script_in_every_script(xlingual, lang, pred, refs, rouge, em):
    assert M.rouge_l(pred, refs, M.track(lang), xlingual=xlingual) == pytest.approx(rouge, abs=5e-5)
    assert M.exact_match(pred, refs) == em


def test_track_follows_the_output_language():
    assert M.track("en") == M.track(None) == "default"
    assert M.track("de") == M.track("zh") == "xlingual"
    # the default track's tokenizer deletes non-ASCII text: the official default-track value is 0
    assert M.rouge_l("我爱北京", ["我爱北京天安门"], track="default") == 0.0
    with pytest.raises(ConfigError, match="xlingual"):
        M.rouge_l("我爱北京", ["我爱北京天安门"], track="xlingual")
    with pytest.raises(ConfigError, match="unknown SNI Rouge-L track"):
        M.rouge_l("a", ["a"], track="zh")


@pytest.mark.parametrize("task,output_language,official", [
    # official compute_metrics on the first 20 instances with prediction = the instance's input
    ("task117_spl_translation_en_de", "de", 43.9562),  # English->German: xlingual track
    ("task260_spl_translation_zh_en", "en", 27.984),   # Chinese->English: default track
])
def test_task_rouge_equals_the_official_script_on_real_sni_tasks(sni_dir, xlingual, task,
                                                                 output_language, official):
    doc = json.loads((sni_dir / "tasks" / f"{task}.json").read_text(encoding="utf-8"))
    track, rule = M.task_track(task, output_language)
    assert rule == "output_language"  # neither task is on an official test list
    got = [M.rouge_l(i["input"], i["output"], track, xlingual=xlingual)
           for i in doc["Instances"][:20]]
    assert sum(got) / len(got) == pytest.approx(official, abs=5e-5)


def test_sni_rows_know_their_output_language(sni_dir):
    from optiml_plugin.bench.sources import load_source
    from optiml_plugin.errors import BadRecordPolicy

    for task, lang, out in (("task117_spl_translation_en_de", "en", "de"),
                            ("task260_spl_translation_zh_en", "zh", "en")):
        spec = {"type": "sni", "path": f"tasks/{task}.json"}
        records = list(load_source(spec, BadRecordPolicy("error"), base_dir=sni_dir))
        assert {(r.language, r.meta["output_language"]) for r in records} == {(lang, out)}
        assert M.track(out) == ("xlingual" if out != "en" else "default")


def test_bleu_tokenizes_for_the_target_language():
    assert M.bleu_tokenize("zh") == "zh" and M.bleu_tokenize("th") == "char"
    assert M.bleu_tokenize("de") == M.bleu_tokenize("en") == "13a"
    assert M.bleu_tokenize("ja") in ("ja-mecab", "char")
    pred, ref = ["我爱北京天安门"], [["我爱北京天安门广场"]]
    # 13a keeps the Chinese sentence as one word: BLEU 0; the zh tokenizer splits characters
    assert M.corpus_bleu(pred, ref, tokenize="13a") == 0.0
    want = sacrebleu.corpus_bleu(pred, [["我爱北京天安门广场"]], tokenize="zh").score
    assert M.corpus_bleu(pred, ref, tokenize=M.bleu_tokenize("zh")) == pytest.approx(want)
    assert want > 50


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


def test_rank_metrics_paper_and_lm_eval_definitions_side_by_side():
    cands = ["no", "maybe"]
    # summed with </s>: "no" -5 > "maybe" -6; without </s>: "no" -4.5 < "maybe" -3;
    # per character without </s>: "no" -2.25 < "maybe" -0.6
    m = M.rank_metrics(sums=[-5.0, -6.0], eos=[-0.5, -3.0], candidates=cands, gold=[0])
    assert m == {"accuracy": 100.0, "lm_eval_acc": 0.0, "lm_eval_acc_norm": 0.0}
    # acc and acc_norm disagree: without </s> "no" -2.0 > "maybe" -2.5, per character -1.0 < -0.5
    m = M.rank_metrics(sums=[-2.1, -2.6], eos=[-0.1, -0.1], candidates=cands, gold=[0])
    assert m == {"accuracy": 100.0, "lm_eval_acc": 100.0, "lm_eval_acc_norm": 0.0}
    # ties: the paper needs a strict win; lm-eval's argmax takes the first candidate
    m = M.rank_metrics(sums=[-1.0, -1.0], eos=[0.0, 0.0], candidates=["ab", "cd"], gold=[0])
    assert m == {"accuracy": 0.0, "lm_eval_acc": 100.0, "lm_eval_acc_norm": 100.0}
    assert set(M.RANK_METRICS) == set(m)
