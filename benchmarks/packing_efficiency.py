"""Print packing efficiency (non-pad fraction) of next-fit vs bounded-window best-fit.

    python benchmarks/packing_efficiency.py                          # small defaults
    python benchmarks/packing_efficiency.py --synthetic 200000 --max-per-task 6500 --windows 8 64 256

Two inputs, each in a seeded random order (as the stream delivers them):
- synthetic lengths like the paper's train split (prompt mean 261, std 631 tokens: a lognormal with
  those moments, heavy-tailed) with short targets (lognormal, mean ~12 tokens);
- the real Super-NaturalInstructions sample (../shared/data/sni), rendered as
  "definition, input, Output:" and tokenized with the OPT BPE (../shared/data/opt-bpe).
Target: best-fit >= 99% non-pad at 2048 tokens per sample; next-fit printed beside it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optiml_plugin.data.packing import PackingConfig, PackingStats, make_item, pack  # noqa: E402
from optiml_plugin.bench.templates import render_prompt  # noqa: E402
from optiml_plugin.data.tokenizer import OptTokenizer  # noqa: E402

Pairs = List[Tuple[Sequence[int], Sequence[int]]]


def lognormal_params(mean: float, std: float) -> Tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and standard deviation."""
    sigma2 = math.log(1 + (std / mean) ** 2)
    return math.log(mean) - sigma2 / 2, math.sqrt(sigma2)


def synthetic_pairs(n: int, seed: int) -> Pairs:
    rng = np.random.default_rng(seed)
    mu, sigma = lognormal_params(261, 631)
    src = np.maximum(1, np.rint(rng.lognormal(mu, sigma, n))).astype(int)
    tmu, tsigma = lognormal_params(12, 20)
    tgt = np.maximum(1, np.rint(rng.lognormal(tmu, tsigma, n))).astype(int)
    print(f"synthetic: {n} examples, prompt mean {src.mean():.0f} std {src.std():.0f} "
          f"p50 {np.median(src):.0f} p99 {np.percentile(src, 99):.0f} max {src.max()}; "
          f"target mean {tgt.mean():.1f}")
    return [([5] * int(s), [6] * int(t)) for s, t in zip(src, tgt)]


def sni_pairs(sni_dir: Path, tokenizer: OptTokenizer, max_per_task: int, min_examples: int,
              seed: int) -> Pairs:
    """The sample's examples, in fresh random orders (passes) until `min_examples` are reached."""
    texts = []
    for path in sorted((sni_dir / "tasks").glob("*.json")):
        task = json.loads(path.read_text(encoding="utf-8"))
        definition = task["Definition"][0] if task["Definition"] else ""
        for inst in task["Instances"][:max_per_task]:
            texts.append((render_prompt(definition, inst["input"], None, "\nOutput:"), inst["output"][0]))
    encoded = tokenizer.encode_pairs(texts)
    lens = np.array([len(s) for s, _ in encoded])
    rng = np.random.default_rng(seed)
    passes = max(1, -(-min_examples // len(encoded)))
    pairs = [encoded[i] for _ in range(passes) for i in rng.permutation(len(encoded))]
    print(f"SNI sample: {len(encoded)} examples from {sni_dir} ({passes} passes), prompt mean "
          f"{lens.mean():.0f} std {lens.std():.0f} max {lens.max()} tokens")
    return pairs


def report(name: str, pairs: Pairs, tps: int, windows: Sequence[int]) -> None:
    print(f"\n== {name} at tokens_per_sample={tps} ==")
    print("non-pad: rows emitted while streaming (steady state); +flush: also the rows still open "
          "at the end, flushed (a finite-sample lower bound)")
    print(f"{'strategy':<18} {'non-pad':>8} {'+flush':>7} {'target':>7} {'ex/row':>7} {'rows':>7} "
          f"{'cut-left':>9} {'cut-right':>9} {'ms':>7}")
    configs = [PackingConfig(tokens_per_sample=tps, strategy="sequential")]
    configs += [PackingConfig(tokens_per_sample=tps, strategy="best_fit", window=w) for w in windows]
    for cfg in configs:
        start = time.perf_counter()
        items = [make_item(s, t, cfg, index=i) for i, (s, t) in enumerate(pairs)]
        stats = PackingStats.of(pack(items, cfg, drop_last=True))
        ms = (time.perf_counter() - start) * 1e3
        flushed = PackingStats.of(pack(items, cfg, drop_last=False))
        label = cfg.strategy if cfg.strategy == "sequential" else f"best_fit(w={cfg.window})"
        print(f"{label:<18} {stats.non_pad_fraction:>8.2%} {flushed.non_pad_fraction:>7.2%} "
              f"{stats.target_fraction:>7.2%} "
              f"{stats.examples_per_row:>7.2f} {stats.blocks:>7} {stats.cut_left_examples:>9} "
              f"{stats.cut_right_examples:>9} {ms:>7.0f}")


def main() -> None:
    shared = Path(os.environ.get("OPTIML_SHARED", REPO.parent / "shared")) / "data"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens-per-sample", type=int, default=2048)
    ap.add_argument("--windows", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--synthetic", type=int, default=20000, help="synthetic examples")
    ap.add_argument("--sni", type=Path, default=shared / "sni")
    ap.add_argument("--bpe", type=Path, default=shared / "opt-bpe")
    ap.add_argument("--max-per-task", type=int, default=500)
    ap.add_argument("--sni-examples", type=int, default=20000,
                    help="repeat the SNI sample in fresh random orders up to this many examples")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    report("synthetic (paper-like lengths)", synthetic_pairs(args.synthetic, args.seed),
           args.tokens_per_sample, args.windows)
    if (args.sni / "tasks").is_dir() and args.bpe.is_dir():
        tokenizer = OptTokenizer.from_dir(args.bpe)
        report("SNI sample", sni_pairs(args.sni, tokenizer, args.max_per_task, args.sni_examples, args.seed),
               args.tokens_per_sample, args.windows)
    else:
        print(f"\n(SNI sample or OPT BPE not found at {args.sni} / {args.bpe}: skipped)")


if __name__ == "__main__":
    main()
