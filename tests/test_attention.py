"""Masks and positions from segment ids, and the vectorized metaseq doc-sep rule."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attention_reference import metaseq_doc_sep, segment_lengths
from optiml_plugin.attention import (block_lengths, document_causal_mask, flex_attention_available,
                                     flex_block_mask, position_ids_from_segments)
from optiml_plugin.errors import OptimlError


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
                want = j <= i and seg[b, i] == seg[b, j]
                assert bool(mask[b, 0, i, j]) == want
            if seg[b, i] > 0:
                first = next(k for k in range(L) if seg[b, k] == seg[b, i])
                assert pos[b, i] == i - first
            else:
                assert pos[b, i] == 0
        want_lens = [int((seg[b] == k).sum()) for k in range(1, int(seg[b].max()) + 1)]
        assert segment_lengths(seg)[b] == want_lens


@settings(max_examples=30, deadline=None)
@given(rows_strategy())
def test_block_lengths_give_the_dense_document_mask(rows):
    """Blocks over the rows laid end to end, each causal inside, allow exactly the pairs the dense
    per-row mask allows (and nothing across rows): what xformers' BlockDiagonalCausalMask is built from."""
    seg = to_segments(rows)
    lengths = block_lengths(seg)
    blocks = torch.block_diag(*[torch.ones(n, n).tril() for n in lengths]).bool()
    dense = document_causal_mask(seg)[:, 0]
    assert torch.equal(blocks, torch.block_diag(*dense))


def test_block_lengths_keep_padding_as_its_own_block():
    seg = torch.tensor([[1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 2, 0, 0, 0], [0] * 7, [1] * 7])
    assert block_lengths(seg) == [2, 3, 2, 3, 1, 3, 7, 7]


def test_block_lengths_refuse_an_id_split_in_two_runs():
    with pytest.raises(OptimlError, match="row 1 repeat an id"):
        block_lengths(torch.tensor([[1, 1, 0], [1, 0, 1]]))


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
@pytest.mark.parametrize("rows,length", [
    ([[3, 5, 2], [128, 128, 8], [300], [], [256, 1, 60]], 512),   # tile index built directly
    ([[3, 5, 2], [100]], 200),                                     # not a tile multiple: fallback
])
def test_flex_block_mask_matches_dense(rows, length):
    seg = to_segments(rows, length=length)
    block_mask = flex_block_mask(seg)
    dense = document_causal_mask(seg)[:, 0]
    B = seg.shape[0]
    b = torch.arange(B)[:, None, None]
    q = torch.arange(length)[None, :, None]
    kv = torch.arange(length)[None, None, :]
    assert torch.equal(block_mask.mask_mod(b, torch.zeros(1, dtype=torch.long), q, kv), dense)
    # tile level: a tile is visited iff it holds an allowed pair; "full" tiles hold only allowed pairs
    n = -(-length // 128)
    padded = torch.zeros(B, n * 128, n * 128, dtype=torch.bool)
    padded[:, :length, :length] = dense
    tiles = padded.view(B, n, 128, n, 128)
    any_tile, all_tile = tiles.any(4).any(2), tiles.all(4).all(2)
    assert torch.equal(block_mask.to_dense()[:, 0].bool(), any_tile)
    if length % 128 == 0:
        full = torch.zeros(B, n, n, dtype=torch.bool)
        for r in range(B):
            for qb in range(n):
                cnt = int(block_mask.full_kv_num_blocks[r, 0, qb])
                full[r, qb, block_mask.full_kv_indices[r, 0, qb, :cnt].long()] = True
        assert torch.equal(full, all_tile & ~torch.eye(n, dtype=torch.bool))
