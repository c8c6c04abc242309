"""The criterion's arithmetic: the loss sum metaseq backpropagates, and the telemetry it logs.

Why: this is where a normalization mistake would hide (metaseq's `cross_entropy` divides by all
input tokens), so it is pure torch, imports no metaseq, and is tested against the core loss.
The loss is returned as a SUM with `sample_size` = target tokens (or examples), because metaseq
sums both over data-parallel workers before dividing: the update is normalized by the global count.
The logging output holds the telemetry's counters (`telemetry.py`, the local trainer's too) under the
same keys on every worker (metaseq sums them key by key), and `reduced_scalars` turns their sum into
the one metric schema: `metrics.log_scalar` is then only a sink.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import torch

from optiml_plugin.conventions import PAD_ID
from optiml_plugin.loss import example_groups, loss_sums, vocab_parallel_nll
from optiml_plugin.telemetry import Scalar, Telemetry, scalars


def target_nll(logits: torch.Tensor, target: torch.Tensor, loss_mask: torch.Tensor, mp_rank: int = 0,
               mp_group: Any = None) -> torch.Tensor:
    """Per-target-token NLL [n] (row-major order of `loss_mask`, differentiable) of `logits` [B, T, V/p].

    With model parallel size p > 1 the logits are this rank's vocabulary slice (the decoder is built
    not to gather them) and the exact full-vocabulary NLL comes from `vocab_parallel_nll`'s
    all-reduces; with p = 1 the same code is plain cross entropy. Only target positions are taken.
    """
    mask = loss_mask.bool()
    return vocab_parallel_nll(logits[mask], target[mask], mp_rank, mp_group)


def train_loss(nll: torch.Tensor, loss_mask: torch.Tensor, segment_ids: torch.Tensor,
               normalize: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(differentiable loss sum, sample_size) of per-target-token `nll`: the NLL sum over target tokens
    and their count, or (example normalization) the sum of example means and the number of examples."""
    sums = loss_sums(nll, example_groups(segment_ids, loss_mask.bool()), normalize)
    if normalize == "token":
        return sums.nll_sum, sums.target_tokens
    return sums.example_nll_sum, sums.examples


def loss_and_logging(nll: torch.Tensor, sample: Dict[str, Any], telemetry: Telemetry, pad: int = PAD_ID
                     ) -> Tuple[torch.Tensor, Any, Dict[str, Any]]:
    """`(loss sum, sample_size, logging_output)` as metaseq's criterions return them, from the
    per-target-token `nll` of `sample` (row-major order of its targets).

    A validation sample (it carries `valid_groups`, see `batches.to_metaseq_sample`) is scored per
    target token whatever the training normalization, and grouped by its tasks' benchmarks and
    categories; a training sample by `telemetry`'s normalization and the mixture's benchmarks."""
    target = sample["target"]
    mask = target.ne(pad)
    log: Dict[str, Any] = {"ntokens": sample["ntokens"], "nsentences": sample["target"].size(0)}
    if "valid_groups" in sample:
        counters = telemetry.valid_counters(nll, sample["task_ids"][mask], sample["valid_groups"])
        loss, sample_size = nll.sum(), counters["target_tokens"]
    else:
        counters = telemetry.train_counters(nll, mask, sample["segment_ids"], sample["benchmark_ids"],
                                            sample.get("demo_k"))
        loss, sample_size = train_loss(nll, mask, sample["segment_ids"], telemetry.normalize)
    log.update(counters)
    log.update(loss=loss.detach(), sample_size=sample_size)
    return loss, sample_size, log


def reduced_scalars(logs: Sequence[Dict[str, Any]]) -> List[Scalar]:
    """The telemetry's scalars (key, value in bits, weight) of the logging outputs' summed counters:
    what `reduce_metrics` hands to `metrics.log_scalar`, weighted so a log interval's average is the
    value of its summed counters."""
    keys = {k for log in logs for k in log}
    summed = {k: sum(float(log.get(k, 0)) for log in logs) for k in keys}
    return scalars(summed)
