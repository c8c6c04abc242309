"""The target-only loss from full logits, for tests: the reference both trainers' fused paths must match.

Why here and not in the package: neither trainer computes full-vocabulary logits and then the loss
(the local trainer fuses the projection with the loss, metaseq's criterion takes its vocabulary
slice); this plain form is what they are checked against.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from optiml_plugin.loss import LossSums, example_groups, loss_sums


def target_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor, loss_mask: torch.Tensor,
                         segment_ids: Optional[torch.Tensor] = None, normalize: str = "token") -> LossSums:
    """Cross entropy of `logits` [B, L, V] against `target_ids` [B, L] where `loss_mask` is True
    (softmax in fp32 for half-precision logits, as metaseq does); without `segment_ids` each row is
    one example."""
    mask = loss_mask.bool()
    picked, targets = logits[mask], target_ids[mask]
    if picked.dtype in (torch.float16, torch.bfloat16):
        picked = picked.float()
    nll = F.cross_entropy(picked, targets.long(), reduction="none")
    return loss_sums(nll, example_groups(segment_ids, mask), normalize)
