"""optiml's training step beside TRL's SFTTrainer on the same model, examples and token budget:
target and total tokens/s, and whether a packed example sees the others (max logit difference of an
example inside a packed row against the same example alone). Prints SKIPPED without `trl`
(`pip install '.[trl]'`).

    python benchmarks/trl_sft.py                                   # tiny OPT, 4 rows x 1024, 3 steps, 2 pairs
    python benchmarks/trl_sft.py --preset opt-125m --rows 2 --steps 3 --repeats 2

Both sides see the same examples, in stream order (the SNI sample bench and tokenizer of
benchmarks/train_throughput.py), tokenized once as `</s> src tgt </s>` with loss on `tgt </s>`. optiml:
best-fit packing with document-masked attention and the loss projected at target positions only
(`TargetLM`). TRL: its packing (`packing=True`, best-fit decreasing, completion-only loss) through
transformers' model and loss. Same rows x tokens per step, AdamW, fp32, one process, data preparation
outside the timed steps on both sides. The runs alternate (optiml, TRL, optiml, ...) so load from other
processes hits both alike; each figure is the median [range] over the pairs, the ratio is per pair.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import Run, make_stream, packed_batches, setup  # noqa: E402

from optiml_plugin.data.packing import PackingConfig, make_item  # noqa: E402
from optiml_plugin.local.model import build_model  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--tokens-per-sample", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=4, help="rows per step (both sides)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="alternated (optiml, TRL) pairs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--backend", default="auto", help="optiml's document-mask backend")
    ap.add_argument("--tokenizer", default="auto", choices=("auto", "opt", "builtin"))
    ap.add_argument("--cache", default=None, help="where to build/keep the SNI bench (default: a temp dir)")
    return ap.parse_args()


def examples(bench: Any, tok: Any, tokens: int, n: int) -> List[Tuple[List[int], int]]:
    """The first `n` stream examples as (token ids, source length), exactly as optiml's packer sees them."""
    cfg = PackingConfig(tokens_per_sample=tokens)
    stream = make_stream(bench)
    out = []
    for _ in range(n):
        ex = next(stream)
        item = make_item(*tok.encode_pair(ex.row["src"], ex.row["tgt"]), cfg, index=ex.index)
        out.append((item.tokens.tolist(), int(item.n_src)))
    return out


def fresh_model(args: argparse.Namespace, tok: Any) -> torch.nn.Module:
    return build_model(args.preset, vocab_size=tok.vocab_size, dropout=0.0, seed=0,
                       max_positions=max(2048, args.tokens_per_sample))


def run_optiml(args: argparse.Namespace, bench: Any, tok: Any) -> Dict[str, float]:
    run = Run(fresh_model(args, tok), args.backend, packed_batches(bench, tok, args.tokens_per_sample, args.rows))
    for i in range(args.warmup + args.steps):
        run.step(timed=i >= args.warmup)
    return run.result()


class _Counting:
    """TRL's collator, counting target and real tokens of every batch it makes."""

    def __init__(self, inner: Any, pad_id: int) -> None:
        self.inner, self.pad_id, self.batches = inner, pad_id, []

    def __call__(self, features: List[Dict[str, Any]]) -> Dict[str, Any]:
        batch = self.inner(features)
        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
        self.batches.append((int((batch["labels"] != -100).sum()), real, int(batch["input_ids"].numel())))
        return batch


def trl_trainer(args: argparse.Namespace, tok: Any, rows: List[Tuple[List[int], int]], out_dir: str) -> Any:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(tok.save(Path(out_dir) / "tokenizer")), bos_token="<s>",
                                     eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    data = Dataset.from_list([{"input_ids": ids, "completion_mask": [0] * n_src + [1] * (len(ids) - n_src)}
                              for ids, n_src in rows])
    config = SFTConfig(output_dir=out_dir, max_steps=args.warmup + args.steps, per_device_train_batch_size=args.rows,
                       max_length=args.tokens_per_sample, packing=True, completion_only_loss=True,
                       learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                       report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                       dataloader_num_workers=0, seed=0, bf16=False, fp16=False, disable_tqdm=True)
    return SFTTrainer(model=fresh_model(args, tok), args=config, train_dataset=data, processing_class=hf_tok)


def run_trl(args: argparse.Namespace, tok: Any, rows: List[Tuple[List[int], int]], out_dir: str) -> Dict[str, float]:
    from transformers import TrainerCallback

    trainer = trl_trainer(args, tok, rows, out_dir)
    counting = _Counting(trainer.data_collator, tok.pad_id)
    trainer.data_collator = counting
    times: List[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            times.append(time.perf_counter() - self.start)

    trainer.add_callback(Clock())
    trainer.train()
    timed = times[args.warmup:]
    counts = counting.batches[args.warmup:args.warmup + len(timed)]
    elapsed = sum(timed)
    return {"target_tokens_per_s": sum(c[0] for c in counts) / elapsed,
            "tokens_per_s": sum(c[1] for c in counts) / elapsed, "non_pad": sum(c[1] for c in counts) /
            sum(c[2] for c in counts), "s_per_step": elapsed / len(timed)}


def _leak(model: torch.nn.Module, ids: torch.Tensor, start: int, end: int, packed_logits: torch.Tensor) -> float:
    """Max |logit| difference of tokens [start, end) of a packed row against that example run alone."""
    with torch.no_grad():
        alone = model(input_ids=ids[start:end].unsqueeze(0), use_cache=False).logits[0]
    return float((packed_logits[start:end] - alone).abs().max())


def leakage(args: argparse.Namespace, bench: Any, tok: Any, rows: List[Tuple[List[int], int]],
            out_dir: str) -> Tuple[Dict[str, Tuple[float, int]], List[str]]:
    """{side: (max logit difference, examples checked)} over the examples after the first of one packed
    row, each side fed exactly as it feeds its model in training; and the keys TRL feeds."""
    from optiml_plugin.local.attention_backends import DocumentAttention

    model = fresh_model(args, tok).eval()
    # optiml: its packed batch through its attention backend
    batch = next(packed_batches(bench, tok, args.tokens_per_sample, args.rows))
    attention = DocumentAttention(args.backend, torch.device("cpu"))
    attention.configure(model)
    with torch.no_grad():
        logits = model(**attention.model_inputs(batch), use_cache=False).logits[0]
    model.config._attn_implementation = "sdpa"
    seg = batch["segment_ids"][0]
    spans = [(int((seg == s).nonzero()[0]), int((seg == s).nonzero()[-1]) + 1) for s in seg.unique().tolist() if s > 0]
    ours = max(_leak(model, batch["input_ids"][0], a, b, logits) for a, b in spans[1:])
    # TRL: the first batch of its train dataloader, every key but the labels, into the same weights
    trainer = trl_trainer(args, tok, rows, out_dir)
    trl_batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: v for k, v in trl_batch.items() if k != "labels"}
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.eval()
    with torch.no_grad():
        trl_logits = trainer.model(**inputs, use_cache=False).logits[0]
    ids = trl_batch["input_ids"][0]
    if "position_ids" in trl_batch:   # examples restart their positions at 0
        starts = (trl_batch["position_ids"][0] == 0).nonzero().squeeze(-1).tolist()
        limit = int(trl_batch["attention_mask"][0].sum()) if "attention_mask" in trl_batch else len(ids)
        trl_spans = list(zip(starts, starts[1:] + [limit]))
    else:
        trl_spans = []
    theirs = max((_leak(model, ids, a, b, trl_logits) for a, b in trl_spans[1:]), default=float("nan"))
    return {"optiml": (ours, len(spans) - 1), "TRL": (theirs, max(0, len(trl_spans) - 1))}, sorted(inputs)


def summary(values: List[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def main() -> int:
    try:
        import trl
    except ImportError as e:
        print(f"SKIPPED: trl is not importable ({e}; pip install '.[trl]'); nothing was measured.")
        return 0
    import tempfile

    import transformers

    args = parse()
    bench, tok = setup(args)
    need = (args.warmup + args.steps + 1) * args.rows * max(4, args.tokens_per_sample // 64)
    rows = examples(bench, tok, args.tokens_per_sample, need)
    out_dir = tempfile.mkdtemp(prefix="optiml_trl_")
    print(f"OPT preset {args.preset}, {args.rows} rows x {args.tokens_per_sample} tokens per step, "
          f"{args.steps} timed steps after {args.warmup}, {args.repeats} alternated pairs, threads "
          f"{torch.get_num_threads()}, tokenizer {tok.origin} ({tok.vocab_size} tokens); torch {torch.__version__}, "
          f"transformers {transformers.__version__}, trl {trl.__version__}")
    results: Dict[str, List[Dict[str, float]]] = {"optiml": [], "TRL": []}
    for _ in range(args.repeats):
        results["optiml"].append(run_optiml(args, bench, tok))
        results["TRL"].append(run_trl(args, tok, rows, out_dir))
    for name, rs in results.items():
        print(f"{name:<7} target tokens/s {summary([r['target_tokens_per_s'] for r in rs])}  "
              f"tokens/s {summary([r['tokens_per_s'] for r in rs])}  "
              f"non-pad {summary([r['non_pad'] for r in rs], '{:.2f}')}  "
              f"s/step {summary([r['s_per_step'] for r in rs], '{:.3f}')}")
    for key, label in (("target_tokens_per_s", "target tokens/s"), ("tokens_per_s", "tokens/s")):
        ratios = [a[key] / b[key] for a, b in zip(results["optiml"], results["TRL"])]
        print(f"optiml / TRL {label}: {summary(ratios, '{:.2f}')}x")
    leak, keys = leakage(args, bench, tok, rows, out_dir)
    print(f"TRL feeds its model: {', '.join(keys)}")
    for name in ("optiml", "TRL"):
        diff, n = leak[name]
        print(f"cross-example attention, {name}: max logit difference packed vs alone {diff:.3g} "
              f"over {n} examples after the first of a row ({'none' if diff < 1e-3 else 'examples see each other'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
