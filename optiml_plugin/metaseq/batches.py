"""Core batches -> metaseq samples, and validation batches read in order.

Why: metaseq's models and criterions read `{"id", "net_input": {"src_tokens"}, "target",
"nsentences", "ntokens", "ntokens_target"}`; the core pipeline yields richer dict batches
(segment ids, benchmark ids). The conversion keeps the extra keys so the criterion can log
per-benchmark loss, and passes the segment ids to the decoder, which masks attention and places
positions by them (`segment_attention`), never by sniffing token id 2.
Validation subsets are evaluation splits read task by task in file order (the first N examples of
each task), packed once and cut into the same number of batches on every data-parallel rank (all-pad
rows fill the last ones), so every rank takes part in every step and nothing is resampled.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from optiml_plugin.data.benchfiles import Bench
from optiml_plugin.data.packing import Block, PackingConfig, build_block, pack
from optiml_plugin.data.pipeline import collate_blocks
from optiml_plugin.data.tokenizer import PAD_ID, OptTokenizer
from optiml_plugin.data.validation import validation_set

# keys of a metaseq sample that are not tensors the model reads, but what the criterion logs
EXTRA_KEYS = ("segment_ids", "benchmark_ids")


def to_metaseq_sample(batch: Dict[str, Any], ids: torch.Tensor, pad: int = PAD_ID,
                      document_masking: bool = True) -> Dict[str, Any]:
    """One core batch (`input_ids`, `target_ids`, `loss_mask`, `segment_ids`, `benchmark_ids`) as a
    metaseq sample; `target` carries pad wherever there is no loss. With document masking the segment
    ids go into `net_input` too: the decoder (see `segment_attention`) masks and places positions by them."""
    src = batch["input_ids"].long()
    mask = batch["loss_mask"].bool()
    target = batch["target_ids"].long().masked_fill(~mask, pad)
    segments = batch["segment_ids"].long()
    net_input: Dict[str, Any] = {"src_tokens": src}
    if document_masking:
        net_input["segment_ids"] = segments
    sample: Dict[str, Any] = {
        "id": ids.long(),
        "net_input": net_input,
        "target": target,
        "nsentences": int(src.shape[0]),
        "ntokens": int(src.ne(pad).sum()),
        "ntokens_target": int(mask.sum()),
        "segment_ids": segments,
    }
    if "benchmark_ids" in batch:
        sample["benchmark_ids"] = batch["benchmark_ids"].long()
    return sample


def validation_blocks(bench: Bench, splits: Sequence[str], tokenizer: OptTokenizer, packing: PackingConfig,
                      max_per_task: Optional[int], benchmarks: Sequence[str]) -> List[Block]:
    """Pack the first `max_per_task` examples of every task of `splits`, in manifest and file order.

    Benchmark ids index `benchmarks` (the training mixture's list) so per-benchmark validation loss
    uses the same keys as training; a benchmark absent from training gets id -1 (logged in total only).
    """
    items = []
    for split in splits:
        items += validation_set(bench, split, tokenizer, packing, max_per_task, benchmarks,
                                first_index=len(items)).items
    return pack(items, packing, pad_id=tokenizer.pad_id)


def shard_validation(blocks: Sequence[Block], batch_size: int, rank: int, world_size: int,
                     block_size: int, document_masking: bool = True,
                     pad: int = PAD_ID) -> List[Dict[str, Any]]:
    """This rank's validation samples: global batch k holds blocks [k*B*W, (k+1)*B*W), rank r takes
    its B rows; every rank gets the same number of samples of shape [B, L] (empty blocks, all
    pad and no loss, fill the last rows)."""
    per_step = batch_size * world_size
    steps = -(-len(blocks) // per_step)
    empty = build_block([], block_size, pad)
    out = []
    for k in range(steps):
        lo = k * per_step + rank * batch_size
        mine = list(blocks[lo:lo + batch_size])
        mine += [empty] * (batch_size - len(mine))
        ids = torch.arange(lo, lo + batch_size, dtype=torch.long)
        out.append(to_metaseq_sample(collate_blocks(mine, pad_id=pad), ids, pad=pad,
                                     document_masking=document_masking))
    return out
