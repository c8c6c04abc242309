"""Core batches -> metaseq samples.

Why: metaseq's models and criterions read `{"id", "net_input": {"src_tokens"}, "target",
"nsentences", "ntokens", "ntokens_target"}`; the core pipeline yields richer dict batches
(segment ids, benchmark ids). The conversion keeps the extra keys so the criterion can log
per-benchmark loss, and passes the segment ids to the decoder, which masks attention and places
positions by them (`segment_attention`), never by sniffing token id 2.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from optiml_plugin.conventions import PAD_ID


def to_metaseq_sample(batch: Dict[str, Any], ids: torch.Tensor, pad: int = PAD_ID,
                      document_masking: bool = True,
                      valid_groups: Optional[Sequence[Tuple[str, str]]] = None) -> Dict[str, Any]:
    """One core batch (`input_ids`, `target_ids`, `loss_mask`, `segment_ids`, `benchmark_ids`) as a
    metaseq sample; `target` carries pad wherever there is no loss. With document masking the segment
    ids go into `net_input` too: the decoder (see `segment_attention`) masks and places positions by them.
    A validation sample also carries its `task_ids` and `valid_groups`, the (benchmark, category) of
    each task id, which the criterion's telemetry groups validation losses by."""
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
    if "demo_k" in batch:   # MetaICL / mixed prompts: demonstrations per token's example
        sample["demo_k"] = batch["demo_k"].long()
    if valid_groups is not None:
        sample["task_ids"] = batch["task_ids"].long()
        sample["valid_groups"] = list(valid_groups)
    return sample
