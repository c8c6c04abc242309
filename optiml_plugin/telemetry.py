"""The one metric schema of training, for both trainers: additive counters in, scalars in bits out.

Why one module: the local trainer and the metaseq criterion used to compute their metrics each their
own way (realized shares counted at tokenization in one and at training in the other, validation
grouped by the training mixture in one and by the evaluation task in the other, two nats->bits
constants). Here a batch that was TRAINED (or scored for validation) becomes a dict of named,
additive counters; counters add over micro-batches, data-parallel ranks and logging windows (metaseq
sums logging outputs key by key; the local trainer all-reduces them as one vector), and `scalars`
turns any such sum into the metrics. The two sinks (the local log line and TensorBoard,
`metrics.log_scalar` in metaseq) only write what `scalars` gives.

Every scalar carries its weight, the denominator it was divided by: metaseq averages a key's values
over a logging window with these weights, which gives exactly the value of the window's summed
counters, the local trainer's rule. So a window of N updates reads the same in both.

Counter names say what they count: `nll_sum` and `target_tokens` (nats and targets), `loss_sum` and
`loss_count` (the training loss's numerator and denominator under `loss_normalization`), `tokens`
(non-padding input tokens), `capacity` (input slots), `rows`, `examples` (packed examples, one per
segment), and per group `KIND/benchmark/NAME` (`KIND/category/NAME` in validation). Validation
counters are grouped by the evaluation task's own benchmark and category, so benchmarks held out of
training are scored too; its loss is per target token whatever the training normalization.
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from optiml_plugin.attention import segment_starts
from optiml_plugin.loss import BITS_PER_NAT, example_groups, group_sums, loss_sums

Counters = Dict[str, torch.Tensor]

# the realized shares of the mixture: of examples, of input tokens, of target tokens
SHARE_KINDS = ("examples", "tokens", "target_tokens")
VALID_GROUPS = ("benchmark", "category")


class Scalar(NamedTuple):
    """One metric: its flat key (`a/b/c` nests as {a: {b: {c: value}}}), value and weight."""

    key: str
    value: float
    weight: float


def _f64(x: Any, device: Any) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64, device=device)


class Telemetry:
    """The counters of one run: its training benchmarks (the logging keys) and loss normalization."""

    def __init__(self, benchmarks: Sequence[str], normalize: str = "token", max_demos: int = 0) -> None:
        self.benchmarks: List[str] = list(benchmarks)
        self.normalize = normalize
        self.max_demos = max_demos   # MetaICL / mixed prompts: the most demonstrations before an example

    def train_counters(self, nll: torch.Tensor, loss_mask: torch.Tensor, segment_ids: torch.Tensor,
                       benchmark_ids: torch.Tensor, demo_k: Optional[torch.Tensor] = None) -> Counters:
        """Counters of one trained micro-batch: `nll` [n] per target token (row-major order of
        `loss_mask` [B, L]); `segment_ids` [B, L] (0 = padding), `benchmark_ids` [B, L] (per token, index
        into `benchmarks`; -1 on padding); `demo_k` [B, L] (MetaICL / mixed prompts: the demonstrations
        before each token's example, -1 on padding). Shares are counted here, where the examples are
        trained."""
        nll = nll.detach()
        device = nll.device
        mask = loss_mask.bool()
        segments = segment_ids.long()
        bids = benchmark_ids.long()
        sums = loss_sums(nll, example_groups(segments, mask), self.normalize)
        num, den = ((sums.nll_sum, sums.target_tokens) if self.normalize == "token"
                    else (sums.example_nll_sum, sums.examples))
        real = segments > 0
        starts = segment_starts(segments) & real
        out: Counters = {
            "loss_sum": _f64(num, device), "loss_count": _f64(den, device),
            "nll_sum": _f64(sums.nll_sum, device), "target_tokens": _f64(sums.target_tokens, device),
            "tokens": _f64(real.sum(), device), "capacity": _f64(segments.numel(), device),
            "rows": _f64(segments.shape[0], device), "examples": _f64(starts.sum(), device),
        }
        n = len(self.benchmarks)
        per = {
            "nll_sum": group_sums(nll, bids[mask], n),
            "target_tokens": group_sums(torch.ones_like(nll), bids[mask], n),
            "tokens": group_sums(torch.ones(int(real.sum()), device=device), bids[real], n),
            "examples": group_sums(torch.ones(int(starts.sum()), device=device), bids[starts], n),
        }
        for kind, values in per.items():
            for b, name in enumerate(self.benchmarks):
                out[f"{kind}/benchmark/{name}"] = values[b].to(device)
        if demo_k is not None:   # one counter per k of the law, so every rank gives the same keys
            ks = group_sums(torch.ones(int(starts.sum()), device=device), demo_k.long()[starts], self.max_demos + 1)
            for k in range(self.max_demos + 1):
                out[f"examples/demonstrations/{k}"] = ks[k].to(device)
        return out

    @staticmethod
    def valid_counters(nll: torch.Tensor, task_ids: torch.Tensor,
                       tasks: Sequence[Tuple[str, str]]) -> Counters:
        """Counters of one validation batch: `nll` [n] per target token, `task_ids` [n] the task each
        belongs to, `tasks` (benchmark, category) per task id (every task of the subset, so every rank
        gives the same keys)."""
        nll = nll.detach().double()
        device = nll.device
        per_task = group_sums(nll, task_ids.long(), len(tasks))
        count_task = group_sums(torch.ones_like(nll), task_ids.long(), len(tasks))
        out: Counters = {"nll_sum": per_task.sum().to(device), "target_tokens": count_task.sum().to(device)}
        for g, group in enumerate(VALID_GROUPS):
            names = sorted({t[g] for t in tasks})
            of_task = torch.tensor([names.index(t[g]) for t in tasks], dtype=torch.long)
            for kind, values in (("nll_sum", per_task), ("target_tokens", count_task)):
                grouped = group_sums(values.cpu(), of_task, len(names))
                for i, name in enumerate(names):
                    out[f"{kind}/{group}/{name}"] = grouped[i].to(device)
        return out


def add(a: Counters, b: Counters) -> Counters:
    """Counters of both (an empty dict is the zero)."""
    if not a:
        return dict(b)
    return {k: a[k] + b[k] for k in a}


def to_vector(counters: Counters) -> Tuple[List[str], torch.Tensor]:
    """The counters as one float64 vector (one all-reduce) and their keys in order."""
    keys = list(counters)
    return keys, torch.stack([counters[k].double().reshape(()) for k in keys])


def from_vector(keys: Sequence[str], vector: torch.Tensor) -> Counters:
    return {k: vector[i] for i, k in enumerate(keys)}


def _value(counters: Dict[str, Any], key: str) -> float:
    return float(counters.get(key, 0.0))


def scalars(counters: Dict[str, Any]) -> List[Scalar]:
    """The metrics of summed counters (training or validation: told apart by `loss_sum`), in bits.

    Keys: `loss` (training: per `loss_normalization`; validation: per target token), `nll_loss` (bits
    per target token), `packing_efficiency` (non-padding share of the input slots), `target_fraction`,
    `examples_per_row`, `loss_by_benchmark/NAME`, `realized_share/KIND/NAME` (KIND in SHARE_KINDS, of
    what was trained), and in validation `loss_by_category/NAME`. A key whose weight is 0 is left out."""
    out: List[Scalar] = []

    def put(key: str, num: float, den: float, scale: float = 1.0) -> None:
        if den > 0:
            out.append(Scalar(key, num / den * scale, den))

    training = "loss_sum" in counters
    targets = _value(counters, "target_tokens")
    if training:
        put("loss", _value(counters, "loss_sum"), _value(counters, "loss_count"), BITS_PER_NAT)
    else:
        put("loss", _value(counters, "nll_sum"), targets, BITS_PER_NAT)
    put("nll_loss", _value(counters, "nll_sum"), targets, BITS_PER_NAT)
    if training:
        capacity = _value(counters, "capacity")
        put("packing_efficiency", _value(counters, "tokens"), capacity)
        put("target_fraction", targets, capacity)
        put("examples_per_row", _value(counters, "examples"), _value(counters, "rows"))
    groups = ("benchmark",) if training else VALID_GROUPS
    for group in groups:
        prefix = f"nll_sum/{group}/"
        for key in counters:
            if key.startswith(prefix):
                name = key[len(prefix):]
                put(f"loss_by_{group}/{name}", _value(counters, key),
                    _value(counters, f"target_tokens/{group}/{name}"), BITS_PER_NAT)
    if training:
        for kind in SHARE_KINDS:
            prefix = f"{kind}/benchmark/"
            names = [k[len(prefix):] for k in counters if k.startswith(prefix)]
            total = sum(_value(counters, prefix + name) for name in names)
            for name in names:
                put(f"realized_share/{kind}/{name}", _value(counters, prefix + name), total)
        prefix = "examples/demonstrations/"
        ks = [k[len(prefix):] for k in counters if k.startswith(prefix)]
        total = sum(_value(counters, prefix + k) for k in ks)
        for k in ks:   # the realized k distribution of MetaICL training / mixed prompts
            put(f"demonstrations/{k}", _value(counters, prefix + k), total)
    return out


def nested(items: Sequence[Scalar]) -> Dict[str, Any]:
    """`scalars` as the local log line's nested dict: `a/b/c` -> {a: {b: {c: value}}}."""
    out: Dict[str, Any] = {}
    for item in items:
        *path, last = item.key.split("/")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = item.value
    return out


def flat(values: Dict[str, Any], prefix: str = "") -> Dict[str, float]:
    """A nested metrics dict back to flat `a/b/c` keys (the inverse of `nested`)."""
    out: Dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out
