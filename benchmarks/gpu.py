"""The GPU figures in one call (at most ~8 minutes on one H100): training MFU, the cost of document
masking, packed = alone in bf16 and fp16, peak memory. Prints SKIPPED and exits 0 without CUDA.

    python benchmarks/gpu.py                # CUDA: OPT-1.3B shape, 8 x 2048 packed rows
    python benchmarks/gpu.py --cpu-smoke    # every row's code path on CPU at a tiny shape (tests run it)

Why one script: a GPU is lent for minutes, so the whole measurement is prepared and checked on CPU
(`--cpu-smoke`) before it meets a GPU; its markdown table is what docs/ record.
Rows (synthetic paper-like examples, prompt mean 261 tokens, packed best-fit: ~8 per 2048-token row):
1. training: the local trainer's step (TargetLM: fused output projection + cross entropy at target
   positions, AdamW) under bf16 autocast, FlexAttention document mask vs plain causal attention on the
   same rows (examples see each other: the speed floor). The two alternate step by step on one model so
   load and clocks hit both alike. MFU = model FLOPs / step time / the GPU's dense bf16 peak, with the
   same FLOPs for both variants: 6 x non-embedding parameters x real tokens + 6 x d x V x target tokens
   + 12 x layers x d x (query, key) pairs inside each example. Peak memory per variant.
2. attention alone (forward + backward, q/k/v [B, H, L, 64] in bf16): FlexAttention with the document
   block mask vs FlexAttention causal vs SDPA causal; xformers' BlockDiagonalCausalMask vs its causal
   mask where xformers imports (the metaseq path). Mask building included.
3. packed = alone: logits of each example of a packed row (FlexAttention, restarting positions) vs the
   example run alone, under bf16 and fp16 autocast; the tolerance is 4x the noise floor (alone in
   that dtype vs alone in fp32) plus 1e-3. Plain causal attention on the packed row is printed beside
   it (it must fail: that shows the check can see leakage).
On CPU (`--cpu-smoke`) FlexAttention has no backward, so row 1 uses per-example attention in its place
and row 2 times flex forward only; every other line runs the code it runs on a GPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device name; --peak-tflops for others
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "H800": 989.4, "A100": 312.0, "A800": 312.0, "L40S": 362.0}
OPT_1_3B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192)
SMOKE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256)
GIB = 2 ** 30


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run every row on CPU at a tiny shape")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens-per-sample", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compilation)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per attention variant")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (TFLOP/s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cpu_smoke:
        args.rows, args.tokens_per_sample = 2, 1024
        args.steps, args.warmup, args.repeats = 1, 1, 1
    return args


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: Any) -> Optional[float]:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if device.type == "cuda" else None


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def fmt_gib(value: Optional[float]) -> str:
    return "n/a (CPU)" if value is None else f"{value:.1f} GiB"


def packed_rows(rows: int, length: int, vocab: int, seed: int, device: Any) -> Dict[str, Any]:
    """The packer's collated batch of paper-like examples, with random token ids in place of the
    synthetic constant ones (identical tokens would hide leakage: uniform attention either way)."""
    import torch

    from mask_cost import packed_batch

    batch = packed_batch(rows, length, seed)
    gen = torch.Generator().manual_seed(seed)
    seg = batch["segment_ids"]
    ids = torch.randint(4, vocab, seg.shape, generator=gen)
    batch["input_ids"] = torch.where(seg > 0, ids, torch.ones_like(ids))
    # next token inside its example; the packer's loss_mask (target tokens) is kept
    nxt = torch.cat([batch["input_ids"][:, 1:], torch.ones_like(ids[:, :1])], dim=1)
    batch["target_ids"] = torch.where(batch["loss_mask"].bool(), nxt, torch.ones_like(ids))
    return {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}


def document_pairs(seg: Any) -> int:
    """(query, key) pairs that document-causal attention computes: sum of n(n+1)/2 over examples."""
    import torch

    total = 0
    for row in seg.cpu():
        counts = torch.bincount(row[row > 0])
        total += int((counts * (counts + 1) // 2).sum())
    return total


def model_flops(model: Any, batch: Dict[str, Any]) -> float:
    """Useful FLOPs of one training step (forward + backward), the same for both variants."""
    cfg = model.config
    embed = cfg.vocab_size * cfg.word_embed_proj_dim + model.model.decoder.embed_positions.weight.numel()
    body = sum(p.numel() for p in model.parameters()) - embed
    real = int((batch["segment_ids"] > 0).sum())
    targets = int(batch["loss_mask"].sum())
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * document_pairs(batch["segment_ids"])
    return 6.0 * body * real + 6.0 * cfg.hidden_size * cfg.vocab_size * targets + attention


def peak_flops(args: argparse.Namespace, device: Any) -> Optional[float]:
    import torch

    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS.items() if key in name), None)


def training_row(args: argparse.Namespace, device: Any, model: Any, batch: Dict[str, Any],
                 doc_backend: str) -> List[Tuple[str, str, str]]:
    """Row 1: the two variants alternate step by step on one model and one optimizer."""
    import torch

    from optiml_plugin.local.attention_backends import DocumentAttention
    from optiml_plugin.local.model import TargetLM
    from optiml_plugin.local.trainer import adamw
    from optiml_plugin.recipe import OptimConfig

    lm = TargetLM(model)
    opt = adamw([{"params": list(lm.parameters())}], OptimConfig(lr=1e-5))
    variants = {f"{doc_backend} document mask": DocumentAttention(doc_backend, device),
                "plain causal (leaks)": DocumentAttention("causal", device)}
    times: Dict[str, List[float]] = {name: [] for name in variants}
    peaks: Dict[str, float] = {}
    dtype = torch.bfloat16 if device.type == "cuda" else None
    for i in range(args.warmup + args.steps):
        for name, attention in variants.items():
            attention.configure(model)
            reset_peak(device)
            synchronize(device)
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _ = lm(batch["loss_mask"], batch["target_ids"], **attention.model_inputs(batch))
            (loss / batch["loss_mask"].sum()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            synchronize(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
            peak = peak_gib(device)
            if peak is not None:
                peaks[name] = max(peaks.get(name, 0.0), peak)
    flops, peak = model_flops(model, batch), peak_flops(args, device)
    real = int((batch["segment_ids"] > 0).sum())
    out = []
    for name, ts in times.items():
        step = statistics.median(ts)
        mfu = f"MFU {flops / step / peak:.1%}" if peak else "MFU n/a (unknown peak)"
        out.append(("training", name, f"{step * 1e3:.1f} ms/step [{min(ts) * 1e3:.1f}-{max(ts) * 1e3:.1f}], "
                                      f"{real / step:,.0f} tokens/s, {mfu}, peak {fmt_gib(peaks.get(name))}"))
    names = list(times)
    ratio = statistics.median(times[names[0]]) / statistics.median(times[names[1]])
    out.append(("training", "document mask / causal", f"{ratio:.2f}x time per step"))
    return out


def timed(fn: Callable[[], Any], repeats: int, device: Any) -> Tuple[float, Optional[float]]:
    """Median ms of `fn` after one warm-up call, and the peak memory of those calls."""
    fn()
    reset_peak(device)
    ts = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        ts.append(time.perf_counter() - start)
    return statistics.median(ts) * 1e3, peak_gib(device)


def attention_row(args: argparse.Namespace, device: Any, seg: Any) -> List[Tuple[str, str, str]]:
    """Row 2: attention alone, document mask vs causal, mask building included."""
    import torch
    import torch.nn.functional as F

    from optiml_plugin.attention import block_lengths, flex_block_mask

    heads = OPT_1_3B["num_attention_heads"] if device.type == "cuda" else SMOKE["num_attention_heads"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    train = device.type == "cuda"   # CPU FlexAttention has no backward: forward only there
    b, length = seg.shape
    q, k, v = (torch.randn(b, heads, length, 64, device=device, dtype=dtype, requires_grad=train) for _ in range(3))
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    flex = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention

    def causal_mod(b_: Any, h: Any, qi: Any, kv: Any) -> Any:
        return kv <= qi

    def run(out_fn: Callable[[], Any]) -> Callable[[], Any]:
        def step() -> None:
            out = out_fn()
            if train:
                out.sum().backward()
        return step

    def flex_doc() -> Any:
        return flex(q, k, v, block_mask=flex_block_mask(seg))

    def flex_causal() -> Any:
        mask = create_block_mask(causal_mod, None, None, length, length, device=str(device))
        return flex(q, k, v, block_mask=mask)

    def sdpa_causal() -> Any:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    paths = [("flex document mask", run(flex_doc)), ("flex causal", run(flex_causal)),
             ("SDPA causal", run(sdpa_causal))]
    note = ""
    try:
        from xformers.ops import fmha

        xq, xk, xv = (t.detach().transpose(1, 2).reshape(1, b * length, heads, 64).requires_grad_(train)
                      for t in (q, k, v))

        def xf_doc() -> Any:
            mask = fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(block_lengths(seg))
            return fmha.memory_efficient_attention(xq, xk, xv, attn_bias=mask)

        def xf_causal() -> Any:
            return fmha.memory_efficient_attention(xq.view(b, length, heads, 64), xk.view(b, length, heads, 64),
                                                   xv.view(b, length, heads, 64),
                                                   attn_bias=fmha.attn_bias.LowerTriangularMask())
        paths += [("xformers BlockDiagonalCausalMask", run(xf_doc)), ("xformers causal", run(xf_causal))]
    except ImportError as e:
        note = f"xformers not importable ({e}): its rows skipped"
    what = "forward + backward" if train else "forward only (no CPU FlexAttention backward)"
    out = []
    base = None
    for name, fn in paths:
        ms, peak = timed(fn, args.repeats, device)
        base = ms if name == "flex causal" else base
        out.append(("attention", name, f"{ms:.2f} ms {what}, peak {fmt_gib(peak)}"))
    doc = next(float(r[2].split()[0]) for r in out if r[1] == "flex document mask")
    out.append(("attention", "flex document mask / flex causal", f"{doc / base:.2f}x"))
    if note:
        out.append(("attention", "xformers", note))
    return out


def example_logits(model: Any, ids: Any, seg: Any, backend: str, dtype: Optional[Any]) -> Any:
    """Logits of a packed row (document-masked or plain causal) or of one example alone (seg all 1)."""
    import torch

    from optiml_plugin.attention import position_ids_from_segments
    from optiml_plugin.local.attention_backends import DocumentAttention

    attention = DocumentAttention(backend, ids.device) if backend != "flex_forward" else None
    batch = {"input_ids": ids, "segment_ids": seg, "position_ids": position_ids_from_segments(seg)}
    if attention is None:    # CPU: FlexAttention forward through the trainer's attention function
        from optiml_plugin.attention import flex_block_mask
        from optiml_plugin.local.attention_backends import FLEX, _register

        _register()
        model.config._attn_implementation = FLEX
        inputs = {"input_ids": ids, "position_ids": batch["position_ids"], "optiml_block_mask": flex_block_mask(seg)}
    else:
        attention.configure(model)
        inputs = attention.model_inputs(batch)
    with torch.no_grad(), torch.autocast(ids.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(**inputs, use_cache=False).logits.float()


def equivalence_row(device: Any, model: Any, batch: Dict[str, Any]) -> List[Tuple[str, str, str]]:
    """Row 3: each example of the first packed row vs the example alone, per dtype."""
    import torch

    ids, seg = batch["input_ids"][:1], batch["segment_ids"][:1]
    flex = "flex" if device.type == "cuda" else "flex_forward"
    spans = []
    for s in seg[0].unique().tolist():
        if s > 0:
            where = (seg[0] == s).nonzero().squeeze(-1)
            spans.append((int(where[0]), int(where[-1]) + 1))
    out = []
    model.eval()
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        packed = example_logits(model, ids, seg, flex, dtype)
        causal = example_logits(model, ids, seg, "causal", dtype)
        diff = leak = floor = 0.0
        for a, b in spans:
            alone_ids, one = ids[:, a:b], torch.ones_like(seg[:, a:b])
            alone = example_logits(model, alone_ids, one, "causal", dtype)
            exact = example_logits(model, alone_ids, one, "causal", None)
            diff = max(diff, float((packed[0, a:b] - alone[0]).abs().max()))
            leak = max(leak, float((causal[0, a:b] - alone[0]).abs().max()))
            floor = max(floor, float((alone[0] - exact[0]).abs().max()))
        tol = 4 * floor + 1e-3
        # PASS needs both: the document mask within tolerance, and plain causal outside it (else the
        # check could not see leakage, e.g. a row holding one example)
        verdict = "PASS" if diff <= tol < leak else "FAIL"
        out.append(("packed = alone", f"{name}, {len(spans)} examples",
                    f"{verdict}: max abs(packed - alone) logit {diff:.3g}, tolerance {tol:.3g} (4 x noise floor "
                    f"{floor:.3g} + 1e-3); plain causal on the packed row: {leak:.3g}"))
    model.train()
    return out


def main() -> int:
    args = parse()
    import warnings

    import torch

    # the CPU smoke run calls FlexAttention eagerly on purpose (compiling it needs a GPU toolchain)
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")

    if not args.cpu_smoke and not torch.cuda.is_available():
        print("SKIPPED: no CUDA device (torch.cuda.is_available() is False); nothing was measured. "
              "`--cpu-smoke` runs every row's code path on CPU at a tiny shape.")
        return 0
    from optiml_plugin.local.attention_backends import flex_available
    from optiml_plugin.local.model import build_model

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    shape = SMOKE if args.cpu_smoke else OPT_1_3B
    vocab = 512 if args.cpu_smoke else 50272
    torch.manual_seed(args.seed)
    with device:
        model = build_model("tiny", vocab_size=vocab, dropout=0.0, overrides=shape, seed=args.seed,
                            max_positions=max(2048, args.tokens_per_sample))
    batch = packed_rows(args.rows, args.tokens_per_sample, vocab, args.seed, device)
    seg = batch["segment_ids"]
    params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU smoke run (tiny shape, not a figure)"
    examples = sum(len(row[row > 0].unique()) for row in seg.cpu())
    print(f"{where}; torch {torch.__version__}; model {params / 1e6:.1f}M parameters "
          f"({'OPT-1.3B shape' if not args.cpu_smoke else 'tiny'}); {args.rows} x {args.tokens_per_sample} rows, "
          f"{examples / args.rows:.1f} examples per row, {int(batch['loss_mask'].sum())} target tokens; "
          f"{args.steps} timed steps after {args.warmup}, {args.repeats} attention calls")
    doc_backend = "flex" if flex_available(device) else "per_example"
    if doc_backend != "flex":
        print("(FlexAttention has no backward on CPU: per_example attention stands in for it in the training row)")
    started = time.perf_counter()
    rows = training_row(args, device, model, batch, doc_backend)
    rows += attention_row(args, device, seg)
    rows += equivalence_row(device, model, batch)
    print("\n| row | variant | figure |\n|---|---|---|")
    for row in rows:
        print(f"| {row[0]} | {row[1]} | {row[2]} |")
    print(f"\n{time.perf_counter() - started:.0f} s for the rows")
    failed = [r for r in rows if r[0] == "packed = alone" and r[2].startswith("FAIL")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
