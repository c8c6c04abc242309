"""Time the fused output projection + cross entropy (`linear_cross_entropy`, forward + backward) at OPT's
vocabulary, against the unfused projection + F.cross_entropy on the same inputs.

    python benchmarks/fused_loss.py                          # n=4096 targets, d=128 and 768, V=50272, fp32
    python benchmarks/fused_loss.py --dims 768 --targets 8192 --chunks 83,0 --threads 2

`--chunks` lists chunk sizes to time; 0 is the default rule (`default_chunk_rows`); 83 is the old fixed
16 MiB rule at V=50272. Each figure is the median of `--repeats` timed calls after one warm-up call.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optiml_plugin.loss import default_chunk_rows, linear_cross_entropy  # noqa: E402


def timed(step: Callable[[], None], repeats: int) -> float:
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=4096, help="target tokens per step (rows projected)")
    ap.add_argument("--dims", default="128,768", help="hidden sizes (tiny=128, opt-125m=768)")
    ap.add_argument("--vocab", type=int, default=50272)
    ap.add_argument("--chunks", default="83,0", help="chunk sizes to time; 0 = the default rule")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; n={args.targets}, V={args.vocab}")
    for d in (int(x) for x in args.dims.split(",")):
        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(args.targets, d, generator=g, requires_grad=True)
        weight = (0.02 * torch.randn(args.vocab, d, generator=g)).requires_grad_()
        targets = torch.randint(0, args.vocab, (args.targets,), generator=g)

        def unfused(hidden: torch.Tensor = hidden, weight: torch.Tensor = weight,
                    targets: torch.Tensor = targets) -> None:
            hidden.grad = weight.grad = None
            F.cross_entropy(hidden @ weight.t(), targets, reduction="sum").backward()

        base = timed(unfused, args.repeats)
        print(f"d={d}: unfused projection + F.cross_entropy: {base * 1e3:8.1f} ms "
              f"(logits {args.targets * args.vocab * 4 / 2**20:,.0f} MiB)")
        for chunk in (int(x) for x in args.chunks.split(",")):
            rows = chunk or default_chunk_rows(args.vocab, d, args.targets)

            def fused(hidden: torch.Tensor = hidden, weight: torch.Tensor = weight, targets: torch.Tensor = targets,
                      rows: int = rows) -> None:
                hidden.grad = weight.grad = None
                linear_cross_entropy(hidden, weight, targets, chunk=rows)[0].backward()

            t = timed(fused, args.repeats)
            label = "default" if chunk == 0 else "given"
            print(f"d={d}: fused, chunk {rows:5d} rows ({label}, buffer {rows * args.vocab * 4 / 2**20:6.1f} MiB): "
                  f"{t * 1e3:8.1f} ms, {base / t:.2f}x the unfused")


if __name__ == "__main__":
    main()
