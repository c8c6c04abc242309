"""Print the cost of document-masking metadata for one packed batch (default 8 rows x 2048 tokens).

    python benchmarks/mask_cost.py
    python benchmarks/mask_cost.py --rows 16 --tokens-per-sample 4096 --repeats 20

Compared: positions from segment ids (all a varlen/FlexAttention backend needs besides the O(B x L)
segment ids the packer already provides), a FlexAttention block mask (block-sparse index, no L x L
tensor), the block lengths of xformers' BlockDiagonalCausalMask (what metaseq's `--attn-variant
xformers_default` gets; the mask object itself when xformers is installed), the dense bool [B,1,L,L]
mask, the float [B,L,L] mask metaseq's default attention gets, the vectorized metaseq
`--self-attn-doc-sep` mask + positions, and a re-statement of metaseq's per-batch loop (dense float
mask with Python loops over separators, host syncs included). The batch is packed from paper-like
lengths (prompt mean 261, std 631).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))

from attention_reference import metaseq_doc_sep  # noqa: E402
from optiml_plugin.attention import (additive_document_mask, block_lengths,  # noqa: E402
                                     document_causal_mask, flex_attention_available, flex_block_mask,
                                     position_ids_from_segments)
from optiml_plugin.data.packing import PackingConfig, make_item, pack  # noqa: E402
from optiml_plugin.data.pipeline import collate_blocks  # noqa: E402
from packing_efficiency import synthetic_pairs  # noqa: E402


def metaseq_loop(tokens: torch.Tensor, sep: int = 2, padding_idx: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """metaseq's doc-sep mask and positions as its per-batch Python loops build them."""
    bsz, length = tokens.shape
    mask = torch.triu(torch.full((length, length), float("-inf")), 1).repeat(bsz, 1, 1)
    positions = torch.zeros(bsz, length, dtype=torch.long)
    for b in range(bsz):
        start = 0
        for i in (tokens[b] == sep).nonzero().flatten().tolist():
            mask[b, i + 1:, :i + 1] = float("-inf")
            positions[b, start:i + 1] = torch.arange(i + 1 - start) + padding_idx + 1
            start = i + 1
        positions[b, start:] = torch.arange(length - start) + padding_idx + 1
    return mask, positions


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (first-call imports and allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def packed_batch(rows: int, tokens_per_sample: int, seed: int) -> Dict[str, torch.Tensor]:
    """`rows` packed rows of paper-like examples (the packer's collated batch), and a line saying so."""
    cfg = PackingConfig(tokens_per_sample=tokens_per_sample)
    pairs = synthetic_pairs(rows * 40, seed)
    blocks = pack([make_item(s, t, cfg, index=i) for i, (s, t) in enumerate(pairs)], cfg)[:rows]
    batch = collate_blocks(blocks)
    seg = batch["segment_ids"]
    print(f"batch {seg.shape[0]} x {seg.shape[1]}, {int((seg > 0).sum())} non-pad tokens, "
          f"{sum(len(b.lengths) for b in blocks)} examples; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    return batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens-per-sample", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    batch = packed_batch(args.rows, args.tokens_per_sample, args.seed)
    seg, tokens = batch["segment_ids"], batch["input_ids"]
    B, L = seg.shape
    rows = [("segment ids -> positions (O(B x L))", lambda: position_ids_from_segments(seg))]
    if flex_attention_available():
        rows.append(("FlexAttention block mask", lambda: flex_block_mask(seg)))
    else:
        print("(FlexAttention not available in this torch: block mask skipped)")
    rows.append(("segment ids -> block lengths (xformers blocks)", lambda: block_lengths(seg)))
    if importlib.util.find_spec("xformers") is not None:
        from xformers.ops.fmha.attn_bias import BlockDiagonalCausalMask

        rows.append(("xformers BlockDiagonalCausalMask (metaseq)",
                     lambda: BlockDiagonalCausalMask.from_seqlens(block_lengths(seg))))
    else:
        print("(xformers not installed: its BlockDiagonalCausalMask row skipped)")
    rows += [("dense bool mask [B,1,L,L]", lambda: document_causal_mask(seg)),
             ("float mask [B,L,L] (metaseq default attention)", lambda: additive_document_mask(seg)),
             ("vectorized metaseq doc-sep mask + positions", lambda: metaseq_doc_sep(tokens)),
             ("metaseq per-batch loop (float mask + positions)", lambda: metaseq_loop(tokens))]
    print(f"{'what':<50} {'ms':>9} {'MiB':>8}")
    sizes = {"dense bool mask [B,1,L,L]": B * L * L / 2 ** 20,
             "vectorized metaseq doc-sep mask + positions": B * L * L / 2 ** 20,
             "metaseq per-batch loop (float mask + positions)": B * L * L * 4 / 2 ** 20,
             "float mask [B,L,L] (metaseq default attention)": B * L * L * 4 / 2 ** 20,
             "segment ids -> positions (O(B x L))": B * L * 8 / 2 ** 20,
             # the ids' host copy; the mask keeps one int32 start per block
             "segment ids -> block lengths (xformers blocks)": B * L * 8 / 2 ** 20,
             "xformers BlockDiagonalCausalMask (metaseq)": B * L * 8 / 2 ** 20,
             # kv/full counts and indices, plus the transposed q-side copies: int32 [B, 1, n, n]
             "FlexAttention block mask": 8 * B * (L // 128) ** 2 * 4 / 2 ** 20}
    for name, fn in rows:
        size = sizes.get(name)
        print(f"{name:<50} {timed(fn, args.repeats):>9.2f} {size if size is not None else float('nan'):>8.1f}")
    print("(figures measured on a shared 2-core machine: absolute times are inflated by contention)")


if __name__ == "__main__":
    main()
