"""Rank classification with each prompt computed once, and batched greedy generation.

Why: scoring every candidate as its own sequence (lm-evaluation-harness) recomputes the prompt once
per candidate. Here one row holds the prompt followed by all candidates: a tree mask lets every
candidate see the prompt but not the other candidates, and each candidate's position ids restart
right after the prompt, so each candidate gets exactly the log-likelihood it would get alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch

from optiml_plugin.eval.backend import Backend


@dataclass(frozen=True)
class Tree:
    """A prompt and the candidate continuations scored after it (each already ends with `</s>`)."""

    prompt: Tuple[int, ...]
    candidates: Tuple[Tuple[int, ...], ...]

    @property
    def row_length(self) -> int:
        return len(self.prompt) + sum(len(c) for c in self.candidates)


@dataclass(frozen=True)
class CandidateScores:
    """Summed log-likelihood, token count and final-token (`</s>`) log-probability of each candidate."""

    sums: Tuple[float, ...]
    lengths: Tuple[int, ...]
    last: Tuple[float, ...]


def tree_tensors(trees: Sequence[Tree], pad_id: int):
    """Right-padded rows: ids, positions, bool tree mask [B, L, L], gather positions/tokens [B, G].

    Segment 0 is the prompt, 1..n the candidates, -1 padding. Query q may attend key k when
    k <= q and (k is prompt or same segment); padding queries attend themselves (no empty rows).
    """
    if any(not t.prompt for t in trees):
        raise ValueError("every tree needs a non-empty prompt (the prefix token at least)")
    length = max(t.row_length for t in trees)
    gathers = max(sum(len(c) for c in t.candidates) for t in trees)
    b = len(trees)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    pos = torch.zeros((b, length), dtype=torch.long)
    seg = torch.full((b, length), -1, dtype=torch.long)
    gpos = torch.zeros((b, gathers), dtype=torch.long)
    gtok = torch.full((b, gathers), pad_id, dtype=torch.long)
    for i, t in enumerate(trees):
        p = len(t.prompt)
        ids[i, :p] = torch.tensor(t.prompt)
        pos[i, :p] = torch.arange(p)
        seg[i, :p] = 0
        at, g = p, 0
        for j, c in enumerate(t.candidates, start=1):
            n = len(c)
            ids[i, at:at + n] = torch.tensor(c)
            pos[i, at:at + n] = torch.arange(p, p + n)
            seg[i, at:at + n] = j
            # token c[0] is predicted at the prompt's last position, c[m] at the slot of c[m-1]
            gpos[i, g] = p - 1
            gpos[i, g + 1:g + n] = torch.arange(at, at + n - 1)
            gtok[i, g:g + n] = torch.tensor(c)
            at += n
            g += n
    idx = torch.arange(length)
    causal = idx[None, :, None] >= idx[None, None, :]
    sq, sk = seg[:, :, None], seg[:, None, :]
    mask = causal & (sq >= 0) & ((sk == 0) | (sk == sq))
    mask |= torch.eye(length, dtype=torch.bool)[None]
    return ids, pos, mask, gpos, gtok


def batches_by_tokens(lengths: Sequence[int], max_batch_tokens: int,
                      max_batch_size: int) -> Iterator[List[int]]:
    """Indices grouped by similar length (longest first) under a padded-token budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batch: List[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and (len(batch) >= max_batch_size or width * (len(batch) + 1) > max_batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def score_trees(backend: Backend, trees: Sequence[Tree], max_batch_tokens: int = 8192,
                max_batch_size: int = 32,
                on_batch: Optional[Callable[[int], None]] = None) -> List[CandidateScores]:
    """Summed and per-token log-likelihood of every candidate, one forward per batch of trees."""
    out: List[Optional[CandidateScores]] = [None] * len(trees)
    lengths = [t.row_length for t in trees]
    for batch in batches_by_tokens(lengths, max_batch_tokens, max_batch_size):
        chunk = [trees[i] for i in batch]
        ids, pos, mask, gpos, gtok = tree_tensors(chunk, backend.pad_id)
        with torch.no_grad():
            lp = backend.token_logprobs(ids, pos, mask, gpos, gtok).double().cpu()
        for row, (i, t) in enumerate(zip(batch, chunk)):
            sums, last, at = [], [], 0
            for c in t.candidates:
                sums.append(float(lp[row, at:at + len(c)].sum()))
                last.append(float(lp[row, at + len(c) - 1]))
                at += len(c)
            out[i] = CandidateScores(tuple(sums), tuple(len(c) for c in t.candidates), tuple(last))
        if on_batch is not None:
            on_batch(len(batch))
    return out  # type: ignore[return-value]


def score_separately(backend: Backend, trees: Sequence[Tree], **kwargs) -> List[CandidateScores]:
    """Baseline: every (prompt, candidate) pair as its own sequence, as lm-evaluation-harness does."""
    flat = [Tree(t.prompt, (c,)) for t in trees for c in t.candidates]
    scores = score_trees(backend, flat, **kwargs)
    out, at = [], 0
    for t in trees:
        part = scores[at:at + len(t.candidates)]
        out.append(CandidateScores(tuple(s.sums[0] for s in part), tuple(s.lengths[0] for s in part),
                                   tuple(s.last[0] for s in part)))
        at += len(t.candidates)
    return out


def generate_all(backend: Backend, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 batch_size: int, on_batch: Optional[Callable[[int], None]] = None,
                 stop_strings: Tuple[str, ...] = ()) -> List[List[int]]:
    """Greedy continuations, batched by similar prompt length to keep left padding small; each stops at
    `</s>`, at a stop string (see `Backend.generate`) or after `max_new_tokens`."""
    out: List[Optional[List[int]]] = [None] * len(prompts)
    lengths = [len(p) for p in prompts]
    budget = batch_size * (max(lengths) if lengths else 1)
    for batch in batches_by_tokens(lengths, budget, batch_size):
        prompts_b = [prompts[i] for i in batch]
        gen = (backend.generate(prompts_b, max_new_tokens, stop_strings) if stop_strings
               else backend.generate(prompts_b, max_new_tokens))
        for i, g in zip(batch, gen):
            out[i] = list(g)
        if on_batch is not None:
            on_batch(len(batch))
    return out  # type: ignore[return-value]


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The continuation without leading whitespace, cut before its earliest stop string."""
    text = text.lstrip()
    cut = len(text)
    for s in stops:
        k = text.find(s) if s else -1
        if k != -1:
            cut = min(cut, k)
    return text[:cut].rstrip()
