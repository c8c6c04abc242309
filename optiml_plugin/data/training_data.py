"""What a trainer takes from the data, built by one function for both front ends: `training_data`.

Why one function: the metaseq task and the local trainer each used to wire mixture, stream, packing
and validation themselves, and had drifted (caps honoured by one only, validation packed and sharded
two ways, losses in two units). Here, from the recipe's data settings (`recipe.DataFields`, the same
names in both front ends):

- training batches: `Mixture` (proportions, EPS, per-benchmark caps) -> `ExampleStream` (this rank's
  partition) -> `PackedBatches` (the training packer), with a `ShareCounters` observer that hears
  every example once, for realized shares;
- fixed validation batches per subset (a subset reads one or more evaluation splits): the first N
  rows of every task in file order, packed `sequential` whatever the training strategy, cut into
  batches of `batch_size` rows the metaseq way: global batch k holds blocks [k*B*W, (k+1)*B*W), rank
  r its B rows, all-pad rows fill the last ones, so every rank runs the same number of forwards
  (FSDP and metaseq need that) and no block is scored twice;
- the logging keys: the training mixture's benchmarks (validation benchmark ids index the same list).

Why `sequential` for validation: next-fit keeps file order, so the validation rows depend only on the
bench, the cap and the row length, not on the training packer or its window; runs that train with
different packers score the very same rows (under document masking the loss does not depend on the
packing at all; without it, next-fit is the authors' choice).

Units: losses are reported in bits per target token (`BITS_PER_NAT`), metaseq's unit, in both front ends.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from optiml_plugin.benchfiles import Bench, TaskFile
from optiml_plugin.data.mixture import Mixture, MixtureConfig
from optiml_plugin.data.packing import Block, PackingConfig, build_block, pack
from optiml_plugin.data.pipeline import PackedBatches, collate_blocks
from optiml_plugin.data.shares import ShareCounters
from optiml_plugin.data.stream import ExampleStream
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.validation import ValidationSet, validation_set
from optiml_plugin.recipe import DataFields

BITS_PER_NAT = 1 / math.log(2)
VALIDATION_STRATEGY = "sequential"


def mixture_config(data: DataFields) -> MixtureConfig:
    return MixtureConfig(proportions=data.benchmark_proportions, eps=data.eps, caps=data.benchmark_caps)


def packing_config(data: DataFields, strategy: Optional[str] = None) -> PackingConfig:
    """The training packer (or, with `strategy`, another one of the same row length and truncation)."""
    return PackingConfig(tokens_per_sample=data.tokens_per_sample, strategy=strategy or data.packing_strategy,
                         window=data.packing_window, truncation=data.truncation)


@dataclass
class ValidationSubset:
    """One validation subset: its splits' capped examples (with their counts) and this rank's batches.

    A batch's `task_ids` index `tasks` (every task of every split, in order); `row_ids` number its rows
    across all ranks (metaseq's sample ids)."""

    name: str
    sets: List[ValidationSet]
    batches: List[Dict[str, torch.Tensor]] = field(default_factory=list)

    @property
    def tasks(self) -> List[TaskFile]:
        return [t for vset in self.sets for t in vset.tasks]


def shard_blocks(blocks: Sequence[Block], batch_size: int, rank: int, world_size: int, block_size: int,
                 pad_id: int) -> List[Dict[str, torch.Tensor]]:
    """This rank's batches of `blocks`: global batch k holds blocks [k*B*W, (k+1)*B*W), rank r takes its
    B rows; every rank gets the same number of [B, L] batches (empty blocks fill the last rows)."""
    per_step = batch_size * world_size
    empty = build_block([], block_size, pad_id)
    out = []
    for k in range(-(-len(blocks) // per_step)):
        lo = k * per_step + rank * batch_size
        mine = list(blocks[lo:lo + batch_size])
        batch = collate_blocks(mine + [empty] * (batch_size - len(mine)), pad_id=pad_id)
        batch["row_ids"] = torch.arange(lo, lo + batch_size, dtype=torch.long)
        out.append(batch)
    return out


def validation_subset(bench: Bench, name: str, splits: Sequence[str], tokenizer: OptTokenizer,
                      data: DataFields, benchmarks: Sequence[str], batch_size: int, rank: int = 0,
                      world_size: int = 1) -> ValidationSubset:
    """The fixed validation batches of `splits` (read in order, first N rows per task, packed next-fit)."""
    packing = packing_config(data, VALIDATION_STRATEGY)
    cap = data.max_valid_examples_per_task or None
    sets: List[ValidationSet] = []
    items, tasks = 0, 0
    for split in splits:
        vset = validation_set(bench, split, tokenizer, packing, cap, benchmarks, first_index=items,
                              first_task=tasks)
        sets.append(vset)
        items, tasks = items + len(vset.items), tasks + len(vset.tasks)
    blocks = pack([it for vset in sets for it in vset.items], packing, pad_id=tokenizer.pad_id)
    return ValidationSubset(name, sets, shard_blocks(blocks, batch_size, rank, world_size,
                                                     packing.block_size, tokenizer.pad_id))


@dataclass
class TrainingData:
    """One rank's training pipeline, its validation subsets and the realized-share observer."""

    mixture: Mixture
    stream: ExampleStream
    batches: PackedBatches
    shares: ShareCounters
    validation: Dict[str, ValidationSubset]

    @property
    def benchmarks(self) -> List[str]:
        """The logging keys: the training mixture's benchmarks, the same on every rank."""
        return list(self.mixture.benchmarks)


def training_data(bench: Bench, tokenizer: OptTokenizer, data: DataFields, batch_size: int, seed: int,
                  rank: int = 0, world_size: int = 1,
                  valid_subsets: Optional[Mapping[str, Sequence[str]]] = None,
                  valid_batch_size: Optional[int] = None) -> TrainingData:
    """Training batches, fixed validation batches and logging keys for one data-parallel rank.

    `valid_subsets` maps a subset name to the splits it reads (default: each of `data.valid_splits`
    alone); a subset without examples is left out. `valid_batch_size` defaults to `batch_size`."""
    mixture = Mixture.from_bench(bench, mixture_config(data), split="train")
    stream = ExampleStream(bench, mixture, seed=seed, rank=rank, world_size=world_size)
    shares = ShareCounters(mixture.benchmarks, mixture.effective_benchmark_probs())
    batches = PackedBatches(stream, tokenizer, packing_config(data), batch_size, seed,
                            shuffle_buffer=data.shuffle_buffer, observer=shares,
                            max_chars=getattr(data, "max_record_chars", 0) or None)
    subsets = valid_subsets if valid_subsets is not None else {s: [s] for s in data.valid_splits}
    validation = {}
    for name, splits in subsets.items():
        subset = validation_subset(bench, name, splits, tokenizer, data, mixture.benchmarks,
                                   valid_batch_size or batch_size, rank, world_size)
        if subset.batches:
            validation[name] = subset
    return TrainingData(mixture, stream, batches, shares, validation)


def benchmark_sums(token_nll: torch.Tensor, benchmark_ids: torch.Tensor,
                   n_benchmarks: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-benchmark [NLL sum, target count] of target tokens (`benchmark_ids` aligned with `token_nll`;
    ids outside the mixture, -1 on padding or a benchmark absent from training, are left out)."""
    ok = (benchmark_ids >= 0) & (benchmark_ids < n_benchmarks)
    ids = benchmark_ids[ok].long()
    nll = torch.zeros(n_benchmarks, dtype=torch.float64, device=token_nll.device)
    count = torch.zeros(n_benchmarks, dtype=torch.float64, device=token_nll.device)
    nll.index_add_(0, ids, token_nll[ok].detach().double())
    count.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
    return nll, count
