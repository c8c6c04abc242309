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
from dataclasses import field, fields, make_dataclass
from typing import Any, Dict, List, Optional, Tuple, get_type_hints

import torch
from omegaconf import II, DictConfig, open_dict

from metaseq.data import Dictionary
from metaseq.dataclass import ChoiceEnum, MetaseqDataclass
from metaseq.distributed import utils as distributed_utils
from metaseq.tasks import LegacyTask, register_task

from optiml_plugin.conventions import EOS_ID
from optiml_plugin.metaseq import grad_norm
from optiml_plugin.metaseq.iterator import PipelineEpochIterator
from optiml_plugin.metaseq.options import (TaskOptions, check_grad_norm_once, check_model_cfg, check_resumable,
                                           check_update_freq, settings_from_cfg)
from optiml_plugin.metaseq.segment_attention import use_segment_masks
from optiml_plugin.metaseq.wiring import (TrainData, benchmark_names, build_train_data, build_valid_samples,
                                          load_tokenizer, open_bench, train_iterator, valid_iterator)

logger = logging.getLogger(__name__)

TASK_NAME = "instruction_meta_learning"
# the criterion name for which metaseq's decoder leaves the logits vocabulary-sharded
VOCAB_PARALLEL_CRITERION = "vocab_parallel_cross_entropy"


def _task_config() -> Any:
    """The task's option dataclass: the recipe's data settings as `options.TaskOptions` states them (the
    same names and defaults as `optiml train`'s `data:` section), plus the tokenizer, the mask switch and
    what metaseq's model config reads from the task, on metaseq's `MetaseqDataclass` (which builds the
    `--flags` from the field types; choices become its ChoiceEnum)."""
    specs: List[Tuple[str, Any, Any]] = [
        ("data", Optional[str], field(default=None, metadata={"help": "bench directory (optiml bench build)"})),
        ("vocab_filename", Optional[str], field(default="", metadata={"help": "OPT gpt2-vocab.json"})),
        ("merges_filename", Optional[str], field(default="", metadata={"help": "OPT gpt2-merges.txt"})),
        ("hf_tokenizer", Optional[str],
         field(default="", metadata={"help": "tokenizer.json (instead of vocab+merges)"})),
    ]
    types = get_type_hints(TaskOptions)  # the real types (this package's modules use postponed annotations)
    for option in fields(TaskOptions):
        choices = option.metadata.get("choices")
        kind = ChoiceEnum(list(choices)) if choices else types[option.name]
        specs.append((option.name, kind, field(default=option.default, metadata={"help": option.metadata["help"]})))
    specs += [
        # read by metaseq's transformer_lm config (II("task.max_target_positions"), II("task.add_bos_token"))
        ("max_target_positions", Optional[int],
         field(default=None, metadata={"help": "model positions (default: --tokens-per-sample)"})),
        ("add_bos_token", bool, field(default=False, metadata={
            "help": "refused: every example already opens with `</s>` (conventions.EXAMPLE_START_ID)"})),
        ("no_document_masking", bool, field(default=False, metadata={
            "help": "let packed examples attend to each other (default: masks from the batch's segment ids)"})),
        ("grad_norm_replicated_once", bool, field(default=False, metadata={
            "help": "model parallel: the gradient norm (clipping, gnorm) counts weights replicated on every "
                    "model-parallel rank once, so it is the same at any model-parallel size (metaseq counts "
                    "them once per rank; on in the presets)"})),
        ("fp16", bool, field(default=II("common.fp16"))),
        ("memory_efficient_fp16", bool, field(default=II("common.memory_efficient_fp16"))),
        ("seed", int, field(default=II("common.seed"))),
        ("batch_size", Optional[int], field(default=II("dataset.batch_size"))),
        ("batch_size_valid", Optional[int], field(default=II("dataset.batch_size_valid"))),
        ("update_freq", List[int], field(default=II("optimization.update_freq"))),
        ("ddp_backend", Optional[str], field(default=II("distributed_training.ddp_backend"))),
    ]
    return make_dataclass("InstructionMetaLearningConfig", specs, bases=(MetaseqDataclass,))


InstructionMetaLearningConfig = _task_config()


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
        self.grad_norm_once = bool(getattr(args, "grad_norm_replicated_once", False))
        if self.grad_norm_once:
            check_grad_norm_once(bool(getattr(args, "fp16", False)),
                                 bool(getattr(args, "memory_efficient_fp16", False)),
                                 getattr(args, "ddp_backend", "pytorch_ddp"))
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
        if self.grad_norm_once and distributed_utils.get_model_parallel_world_size() > 1:
            grad_norm.install()
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
