"""Masks and positions from segment ids, and the vectorized metaseq doc-sep rule."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optiml_plugin.attention import (document_causal_mask, flex_attention_available, flex_block_mask,
                                     metaseq_doc_sep, position_ids_from_segments, segment_lengths)


def rows_strategy():
    lengths = st.lists(st.integers(1, 7), min_size=0, max_size=5)
    return st.lists(lengths, min_size=1, max_size=3)


def to_segments(rows, length=16):
    seg = torch.zeros(len(rows), length, dtype=torch.long)
    for r, lens in enumerate(rows):
        at = 0
        for k, n in enumerate(lens, start=1):
            n = min(n, length - at)
            seg[r, at:at + n] = k
            at += n
    return seg


@settings(max_examples=30, deadline=None)
@given(rows_strategy())
def test_mask_positions_lengths(rows):
    seg = to_segments(rows)
    mask = document_causal_mask(seg)
    pos = position_ids_from_segments(seg)
    B, L = seg.shape
    assert mask.shape == (B, 1, L, L) and mask.dtype == torch.bool
    for b in range(B):
        for i in range(L):
            for j in range(L):
                want = (j <= i and seg[b, i] == seg[b, j] and seg[b, i] > 0) or i == j
                assert bool(mask[b, 0, i, j]) == want
            if seg[b, i] > 0:
                first = next(k for k in range(L) if seg[b, k] == seg[b, i])
                assert pos[b, i] == i - first
            else:
                assert pos[b, i] == 0
        want_lens = [int((seg[b] == k).sum()) for k in range(1, int(seg[b].max()) + 1)]
        assert segment_lengths(seg)[b] == want_lens


def test_padding_rows_do_not_produce_nans():
    seg = torch.tensor([[1, 1, 2, 0, 0]])
    scores = torch.randn(1, 1, 5, 5).masked_fill(~document_causal_mask(seg), float("-inf"))
    assert torch.isfinite(scores.softmax(-1)).all()


def metaseq_loop(tokens, sep=2, padding_idx=1):
    """A literal loop re-statement of metaseq's --self-attn-doc-sep mask and positions."""
    B, T = tokens.shape
    mask = torch.triu(torch.full((T, T), float("-inf")), 1).repeat(B, 1, 1)
    positions = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        start = 0
        for i in (tokens[b] == sep).nonzero().flatten().tolist():
            mask[b, i + 1:, :i + 1] = float("-inf")
            positions[b, start:i + 1] = torch.arange(i + 1 - start) + padding_idx + 1
            start = i + 1
        positions[b, start:] = torch.arange(T - start) + padding_idx + 1
    return mask == 0, positions


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([1, 2, 5, 9, 143]), min_size=12, max_size=12),
                min_size=1, max_size=3))
def test_metaseq_doc_sep_matches_loop(rows):
    tokens = torch.tensor(rows)
    mask, pos = metaseq_doc_sep(tokens)
    want_mask, want_pos = metaseq_loop(tokens)
    assert torch.equal(mask[:, 0], want_mask)
    assert torch.equal(pos, want_pos)


def test_metaseq_positions_documented_example():
    _, pos = metaseq_doc_sep(torch.tensor([[143, 345, 2, 5435, 2]]))
    assert pos.tolist() == [[2, 3, 4, 2, 3]]


@pytest.mark.skipif(not flex_attention_available(), reason="torch has no flex_attention")
def test_flex_block_mask_matches_dense():
    seg = to_segments([[3, 5, 2], [8, 8, 8, 8, 8, 8, 8, 8], []], length=128)
    block_mask = flex_block_mask(seg)
    dense = block_mask.to_dense()  # [B, H, q_blocks, kv_blocks]: tile-level sparsity
    assert dense.shape[0] == 3
    # evaluate the mask_mod elementwise against the dense mask
    b = torch.arange(3)[:, None, None]
    q = torch.arange(128)[None, :, None]
    kv = torch.arange(128)[None, None, :]
    got = block_mask.mask_mod(b, torch.zeros(1, dtype=torch.long), q, kv)
    assert torch.equal(got, document_causal_mask(seg)[:, 0])
