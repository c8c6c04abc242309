"""Target-only cross entropy returned as sums and counts.

Why: OPT-IML's loss covers target tokens (plus `</s>`) only and is normalized by the number of
target tokens across all workers (metaseq's `sample_size = ntokens_target`). Returning sums and
counts lets data-parallel workers and gradient-accumulation steps add them up before dividing,
so the result equals the whole-batch loss exactly. Example normalization (each example's mean
target NLL, averaged over examples) is offered beside it; it needs segment ids to find examples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from optiml_plugin.errors import ConfigError

NORMALIZE = ("token", "example")


@dataclass
class LossSums:
    """`nll_sum` over target tokens, their count, the sum over examples of each example's mean
    NLL, and the number of examples with at least one target token. All add across shards."""

    nll_sum: torch.Tensor
    target_tokens: torch.Tensor
    example_nll_sum: torch.Tensor
    examples: torch.Tensor
    normalize: str = "token"

    def loss(self, normalize: Optional[str] = None) -> torch.Tensor:
        mode = normalize or self.normalize
        _check_normalize(mode)
        if mode == "token":
            return self.nll_sum / self.target_tokens.clamp(min=1)
        return self.example_nll_sum / self.examples.clamp(min=1)

    def __add__(self, other: "LossSums") -> "LossSums":
        return LossSums(self.nll_sum + other.nll_sum, self.target_tokens + other.target_tokens,
                        self.example_nll_sum + other.example_nll_sum, self.examples + other.examples,
                        self.normalize)


def _check_normalize(mode: str) -> None:
    if mode not in NORMALIZE:
        raise ConfigError(f"loss normalize must be one of {NORMALIZE}, got {mode!r}")


def target_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor, loss_mask: torch.Tensor,
                         segment_ids: Optional[torch.Tensor] = None,
                         normalize: str = "token") -> LossSums:
    """Cross entropy of `logits` [B, L, V] against `target_ids` [B, L] where `loss_mask` is True.

    Only masked positions are gathered before the softmax (memory ~ target tokens x V). Without
    `segment_ids` each row counts as one example.
    """
    _check_normalize(normalize)
    mask = loss_mask.bool()
    if bool(mask.all()):  # logits already taken at target positions only: a view, not a [T, V] copy
        picked, targets = logits.reshape(-1, logits.shape[-1]), target_ids.reshape(-1)
    else:
        picked, targets = logits[mask], target_ids[mask]
    if picked.dtype in (torch.float16, torch.bfloat16):  # softmax in fp32, as metaseq does
        picked = picked.float()
    nll = F.cross_entropy(picked, targets.long(), reduction="none")
    target_tokens = mask.sum()
    if segment_ids is None:
        segments = torch.zeros_like(target_ids, dtype=torch.long)
    else:
        segments = segment_ids.long()
    width = int(segments.max().item()) + 1 if segments.numel() else 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    group = (rows * width + segments)[mask]
    n_groups = mask.shape[0] * width
    sums = torch.zeros(n_groups, dtype=nll.dtype, device=nll.device).index_add_(0, group, nll)
    counts = torch.zeros(n_groups, dtype=nll.dtype, device=nll.device).index_add_(
        0, group, torch.ones_like(nll))
    present = counts > 0
    example_nll_sum = (sums[present] / counts[present]).sum()
    return LossSums(nll.sum(), target_tokens, example_nll_sum, present.sum(), normalize)
