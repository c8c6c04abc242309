"""The front-end contract both trainers consume: `open_run` -> `Run`.

Why one function: the metaseq task and the local trainer each used to wire mixture, stream, packing,
validation and their metrics themselves, and had drifted (caps honoured by one only, validation packed
and sharded two ways, losses in two units, realized shares counted at two places). A trainer now gives
the recipe's data settings (`recipe.DataFields`, the same names in both), the bench, its tokenizer,
its batch size, seed and data-parallel rank, and gets:

- training batches: `Mixture` (proportions, EPS, per-benchmark caps) -> `ExampleStream` (this rank's
  partition) -> `PackedBatches` (the training packer);
- fixed validation batches per subset (a subset reads one or more evaluation splits): the first N
  rows of every task in file order, packed `sequential` whatever the training strategy, cut into
  batches of `batch_size` rows the metaseq way: global batch k holds blocks [k*B*W, (k+1)*B*W), rank
  r its B rows, all-pad rows fill the last ones, so every rank runs the same number of forwards
  (FSDP and metaseq need that) and no block is scored twice;
- the `Telemetry` of the run (`telemetry.py`): the one metric schema, in bits; its training keys are
  the mixture's benchmarks, its validation groups each task's own benchmark and category.

Why `sequential` for validation: next-fit keeps file order, so the validation rows depend only on the
bench, the cap and the row length, not on the training packer or its window; runs that train with
different packers score the very same rows (under document masking the loss does not depend on the
packing at all; without it, next-fit is the authors' choice).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from optiml_plugin.benchfiles import Bench, TaskFile
from optiml_plugin.data.demonstrations import DemoConfig, Demonstrations
from optiml_plugin.data.mixture import Mixture, MixtureConfig
from optiml_plugin.data.packing import Block, PackingConfig, build_block, pack
from optiml_plugin.data.pipeline import PackedBatches, collate_blocks
from optiml_plugin.data.stream import ExampleStream
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.validation import ValidationSet, validation_set
from optiml_plugin.recipe import DataFields
from optiml_plugin.telemetry import Telemetry

VALIDATION_STRATEGY = "sequential"


def mixture_config(data: DataFields) -> MixtureConfig:
    """The mixture of the recipe's data settings (`eps: 0`, the one spelling of no cap, is None here)."""
    return MixtureConfig(proportions=data.benchmark_proportions, eps=data.eps or None, caps=data.benchmark_caps,
                         max_tasks=data.max_train_tasks)


def demo_config(data: DataFields) -> DemoConfig:
    return DemoConfig(zipf_a=data.metaicl_zipf_a, suffix_loss=data.metaicl_suffix_loss,
                      fewshot_share=data.fewshot_share, max_k=data.max_demonstrations)


def demonstrations(bench: Bench, stream: ExampleStream, data: DataFields, seed: int) -> Optional[Demonstrations]:
    """The demonstration drawer of MetaICL training / mixed prompts (None when both are off): rows of
    the example's own training task file, read through the stream's bench."""
    config = demo_config(data)
    if not config.active:
        return None
    mixture = stream.mixture
    return Demonstrations(config, seed, mixture.benchmarks, mixture.sizes, stream.locate,
                          lambda task_id, rows: [bench.read(mixture.tasks[task_id], r) for r in rows])


def run_telemetry(data: DataFields, benchmarks: Sequence[str]) -> Telemetry:
    """The metric schema of a run on the mixture's `benchmarks` (both trainers build it here)."""
    return Telemetry(benchmarks, data.loss_normalization,
                     max_demos=data.max_demonstrations if demo_config(data).active else 0)


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

    @property
    def groups(self) -> List[Tuple[str, str]]:
        """(benchmark, category) of each task id: what validation metrics are grouped by."""
        return [(t.benchmark, t.category) for t in self.tasks]


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
class Run:
    """One rank's data and metrics: the tokenizer, training batches, validation subsets, telemetry."""

    tokenizer: OptTokenizer
    mixture: Mixture
    stream: ExampleStream
    batches: PackedBatches
    validation: Dict[str, ValidationSubset]
    telemetry: Telemetry

    @property
    def benchmarks(self) -> List[str]:
        """The training logging keys: the mixture's benchmarks, the same on every rank."""
        return list(self.mixture.benchmarks)


def open_run(bench: Bench, tokenizer: OptTokenizer, data: DataFields, batch_size: int, seed: int,
             rank: int = 0, world_size: int = 1, valid_subsets: Optional[Mapping[str, Sequence[str]]] = None,
             valid_batch_size: Optional[int] = None) -> Run:
    """Training batches, fixed validation batches and the telemetry of one data-parallel rank.

    `valid_subsets` maps a subset name to the splits it reads (default: each of `data.valid_splits`
    alone); a subset without examples is left out. `valid_batch_size` defaults to `batch_size`."""
    mixture = Mixture.from_bench(bench, mixture_config(data), split="train")
    stream = ExampleStream(bench, mixture, seed=seed, rank=rank, world_size=world_size)
    batches = PackedBatches(stream, tokenizer, packing_config(data), batch_size, seed,
                            shuffle_buffer=data.shuffle_buffer, max_chars=data.max_record_chars or None,
                            demonstrations=demonstrations(bench, stream, data, seed))
    subsets = valid_subsets if valid_subsets is not None else {s: [s] for s in data.valid_splits}
    validation = {}
    for name, splits in subsets.items():
        subset = validation_subset(bench, name, splits, tokenizer, data, mixture.benchmarks,
                                   valid_batch_size or batch_size, rank, world_size)
        if subset.batches:
            validation[name] = subset
    return Run(tokenizer, mixture, stream, batches, validation,
               run_telemetry(data, mixture.benchmarks))
