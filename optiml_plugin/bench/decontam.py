"""Decontamination between training and evaluation tasks (OPT-IML §2.3).

Why: held-out results mean nothing if the model saw the evaluation data. Three checks, cheapest first:
(a) training tasks that share a source dataset with an evaluation task are dropped (or moved to
evaluation); (b) training instances whose normalized input equals an evaluation instance's are
dropped; (c) for every (training task, evaluation task) pair, the fraction of evaluation instances
that share any n-gram (13 by default) with the training task is reported, optionally dropping the
flagged training tasks (the paper examined every pair above 1% by hand and removed one task of each
confirmed pair); the pairs go to a JSONL file a person reviews, with both sides of the first
overlapping instances (the evaluation text, a training text it overlaps, and the n-grams they
share: one side alone cannot be judged), and `allowed_pairs` keeps the pairs a review cleared.
(c) hashes every n-gram once (numpy rolling hash over interned token ids) and joins all evaluation
n-grams against one sorted array of all training n-grams, so the cost is linear in the text, not in
the number of task pairs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Sequence, Set, Tuple

import numpy as np

from optiml_plugin.hashing import GOLDEN, mix64

_NON_WORD = re.compile(r"[^\w\s]+|_")
_SEP = "\x00"  # joins a batch of texts so one C-level pass normalizes all of them
# ASCII fast path: one bytes.translate lower-cases and blanks everything but letters, digits,
# whitespace and the separator, exactly as `normalize_text` does for ASCII text
_ASCII_TABLE = bytes(c if (chr(c).isalnum() or chr(c).isspace() or c == 0) and chr(c) != "_"
                     else 32 for c in range(128)).lower() + bytes(range(128, 256))
_BASE = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class DecontamConfig:
    """`source_overlap`: what to do with a training task sharing a source with an eval task
    ("drop" or "move" it to evaluation); `allowed_shared_sources`: broad resources (e.g. wikipedia)
    whose sharing is not a conflict, as the paper kept such pairs; `ngram`/`threshold`: the overlap
    report (paper: 13-grams, 1%); `drop_flagged`: drop training tasks above the threshold;
    `allowed_pairs`: "<train task>/<eval task>" pairs a review cleared (reported, never dropped)."""

    ngram: int = 13
    threshold: float = 0.01
    drop_flagged: bool = False
    source_overlap: str = "drop"
    allowed_shared_sources: Tuple[str, ...] = ()
    allowed_pairs: Tuple[str, ...] = ()

    def cleared(self, train_task: str, eval_task: str) -> bool:
        return f"{train_task}/{eval_task}" in self.allowed_pairs


#: the reviewable list of flagged pairs, one JSON object per line, in the bench directory
REVIEW_FILE = "decontamination_pairs.jsonl"
REVIEW_EXAMPLES = 3  # overlapping eval instances listed per pair
REVIEW_NGRAMS = 5  # shared n-grams listed per overlapping instance


@dataclass(frozen=True)
class OverlapPair:
    """`examples`: indices (into the eval task's texts) of the first overlapping eval instances;
    `train_examples[k]`: the index of a training text sharing an n-gram with `examples[k]`, and
    `train_texts[k]` its (id, text) once the builder looked it up."""

    train_task: Hashable
    eval_task: Hashable
    overlapping: int
    eval_instances: int
    examples: Tuple[int, ...] = ()
    train_examples: Tuple[int, ...] = ()
    train_texts: Tuple[Tuple[str, str], ...] = ()

    @property
    def fraction(self) -> float:
        return self.overlapping / self.eval_instances if self.eval_instances else 0.0


def normalize_text(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed: the form every comparison uses."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _normalize_joined(texts: Sequence[str]) -> str:
    """The normalized texts joined by `_SEP` (one pass over the batch instead of one per text)."""
    joined = _SEP.join(texts)
    if joined.isascii() and joined.count(_SEP) == len(texts) - 1:
        return joined.encode("ascii").translate(_ASCII_TABLE).decode("ascii")
    return _SEP.join(normalize_text(t) for t in texts)


def normalize_many(texts: Sequence[str]) -> List[str]:
    """`normalize_text` of each text, computed in one batch."""
    if not texts:
        return []
    return [" ".join(part.split()) for part in _normalize_joined(texts).split(_SEP)]


def source_conflicts(train_sources: Mapping[Hashable, Iterable[str]],
                     eval_sources: Mapping[Hashable, Iterable[str]],
                     allowed: Iterable[str] = ()) -> Dict[Hashable, List[str]]:
    """Training tasks that share a source dataset with any eval task -> the shared sources (sorted).

    Source names are compared normalized, so "SQuAD v1" and "squad_v1" are the same dataset."""
    ok = {normalize_text(s) for s in allowed}
    eval_names: Set[str] = set()
    for sources in eval_sources.values():
        eval_names.update(normalize_text(s) for s in sources)
    eval_names -= ok
    out: Dict[Hashable, List[str]] = {}
    for task, sources in train_sources.items():
        shared = sorted({s for s in sources if normalize_text(s) in eval_names})
        if shared:
            out[task] = shared
    return out


class NgramHasher:
    """Hashes of the whitespace-token n-grams of normalized texts.

    Tokens are hashed with Python's string hash (computed in C, cached on the string), mixed, and
    combined by a polynomial rolling hash in numpy. The string hash is salted per process, so only
    64-bit collisions (negligible) could make two runs differ. A text shorter than n tokens
    contributes one hash of all its tokens, so short exact duplicates still count as overlap."""

    def __init__(self, n: int = 13) -> None:
        if n < 1:
            raise ValueError("n must be >= 1")
        self.n = n
        self._powers = np.array([pow(int(_BASE), n - 1 - j, 1 << 64) for j in range(n)], dtype=np.uint64)

    def _ids(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """Mixed token hashes of all texts, concatenated, and each text's token count."""
        if not texts:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        tokens = _normalize_joined(texts).replace(_SEP, f" {_SEP} ").split()
        hashed = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens))
        is_sep = hashed == hash(_SEP)
        owner = np.cumsum(is_sep)[~is_sep]
        lengths = np.bincount(owner, minlength=len(texts)).astype(np.int64)
        return _mix(hashed[~is_sep].view(np.uint64)), lengths

    def hashes(self, texts: Sequence[str], unique: bool = True) -> Tuple[np.ndarray, np.ndarray]:
        """(hash, text index) pairs for every n-gram of every text; deduplicated when `unique`."""
        mixed, lengths = self._ids(texts)
        n = self.n
        ends = np.cumsum(lengths)
        starts = ends - lengths
        owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        out_h: List[np.ndarray] = []
        out_i: List[np.ndarray] = []
        if len(mixed) >= n:
            m = len(mixed) - n + 1
            h = np.zeros(m, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(n):
                    h += mixed[j:j + m] * self._powers[j]
            pos = np.arange(m)
            ok = owner[pos] == owner[pos + n - 1]
            out_h.append(h[ok])
            out_i.append(owner[pos[ok]])
        short = np.nonzero((lengths > 0) & (lengths < n))[0]
        if len(short):
            with np.errstate(over="ignore"):
                hs = np.array([_fold(mixed[starts[i]:ends[i]]) for i in short], dtype=np.uint64)
            out_h.append(hs)
            out_i.append(short.astype(np.int64))
        if not out_h:
            return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        h_all = np.concatenate(out_h)
        i_all = np.concatenate(out_i)
        if not unique:
            return h_all, i_all
        order = np.lexsort((h_all, i_all))
        h_all, i_all = h_all[order], i_all[order]
        keep = np.ones(len(h_all), dtype=bool)
        keep[1:] = (h_all[1:] != h_all[:-1]) | (i_all[1:] != i_all[:-1])
        return h_all[keep], i_all[keep]


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 (`mix64` of id x golden): spreads small token ids over 64 bits before the rolling hash."""
    with np.errstate(over="ignore"):
        return mix64(x * np.uint64(GOLDEN))


def _fold(x: np.ndarray) -> np.uint64:
    h = np.uint64(len(x))
    for v in x:
        h = h * _BASE + v
    return h


class EvalNgrams:
    """The n-gram hashes of every evaluation instance, for looking up one training task at a time.

    Why this side: evaluation sets are small (capped per task), training tasks are most of the bench;
    indexing the eval n-grams lets the builder stream training tasks (in any process forked after the
    index was built: the token hashes are salted per process) in O(eval) memory, with the same pairs
    as indexing the training side."""

    def __init__(self, n: int = 13) -> None:
        self.hasher = NgramHasher(n)
        self.keys: List[Hashable] = []
        self.sizes: List[int] = []
        self._parts: List[Tuple[np.ndarray, np.ndarray]] = []
        self._h = np.zeros(0, dtype=np.uint64)  # distinct hashes, sorted
        self._starts = np.zeros(1, dtype=np.int64)
        self._code = np.zeros(0, dtype=np.int64)  # (eval task << 32) + instance, grouped by hash

    def hashes(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(hash, instance) of every n-gram of one eval task's instance texts (what `add` takes)."""
        return self.hasher.hashes(texts, unique=False)

    def add(self, key: Hashable, size: int, hashes: Tuple[np.ndarray, np.ndarray]) -> None:
        """One eval task: its number of instances and `hashes(texts)`; call `freeze` after the last."""
        h, inst = hashes
        self._parts.append((h, (len(self.keys) << 32) + inst))
        self.keys.append(key)
        self.sizes.append(size)

    def freeze(self) -> "EvalNgrams":
        if self._parts:
            h = np.concatenate([p[0] for p in self._parts])
            code = np.concatenate([p[1] for p in self._parts])
            order = np.argsort(h, kind="stable")
            h, self._code = h[order], code[order]
            first = np.ones(len(h), dtype=bool)
            first[1:] = h[1:] != h[:-1]
            self._starts = np.append(np.flatnonzero(first), len(h))  # runs of one hash in `_code`
            self._h = h[first]
        self._parts = []
        return self

    def pairs(self, train_key: Hashable, texts: Sequence[str], min_fraction: float = 0.0) -> List[OverlapPair]:
        """The (train_key, eval task) pairs whose share of eval instances sharing an n-gram with
        `texts` exceeds `min_fraction`, in the order eval tasks were added."""
        if not texts or not len(self._h):
            return []
        h_all, owner = self.hasher.hashes(texts, unique=False)
        h = np.unique(h_all)
        at = np.searchsorted(self._h, h)
        found = at[self._h[np.minimum(at, len(self._h) - 1)] == h]
        left = self._starts[found]
        cnt = self._starts[found + 1] - left
        total = int(cnt.sum())
        if total == 0:
            return []
        first = np.repeat(left - (np.cumsum(cnt) - cnt), cnt)
        codes = self._code[first + np.arange(total)]
        hashes = np.repeat(self._h[found], cnt)  # the hash each code was found by
        hits = np.unique(codes)  # (eval task, instance), sorted
        owners = hits >> 32
        out: List[OverlapPair] = []
        bounds = np.flatnonzero(np.diff(owners)) + 1
        for group in np.split(hits, bounds):
            e = int(group[0] >> 32)
            if not self.sizes[e] or len(group) / self.sizes[e] <= min_fraction:
                continue
            shown = group[:REVIEW_EXAMPLES]
            # a training text behind each shown instance: the first owner of one of its n-grams
            train = tuple(int(owner[np.flatnonzero(np.isin(h_all, hashes[codes == c]))[0]]) for c in shown)
            out.append(OverlapPair(train_key, self.keys[e], len(group), self.sizes[e],
                                   tuple(int(i) for i in (shown & 0xFFFFFFFF)), train))
        return out


@dataclass
class ExactInputFilter:
    """Normalized inputs of every evaluation instance; `matches_all` says which training inputs collide."""

    inputs: Set[str] = field(default_factory=set)

    def add_all(self, texts: Sequence[str]) -> None:
        self.inputs.update(n for n in normalize_many(texts) if n)

    def matches_all(self, texts: Sequence[str]) -> List[bool]:
        return [bool(n) and n in self.inputs for n in normalize_many(texts)]


def shared_ngrams(a: str, b: str, n: int, limit: int = REVIEW_NGRAMS) -> List[str]:
    """The first `limit` normalized n-grams of `a` (in its order) that `b` also has; a text shorter
    than n tokens counts as one n-gram, as the hashes count it (`NgramHasher`)."""
    ta, tb = normalize_text(a).split(), normalize_text(b).split()
    grams_b = {tuple(tb[i:i + n]) for i in range(max(1, len(tb) - n + 1))}
    out: List[str] = []
    for i in range(max(1, len(ta) - n + 1)):
        gram = tuple(ta[i:i + n])
        if gram in grams_b and " ".join(gram) not in out:
            out.append(" ".join(gram))
            if len(out) >= limit:
                break
    return out


def flagged_rows(pairs: Sequence[OverlapPair], dc: DecontamConfig, dropped: Set[Hashable],
                 eval_instance: Callable[[Hashable, int], Tuple[str, str]]
                 ) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(manifest rows, review rows) of the flagged pairs, largest overlap first.

    Task keys are (benchmark, task); `action` says what the build did with the pair: removed the
    training task, kept it because a review cleared the pair, or only reported it. A review row adds
    both sides of the first overlapping eval instances: the eval instance (`eval_instance(eval key,
    index)` gives its id and text), a training instance it overlaps (`train_texts`) and the n-grams
    they share, so a reviewer can judge the pair from the file alone."""
    rows, review = [], []
    for p in sorted(pairs, key=lambda p: (-p.fraction, p.train_task, p.eval_task)):
        if dc.cleared(p.train_task[1], p.eval_task[1]):
            action = "cleared"
        else:
            action = "removed_train_task" if p.train_task in dropped else "reported"
        row = {"train_benchmark": p.train_task[0], "train_task": p.train_task[1],
               "eval_benchmark": p.eval_task[0], "eval_task": p.eval_task[1],
               "overlapping": p.overlapping, "eval_instances": p.eval_instances,
               "fraction": round(p.fraction, 6), "action": action}
        rows.append(row)
        examples = []
        for j, (train_id, train_text) in zip(p.examples, p.train_texts):
            eval_id, eval_text = eval_instance(p.eval_task, j)
            examples.append({"eval": {"id": eval_id, "text": eval_text},
                             "train": {"id": train_id, "text": train_text},
                             f"shared_{dc.ngram}grams": shared_ngrams(eval_text, train_text, dc.ngram)})
        review.append(dict(row, examples=examples))
    return rows, review
