"""Target-only cross entropy returned as sums and counts.

Why: OPT-IML's loss covers target tokens (plus `</s>`) only and is normalized by the number of
target tokens across all workers (metaseq's `sample_size = ntokens_target`). Returning sums and
counts lets data-parallel workers and gradient-accumulation steps add them up before dividing,
so the result equals the whole-batch loss exactly. Example normalization (each example's mean
target NLL, averaged over examples) is offered beside it; it needs segment ids to find examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

from optiml_plugin.conventions import LOSS_NORMALIZATIONS
from optiml_plugin.errors import ConfigError

# the one unit conversion: losses are reported in bits (metaseq's unit), computed in nats
BITS_PER_NAT = 1 / math.log(2)
LOSS_UNIT = "bits / target token"   # the unit of every logged loss (charts and reports name it)


@dataclass
class LossSums:
    """`nll_sum` over target tokens, their count, the sum over examples of each example's mean
    NLL, and the number of examples with at least one target token. All add across shards."""

    nll_sum: torch.Tensor
    target_tokens: torch.Tensor
    example_nll_sum: torch.Tensor
    examples: torch.Tensor
    normalize: str = "token"

    def loss(self, normalize: Optional[str] = None) -> torch.Tensor:
        mode = normalize or self.normalize
        _check_normalize(mode)
        if mode == "token":
            return self.nll_sum / self.target_tokens.clamp(min=1)
        return self.example_nll_sum / self.examples.clamp(min=1)

    def __add__(self, other: "LossSums") -> "LossSums":
        return LossSums(self.nll_sum + other.nll_sum, self.target_tokens + other.target_tokens,
                        self.example_nll_sum + other.example_nll_sum, self.examples + other.examples,
                        self.normalize)


def _check_normalize(mode: str) -> None:
    if mode not in LOSS_NORMALIZATIONS:
        raise ConfigError(f"loss normalize must be one of {LOSS_NORMALIZATIONS}, got {mode!r}")


def example_groups(segment_ids: Optional[torch.Tensor], loss_mask: torch.Tensor) -> torch.Tensor:
    """Per target token (row-major order of `loss_mask`), an id shared only by the tokens of its example:
    (row, segment) made unique across rows. Without `segment_ids` each row is one example."""
    mask = loss_mask.bool()
    segments = torch.zeros_like(mask, dtype=torch.long) if segment_ids is None else segment_ids.long()
    width = int(segments.max().item()) + 1 if segments.numel() else 1
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return (rows * width + segments)[mask]


def loss_sums(nll: torch.Tensor, groups: torch.Tensor, normalize: str = "token") -> LossSums:
    """`LossSums` of per-target-token `nll` [n] whose examples are given by `groups` [n]."""
    _check_normalize(normalize)
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=nll.dtype, device=nll.device).index_add_(0, inverse, nll)
    example_nll_sum = (sums / counts.to(nll.dtype)).sum()
    target_tokens = torch.tensor(nll.numel(), device=nll.device)
    return LossSums(nll.sum(), target_tokens, example_nll_sum, torch.tensor(counts.numel(), device=nll.device),
                    normalize)


def token_coefficients(groups: torch.Tensor, normalize: str = "token") -> torch.Tensor:
    """Each target token's weight in the loss's numerator: 1 (token normalization, the sum of NLL) or
    1 / its example's target count (example normalization, the sum of example means)."""
    _check_normalize(normalize)
    if normalize == "token":
        return torch.ones(groups.numel(), dtype=torch.float32, device=groups.device)
    _, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    return 1.0 / counts.to(torch.float32)[inverse]


def group_sums(values: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    """float64 sums of `values` [k] by group id `ids` [k] into `n` groups; ids outside [0, n) (-1 on
    padding) are left out. The per-benchmark and per-task loss arithmetic of both trainers."""
    ok = (ids >= 0) & (ids < n)
    out = torch.zeros(n, dtype=torch.float64, device=values.device)
    return out.index_add_(0, ids[ok].long().to(values.device), values[ok].detach().double())


class _VocabParallelNLL(torch.autograd.Function):
    """NLL of each row of `shard` [n, V/p], this rank's slice [start, start + V/p) of the vocabulary.

    Why: under tensor (model) parallelism each rank holds a slice of the output projection; gathering
    the full-vocabulary logits costs B x T x V per rank (3.3 GB at 8 x 2048 x 50272 in fp32). Three
    all-reduces over the model-parallel group (max, target logit, sum of exponentials) give every rank
    the exact full-vocabulary NLL; the gradient, softmax minus one-hot on this slice, needs none.
    Softmax sums are taken in fp32 (or wider), as metaseq does.
    """

    @staticmethod
    def forward(ctx: Any, shard: torch.Tensor, targets: torch.Tensor, start: int,
                group: Any) -> torch.Tensor:
        x = shard.to(torch.promote_types(shard.dtype, torch.float32))
        width = x.shape[-1]
        top = x.amax(dim=-1)
        _all_reduce(top, dist.ReduceOp.MAX, group)
        x = x - top[:, None]   # a new buffer: the caller's logits are left as they were
        local = targets.long() - start
        inside = (local >= 0) & (local < width)
        local = local.clamp(0, width - 1)
        picked = x.gather(1, local[:, None]).squeeze(1) * inside
        _all_reduce(picked, dist.ReduceOp.SUM, group)
        exp = x.exp_()
        total = exp.sum(dim=-1)
        _all_reduce(total, dist.ReduceOp.SUM, group)
        ctx.save_for_backward(exp.div_(total[:, None]), local, inside)
        ctx.dtype = shard.dtype
        return total.log() - picked

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        softmax, local, inside = ctx.saved_tensors
        g = softmax.mul_(grad[:, None])   # in place: the saved softmax serves one backward
        rows = torch.arange(g.shape[0], device=g.device)
        g[rows[inside], local[inside]] -= grad[inside]
        return g.to(ctx.dtype), None, None, None


def _all_reduce(tensor: torch.Tensor, op: Any, group: Any) -> None:
    if group is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)


def vocab_parallel_nll(shard: torch.Tensor, targets: torch.Tensor, rank: int = 0,
                       group: Any = None) -> torch.Tensor:
    """Per-row NLL [n] (differentiable) of vocabulary-sharded logits `shard` [n, V/p] held by `rank` of
    the model-parallel `group` (rank r holds ids [r * V/p, (r + 1) * V/p), Megatron's layout).

    With `group` None (or of one rank) `shard` is the whole vocabulary and this is plain cross entropy.
    Pass only the target positions: the work and memory are then ~ targets x V/p.
    """
    return _VocabParallelNLL.apply(shard, targets, rank * shard.shape[-1], group)


MIN_CHUNK_ROWS = 64


def default_chunk_rows(vocab: int, dim: int, rows: int, compute_dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk: the chunk's buffers (logits in the accumulation dtype, plus a low-precision copy
    under autocast) may take as much memory as the [vocab, dim] weight gradient the call returns anyway,
    so the fused loss's own memory is at most that gradient's size again, never targets x vocab.

    Why not smaller: every chunk adds its product into the whole weight gradient, which is then read and
    rewritten once per chunk; with ~`dim` rows per chunk that traffic is ~1/dim of the chunk's matmul
    work (a fixed 16 MiB chunk was 83 rows at OPT's vocabulary, and its rewrites and zero-fill took 18%
    of a step). At least MIN_CHUNK_ROWS rows, at most `rows`.
    """
    acc = torch.promote_types(compute_dtype, torch.float32)
    acc_size = torch.empty((), dtype=acc).element_size()
    per_row = vocab * (acc_size + (0 if compute_dtype == acc else torch.empty((), dtype=compute_dtype).element_size()))
    budget = vocab * dim * acc_size
    return max(1, min(rows, max(MIN_CHUNK_ROWS, budget // per_row)))


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i c_i * NLL_i of logits = hidden @ weight.T, computed chunk by chunk of tokens.

    Why: the [targets, vocab] logits (50k wide for OPT) are the largest tensors of a small model's step;
    softmax, its gradient and the weight-gradient product are all taken inside one chunk, so nothing of
    size targets x vocab is ever allocated. The gradients are computed in the forward (the coefficients are
    known), so the output projection costs three matmuls, as unfused, and backward only scales them.
    One logits buffer serves every chunk (allocated once: large buffers come fresh from the OS, page by
    page), the first chunk writes the weight gradient (no zero-fill) and later ones add into it.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                coefficients: torch.Tensor, chunk: int, compute_dtype: torch.dtype,
                need_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        n, vocab = h.shape[0], w.shape[0]
        chunk = max(1, min(chunk, n))
        acc = torch.promote_types(compute_dtype, torch.float32)  # softmax and weight-gradient sums
        nll = torch.empty(n, dtype=acc, device=h.device)
        grad_h = torch.empty_like(h) if need_grad else None
        grad_w = torch.empty(weight.shape, dtype=acc, device=h.device) if need_grad else None
        buf = torch.empty(chunk, vocab, dtype=acc, device=h.device)
        low = None if compute_dtype == acc else torch.empty(chunk, vocab, dtype=compute_dtype, device=h.device)
        w_t = w.t()
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            t = targets[s:e].long()
            logits = buf[:e - s]
            if low is None:
                torch.mm(h[s:e], w_t, out=logits)
            else:
                logits.copy_(torch.mm(h[s:e], w_t, out=low[:e - s]))
            top = logits.amax(dim=-1, keepdim=True)
            picked = logits.gather(1, t[:, None])
            exp = logits.sub_(top).exp_()  # in place: no second [chunk, vocab] buffer
            total = exp.sum(dim=-1, keepdim=True)
            nll[s:e] = (total.log() + top - picked).squeeze(1)
            if need_grad:  # d(c * NLL)/dlogits = c * (softmax - onehot)
                c = coefficients[s:e, None].to(acc)
                g = exp.mul_(c / total)
                g[torch.arange(e - s, device=h.device), t] -= c.squeeze(1)
                if low is not None:
                    g = low[:e - s].copy_(g)
                torch.mm(g, w, out=grad_h[s:e])
                if s == 0:
                    if low is None:
                        torch.mm(g.t(), h[s:e], out=grad_w)
                    else:
                        grad_w.copy_(g.t() @ h[s:e])
                elif low is None:
                    grad_w.addmm_(g.t(), h[s:e])
                else:  # a low-precision product, summed over chunks in fp32
                    grad_w.add_(g.t() @ h[s:e])
        ctx.grads = (grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(nll)
        return (nll * coefficients.to(acc)).sum(), nll

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_nll: Any) -> Tuple[Optional[torch.Tensor], ...]:
        if ctx.grads is None:  # the buffers are scaled in place below, so they serve one backward only
            raise RuntimeError("linear_cross_entropy: a second backward through the same call (retain_graph) "
                               "is not supported")
        grad_h, grad_w = ctx.grads
        ctx.grads = None
        grad_h = grad_h.mul_(grad_loss.to(grad_h.dtype)).to(ctx.dtypes[0])  # in place: not used again
        grad_w = grad_w.mul_(grad_loss).to(ctx.dtypes[1])
        return (grad_h, grad_w, None, None, None, None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         coefficients: Optional[torch.Tensor] = None,
                         chunk: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy of the output projection `hidden` [n, d] @ `weight` [V, d].T against `targets` [n].

    Returns (sum_i coefficients_i * NLL_i, differentiable; NLL [n], detached, in fp32 or wider). Under autocast the
    matmuls run in the autocast dtype and the softmax in fp32 (as metaseq does).
    """
    device = hidden.device
    coefficients = (torch.ones(hidden.shape[0], device=device) if coefficients is None
                    else coefficients.to(device))
    dtype = _autocast_dtype(device.type) or hidden.dtype
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunk = chunk or default_chunk_rows(weight.shape[0], weight.shape[1], hidden.shape[0], dtype)
    with torch.autocast(device.type, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, coefficients, chunk, dtype, need_grad)


def _autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The active autocast dtype for `device_type`, or None (torch >= 2.4 API, older fallbacks)."""
    if hasattr(torch, "get_autocast_dtype"):
        on = torch.is_autocast_enabled(device_type)
        return torch.get_autocast_dtype(device_type) if on else None
    if device_type == "cpu":
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
