"""Document-causal attention from segment ids: dense masks, FlexAttention block masks, positions.

Why: packed rows hold several examples that must not see each other. The packer records segment
ids (0 = padding), so masks never depend on spotting token id 2 inside text (metaseq's approach,
which breaks if a `</s>` occurs in an example). Backends that take sequence lengths or block masks
(FlexAttention, varlen kernels) need no dense L x L mask at all; `document_causal_mask` is for the
eager/SDPA path; `block_lengths` gives the blocks of a block-diagonal causal mask over the rows
laid end to end (xformers' `BlockDiagonalCausalMask`, varlen kernels' cumulative lengths).
(metaseq's own `--self-attn-doc-sep` rule, restated for parity checks, is in
tests/attention_reference.py.)
"""
from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch

from optiml_plugin.errors import OptimlError

# FlexAttention's default tile (queries and keys)
FLEX_BLOCK = 128


def document_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, L, L], True where query i may attend key j: same segment and j <= i.

    Padding (segment 0) attends causally to padding only: every softmax row keeps its diagonal,
    so nothing turns into NaN downstream, and no real token ever sees padding.
    """
    length = segment_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril_()
    return ((segment_ids[:, :, None] == segment_ids[:, None, :]) & causal).unsqueeze(1)


def additive_document_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, L, L]: 0 where query i may attend key j (same segment, j <= i), -inf elsewhere: the additive
    form (metaseq's future-mask convention) of `document_causal_mask`."""
    allowed = document_causal_mask(segment_ids)[:, 0]
    return torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device).masked_fill_(~allowed, float("-inf"))


def segment_starts(segment_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, L]: True at the first token of every run of equal segment ids."""
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return starts


def block_lengths(segment_ids: torch.Tensor) -> List[int]:
    """The lengths of the runs of equal segment ids, row after row, padding runs included: the blocks
    of a block-diagonal causal mask over the B rows laid end to end as one B x L sequence.

    Why: kernels that take sequence lengths instead of an L x L mask allow exactly what
    `document_causal_mask` allows when each segment id (padding too) is one run in its row, as the
    packer writes them: a padding run is a block of its own, so it attends causally to padding only.
    Raises `OptimlError` naming the row when an id comes back after another (the dense rule would
    join those runs; lengths cannot). Returns Python ints (one device-to-host copy of the ids).
    """
    seg = segment_ids.detach().cpu()
    starts = segment_starts(seg)
    distinct = segment_starts(seg.sort(dim=-1).values).sum(-1)
    split = (starts.sum(-1) != distinct).nonzero()
    if len(split):
        row = int(split[0])
        raise OptimlError(f"segment ids of row {row} repeat an id after another ({seg[row].tolist()}): "
                          "block-diagonal attention needs each example and the padding in one run per row")
    first = starts.reshape(-1).nonzero().squeeze(-1)
    ends = torch.cat([first[1:], torch.tensor([seg.numel()])])
    return (ends - first).tolist()


def run_positions(starts: torch.Tensor) -> torch.Tensor:
    """0-based offset of each token from the last True in `starts` at or before it."""
    idx = torch.arange(starts.shape[-1], device=starts.device).expand_as(starts)
    last_start = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    return idx - last_start


def position_ids_from_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Long [B, L]: 0-based positions restarting at each example, 0 on padding."""
    pos = run_positions(segment_starts(segment_ids))
    return torch.where(segment_ids > 0, pos, torch.zeros_like(pos))


def flex_attention_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask  # noqa: F401
    except ImportError:
        return False
    return True


def flex_block_mask(segment_ids: torch.Tensor, device: Optional[str] = None,
                    block_size: int = FLEX_BLOCK) -> Any:
    """A FlexAttention `BlockMask` with the same rule as `document_causal_mask`.

    For packer output (segment ids non-decreasing along a row, padding last) and L a multiple of
    `block_size`, the tile index is computed directly from per-tile min/max segment ids in
    O(B x (L / block_size)^2): no L x L evaluation at all (`create_block_mask` evaluates the
    mask_mod on every pair, seconds on CPU). Otherwise it falls back to `create_block_mask`.
    Raises `OptimlError` when the installed torch has no `torch.nn.attention.flex_attention`.
    """
    if not flex_attention_available():
        raise OptimlError(f"FlexAttention needs torch >= 2.5 (torch.nn.attention.flex_attention); "
                          f"installed torch is {torch.__version__}: use the dense mask instead")
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask

    seg = segment_ids.to(device) if device is not None else segment_ids
    batch, length = seg.shape
    # padding last: map it above every segment so a row's ids are non-decreasing
    ordered = torch.where(seg > 0, seg, torch.full_like(seg, length + 1))

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return (ordered[b, q] == ordered[b, kv]) & (kv <= q)

    monotone = bool((ordered[:, 1:] >= ordered[:, :-1]).all())
    if length % block_size or not monotone:
        return create_block_mask(mask_mod, batch, None, length, length, device=str(seg.device),
                                 BLOCK_SIZE=block_size)
    n = length // block_size
    tiles = ordered.view(batch, n, block_size)
    lo, hi = tiles.amin(-1), tiles.amax(-1)
    below = torch.ones(n, n, dtype=torch.bool, device=seg.device).tril_(-1)
    diagonal = torch.eye(n, dtype=torch.bool, device=seg.device)
    # kv tile k < q tile q: ids are sorted, so hi[k] <= lo[q]; they share a segment iff equal,
    # and every pair is allowed iff both tiles hold that one segment only
    touches = (hi[:, None, :] == lo[:, :, None]) & below
    full = touches & (lo[:, None, :] == hi[:, :, None])
    partial = (touches & ~full) | diagonal

    def index(tiles_on: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        counts = tiles_on.sum(-1, dtype=torch.int32)
        order = torch.sort((~tiles_on).to(torch.int8), dim=-1, stable=True).indices.to(torch.int32)
        return counts[:, None], order[:, None]

    kv_num, kv_idx = index(partial)
    full_num, full_idx = index(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(length, length))
