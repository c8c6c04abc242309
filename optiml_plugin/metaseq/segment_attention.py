"""Document masking inside metaseq's decoder from the batch's segment ids, not from token id 2.

Why: metaseq's `--self-attn-doc-sep 2` finds documents by looking for `</s>` and makes the `</s>` the
END of a document, so an example can never attend to a `</s>` that opens it; OPT was pre-trained with
`</s>` opening every document, and the evaluator scores prompts that way. Driving the mask and the
positions from the packer's segment ids makes metaseq see exactly the documents the core packed (the
same rule as the local trainer and evaluation), whatever tokens they hold.

`use_segment_masks(decoder)` adapts one metaseq `ModelParallelTransformerDecoder` instance: its forward
takes `segment_ids=` (the task puts them into `net_input`), its future mask becomes the [B, L, L]
document-causal mask (metaseq's attention already takes 3-D masks, the doc-sep path's shape), and its
learned positions restart at 0 with every example. With `--attn-variant xformers_default` (whose
kernel call ignores dense masks) the future mask is xformers' `BlockDiagonalCausalMask` of the same
documents instead, and each attention module is adapted to use it (`xformers_attention`). Nothing
here imports metaseq.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from optiml_plugin.attention import additive_document_mask, position_ids_from_segments
from optiml_plugin.conventions import PAD_ID
from optiml_plugin.metaseq.xformers_attention import block_diagonal_mask, use_block_diagonal, uses_xformers


def learned_positions(segment_ids: torch.Tensor, padding_idx: int = PAD_ID) -> torch.Tensor:
    """metaseq's learned-position indices: padding_idx + 1 at each example's first token (what
    `utils.make_positions` gives a document's first token), counting up within it; padding_idx on pads."""
    pos = position_ids_from_segments(segment_ids) + padding_idx + 1
    return torch.where(segment_ids > 0, pos, torch.full_like(pos, padding_idx))


def use_segment_masks(decoder: Any) -> None:
    """Make `decoder` (a metaseq decoder instance) mask attention and place positions by segment ids."""
    if getattr(decoder, "_optiml_segments_enabled", False):
        return
    decoder._optiml_segments_enabled = True
    decoder._optiml_segments = None
    forward, future_mask = decoder.forward, decoder.buffered_future_mask
    pos_module = decoder.embed_positions
    xformers = [module for module in decoder.modules() if uses_xformers(module)]
    for attention in xformers:
        use_block_diagonal(attention)

    def seg_forward(prev_output_tokens: torch.Tensor, *args: Any, segment_ids: Optional[torch.Tensor] = None,
                    **kwargs: Any) -> Any:
        if segment_ids is not None and segment_ids.shape != prev_output_tokens.shape:
            raise ValueError(f"segment_ids {tuple(segment_ids.shape)} do not match the tokens "
                             f"{tuple(prev_output_tokens.shape)}")
        decoder._optiml_segments = segment_ids
        try:
            return forward(prev_output_tokens, *args, **kwargs)
        finally:
            decoder._optiml_segments = None

    def seg_future_mask(tensor: torch.Tensor, input_tokens: Optional[torch.Tensor] = None) -> torch.Tensor:
        segments = decoder._optiml_segments
        if segments is None:
            return future_mask(tensor, input_tokens)
        if xformers:
            return block_diagonal_mask(segments)
        return additive_document_mask(segments, dtype=tensor.dtype)

    decoder.forward = seg_forward
    decoder.buffered_future_mask = seg_future_mask
    if pos_module is not None:
        pos_forward = pos_module.forward

        def seg_positions(input: torch.Tensor, incremental_state: Any = None,
                          positions: Optional[torch.Tensor] = None) -> torch.Tensor:
            segments = decoder._optiml_segments
            if segments is None or incremental_state:
                return pos_forward(input, incremental_state=incremental_state, positions=positions)
            # metaseq takes precomputed positions only with padding_idx None (its doc-sep path clears it
            # for good); restored at once, so that a later forward without segment ids (generation, a
            # plain validation subset) still derives its positions from the padding
            padding_idx, pos_module.padding_idx = pos_module.padding_idx, None
            try:
                return pos_forward(input, positions=learned_positions(segments, decoder.padding_idx))
            finally:
                pos_module.padding_idx = padding_idx

        pos_module.forward = seg_positions
