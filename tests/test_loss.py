"""Target-only loss: masking, normalization modes, exact data-parallel sums."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import target_cross_entropy


def batch(seed=0, B=4, L=16, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, L, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (B, L), generator=g)
    seg = torch.zeros(B, L, dtype=torch.long)
    seg[:, :6], seg[:, 6:13] = 1, 2
    seg[1, 3:] = 0
    mask = (torch.rand(B, L, generator=g) > 0.4) & (seg > 0)
    return logits, targets, mask, seg


def test_token_normalized_equals_masked_mean():
    logits, targets, mask, seg = batch()
    sums = target_cross_entropy(logits, targets, mask, seg)
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.masked_fill(~mask, -100).reshape(-1),
                          ignore_index=-100)
    assert torch.allclose(sums.loss(), ref)
    assert int(sums.target_tokens) == int(mask.sum())


def test_example_normalized_is_mean_of_example_means():
    logits, targets, mask, seg = batch(1)
    sums = target_cross_entropy(logits, targets, mask, seg, normalize="example")
    nll = F.cross_entropy(logits.permute(0, 2, 1), targets, reduction="none")
    means = []
    for b in range(mask.shape[0]):
        for k in (1, 2):
            sel = mask[b] & (seg[b] == k)
            if sel.any():
                means.append(nll[b][sel].mean())
    assert int(sums.examples) == len(means)
    assert math.isclose(float(sums.loss()), float(torch.stack(means).mean()), rel_tol=1e-12)
    assert math.isclose(float(sums.loss("token")), float(nll[mask].mean()), rel_tol=1e-12)


def test_sums_over_two_shards_equal_whole_batch():
    logits, targets, mask, seg = batch(2)
    whole = target_cross_entropy(logits, targets, mask, seg)
    a = target_cross_entropy(logits[:2], targets[:2], mask[:2], seg[:2])
    b = target_cross_entropy(logits[2:], targets[2:], mask[2:], seg[2:])
    total = a + b
    for mode in ("token", "example"):
        assert torch.allclose(total.loss(mode), whole.loss(mode))
    assert int(total.target_tokens) == int(whole.target_tokens)


def test_gradient_flows_only_through_targets():
    logits, targets, mask, seg = batch(3)
    logits.requires_grad_(True)
    target_cross_entropy(logits, targets, mask, seg).loss().backward()
    assert (logits.grad[~mask] == 0).all()
    assert (logits.grad[mask].abs().sum(-1) > 0).all()


def test_bad_normalize():
    logits, targets, mask, seg = batch()
    with pytest.raises(ConfigError):
        target_cross_entropy(logits, targets, mask, seg, normalize="row")


def test_all_target_rows_take_the_view_path_with_the_same_sums():
    """Logits already gathered at target positions (every mask entry True, as TargetLM gives them)
    skip the boolean-index copy; sums, counts and gradients must equal the masked path's."""
    logits, targets, _, seg = batch(3)
    full = torch.ones_like(targets, dtype=torch.bool)
    fast = target_cross_entropy(logits, targets, full, seg)
    almost = full.clone()
    almost[0, 0] = False                       # forces the boolean-index path
    slow = target_cross_entropy(logits, targets, almost, seg)
    lone = F.cross_entropy(logits[0, 0:1], targets[0, 0:1], reduction="sum")
    assert torch.allclose(fast.nll_sum, slow.nll_sum + lone)
    assert int(fast.target_tokens) == targets.numel()
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="sum")
    assert torch.allclose(fast.nll_sum, ref)
    assert int(fast.examples) == sum(len(torch.unique(row)) for row in seg)  # (row, segment) groups
