"""Core batches -> metaseq samples, the separator check, and validation batches read in order.

Why: metaseq's models and criterions read `{"id", "net_input": {"src_tokens"}, "target",
"nsentences", "ntokens", "ntokens_target"}`; the core pipeline yields richer dict batches
(segment ids, benchmark ids). The conversion keeps the extra keys so the criterion can log
per-benchmark loss, and checks that metaseq's `--self-attn-doc-sep 2` (which finds documents by
sniffing token id 2) sees exactly the packer's example boundaries.
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
from optiml_plugin.data.tokenizer import EOS_ID, PAD_ID, OptTokenizer
from optiml_plugin.data.validation import validation_set
from optiml_plugin.errors import OptimlError

# keys of a metaseq sample that are not tensors the model reads, but what the criterion logs
EXTRA_KEYS = ("segment_ids", "benchmark_ids")


def check_doc_separators(src_tokens: torch.Tensor, segment_ids: torch.Tensor, sep: int = EOS_ID) -> None:
    """Raise unless every example boundary inside a row is a `sep` token and every `sep` token is
    the last token of its example or the one-token source (`</s>` as BOS) that starts one.

    Under `--self-attn-doc-sep`, metaseq would otherwise mix examples (a missing separator) or
    split one (a stray separator); the core tokenizer never emits id 2 from text, so a failure
    means the data or tokenizer is not the one this task was built for.
    """
    seg = segment_ids.long()
    is_sep = src_tokens == sep
    nxt = torch.zeros_like(seg)
    nxt[:, :-1] = seg[:, 1:]
    prev = torch.zeros_like(seg)
    prev[:, 1:] = seg[:, :-1]
    in_example = seg > 0
    ends = in_example & (nxt != seg)
    starts = in_example & (prev != seg)
    inner_boundary = ends & (nxt > 0)
    missing = inner_boundary & ~is_sep
    stray = is_sep & in_example & ~ends & ~starts
    if bool(missing.any()) or bool(stray.any()):
        bad = (missing | stray).nonzero()[0].tolist()
        what = "an example boundary without a separator" if bool(missing.any()) else \
            f"token id {sep} inside an example"
        raise OptimlError(f"batch row {bad[0]}, position {bad[1]}: {what}; metaseq's "
                          f"--self-attn-doc-sep {sep} would mask documents wrongly. Check that the data directory and "
                          f"the tokenizer files are the ones the bench was built with.")


def to_metaseq_sample(batch: Dict[str, Any], ids: torch.Tensor, pad: int = PAD_ID,
                      check_sep: Optional[int] = EOS_ID) -> Dict[str, Any]:
    """One core batch (`input_ids`, `target_ids`, `loss_mask`, `segment_ids`, `benchmark_ids`) as a
    metaseq sample; `target` carries pad wherever there is no loss."""
    src = batch["input_ids"].long()
    mask = batch["loss_mask"].bool()
    target = batch["target_ids"].long().masked_fill(~mask, pad)
    segments = batch["segment_ids"].long()
    if check_sep is not None:
        check_doc_separators(src, segments, check_sep)
    sample: Dict[str, Any] = {
        "id": ids.long(),
        "net_input": {"src_tokens": src},
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
                     block_size: int, check_sep: Optional[int] = EOS_ID,
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
        out.append(to_metaseq_sample(collate_blocks(mine, pad_id=pad), ids, pad=pad, check_sep=check_sep))
    return out
