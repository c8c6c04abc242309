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

from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import LossSums, target_cross_entropy

LN2 = math.log(2)


def bench_key(name: str) -> Tuple[str, str]:
    """Logging keys of one benchmark's target NLL sum and target token count."""
    return f"bnll_{name}", f"btgt_{name}"


def sums_by_benchmark(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor,
                      segment_ids: Optional[torch.Tensor], benchmark_ids: Optional[torch.Tensor],
                      n_benchmarks: int, normalize: str) -> Tuple[LossSums, torch.Tensor, torch.Tensor]:
    """Core loss sums of the batch, plus per-benchmark NLL sums and target counts.

    The core loss is evaluated once per benchmark present on that benchmark's (disjoint) target
    positions, so the total is the same sum the core gives for the whole batch, with no second pass.
    """
    nll = torch.zeros(n_benchmarks, dtype=torch.float32, device=logits.device)
    count = torch.zeros(n_benchmarks, dtype=torch.float32, device=logits.device)
    if benchmark_ids is None or n_benchmarks == 0:
        return target_cross_entropy(logits, target, loss_mask, segment_ids, normalize), nll, count
    total: Optional[LossSums] = None
    rest = loss_mask.clone()
    for b in torch.unique(benchmark_ids[loss_mask]).tolist():
        if b < 0 or b >= n_benchmarks:
            continue
        mask_b = loss_mask & (benchmark_ids == b)
        rest &= ~mask_b
        part = target_cross_entropy(logits, target, mask_b, segment_ids, normalize)
        nll[b] = part.nll_sum.detach().float()
        count[b] = part.target_tokens.float()
        total = part if total is None else total + part
    if total is None or bool(rest.any()):
        part = target_cross_entropy(logits, target, rest, segment_ids, normalize)
        total = part if total is None else total + part
    return total, nll, count


def sums_from_token_nll(token_nll: torch.Tensor, loss_mask: torch.Tensor,
                        benchmark_ids: Optional[torch.Tensor], n_benchmarks: int,
                        normalize: str) -> Tuple[LossSums, torch.Tensor, torch.Tensor]:
    """The same sums from per-token NLL (metaseq's vocab-parallel cross entropy, model parallel > 1).

    Token normalization only: example normalization needs per-example grouping the vocab-parallel
    path does not give here.
    """
    if normalize != "token":
        raise ConfigError("--loss-normalization example is not supported with model parallel size > 1; "
                          "use --loss-normalization token (the paper's choice)")
    mask = loss_mask.bool()
    masked = token_nll.float() * mask
    zero = torch.zeros((), device=token_nll.device)
    sums = LossSums(masked.sum(), mask.sum(), zero, zero, normalize)
    nll = torch.zeros(n_benchmarks, dtype=torch.float32, device=token_nll.device)
    count = torch.zeros(n_benchmarks, dtype=torch.float32, device=token_nll.device)
    if benchmark_ids is not None and n_benchmarks:
        ok = mask & (benchmark_ids >= 0) & (benchmark_ids < n_benchmarks)
        ids = benchmark_ids[ok].long()
        nll.index_add_(0, ids, masked[ok].detach())
        count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float32))
    return sums, nll, count


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
    for b, name in enumerate(benchmarks):
        k_nll, k_tgt = bench_key(name)
        log[k_nll] = bench_nll[b]
        log[k_tgt] = bench_count[b]
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
    for name in names:
        k_nll, k_tgt = bench_key(name)
        count = _total(logs, k_tgt)
        if count > 0:
            out.append((f"loss_{name}", _total(logs, k_nll) / count / LN2, count, 3))
    return out

