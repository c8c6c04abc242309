"""Training throughput (target tokens/s) of the tiny OPT (or `--family llama`, ...) on the SNI sample: packed +
document-masked rows vs one example per row padded to the longest in its batch (the unpacked baseline, given
the same token budget per step: rows x tokens_per_sample). Aim: >= 2x.

    python benchmarks/train_throughput.py                       # tiny OPT, 8 rows x 1024 tokens, 4 steps each
    python benchmarks/train_throughput.py --tokens-per-sample 2048 --rows 8 --steps 20 --preset small
    python benchmarks/train_throughput.py --family llama        # the same shape as a Llama-family model

The bench is built from ../shared/data/sni (skipped with a message when absent) with the OPT BPE files
(../shared/data/opt-bpe, else the builtin tokenizer). Both variants see the same examples, in stream order,
and run the same forward + backward + AdamW step; only the batching differs. Figures on a shared CPU are
depressed by other processes: compare the two lines, not absolute numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from optiml_plugin.benchfiles import Bench  # noqa: E402
from optiml_plugin.data.mixture import Mixture, MixtureConfig  # noqa: E402
from optiml_plugin.data.packing import PackingConfig, build_block, make_item  # noqa: E402
from optiml_plugin.data.pipeline import PackedBatches, collate_blocks  # noqa: E402
from optiml_plugin.data.stream import ExampleStream  # noqa: E402
from optiml_plugin.data.tokenizer import OptTokenizer  # noqa: E402
from optiml_plugin.local.attention_backends import DocumentAttention  # noqa: E402
from optiml_plugin.local.data import training_texts  # noqa: E402
from optiml_plugin.recipe import OptimConfig  # noqa: E402
from optiml_plugin.local.model import TargetLM, build_model  # noqa: E402
from optiml_plugin.local.trainer import adamw  # noqa: E402

SHARED = Path(os.environ.get("OPTIML_SHARED", REPO.parent / "shared"))
KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "position_ids")


def sni_bench(cache: Path) -> Path:
    """The SNI sample built with the builder (cached under `cache`)."""
    tasks = SHARED / "data" / "sni" / "tasks"
    if not tasks.is_dir():
        print(f"SKIP: SNI sample not found at {tasks} (set OPTIML_SHARED)")
        sys.exit(0)
    out = cache / "sni_bench"
    if not (out / "manifest.json").is_file():
        from optiml_plugin.bench.build import build_bench, load_build_config

        build_bench(load_build_config({"sources": [{"type": "sni", "path": str(tasks)}], "seed": 0}), out,
                    overwrite=True, progress=False)
    return out


def tokenizer_for(bench: Bench, kind: str = "auto") -> OptTokenizer:
    """OPT's BPE (50k vocabulary: the output projection then costs as much per target token as a tiny model's
    whole body), or a 4096-token BPE trained on the bench in code (as the demo does). 'auto': OPT's if present."""
    bpe = SHARED / "data" / "opt-bpe"
    if kind == "opt" or (kind == "auto" and (bpe / "gpt2-vocab.json").is_file()):
        if not (bpe / "gpt2-vocab.json").is_file():
            print(f"SKIP: OPT BPE files not found at {bpe} (set OPTIML_SHARED)")
            sys.exit(0)
        return OptTokenizer.from_dir(bpe)
    return OptTokenizer.builtin(training_texts(bench), vocab_size=4096)


def make_stream(bench: Bench, seed: int = 0) -> ExampleStream:
    return ExampleStream(bench, Mixture.from_bench(bench, MixtureConfig()), seed=seed)


def packed_batches(bench: Bench, tok: OptTokenizer, tokens: int, rows: int) -> Iterator[Dict[str, torch.Tensor]]:
    return iter(PackedBatches(make_stream(bench), tok, PackingConfig(tokens_per_sample=tokens), rows, seed=0))


def padded_batches(bench: Bench, tok: OptTokenizer, tokens: int, rows: int) -> Iterator[Dict[str, torch.Tensor]]:
    """One example per row (same truncation rule), right-padded to the longest example of the batch, with
    as many examples as fit in the packed batch's token budget (rows x tokens: the same memory per step)."""
    cfg = PackingConfig(tokens_per_sample=tokens)
    budget = rows * tokens
    stream = make_stream(bench)
    carry: List = []
    while True:
        items = carry
        carry = []
        while True:
            ex = next(stream)
            src, tgt = tok.encode_pair(ex.row["src"], ex.row["tgt"])
            item = make_item(src, tgt, cfg, index=ex.index)
            if items and (len(items) + 1) * max(len(item), max(len(i) for i in items)) > budget:
                carry = [item]
                break
            items.append(item)
        longest = max(len(it) for it in items)
        yield collate_blocks([build_block([it], longest) for it in items])


class Run:
    """One variant's model, optimizer and batches; `step()` is forward + backward + AdamW as the trainer does it
    (the fused output projection + cross entropy at target positions only)."""

    def __init__(self, model: torch.nn.Module, backend: str, batches: Iterator[Dict[str, torch.Tensor]]) -> None:
        self.attention = DocumentAttention(backend, torch.device("cpu"))
        self.attention.configure(model)
        self.model = TargetLM(model)
        self.opt = adamw([{"params": list(self.model.parameters())}], OptimConfig(lr=1e-4))
        self.batches = batches
        self.targets = self.slots = self.real = self.steps = 0
        self.elapsed = 0.0

    def step(self, timed: bool) -> None:
        b = {k: v for k, v in next(self.batches).items() if k in KEYS}
        t = time.perf_counter()
        loss, _ = self.model(b["loss_mask"], b["target_ids"], **self.attention.model_inputs(b))
        (loss / int(b["loss_mask"].sum())).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if timed:
            self.elapsed += time.perf_counter() - t
            self.steps += 1
            self.targets += int(b["loss_mask"].sum())
            self.slots += b["input_ids"].numel()
            self.real += int((b["segment_ids"] > 0).sum())

    def result(self) -> Dict[str, float]:
        return {"target_tokens_per_s": self.targets / self.elapsed, "tokens_per_s": self.real / self.elapsed,
                "non_pad": self.real / self.slots, "s_per_step": self.elapsed / self.steps}


def measure(runs: Dict[str, Run], steps: int, warmup: int = 1) -> Dict[str, Dict[str, float]]:
    """Steps of every run taken in turn (not one run after the other), so load from other processes on a
    shared machine depresses all variants alike; target tokens/s and tokens/s over the timed steps."""
    for i in range(warmup + steps):
        for run in runs.values():
            run.step(timed=i >= warmup)
    return {name: run.result() for name, run in runs.items()}


def parse(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--family", default="opt", help="the preset's model family (local/model.py FAMILIES: opt, "
                    "llama, mistral, qwen2, gemma, gpt_neox); the same tokenizer for every family")
    ap.add_argument("--tokens-per-sample", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=8, help="rows per packed batch")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--backend", default="auto", help="document-mask backend for the packed rows "
                    "(auto | per_example | dense | flex)")
    ap.add_argument("--tokenizer", default="auto", choices=("auto", "opt", "builtin"),
                    help="OPT's 50k BPE (auto: when ../shared has it) or a 4096-token BPE built from the bench")
    ap.add_argument("--cache", default=None, help="where to build/keep the SNI bench (default: a temp dir)")
    return ap.parse_args()


def setup(args: argparse.Namespace):
    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="optiml_tp_"))
    bench = Bench(sni_bench(cache))
    tok = tokenizer_for(bench, args.tokenizer)
    return bench, tok


def main() -> None:
    args = parse(__doc__)
    bench, tok = setup(args)

    def fresh():
        return build_model(args.preset, vocab_size=tok.vocab_size, dropout=0.0, seed=0, family=args.family,
                           max_positions=max(2048, args.tokens_per_sample),
                           special_ids={"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                        "pad_token_id": tok.pad_id})

    res = measure({"packed": Run(fresh(), args.backend, packed_batches(bench, tok, args.tokens_per_sample, args.rows)),
                   "padded": Run(fresh(), "causal", padded_batches(bench, tok, args.tokens_per_sample, args.rows))},
                  args.steps)
    packed, padded = res["packed"], res["padded"]
    print(f"{args.family} preset {args.preset}, packed backend {args.backend}, rows of {args.tokens_per_sample} "
          f"tokens, "
          f"threads {torch.get_num_threads()}, tokenizer {tok.origin} ({tok.vocab_size} tokens); the padded "
          f"baseline fills the same {args.rows} x {args.tokens_per_sample} token budget")
    for name, r in (("packed + document mask", packed), ("one example per row, padded", padded)):
        print(f"{name:<30} {r['target_tokens_per_s']:>10.1f} target tok/s {r['tokens_per_s']:>10.1f} tok/s "
              f"non-pad {r['non_pad']:.2f}  {r['s_per_step']:.3f} s/step")
    print(f"speed-up (target tokens/s): {packed['target_tokens_per_s'] / padded['target_tokens_per_s']:.2f}x "
          f"(aim >= 2x)")


if __name__ == "__main__":
    main()
