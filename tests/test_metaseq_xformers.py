"""With the real metaseq and xformers: `--attn-variant xformers_default` trains with document masking.

metaseq's attention module with that variant runs xformers' kernel; here, without CUDA, the CPU
stand-in X1 of tests/metaseq_cpu (the attention bias it is given materialized, then softmax attention)
runs in its place. The same module instance must give the same output and gradients on the xformers
path (xformers' BlockDiagonalCausalMask from the segment ids, `xformers_attention`) as on metaseq's
dense path with the [B, L, L] document mask (`segment_attention`), while metaseq's own xformers call
(a causal bias per row) lets packed examples see each other.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, Iterator, List, Tuple

import metaseq_cpu
import pytest
import torch
import torch.distributed as dist

pytestmark = [pytest.mark.metaseq,
              pytest.mark.skipif(not metaseq_cpu.has_metaseq(), reason=metaseq_cpu.SKIP_REASON),
              pytest.mark.skipif(importlib.util.find_spec("xformers") is None,
                                 reason="xformers is not installed (pip install --no-deps xformers matching "
                                 "the torch of the metaseq environment, see docs/metaseq.md)")]

EMBED, HEADS = 32, 4
# three packed rows of 12: several examples, padding last, a row without padding, one example alone
SEGMENTS = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3, 3, 0, 0, 0],
                         [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 0],
                         [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
BLOCKS = [3, 2, 4, 3, 5, 6, 1, 12]


@pytest.fixture(scope="module")
def model_parallel_1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A one-process gloo world with metaseq's model-parallel groups (size 1) and RNG tracker."""
    if dist.is_initialized():
        pytest.skip("torch.distributed is already initialized in this process")
    with metaseq_cpu.one_rank_world(tmp_path_factory.mktemp("dist")):
        yield


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> List[Dict[str, Any]]:
    """Records each call of xformers' kernel (the X1 stand-in here): shapes, bias type, op."""
    import xformers.ops

    calls: List[Dict[str, Any]] = []
    kernel = xformers.ops.memory_efficient_attention

    def recording(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias: Any = None,
                  **kwargs: Any) -> torch.Tensor:
        calls.append({"shape": tuple(query.shape), "bias": type(attn_bias).__name__, "op": kwargs.get("op")})
        return kernel(query, key, value, attn_bias=attn_bias, **kwargs)

    monkeypatch.setattr(xformers.ops, "memory_efficient_attention", recording)
    return calls


def test_mask_blocks_are_the_segment_lengths():
    """One block per example and one per padding run, rows laid end to end; it allows the dense mask's pairs."""
    from optiml_plugin.attention import document_causal_mask
    from optiml_plugin.metaseq.xformers_attention import block_diagonal_mask

    mask = block_diagonal_mask(SEGMENTS)
    assert type(mask).__name__ == "BlockDiagonalCausalMask"
    for info in (mask.q_seqinfo, mask.k_seqinfo):
        assert [b - a for a, b in zip(info.seqstart_py, info.seqstart_py[1:])] == BLOCKS
    total = SEGMENTS.numel()
    allowed = mask.materialize((total, total)) == 0
    assert torch.equal(allowed, torch.block_diag(*document_causal_mask(SEGMENTS)[:, 0]))


def _attention(op: str = "MemoryEfficientAttentionCutlassOp") -> Any:
    from metaseq.modules.multihead_attention import ModelParallelMultiheadAttention

    torch.manual_seed(0)
    return ModelParallelMultiheadAttention(EMBED, HEADS, self_attention=True, dtype=torch.float64,
                                           attn_variant="xformers_default", xf_attn_op=op)


def _run(attention: Any, x: torch.Tensor, mask: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Output (with the output projection's bias added, as the layer does) and every gradient."""
    attention.zero_grad()
    x = x.detach().requires_grad_(True)
    out, bias = attention(query=x, key=x, value=x, attn_mask=mask)
    out = out + bias.view(1, 1, -1)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in attention.named_parameters()}
    grads["input"] = x.grad.clone()
    return out.detach(), grads


def test_same_attention_module_xformers_path_equals_dense_document_mask(model_parallel_1: None,
                                                                       kernel_calls: List[Dict[str, Any]]):
    from optiml_plugin.metaseq.segment_attention import additive_document_mask
    from optiml_plugin.metaseq.xformers_attention import block_diagonal_mask, use_block_diagonal

    attention = _attention()
    assert attention.xf_eff_attn and attention.xf_op is not None
    batch, length = SEGMENTS.shape
    x = torch.randn(length, batch, EMBED, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dense_mask = additive_document_mask(SEGMENTS, dtype=torch.float64)

    causal_out, _ = _run(attention, x, dense_mask)  # metaseq's own xformers call: the mask is ignored
    assert kernel_calls[-1] == {"shape": (batch * HEADS, length, EMBED // HEADS), "bias": "LowerTriangularMask",
                                "op": attention.xf_op}
    use_block_diagonal(attention)
    fast_out, fast_grads = _run(attention, x, block_diagonal_mask(SEGMENTS))
    # the same kernel and op, on the rows laid end to end with the documents' blocks
    assert kernel_calls[-1] == {"shape": (1, batch * length, HEADS, EMBED // HEADS),
                                "bias": "BlockDiagonalCausalMask", "op": attention.xf_op}
    attention.xf_eff_attn = False  # the same instance on metaseq's dense path, with the document mask
    n_calls = len(kernel_calls)
    dense_out, dense_grads = _run(attention, x, dense_mask)
    assert len(kernel_calls) == n_calls

    torch.testing.assert_close(fast_out, dense_out, rtol=1e-10, atol=1e-10)
    assert set(fast_grads) == set(dense_grads)
    for name, grad in dense_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-9, atol=1e-10, msg=name)
    # later examples of a packed row differ without the document mask; the first of each row does not
    later = (SEGMENTS > 1).T
    assert float((causal_out - dense_out).abs().amax(-1)[later].min()) > 1e-3
    torch.testing.assert_close(causal_out[~later & (SEGMENTS == 1).T], dense_out[~later & (SEGMENTS == 1).T])


def test_decoder_gets_the_block_diagonal_mask_and_metaseq_path_keeps_dense_masks(model_parallel_1: None,
                                                                                 kernel_calls: List[Dict[str, Any]]):
    """`use_segment_masks` on a decoder with xformers attention: its future mask is the block-diagonal
    mask of the batch's segments; without segments (or with a dense mask) metaseq's own call runs."""
    from optiml_plugin.metaseq.segment_attention import use_segment_masks

    attention = _attention()

    class Decoder(torch.nn.Module):  # the parts of metaseq's decoder use_segment_masks reads
        padding_idx, embed_positions = 1, None

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([attention])

        def buffered_future_mask(self, tensor: torch.Tensor, input_tokens: Any = None) -> torch.Tensor:
            return torch.full((tensor.shape[0],) * 2, float("-inf"), dtype=tensor.dtype).triu_(1)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            x = torch.randn(tokens.shape[1], tokens.shape[0], EMBED, dtype=torch.float64)
            mask = self.buffered_future_mask(x, tokens)
            return self.layers[0](query=x, key=x, value=x, attn_mask=mask)[0]

    decoder = Decoder()
    use_segment_masks(decoder)
    tokens = torch.full(SEGMENTS.shape, 5)
    decoder(tokens, segment_ids=SEGMENTS)
    assert kernel_calls[-1]["bias"] == "BlockDiagonalCausalMask"
    assert kernel_calls[-1]["shape"] == (1, SEGMENTS.numel(), HEADS, EMBED // HEADS)
    decoder(tokens)
    assert kernel_calls[-1]["bias"] == "LowerTriangularMask"
