"""Per-instance metrics computed the way Super-NaturalInstructions' official evaluation computes them.

Why: OPT-IML reports SNI numbers with SNI's scorer (`eval/automatic/evaluation.py`, the same code as
Tk-Instruct's `compute_metrics.py`): exact match after SQuAD-style normalisation *without* article
removal, and rouge-score's Rouge-L F-measure with the Porter stemmer on the raw strings, each the max
over the references and x100. Non-English rows use a whitespace tokenizer for Rouge-L (Tk-Instruct's
choice for non-English text), because rouge-score's default tokenizer deletes every non-ASCII
character. BLEU goes through sacrebleu (corpus BLEU per task) for translation tasks.
"""
from __future__ import annotations

import string
from functools import lru_cache
from typing import List, Optional, Sequence

ENGLISH = ("", "en", "eng", "english")
_PUNCT = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SNI's normalisation: lower-case, drop ASCII punctuation, collapse whitespace (articles kept)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 when the normalised prediction equals any normalised reference, else 0."""
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in references) else 0.0


class _WhitespaceTokenizer:
    """rouge-score tokenizer interface; keeps non-ASCII words intact."""

    def tokenize(self, text: str) -> List[str]:
        return text.split()


@lru_cache(maxsize=2)
def _scorer(english: bool):
    from rouge_score import rouge_scorer

    if english:
        return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WhitespaceTokenizer())


def is_english(language: Optional[str]) -> bool:
    return (language or "").strip().lower() in ENGLISH


def rouge_l(prediction: str, references: Sequence[str], language: Optional[str] = "en") -> float:
    """Max over references of Rouge-L F-measure, x100."""
    scorer = _scorer(is_english(language))
    return 100.0 * max(scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure
                       for r in references)


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """sacrebleu corpus BLEU; instances may have different numbers of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    width = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def is_translation(category: str) -> bool:
    """The paper's translation tasks: their category names contain 'Translation'."""
    return "translation" in category.lower()
