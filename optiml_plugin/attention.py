"""Document-causal attention from segment ids: dense masks, FlexAttention block masks, positions.

Why: packed rows hold several examples that must not see each other. The packer records segment
ids (0 = padding), so masks never depend on spotting token id 2 inside text (metaseq's approach,
which breaks if a `</s>` occurs in an example). Backends that take sequence lengths or block masks
(FlexAttention, varlen kernels) need no dense L x L mask at all; `document_causal_mask` is for the
eager/SDPA path. `metaseq_doc_sep_mask` restates metaseq's `--self-attn-doc-sep` rule vectorized,
for the metaseq adapter and for parity checks.
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from optiml_plugin.errors import OptimlError


def document_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, L, L], True where query i may attend key j: same segment and j <= i.

    Padding (segment 0) attends only to itself, so no softmax row is empty (no NaNs downstream).
    """
    seg = segment_ids
    length = seg.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril_()
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
    eye = torch.eye(length, dtype=torch.bool, device=seg.device)
    return ((same & causal) | eye).unsqueeze(1)


def _segment_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: True at the first token of every run of equal segment ids."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts


def _run_positions(starts: torch.Tensor) -> torch.Tensor:
    """0-based offset of each token from the last True in `starts` at or before it."""
    idx = torch.arange(starts.shape[-1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - last_start


def position_ids_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Long [B, L]: 0-based positions restarting at each example, 0 on padding."""
    pos = _run_positions(_segment_starts(segment_ids))
    return torch.where(segment_ids > 0, pos, torch.zeros_like(pos))


def segment_lengths(segment_ids: torch.Tensor) -> List[List[int]]:
    """Per row, the lengths of its examples in order (padding excluded; it fills the rest)."""
    out: List[List[int]] = []
    for row in segment_ids.detach().cpu():
        values, counts = torch.unique_consecutive(row, return_counts=True)
        out.append([int(c) for v, c in zip(values.tolist(), counts.tolist()) if v > 0])
    return out


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def flex_block_mask(segment_ids: torch.Tensor, device: Optional[str] = None) -> Any:
    """A FlexAttention `BlockMask` for document-causal attention (padding attends to itself).

    Only O(B x L) metadata plus the block-sparse index is built; fully masked tiles are skipped.
    Raises `OptimlError` when the installed torch has no `torch.nn.attention.flex_attention`.
    """
    if not flex_attention_available():
        raise OptimlError(f"FlexAttention needs torch >= 2.5 (torch.nn.attention.flex_attention); "
                          f"installed torch is {torch.__version__}: use the dense mask instead")
    from torch.nn.attention.flex_attention import create_block_mask

    seg = segment_ids.to(device) if device is not None else segment_ids
    batch, length = seg.shape

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        same = (seg[b, q] == seg[b, kv]) & (seg[b, q] > 0) & (kv <= q)
        return same | (q == kv)

    return create_block_mask(mask_mod, batch, None, length, length, device=str(seg.device))


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
    return _run_positions(starts) + padding_idx + 1


def metaseq_doc_sep(tokens: torch.Tensor, sep: int = 2, padding_idx: int = 1
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """`(mask, positions)` as metaseq's `--self-attn-doc-sep` builds them."""
    return metaseq_doc_sep_mask(tokens, sep), metaseq_doc_sep_positions(tokens, sep, padding_idx)
