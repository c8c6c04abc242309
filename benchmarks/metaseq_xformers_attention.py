"""Time metaseq's attention on both document-masking paths (default 8 rows x 2048 tokens; needs CUDA).

    python benchmarks/metaseq_xformers_attention.py
    python benchmarks/metaseq_xformers_attention.py --embed-dim 768 --heads 12 --dtype bf16 --repeats 50

One metaseq `ModelParallelMultiheadAttention` built with `--attn-variant xformers_default` (model
parallel 1), forward + backward on a batch packed from paper-like examples (benchmarks/mask_cost.py):
- dense: metaseq's default attention path (fused masked softmax) with the float [B, L, L] document mask
  the plugin gives `--attn-variant default`;
- xformers: the plugin's path for `--attn-variant xformers_default`, xformers' kernel with the
  BlockDiagonalCausalMask of the segment ids (optiml_plugin/metaseq/xformers_attention.py);
- xformers causal: metaseq's own xformers call (a causal mask per row: examples see each other), for
  reference only.
Each step includes building its mask from the segment ids. Prints the median ms per step, the peak
memory, and the largest output difference between the dense and xformers paths. Without CUDA,
xformers or metaseq (with its fused kernels) it prints that it was skipped, and why, and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def missing() -> Optional[str]:
    """Why the timing cannot run here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (xformers' kernels and metaseq's fused softmax need one)"
    for name in ("xformers", "metaseq"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not installed"
    return None


def init_model_parallel(backend: str) -> None:
    """A one-process world with metaseq's model-parallel groups (size 1) and RNG tracker."""
    import torch.distributed as dist
    from metaseq.modules.megatron import mpu

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    mpu.initialize_model_parallel(1)
    mpu.model_parallel_cuda_manual_seed(0)


def build_attention(embed_dim: int, heads: int, dtype: torch.dtype, device: str, op: str) -> Any:
    """metaseq's attention as its decoder layer builds it for `--attn-variant xformers_default`,
    adapted by the plugin (`use_block_diagonal`)."""
    from metaseq.modules.multihead_attention import ModelParallelMultiheadAttention

    from optiml_plugin.metaseq.xformers_attention import use_block_diagonal

    torch.manual_seed(0)
    attention = ModelParallelMultiheadAttention(embed_dim, heads, self_attention=True, dtype=dtype,
                                                attn_variant="xformers_default", xf_attn_op=op).to(device)
    use_block_diagonal(attention)
    return attention


def paths(seg: torch.Tensor, dtype: torch.dtype) -> List[Tuple[str, bool, Callable[[], Any]]]:
    """(name, runs xformers, the mask it builds from the segment ids) per path."""
    from optiml_plugin.attention import additive_document_mask
    from optiml_plugin.metaseq.xformers_attention import block_diagonal_mask

    length = seg.shape[1]
    causal = torch.full((length, length), float("-inf"), dtype=dtype, device=seg.device).triu_(1)
    return [("dense document mask (metaseq default path)", False, lambda: additive_document_mask(seg, dtype)),
            ("xformers BlockDiagonalCausalMask (plugin)", True, lambda: block_diagonal_mask(seg)),
            ("xformers causal, no document mask (metaseq)", True, lambda: causal)]


def measure(attention: Any, seg: torch.Tensor, x: torch.Tensor, repeats: int) -> List[Tuple[str, float, float, Any]]:
    """(path, median ms per forward + backward, peak MiB, output) for each path on the same module."""
    cuda = x.device.type == "cuda"
    grad = torch.randn_like(x)
    results = []
    for name, xformers, mask_fn in paths(seg, x.dtype):
        attention.xf_eff_attn = xformers

        def step(mask_fn: Callable[[], Any] = mask_fn) -> Any:
            attention.zero_grad(set_to_none=True)
            inp = x.detach().requires_grad_(True)
            out, bias = attention(query=inp, key=inp, value=inp, attn_mask=mask_fn())
            (out + bias.view(1, 1, -1)).backward(grad)
            return out.detach()

        out = step()  # warm-up: kernel selection, allocator
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else float("nan")
        results.append((name, statistics.median(times) * 1e3, peak, out))
    attention.xf_eff_attn = True
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens-per-sample", type=int, default=2048)
    ap.add_argument("--embed-dim", type=int, default=2048, help="OPT-1.3B's width (default)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--xf-attn-op", default="None", help="metaseq's --xf-attn-op (default: xformers chooses)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    why = missing()
    if why:
        print(f"SKIPPED: metaseq attention timing not run: {why}. Nothing was measured.")
        return
    try:
        init_model_parallel("nccl")
        attention = build_attention(args.embed_dim, args.heads, DTYPES[args.dtype], "cuda", args.xf_attn_op)
    except Exception as e:  # metaseq without its fused kernels, xformers built for another torch, ...
        print(f"SKIPPED: metaseq attention timing not run: {type(e).__name__}: {e}. Nothing was measured.")
        return
    from mask_cost import packed_batch

    seg = packed_batch(args.rows, args.tokens_per_sample, args.seed)["segment_ids"].cuda()
    x = torch.randn(seg.shape[1], seg.shape[0], args.embed_dim, dtype=DTYPES[args.dtype], device="cuda")
    print(f"{torch.cuda.get_device_name()}, embed {args.embed_dim}, {args.heads} heads, {args.dtype}, "
          f"xf op {attention.xf_op}")
    results = measure(attention, seg, x, args.repeats)
    print(f"{'path (forward + backward, mask build included)':<50} {'ms':>9} {'peak MiB':>9}")
    for name, ms, peak, _ in results:
        print(f"{name:<50} {ms:>9.2f} {peak:>9.0f}")
    dense, fast = results[0][3].float(), results[1][3].float()
    print(f"largest |dense - xformers| output difference: {float((dense - fast).abs().max()):.3g} "
          f"(output scale {float(dense.abs().max()):.3g})")


if __name__ == "__main__":
    main()
