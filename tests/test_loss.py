"""Target-only loss: masking, normalization modes, exact data-parallel sums, the fused projection + loss."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from optiml_plugin.errors import ConfigError
from loss_reference import target_cross_entropy
from optiml_plugin.loss import (MIN_CHUNK_ROWS, default_chunk_rows, example_groups, linear_cross_entropy,
                               loss_sums, token_coefficients)


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


def test_all_target_mask_counts_every_token_and_every_row_segment():
    """Every position a target: the sums are plain cross entropy, one masked-out token changes the sum by
    exactly its NLL, and every (row, segment) is an example."""
    logits, targets, _, seg = batch(3)
    full = torch.ones_like(targets, dtype=torch.bool)
    whole = target_cross_entropy(logits, targets, full, seg)
    almost = full.clone()
    almost[0, 0] = False
    less = target_cross_entropy(logits, targets, almost, seg)
    lone = F.cross_entropy(logits[0, 0:1], targets[0, 0:1], reduction="sum")
    assert torch.allclose(whole.nll_sum, less.nll_sum + lone)
    assert int(whole.target_tokens) == targets.numel()
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), reduction="sum")
    assert torch.allclose(whole.nll_sum, ref)
    assert int(whole.examples) == sum(len(torch.unique(row)) for row in seg)  # (row, segment) groups


# ---- fused output projection + cross entropy ----

def _projection(seed=0, n=37, d=8, V=53, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, d, generator=g, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (n,), generator=g)
    coefficients = torch.rand(n, generator=g, dtype=dtype) + 0.5
    return hidden, weight, targets, coefficients


@settings(max_examples=25, deadline=None)
@given(chunk=st.integers(1, 40), seed=st.integers(0, 10_000))
def test_linear_cross_entropy_equals_unfused_for_any_chunk(chunk, seed):
    """Value, per-token NLL and both gradients match F.cross_entropy on the full logits, whatever the chunking."""
    hidden, weight, targets, coefficients = _projection(seed)
    ref_nll = F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    (ref_nll * coefficients).sum().backward()
    ref_h, ref_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss, nll = linear_cross_entropy(hidden, weight, targets, coefficients, chunk=chunk)
    (3.0 * loss).backward()
    assert not nll.requires_grad and nll.dtype == torch.float64
    assert torch.allclose(nll, ref_nll.detach())
    assert torch.allclose(loss, (ref_nll * coefficients).sum().detach())
    assert torch.allclose(hidden.grad, 3.0 * ref_h)
    assert torch.allclose(weight.grad, 3.0 * ref_w)
    assert hidden.grad.dtype == weight.grad.dtype == torch.float64


def test_linear_cross_entropy_without_grad_gives_nll_and_refuses_backward():
    hidden, weight, targets, _ = _projection(1)
    with torch.no_grad():
        loss, nll = linear_cross_entropy(hidden, weight, targets)
    ref = F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    assert torch.allclose(nll, ref.detach())
    assert not loss.requires_grad
    h2, w2 = hidden.detach(), weight.detach()  # no input needs a gradient: nothing is kept for a backward
    loss, _ = linear_cross_entropy(h2, w2, targets)
    assert not loss.requires_grad


def test_linear_cross_entropy_under_bf16_autocast_matmuls_in_bf16_softmax_in_fp32():
    """Under autocast the projection runs in bf16 (as the unfused lm_head would) and gradients come back in
    the parameters' fp32; the NLL stays close to the fp32 one."""
    hidden, weight, targets, coefficients = _projection(2, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, nll = linear_cross_entropy(hidden, weight, targets, coefficients, chunk=8)
        unfused = F.cross_entropy((hidden @ weight.t()).float(), targets, reduction="none")
    loss.backward()
    assert nll.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.float32
    assert torch.allclose(nll, unfused.detach(), atol=0.05 * float(unfused.detach().abs().max()))
    fp32 = F.cross_entropy(hidden.detach() @ weight.detach().t(), targets, reduction="none")
    assert not torch.equal(nll, fp32)  # the bf16 matmul really ran


def test_coefficients_and_sums_reproduce_both_normalizations():
    """sum(token_coefficients * NLL) is the numerator of each normalization, and loss_sums' counts agree."""
    logits, targets, mask, seg = batch(4)
    nll = F.cross_entropy(logits.permute(0, 2, 1), targets, reduction="none")[mask]
    groups = example_groups(seg, mask)
    ref = target_cross_entropy(logits, targets, mask, seg, normalize="example")
    assert torch.allclose((token_coefficients(groups, "token").double() * nll).sum(), ref.nll_sum)
    assert torch.allclose((token_coefficients(groups, "example").double() * nll).sum(), ref.example_nll_sum)
    sums = loss_sums(nll, groups, "example")
    assert int(sums.examples) == int(ref.examples) and int(sums.target_tokens) == int(mask.sum())


def test_linear_cross_entropy_refuses_a_second_backward():
    hidden, weight, targets, _ = _projection(3)
    loss, _ = linear_cross_entropy(hidden, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()


def test_default_chunk_uses_the_weight_gradients_memory_not_a_fixed_16_mib():
    """The chunk's buffers take at most the [V, d] weight gradient's bytes again: at OPT's vocabulary and
    opt-125m's width that is 768 fp32 rows (the old fixed 16 MiB rule gave 83 whatever the width), 512 under
    bf16 autocast (an fp32 and a bf16 buffer per row); never more rows than there are targets."""
    V, d = 50272, 768
    assert default_chunk_rows(V, d, 100_000) == d
    assert default_chunk_rows(V, d, 100_000, torch.bfloat16) == 512
    assert 512 * V * (4 + 2) <= V * d * 4 < 513 * V * (4 + 2)
    assert default_chunk_rows(V, 2048, 100_000) == 2048            # wider models: larger chunks
    assert default_chunk_rows(V, d, 300) == 300                    # one chunk for a small batch
    assert default_chunk_rows(V, 8, 100_000) == MIN_CHUNK_ROWS


def test_linear_cross_entropy_default_chunking_equals_unfused_over_several_chunks():
    hidden, weight, targets, coefficients = _projection(4, n=3 * MIN_CHUNK_ROWS + 5)
    assert default_chunk_rows(weight.shape[0], weight.shape[1], hidden.shape[0]) < hidden.shape[0]
    ref_nll = F.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    (ref_nll * coefficients).sum().backward()
    ref_h, ref_w = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    loss, nll = linear_cross_entropy(hidden, weight, targets, coefficients)
    loss.backward()
    assert torch.allclose(nll, ref_nll.detach())
    assert torch.allclose(hidden.grad, ref_h) and torch.allclose(weight.grad, ref_w)
