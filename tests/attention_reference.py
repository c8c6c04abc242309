"""Reference restatements used only by tests and benchmarks: metaseq's `--self-attn-doc-sep` rule
(vectorized) and per-row example lengths, to check the product's segment-id masks against."""
from __future__ import annotations

from typing import List, Tuple

import torch

from optiml_plugin.attention import run_positions


def segment_lengths(segment_ids: torch.Tensor) -> List[List[int]]:
    """Per row, the lengths of its examples in order (padding excluded; it fills the rest)."""
    out: List[List[int]] = []
    for row in segment_ids.detach().cpu():
        values, counts = torch.unique_consecutive(row, return_counts=True)
        out.append([int(c) for v, c in zip(values.tolist(), counts.tolist()) if v > 0])
    return out


def metaseq_doc_ids(tokens: torch.Tensor, sep: int = 2) -> torch.Tensor:
    """Long [B, L]: number of separators strictly before each position (metaseq's documents)."""
    is_sep = (tokens == sep).long()
    return is_sep.cumsum(dim=-1) - is_sep


def metaseq_doc_sep_mask(tokens: torch.Tensor, sep: int = 2) -> torch.Tensor:
    """Bool [B, 1, L, L] equal to metaseq's `--self-attn-doc-sep` mask (True = may attend).

    metaseq blocks, for every separator at i, all rows after i from the columns <= i, on top of
    the causal mask: so i sees j <= i iff no separator lies in [j, i-1], i.e. both have the same
    count of separators before them. The separator belongs to the document it ends.
    """
    doc = metaseq_doc_ids(tokens, sep)
    length = tokens.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril_()
    return ((doc[:, :, None] == doc[:, None, :]) & causal).unsqueeze(1)


def metaseq_doc_sep_positions(tokens: torch.Tensor, sep: int = 2, padding_idx: int = 1) -> torch.Tensor:
    """Long [B, L]: metaseq's positions under doc-sep, restarting at `padding_idx + 1` per document
    (tokens `143 345 2 5435 2` -> `2 3 4 2 3`)."""
    is_sep = tokens == sep
    starts = torch.ones_like(is_sep)
    starts[:, 1:] = is_sep[:, :-1]
    return run_positions(starts) + padding_idx + 1


def metaseq_doc_sep(tokens: torch.Tensor, sep: int = 2, padding_idx: int = 1
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(mask, positions)` as metaseq's `--self-attn-doc-sep` builds them."""
    return metaseq_doc_sep_mask(tokens, sep), metaseq_doc_sep_positions(tokens, sep, padding_idx)
