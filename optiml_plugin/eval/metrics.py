"""Per-instance metrics computed the way Super-NaturalInstructions' official evaluation computes them.

Why: OPT-IML reports SNI numbers with SNI's scorer (`eval/automatic/evaluation.py`, the same logic as
Tk-Instruct's `compute_metrics.py`): exact match after SQuAD-style normalisation *without* article
removal, and rouge-score's Rouge-L F-measure, each the max over the references and x100. The official
script has two tracks:

- `default` (English): rouge-score's own tokenizer with the Porter stemmer (lower-cases and keeps
  only `[a-z0-9]` runs, so it deletes every non-ASCII character);
- `xlingual` (the xlingual list's tasks, and non-English output): GPT-2 byte-level BPE pieces with
  the leading `Ġ` (space) stripped, no lower-casing, no stemming. The OPT vocabulary has GPT-2's
  tokens and merges, so the model's own OPT BPE files give the same pieces.

The official script takes the track of a task from the split list it is on (its reference file is
built from `splits/default/test_tasks.txt` and `splits/xlingual/test_tasks.txt`), not from the output
language: task534_farstail_entailment answers in English (E/C/N) yet is on the xlingual list, so 'E.'
scores 66.67 against 'E' and 'e' scores 0. Both lists ship with the package (`eval/sni_splits/`,
allenai/natural-instructions `splits/`); a task on neither list takes the track of its OUTPUT
language (an English->German task is scored on `xlingual`). `task_track` says which rule applied.
BLEU goes through sacrebleu (corpus BLEU per task) with a tokenizer chosen for the target language.
"""
from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from optiml_plugin.errors import ConfigError

ENGLISH = ("", "en", "eng", "english")
DEFAULT_TRACK, XLINGUAL_TRACK = "default", "xlingual"
_PUNCT = frozenset(string.punctuation)
# languages written without spaces between words: BLEU on characters
_NO_WORD_SPACES = ("th", "lo", "km", "my")


def normalize_answer(text: str) -> str:
    """SNI's normalisation: lower-case, drop ASCII punctuation, collapse whitespace (articles kept)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(text.split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """100 when the normalised prediction equals any normalised reference, else 0 (both tracks)."""
    pred = normalize_answer(prediction)
    return 100.0 if any(pred == normalize_answer(r) for r in references) else 0.0


def is_english(language: Optional[str]) -> bool:
    return (language or "").strip().lower() in ENGLISH


def track(output_language: Optional[str]) -> str:
    """The track of an output language: `default` for English, else `xlingual`."""
    return DEFAULT_TRACK if is_english(output_language) else XLINGUAL_TRACK


#: SNI's official test lists, one per track (allenai/natural-instructions `splits/<track>/test_tasks.txt`)
SPLIT_LISTS = {DEFAULT_TRACK: "sni_splits/default_test_tasks.txt",
               XLINGUAL_TRACK: "sni_splits/xlingual_test_tasks.txt"}
OUTPUT_LANGUAGE_RULE = "output_language"


@lru_cache(maxsize=1)
def official_tracks() -> Dict[str, str]:
    """Task name -> track of every task on SNI's official test lists (shipped in the package)."""
    here = Path(__file__).parent
    out: Dict[str, str] = {}
    for name, rel in SPLIT_LISTS.items():
        for line in (here / rel).read_text(encoding="utf-8").splitlines():
            if line.strip():
                out[line.strip()] = name
    return out


def task_track(task: str, output_language: Optional[str]) -> Tuple[str, str]:
    """(track, rule) of a task as the official scorer picks it: the split list the task is on
    (rule `splits/<track>/test_tasks.txt`), else its output language (rule `output_language`)."""
    listed = official_tracks().get(task)
    if listed is not None:
        return listed, f"splits/{listed}/test_tasks.txt"
    return track(output_language), OUTPUT_LANGUAGE_RULE


class XlingualTokenizer:
    """rouge-score tokenizer of the xlingual track: byte-level BPE pieces without the `Ġ` prefix.

    `pieces` maps text to BPE token strings (e.g. `OptTokenizer.pieces`). A piece that is only a
    space becomes an empty token, as in the official script.
    """

    def __init__(self, pieces: Callable[[str], List[str]]) -> None:
        self._pieces = pieces

    def tokenize(self, text: str) -> List[str]:
        return [p.lstrip("\u0120") for p in self._pieces(text)]


@lru_cache(maxsize=1)
def _default_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, references: Sequence[str], track: str = DEFAULT_TRACK,
            xlingual: Optional[XlingualTokenizer] = None) -> float:
    """Max over references of Rouge-L F-measure x100 on `track` (`task_track` picks it).

    The xlingual track needs `xlingual` (the BPE tokenizer); without it this raises rather than
    score with a tokenizer that deletes non-ASCII text.
    """
    if track == DEFAULT_TRACK:
        scorer = _default_scorer()
    elif track == XLINGUAL_TRACK:
        if xlingual is None:
            raise ConfigError("Rouge-L on the xlingual track needs its GPT-2 byte-level BPE "
                              "(OPT's BPE files): pass them to the evaluator")
        scorer = _xlingual_scorer(xlingual)
    else:
        raise ConfigError(f"unknown SNI Rouge-L track {track!r}: {DEFAULT_TRACK} or {XLINGUAL_TRACK}")
    return 100.0 * max(scorer.score(target=r, prediction=prediction)["rougeL"].fmeasure
                       for r in references)


@lru_cache(maxsize=4)
def _xlingual_scorer(tokenizer: XlingualTokenizer):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizer)


def bleu_tokenize(language: Optional[str]) -> str:
    """sacrebleu tokenizer for a target language.

    Chinese: `zh`; Japanese: `ja-mecab` when MeCab and ipadic are installed (extra `eval`), else
    `char`; Thai, Lao, Khmer, Burmese (no spaces between words): `char`; all else `13a`.
    """
    lang = (language or "").strip().lower()
    if lang in ("zh", "chinese"):
        return "zh"
    if lang in ("ja", "japanese"):
        try:
            import ipadic  # noqa: F401
            import MeCab  # noqa: F401
        except ImportError:
            return "char"
        return "ja-mecab"
    if lang in _NO_WORD_SPACES:
        return "char"
    return "13a"


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str]],
                tokenize: str = "13a") -> float:
    """sacrebleu corpus BLEU; instances may have different numbers of references."""
    import sacrebleu

    if not predictions:
        return 0.0
    width = max(len(r) for r in references)
    streams = [[r[k] if k < len(r) else None for r in references] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


RANK_METRICS = {
    "accuracy": "paper / OPT-IML in-training validation: summed log-likelihood of the candidate "
                "tokens including </s>; correct when a gold candidate scores strictly above every "
                "other candidate",
    "lm_eval_acc": "lm-evaluation-harness acc: argmax (first on ties) of the summed log-likelihood "
                   "without </s>, correct when it is a gold candidate",
    "lm_eval_acc_norm": "lm-evaluation-harness acc_norm: argmax of that log-likelihood divided by "
                        "the candidate's length in characters",
}


def rank_metrics(sums: Sequence[float], eos: Sequence[float], candidates: Sequence[str],
                 gold: Sequence[int]) -> Dict[str, float]:
    """The `RANK_METRICS` of one instance (x100) from each candidate's summed log-likelihood with
    `</s>` (`sums`) and the log-probability of that `</s>` (`eos`)."""
    best_gold = max(sums[g] for g in gold)
    paper = all(best_gold > s for j, s in enumerate(sums) if j not in gold)
    no_eos = [s - e for s, e in zip(sums, eos)]
    per_char = [ll / len(c) for ll, c in zip(no_eos, candidates)]
    return {"accuracy": 100.0 * paper,
            "lm_eval_acc": 100.0 * (_argmax(no_eos) in gold),
            "lm_eval_acc_norm": 100.0 * (_argmax(per_char) in gold)}


def _argmax(xs: Sequence[float]) -> int:
    """First index of the maximum (numpy's tie rule, which lm-evaluation-harness relies on)."""
    return max(range(len(xs)), key=lambda j: (xs[j], -j))


def is_translation(category: str) -> bool:
    """The paper's translation tasks: their category names contain 'Translation'."""
    return "translation" in category.lower()
