"""Rank-classification throughput: one tree-masked row per prompt vs one sequence per candidate.

The baseline scores each (prompt, candidate) pair as its own sequence, as lm-evaluation-harness
does; the packed scorer computes each prompt once for all its candidates. Both run through the same
HF backend with the same padded-token budget per batch, and the script checks that they agree.

    python benchmarks/rank_classification.py                      # small random OPT, CPU
    python benchmarks/rank_classification.py --hidden 768 --layers 12 --instances 256 --device cuda
    python benchmarks/rank_classification.py --model path/to/opt  # a real transformers model dir
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiml_plugin.eval.scoring import Tree, score_separately, score_trees  # noqa: E402


def build_backend(args):
    from transformers import OPTConfig, OPTForCausalLM

    from optiml_plugin.data.tokenizer import OptTokenizer
    from optiml_plugin.eval.backends.hf import HFBackend

    if args.model:
        return HFBackend.from_dir(args.model, device=args.device)
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                    ffn_dim=4 * args.hidden, num_attention_heads=max(1, args.hidden // 64),
                    max_position_embeddings=2048, word_embed_proj_dim=args.hidden)

    # scoring works on ids; the tokenizer only supplies OPT's special ids here
    tok = OptTokenizer.builtin(["rank classification benchmark"], vocab_size=300)
    return HFBackend(OPTForCausalLM(cfg).eval(), tok, model_id="random-opt", device=args.device)


def make_trees(args, vocab):
    rng = random.Random(args.seed)
    trees = []
    for _ in range(args.instances):
        plen = rng.randint(args.prompt_len // 2, args.prompt_len)
        prompt = tuple(rng.randrange(4, vocab) for _ in range(plen))
        n = rng.randint(args.candidates, args.candidates + 2)
        cands = tuple(tuple(rng.randrange(4, vocab) for _ in range(rng.randint(1, args.cand_len))) + (2,)
                      for _ in range(n))
        trees.append(Tree(prompt, cands))
    return trees


def timed(fn, backend, trees, args):
    kwargs = dict(max_batch_tokens=args.batch_tokens, max_batch_size=256)
    fn(backend, trees[: max(1, len(trees) // 8)], **kwargs)  # warm-up
    if args.device and args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(backend, trees, **kwargs)
    if args.device and args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="transformers model dir (default: random OPT)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=50272)
    p.add_argument("--instances", type=int, default=48)
    p.add_argument("--prompt-len", type=int, default=192)
    p.add_argument("--candidates", type=int, default=4, help="minimum candidates per instance (>= 4)")
    p.add_argument("--cand-len", type=int, default=6)
    p.add_argument("--batch-tokens", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    backend = build_backend(args)
    vocab = backend.model.config.vocab_size
    trees = make_trees(args, vocab)
    n_cands = sum(len(t.candidates) for t in trees)
    packed, t_packed = timed(score_trees, backend, trees, args)
    alone, t_alone = timed(score_separately, backend, trees, args)
    diff = max(abs(a - b) for x, y in zip(packed, alone) for a, b in zip(x.sums, y.sums))
    agree = sum(max(range(len(x.sums)), key=x.sums.__getitem__) == max(range(len(y.sums)), key=y.sums.__getitem__)
                for x, y in zip(packed, alone))
    print(f"model: {backend.model_id} ({sum(p.numel() for p in backend.model.parameters()) / 1e6:.1f}M params), "
          f"device {args.device}, threads {torch.get_num_threads()}")
    print(f"{len(trees)} instances, {n_cands} candidates ({n_cands / len(trees):.1f}/instance), "
          f"prompts {args.prompt_len // 2}-{args.prompt_len} tokens")
    print(f"separate (one sequence per candidate): {len(trees) / t_alone:8.2f} instances/s  ({t_alone:.2f}s)")
    print(f"packed (prompt once, tree mask):       {len(trees) / t_packed:8.2f} instances/s  ({t_packed:.2f}s)")
    print(f"speedup: {t_alone / t_packed:.2f}x; max |score diff| {diff:.2e}; same argmax {agree}/{len(trees)}")


if __name__ == "__main__":
    main()
