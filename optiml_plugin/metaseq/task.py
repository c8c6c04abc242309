"""metaseq task `instruction_meta_learning`: OPT-IML training from an optiml bench.

Why: metaseq's own `streaming_finetune_language_modeling` resamples validation, packs next-fit,
can cut targets, finds documents by token id and resumes by replaying the stream. This task runs
the optiml core instead (EPS + benchmark proportions, exact-boundary tokenization, best-fit or
sequential packing with left truncation, resumable stream) and only adapts it to metaseq's
interfaces. Everything that can be is in the metaseq-free modules next to this one.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

import torch
from omegaconf import II, DictConfig, open_dict

from metaseq.data import Dictionary
from metaseq.dataclass import ChoiceEnum, MetaseqDataclass
from metaseq.distributed import utils as distributed_utils
from metaseq.tasks import LegacyTask, register_task

from optiml_plugin.data.packing import STRATEGIES, TRUNCATIONS
from optiml_plugin.data.tokenizer import EOS_ID
from optiml_plugin.loss import NORMALIZE
from optiml_plugin.metaseq.iterator import PipelineEpochIterator
from optiml_plugin.metaseq.options import (DEFAULT_VALID_SPLITS, check_model_cfg, check_resumable,
                                           check_update_freq, settings_from_cfg)
from optiml_plugin.metaseq.segment_attention import use_segment_masks
from optiml_plugin.metaseq.wiring import (TrainData, benchmark_names, build_train_data, build_valid_samples,
                                          load_tokenizer, open_bench, train_iterator, valid_iterator)

logger = logging.getLogger(__name__)

TASK_NAME = "instruction_meta_learning"
# the criterion name for which metaseq's decoder leaves the logits vocabulary-sharded
VOCAB_PARALLEL_CRITERION = "vocab_parallel_cross_entropy"


def resolved_field_types(cls: Any) -> Any:
    """metaseq builds its argparse options from dataclass field types and refuses the strings that
    `from __future__ import annotations` leaves there: evaluate them into real types."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        f.type = hints[f.name]
    return cls


@resolved_field_types
@dataclass
class InstructionMetaLearningConfig(MetaseqDataclass):
    data: Optional[str] = field(default=None, metadata={"help": "bench directory (optiml bench build)"})
    vocab_filename: Optional[str] = field(default="", metadata={"help": "OPT gpt2-vocab.json"})
    merges_filename: Optional[str] = field(default="", metadata={"help": "OPT gpt2-merges.txt"})
    hf_tokenizer: Optional[str] = field(default="", metadata={"help": "tokenizer.json (instead of vocab+merges)"})
    tokens_per_sample: int = field(default=2048, metadata={"help": "tokens per packed row"})
    # read by metaseq's transformer_lm config (II("task.max_target_positions"), II("task.add_bos_token"))
    max_target_positions: Optional[int] = field(
        default=None, metadata={"help": "model positions (default: --tokens-per-sample)"})
    add_bos_token: bool = field(
        default=False, metadata={"help": "refused: every example already starts with its source "
                                         "(or `</s>` as BOS when the source is empty)"})
    benchmark_proportions: Optional[str] = field(
        default="", metadata={"help": "benchmark shares: JSON object or .json/.yaml file; unlisted "
                                      "benchmarks share the rest by capped size"})
    eps: int = field(default=4096, metadata={"help": "examples-proportional cap per task (<= 0: none)"})
    benchmark_caps: Optional[str] = field(default="", metadata={"help": "JSON {benchmark: cap} overriding eps"})
    packing_strategy: ChoiceEnum(list(STRATEGIES)) = field(  # type: ignore[valid-type]
        default="best_fit", metadata={"help": "best_fit (bounded window) or sequential (next-fit, as OPT-IML)"})
    packing_window: int = field(default=64, metadata={"help": "open blocks for best_fit"})
    shuffle_buffer: int = field(
        default=-1, metadata={"help": "packed rows held for shuffling (0: none; < 0: 10 x --batch-size)"})
    truncation: ChoiceEnum(list(TRUNCATIONS)) = field(  # type: ignore[valid-type]
        default="left", metadata={"help": "too-long examples: cut the source from the left (paper)"})
    loss_normalization: ChoiceEnum(list(NORMALIZE)) = field(  # type: ignore[valid-type]
        default="token", metadata={"help": "token: sample_size = target tokens (paper); example"})
    no_document_masking: bool = field(
        default=False, metadata={"help": "let packed examples attend to each other (default: the model "
                                         "must run --self-attn-doc-sep 2)"})
    valid_splits: str = field(default=DEFAULT_VALID_SPLITS,
                              metadata={"help": "bench splits that --valid-subset valid reads"})
    max_valid_examples_per_task: int = field(
        default=250, metadata={"help": "first N examples of each task in validation (<= 0: all)"})
    seed: int = II("common.seed")
    batch_size: Optional[int] = II("dataset.batch_size")
    batch_size_valid: Optional[int] = II("dataset.batch_size_valid")
    update_freq: List[int] = II("optimization.update_freq")
    ddp_backend: Optional[str] = II("distributed_training.ddp_backend")


def sharded_logits_cfg(model_cfg: Any) -> Any:
    """A shallow copy of the model config whose `criterion` reads `vocab_parallel_cross_entropy`.

    Why: metaseq main's model-parallel decoder gathers the full-vocabulary logits on every rank
    (B x T x V, 3.3 GB at 8 x 2048 x 50272 in fp32) unless its config names that criterion; this
    task's criterion computes the exact loss from each rank's vocabulary slice, so the decoder is
    built to return the slice. The run's own config (and its checkpoints) keep the real criterion.
    """
    cfg = copy.copy(model_cfg)
    with open_dict(cfg) if isinstance(cfg, DictConfig) else contextlib.nullcontext():
        cfg.criterion = VOCAB_PARALLEL_CRITERION
    return cfg


def build_dictionary(vocab_size: int) -> Dictionary:
    """metaseq Dictionary of the BPE's size, padded to a multiple of 8 (OPT's 50272 rows).

    Symbols are the BPE ids as strings (fairseq's GPT-2 `dict.txt` convention): the model only
    reads the size and the special indices, which metaseq's Dictionary puts at 0-3 like OPT.
    """
    d = Dictionary()
    for i in range(d.nspecial, vocab_size):
        d.add_symbol(str(i))
    d.pad_to_multiple_(8)
    return d


@register_task(TASK_NAME, dataclass=InstructionMetaLearningConfig)
class InstructionMetaLearningTask(LegacyTask):
    def __init__(self, args: Any) -> None:
        super().__init__(args)
        check_update_freq(getattr(args, "update_freq", [1]))
        check_resumable(getattr(args, "ddp_backend", "pytorch_ddp"), distributed_utils.get_data_parallel_world_size())
        self.settings = settings_from_cfg(args)
        self.tokenizer = load_tokenizer(args.vocab_filename, args.merges_filename, args.hf_tokenizer)
        self.dictionary = build_dictionary(self.tokenizer.vocab_size)
        self.eod = EOS_ID
        self.bench = open_bench(self.settings)
        self._train: Optional[TrainData] = None
        # logging keys, fixed from the start so every worker logs the same keys
        self.benchmarks: List[str] = benchmark_names(self.settings, self.bench)

    @classmethod
    def setup_task(cls, args: Any, **kwargs: Any) -> "InstructionMetaLearningTask":
        return cls(args)

    def build_model(self, args: Any) -> Any:
        check_model_cfg(args, self.settings.document_masking)
        if distributed_utils.get_model_parallel_world_size() > 1:
            args = sharded_logits_cfg(args)
        model = super().build_model(args)
        if self.settings.document_masking:
            use_segment_masks(model.decoder)
        return model

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs: Any) -> None:
        rank = distributed_utils.get_data_parallel_rank()
        world = distributed_utils.get_data_parallel_world_size()
        if split == "train":
            if self._train is None:  # one endless stream across metaseq "epochs"
                self._train = build_train_data(self.settings, self.bench, self.tokenizer,
                                               int(self.args.batch_size), int(self.args.seed), rank, world)
                logger.info("mixture:\n%s", self._train.mixture.table())
            self.datasets[split] = self._train
        else:
            bsz = int(self.args.batch_size_valid or self.args.batch_size)
            samples = build_valid_samples(self.settings, self.bench, self.tokenizer, split, bsz, rank,
                                          world, self.benchmarks,
                                          self.settings.document_masking)
            logger.info("valid subset %s: %d batches of %d rows on this rank", split, len(samples), bsz)
            self.datasets[split] = samples

    def dataset(self, split: str) -> Any:
        if split not in self.datasets:
            raise KeyError("Dataset not loaded: " + split)
        return self.datasets[split]

    def _gather(self, state: Dict[str, Any]) -> Optional[List[Dict[str, Any]]]:
        """All data-parallel ranks' pipeline states, when every rank saves (FSDP); else None."""
        backend = str(getattr(self.args.ddp_backend, "value", self.args.ddp_backend))
        if backend != "fully_sharded":
            return None
        world = distributed_utils.get_data_parallel_world_size()
        if world == 1:
            return [state]
        out: List[Any] = [None] * world
        torch.distributed.all_gather_object(out, state, group=distributed_utils.get_data_parallel_group())
        return out

    def get_batch_iterator(self, dataset: Any, max_tokens: Any = None, max_sentences: Any = None,
                           num_shards: int = 1, shard_id: int = 0, num_workers: int = 0, epoch: int = 1,
                           **kwargs: Any) -> PipelineEpochIterator:
        if max_tokens is not None:
            raise ValueError("instruction_meta_learning batches by rows: use --batch-size, not --max-tokens")
        if num_workers:
            logger.warning("--num-workers %d ignored: batches are produced in order in the training "
                           "process so the pipeline state in checkpoints is exact", num_workers)
        if isinstance(dataset, list):  # validation: prepared, in order, same count on every rank
            return valid_iterator(dataset)
        if (num_shards, shard_id) != (dataset.stream.world_size, dataset.rank):
            raise ValueError(f"batch iterator shard {shard_id}/{num_shards} differs from the data-parallel "
                             f"rank {dataset.rank}/{dataset.stream.world_size} the stream was built for")
        return train_iterator(dataset, self.dictionary.pad(), self.settings.document_masking, epoch=epoch,
                              gather=self._gather)

    def max_positions(self) -> int:
        return int(self.args.tokens_per_sample)

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary
