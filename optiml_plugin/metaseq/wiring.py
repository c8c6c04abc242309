"""The metaseq task's data for one data-parallel rank, from the core's one data path.

Why: the metaseq task only knows its config and its rank; training batches, validation batches and
the telemetry come from `data.training_data.open_run` (as for the local trainer) and are only turned
into metaseq samples and iterators here, without metaseq, so the same wiring is tested everywhere.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional


from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture
from optiml_plugin.data.pipeline import PackedBatches
from optiml_plugin.data.stream import ExampleStream
from optiml_plugin.data.tokenizer import OptTokenizer, resolve_tokenizer
from optiml_plugin.data.training_data import Run, mixture_config, open_run, validation_subset
from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq.batches import to_metaseq_sample
from optiml_plugin.metaseq.iterator import PipelineEpochIterator, endless
from optiml_plugin.metaseq.options import AdapterSettings, resolve_valid_subset

logger = logging.getLogger(__name__)


def say_on_every_rank(message: str, *args: Any) -> None:
    """Log one line on every rank: metaseq lowers non-master ranks to WARNING, which would hide what
    each rank reads; this logs at INFO where that is shown, else at WARNING."""
    logger.log(logging.INFO if logger.isEnabledFor(logging.INFO) else logging.WARNING, message, *args)


def load_tokenizer(vocab: Optional[str], merges: Optional[str], hf_json: Optional[str]) -> OptTokenizer:
    """OPT's BPE from `--hf-tokenizer` or `--vocab-filename` + `--merges-filename` (the house resolver;
    metaseq's dictionary fixes OPT's ids, so other rules are refused)."""
    if hf_json:
        return resolve_tokenizer(hf_json, what="--hf-tokenizer").require_opt("the metaseq task")
    if vocab and merges:
        return resolve_tokenizer((vocab, merges)).require_opt("the metaseq task")
    raise ConfigError("give the OPT tokenizer: --vocab-filename gpt2-vocab.json --merges-filename "
                      "gpt2-merges.txt (or --hf-tokenizer tokenizer.json)")


def open_bench(settings: AdapterSettings) -> Bench:
    if not settings.data.is_dir():
        raise ConfigError(f"data {settings.data}: not a directory (expected a bench built by "
                          "`optiml bench build`)")
    return Bench(settings.data)


@dataclass
class TrainData:
    """One rank's training data (`open_run`, the local trainer's path too) and its rank."""

    data: Run
    rank: int

    @property
    def mixture(self) -> Mixture:
        return self.data.mixture

    @property
    def stream(self) -> ExampleStream:
        return self.data.stream

    @property
    def batches(self) -> PackedBatches:
        return self.data.batches

    def restore(self, state: Dict[str, Any]) -> None:
        """Set the pipeline to a saved state (no replay) and say so in the log."""
        self.batches.load_state_dict(state)
        say_on_every_rank("rank %d: data stream restored at example index %d, %d rows trained so far; re-read "
                          "%d held examples, no replay", self.rank, self.stream.next_index,
                          int(self.batches.stats.blocks), self.batches.held_examples)

    def samples(self, pad: int, document_masking: bool) -> Iterator[Dict[str, Any]]:
        """metaseq samples, endlessly; `id` numbers this rank's rows (continued across a resume)."""
        for batch in self.batches:
            yield to_metaseq_sample(batch, batch["row_ids"], pad=pad, document_masking=document_masking)


def build_train_data(settings: AdapterSettings, bench: Bench, tokenizer: OptTokenizer, batch_size: int,
                     seed: int, rank: int = 0, world_size: int = 1) -> TrainData:
    if not batch_size or batch_size < 1:
        raise ConfigError("--batch-size is required (rows of tokens_per_sample tokens per rank and step)")
    data = open_run(bench, tokenizer, settings.fields, batch_size, seed, rank, world_size, valid_subsets={})
    stream = data.stream
    say_on_every_rank("rank %d of %d data-parallel ranks reads stream partition %d of %d: the chunks of %d "
                      "stream indices numbered %d mod %d (seed %d, %d tasks)", rank, world_size, stream.partition,
                      stream.num_partitions, stream.chunk_size, stream.partition, stream.num_partitions, seed,
                      len(data.mixture.tasks))
    return TrainData(data, rank)


def benchmark_names(settings: AdapterSettings, bench: Bench) -> List[str]:
    """The training mixture's benchmarks: the per-benchmark logging keys, the same on every worker."""
    return list(Mixture.from_bench(bench, mixture_config(settings.fields), split="train").benchmarks)


def train_iterator(train: TrainData, pad: int, document_masking: bool, epoch: int = 1,
                   gather: Optional[Callable[[Dict[str, Any]], Optional[List[Dict[str, Any]]]]] = None
                   ) -> PipelineEpochIterator:
    """metaseq's epoch iterator over the endless training pipeline; its state is the pipeline's."""
    return PipelineEpochIterator(
        endless(lambda: train.samples(pad, document_masking)), length=0, get_state=train.batches.state_dict,
        set_state=train.restore, gather=gather, rank=train.rank,
        world_size=train.stream.world_size, epoch=epoch, dataset=train)


def valid_iterator(samples: List[Dict[str, Any]]) -> PipelineEpochIterator:
    """A validation subset: the same prepared samples, in order, on every pass."""
    return PipelineEpochIterator.over(samples, dataset=samples)


def build_valid_samples(settings: AdapterSettings, bench: Bench, tokenizer: OptTokenizer, subset: str,
                        batch_size: int, rank: int, world_size: int, benchmarks: List[str],
                        document_masking: bool) -> List[Dict[str, Any]]:
    """This rank's samples of one `--valid-subset` (in order, first N examples per task, packed next-fit,
    sharded so every rank runs the same number of batches: `data.training_data.validation_subset`);
    each carries its tasks' (benchmark, category), so held-out benchmarks are scored and grouped too."""
    splits = resolve_valid_subset(subset, settings, bench.splits())
    valid = validation_subset(bench, subset, splits, tokenizer, settings.fields, benchmarks, batch_size, rank,
                              world_size)
    return [to_metaseq_sample(batch, batch["row_ids"], pad=tokenizer.pad_id, document_masking=document_masking,
                              valid_groups=valid.groups)
            for batch in valid.batches]
