"""Cost of document masking in training: packed rows with each attention backend vs the same rows with
plain causal attention (which leaks across examples: the speed floor of a dense kernel).
Aim: <= 1.3x on CPU, below 1x where masked blocks are skipped (per_example; flex on GPUs).

    python benchmarks/mask_cost_training.py                        # tiny OPT, 8 rows x 1024 tokens, 4 steps
    python benchmarks/mask_cost_training.py --tokens-per-sample 2048 --rows 8 --steps 10

Same SNI bench, tokenizer and batches as benchmarks/train_throughput.py; forward + backward + AdamW.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import Run, measure, packed_batches, parse, setup  # noqa: E402

from optiml_plugin.local.attention_backends import flex_available  # noqa: E402
from optiml_plugin.local.model import build_model  # noqa: E402


def main() -> None:
    args = parse(__doc__)
    bench, tok = setup(args)
    backends = ["causal", "dense", "per_example"]
    if flex_available(torch.device("cpu")):
        backends.append("flex")
    results = measure({backend: Run(build_model(args.preset, vocab_size=tok.vocab_size, dropout=0.0, seed=0,
                                                max_positions=max(2048, args.tokens_per_sample)),
                                    backend, packed_batches(bench, tok, args.tokens_per_sample, args.rows))
                       for backend in backends}, args.steps)
    probe = next(packed_batches(bench, tok, args.tokens_per_sample, args.rows))
    print(f"tiny OPT preset {args.preset}, {args.rows} rows x {args.tokens_per_sample} tokens, "
          f"{probe['stats']['examples_per_row']:.1f} examples per row, threads {torch.get_num_threads()}")
    base = results["causal"]["s_per_step"]
    for backend, r in results.items():
        note = " (no document mask: leaks across examples)" if backend == "causal" else ""
        print(f"{backend:<12} {r['s_per_step']:.3f} s/step  {r['target_tokens_per_s']:>9.0f} target tok/s  "
              f"{r['s_per_step'] / base:.2f}x plain causal{note}")
    if not flex_available(torch.device("cpu")):
        print("flex: not measured here (FlexAttention has no CPU backward in this torch; used on CUDA)")


if __name__ == "__main__":
    main()
