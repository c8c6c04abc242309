"""The criterion's arithmetic: target-only loss sums, logging outputs, and what `reduce_metrics` logs.

Why: this is where a normalization mistake would hide (metaseq's `cross_entropy` divides by all
input tokens), so it is pure torch, imports no metaseq, and is tested against the core loss.
The loss is returned as a SUM with `sample_size` = target tokens (or examples), because metaseq
sums both over data-parallel workers before dividing: the update is normalized by the global count.
Logging outputs hold the same keys on every worker (metaseq all-reduces them key by key), so every
benchmark of the training mixture gets its two counters even when absent from a batch.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from optiml_plugin.attention import segment_starts
from optiml_plugin.data.training_data import benchmark_sums
from optiml_plugin.loss import LossSums, example_groups, loss_sums, vocab_parallel_nll

LN2 = math.log(2)


def bench_key(name: str) -> Tuple[str, str]:
    """Logging keys of one benchmark's target NLL sum and target token count."""
    return f"bnll_{name}", f"btgt_{name}"


def examples_by_benchmark(segment_ids: torch.Tensor, benchmark_ids: torch.Tensor, n_benchmarks: int) -> torch.Tensor:
    """How many examples of each benchmark the batch holds (one per segment start; the realized shares)."""
    starts = segment_starts(segment_ids) & (segment_ids > 0)
    ids = benchmark_ids.long()[starts]
    ids = ids[(ids >= 0) & (ids < n_benchmarks)]
    return torch.bincount(ids, minlength=n_benchmarks).float()


def target_nll(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor, mp_rank: int = 0,
               mp_group: Any = None) -> torch.Tensor:
    """Per-target-token NLL [n] (row-major order of `loss_mask`, differentiable) of `logits` [B, T, V/p].

    With model parallel size p > 1 the logits are this rank's vocabulary slice (the decoder is built
    not to gather them) and the exact full-vocabulary NLL comes from `vocab_parallel_nll`'s
    all-reduces; with p = 1 the same code is plain cross entropy. Only target positions are taken.
    """
    mask = loss_mask.bool()
    return vocab_parallel_nll(logits[mask], target[mask], mp_rank, mp_group)


def target_sums(nll: torch.Tensor, loss_mask: torch.Tensor, segment_ids: Optional[torch.Tensor],
                benchmark_ids: Optional[torch.Tensor], n_benchmarks: int,
                normalize: str) -> Tuple[LossSums, torch.Tensor, torch.Tensor]:
    """Core loss sums of per-target-token `nll`, plus per-benchmark NLL sums and target counts (detached).

    Example normalization groups the tokens by (row, segment), as the core loss does; a batch without
    segment ids counts each row as one example.
    """
    mask = loss_mask.bool()
    sums = loss_sums(nll, example_groups(segment_ids, mask), normalize)
    if benchmark_ids is not None and n_benchmarks:
        bnll, bcount = (t.float() for t in benchmark_sums(nll, benchmark_ids[mask], n_benchmarks))
    else:
        bnll = bcount = torch.zeros(n_benchmarks, dtype=torch.float32, device=nll.device)
    return sums, bnll, bcount


def loss_and_logging(sums: LossSums, normalize: str, sample: Dict[str, Any], bench_nll: torch.Tensor,
                     bench_count: torch.Tensor, benchmarks: Sequence[str]
                     ) -> Tuple[torch.Tensor, Any, Dict[str, Any]]:
    """`(loss sum, sample_size, logging_output)` as metaseq's criterions return them."""
    if normalize == "token":
        loss, sample_size = sums.nll_sum, sums.target_tokens
    else:
        loss, sample_size = sums.example_nll_sum, sums.examples
    src = sample["net_input"]["src_tokens"]
    log: Dict[str, Any] = {
        "loss": loss.detach(),
        "nll_loss": sums.nll_sum.detach(),
        "ntokens": sample["ntokens"],
        "ntokens_target": sums.target_tokens.detach(),
        "nsentences": sample["target"].size(0),
        "sample_size": sample_size,
        "ncapacity": int(src.numel()),
    }
    if "segment_ids" in sample:
        log["nexamples"] = int(sample["segment_ids"].max(dim=1).values.clamp(min=0).sum())
    examples = None
    if "segment_ids" in sample and "benchmark_ids" in sample:
        examples = examples_by_benchmark(sample["segment_ids"], sample["benchmark_ids"], len(benchmarks))
    for b, name in enumerate(benchmarks):
        k_nll, k_tgt = bench_key(name)
        log[k_nll] = bench_nll[b]
        log[k_tgt] = bench_count[b]
        if examples is not None:
            log[f"bex_{name}"] = examples[b]
    return loss, sample_size, log


def _total(logs: Sequence[Dict[str, Any]], key: str) -> float:
    return float(sum(float(log.get(key, 0)) for log in logs))


def reduced_scalars(logs: Sequence[Dict[str, Any]]) -> List[Tuple[str, float, float, int]]:
    """`(key, value, weight, round)` for `metrics.log_scalar`, in metaseq's units (base 2)."""
    out: List[Tuple[str, float, float, int]] = []
    sample_size = _total(logs, "sample_size")
    ntgt = _total(logs, "ntokens_target")
    if sample_size > 0:
        out.append(("loss", _total(logs, "loss") / sample_size / LN2, sample_size, 3))
    if ntgt > 0:
        out.append(("nll_loss", _total(logs, "nll_loss") / ntgt / LN2, ntgt, 3))
    capacity = _total(logs, "ncapacity")
    if capacity > 0:
        out.append(("pack_eff", _total(logs, "ntokens") / capacity, capacity, 4))
        out.append(("tgt_frac", ntgt / capacity, capacity, 4))
    rows = _total(logs, "nsentences")
    if rows > 0 and any("nexamples" in log for log in logs):
        out.append(("docsperex", _total(logs, "nexamples") / rows, rows, 3))
    names = sorted({k[len("bnll_"):] for log in logs for k in log if k.startswith("bnll_")})
    examples = sum(_total(logs, f"bex_{name}") for name in names)
    for name in names:
        k_nll, k_tgt = bench_key(name)
        count = _total(logs, k_tgt)
        if count > 0:
            out.append((f"loss_{name}", _total(logs, k_nll) / count / LN2, count, 3))
        if examples > 0:  # realized share of the examples trained on (the local trainer's realized_share)
            out.append((f"share_{name}", _total(logs, f"bex_{name}") / examples, examples, 4))
    return out

