"""Document masking on metaseq's xformers attention (`--attn-variant xformers_default`) from segment ids.

Why: metaseq's `ModelParallelMultiheadAttention` with that variant calls
`xops.memory_efficient_attention(q, k, v, attn_bias=xops.LowerTriangularMask(), op=self.xf_op)` on
[B x heads, L, head_dim] tensors and ignores `attn_mask`, so packed examples would see each other.
xformers' `BlockDiagonalCausalMask` expresses the documents as lengths, but needs the batch laid end
to end as one sequence ([1, B x L, heads, head_dim]). `use_block_diagonal(attention)` makes one
attention instance run that same kernel call (same op, the default 1/sqrt(head_dim) scale, no
attention dropout, as metaseq's call) on that layout when the decoder passes it a
`BlockDiagonalCausalMask` as `attn_mask` (see `segment_attention.use_segment_masks`): the mask
travels with the layer's arguments, so activation checkpointing recomputes with it. No L x L mask is
built. Any other call (a dense mask, incremental decoding) goes to metaseq's own forward.

Nothing here imports metaseq; xformers is imported when a mask is built, with a clear error if absent.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from optiml_plugin.attention import block_lengths
from optiml_plugin.errors import ConfigError

# metaseq's `--attn-variant` for the xformers kernel
XFORMERS_VARIANT = "xformers_default"


def xformers_ops() -> Any:
    """`xformers.ops`, or a `ConfigError` saying what to install."""
    try:
        import xformers.ops as xops
    except ImportError as e:
        raise ConfigError(f"--attn-variant {XFORMERS_VARIANT} with document masking needs xformers "
                          f"(`pip install xformers` built for your torch and CUDA): {e}. Or use "
                          "--attn-variant default (dense document mask).") from None
    return xops


def block_diagonal_mask(segment_ids: torch.Tensor) -> Any:
    """xformers' `BlockDiagonalCausalMask` over the rows laid end to end: one block per example and
    one per padding run (`attention.block_lengths`), so pads attend to pads only and no row is empty."""
    return xformers_ops().fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(block_lengths(segment_ids))


def uses_xformers(attention: Any) -> bool:
    """Whether `attention` is a metaseq attention module built with `--attn-variant xformers_default`."""
    return bool(getattr(attention, "xf_eff_attn", False))


def use_block_diagonal(attention: Any) -> None:
    """Make one metaseq xformers attention instance honour a `BlockDiagonalCausalMask` given as `attn_mask`."""
    if getattr(attention, "_optiml_block_diagonal", False):
        return
    if not (getattr(attention, "self_attention", False) and getattr(attention, "combine_qkv_proj", False)):
        raise ConfigError(f"--attn-variant {XFORMERS_VARIANT} with document masking supports metaseq's "
                          "self-attention with one combined qkv projection (metaseq main); this module has "
                          "another layout: use --attn-variant default")
    attention._optiml_block_diagonal = True
    forward = attention.forward
    bias_type = xformers_ops().fmha.attn_bias.BlockDiagonalCausalMask

    def block_forward(query: torch.Tensor, key: Optional[torch.Tensor], value: Optional[torch.Tensor],
                      key_padding_mask: Optional[torch.Tensor] = None, incremental_state: Any = None,
                      attn_mask: Any = None, **kwargs: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not isinstance(attn_mask, bias_type) or incremental_state is not None:
            return forward(query, key, value, key_padding_mask=key_padding_mask,
                           incremental_state=incremental_state, attn_mask=attn_mask, **kwargs)
        return _attend(attention, query, attn_mask)

    attention.forward = block_forward


def _attend(attention: Any, query: torch.Tensor, mask: Any) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """metaseq's xformers branch (qkv projection split k, v, q; kernel; output projection) with the
    rows laid end to end; returns what metaseq's forward returns (output, output-projection bias)."""
    length, batch, _ = query.shape
    heads, dim = attention.num_heads_partition, attention.head_dim
    kvq, _ = attention.qkv_proj(query)
    k, v, q = kvq.chunk(3, dim=-1)

    def end_to_end(x: torch.Tensor) -> torch.Tensor:  # [L, B, H*D] -> [1, B*L, H, D]
        return x.reshape(length, batch, heads, dim).transpose(0, 1).reshape(1, batch * length, heads, dim)

    out = xformers_ops().memory_efficient_attention(end_to_end(q), end_to_end(k), end_to_end(v),
                                                    attn_bias=mask, op=attention.xf_op)
    out = out.reshape(batch, length, heads * dim).transpose(0, 1).contiguous()  # [L, B, H*D / mp]
    return attention.out_proj(out)
