"""The metaseq task's settings turned into the recipe's data settings, and the checks run before training.

Why: metaseq hands the task an omegaconf node (or a Namespace) of flat fields. The data, mixture,
packing and loss settings are the recipe's `DataFields` (the same names and defaults as `optiml
train`'s `data:` section); `TaskOptions` states them as metaseq's command line spells them (JSON
objects, comma lists), with their help, as a plain dataclass; they are read back here and checked by
the recipe schema, without importing metaseq, so the same code is tested everywhere and the task
module stays a thin shell.
The checks refuse configurations that would silently train the wrong thing (sequence parallelism,
whose fused layer drops the mask; gradient accumulation through metaseq's length-based grouping; more
than one data-parallel rank outside FSDP) or could not start (the xformers attention without xformers).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from optiml_plugin.conventions import (EVAL_SPLITS, LOSS_NORMALIZATIONS, PACKING_STRATEGIES, TRUNCATIONS,
                                      VALID_SPLITS)
from optiml_plugin.data.mixture import parse_proportions
from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq.xformers_attention import XFORMERS_VARIANT, xformers_ops
from optiml_plugin.recipe import DataFields, validate

# `--valid-subset valid` (metaseq's default) stands for every validation split of the bench
VALID_ALIAS = "valid"
WHERE = "instruction_meta_learning options"


@dataclass
class AdapterSettings:
    """What the task needs from its config: the bench, the recipe's data settings, the mask switch."""

    data: Path
    fields: DataFields
    document_masking: bool


def _opt(default: Any, text: str, choices: Optional[Sequence[str]] = None) -> Any:
    return field(default=default, metadata={"help": text, **({"choices": tuple(choices)} if choices else {})})


@dataclass
class TaskOptions:
    """The task's data options as metaseq's command line spells them (`--tokens-per-sample 2048`):
    the recipe's `DataFields`, one for one, same names and defaults (tests hold them to it); mappings
    are JSON text (or a .json/.yaml file), lists comma text, `--eps 0` is no cap as in the recipe."""

    tokens_per_sample: int = _opt(2048, "tokens per packed row (paper: 2048)")
    packing_strategy: str = _opt("best_fit", "best_fit (bounded window; fewer pad tokens) or sequential "
                                             "(next-fit, as the authors)", PACKING_STRATEGIES)
    packing_window: int = _opt(64, "open blocks the best_fit packer chooses among")
    truncation: str = _opt("left", "too-long examples: cut the source from the left (paper) or the right",
                           TRUNCATIONS)
    benchmark_proportions: Optional[str] = _opt("", "benchmark shares as a JSON object or a .json/.yaml file; "
                                                    "unlisted benchmarks share the rest by capped size")
    eps: int = _opt(4096, "examples-proportional cap per task (0: no cap)")
    benchmark_caps: Optional[str] = _opt("", "per-benchmark caps overriding eps, as a JSON object")
    shuffle_buffer: Optional[int] = _opt(None, "packed rows held for shuffling (0: none; default 10 x batch size)")
    valid_splits: str = _opt(",".join(VALID_SPLITS), "bench splits scored by `--valid-subset valid`, comma list")
    max_valid_examples_per_task: int = _opt(250, "first N rows of every task in validation, in file order "
                                                 "(paper §4.1; 0: all)")
    loss_normalization: str = _opt("token", "token: mean over target tokens (paper); example: mean of "
                                            "per-example means", LOSS_NORMALIZATIONS)
    max_train_tasks: Optional[int] = _opt(None, "task scaling (paper Tab 16): the first N training tasks of a fixed "
                                                "order, fully supervised tasks first (default: all)")
    metaicl_zipf_a: Optional[float] = _opt(None, "MetaICL training (§4.8): k ~ Zipf(a) demonstrations of the same "
                                                 "task before each example, k <= --max-demonstrations (default: off)")
    metaicl_suffix_loss: bool = _opt(False, "MetaICL's suffix loss: on the first demonstration's target and after")
    fewshot_share: Optional[str] = _opt("", "Flan-style mixed prompts: per benchmark, the share of examples trained "
                                            "few-shot, as a JSON object")
    max_demonstrations: int = _opt(5, "most demonstrations before an example (MetaICL's K = 5)")
    max_record_chars: int = _opt(0, "characters kept of a row's source (its end) and target (its start) before "
                                    "tokenizing; longer rows are clipped and counted (0: 32 x tokens_per_sample)")


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, default)
    return default if value is None else value


def _json_object(text: Any, name: str) -> Optional[Dict[str, Any]]:
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{WHERE}: --{name.replace('_', '-')} {text!r}: invalid JSON at column {e.colno}: "
                          f"{e.msg} (give an object such as '{{\"niv2\": 1024}}')") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{WHERE}: --{name.replace('_', '-')} must be a JSON object, got {value!r:.80}")
    return value


def fields_from_cfg(cfg: Any) -> DataFields:
    """The recipe's `DataFields` from the task config, checked by the recipe schema (errors name the option)."""
    values: Dict[str, Any] = {}
    for option in fields(TaskOptions):
        name = option.name
        value = getattr(cfg, name, option.default)
        value = getattr(value, "value", value)  # metaseq's ChoiceEnum members
        if name == "benchmark_proportions":
            value = parse_proportions(value) if value is not None and str(value).strip() else None
        elif name in ("benchmark_caps", "fewshot_share"):
            value = _json_object(value, name)
        elif name == "valid_splits":
            parts = value.split(",") if isinstance(value, str) else list(value or [])
            value = [part.strip() for part in parts if part.strip()]
        elif name == "shuffle_buffer" and value is not None and int(value) < 0:
            value = None  # `-1`: the pipeline's default (10 x batch size)
        values[name] = value
    return validate(DataFields, values, WHERE)


def settings_from_cfg(cfg: Any) -> AdapterSettings:
    """The bench, the data settings and the mask switch from the task config (omegaconf or Namespace)."""
    data = _get(cfg, "data", "")
    if not data:
        raise ConfigError("the data argument is required: metaseq-train BENCH_DIR ..., the bench directory "
                          "written by `optiml bench build`")
    if bool(_get(cfg, "add_bos_token", False)):
        raise ConfigError("--add-bos-token is not supported by instruction_meta_learning: every example "
                          "already opens with `</s>` (the BOS rule, conventions.EXAMPLE_START_ID); drop the flag")
    return AdapterSettings(data=Path(str(data)), fields=fields_from_cfg(cfg),
                           document_masking=not bool(_get(cfg, "no_document_masking", False)))


def resolve_valid_subset(name: str, settings: AdapterSettings, available: Sequence[str]) -> List[str]:
    """The bench splits a metaseq `--valid-subset` name reads: `valid` = `--valid-splits`."""
    splits = list(settings.fields.valid_splits) if name == VALID_ALIAS else [name]
    for split in splits:
        if split not in EVAL_SPLITS:
            raise ConfigError(f"--valid-subset {name!r}: {split!r} is not an evaluation split of the "
                              f"bench; use `valid` or any of {list(EVAL_SPLITS)}")
        if split not in available:
            raise ConfigError(f"--valid-subset {name!r}: the bench at {settings.data} has no {split!r} "
                              f"split (it has {list(available)}); drop it from --valid-subset")
    return splits


def check_update_freq(update_freq: Any) -> None:
    """metaseq groups batches for `--update-freq > 1` with `GroupedIterator`, which needs the
    length of an epoch; an endless stream has none, so refuse with what to do instead."""
    # a list, or omegaconf's ListConfig when metaseq passes its config
    single = update_freq is None or isinstance(update_freq, (int, str))
    values = [update_freq] if single else list(update_freq)
    values = [int(v) for v in values if v is not None]
    if values and max(values) > 1:
        raise ConfigError(
            f"--update-freq {','.join(map(str, values))} is not supported by instruction_meta_learning "
            "(metaseq's gradient accumulation needs a finite epoch; this task streams endlessly). "
            "Use --update-freq 1 and raise --batch-size or the number of data-parallel workers to "
            "reach the same tokens per update.")


def check_resumable(ddp_backend: Any, data_parallel_size: int) -> None:
    """Refuse, before any training, a run whose checkpoints could not be resumed exactly.

    With more than one data-parallel rank and a backend other than FSDP, metaseq main saves on rank 0
    only: the other ranks' data-stream states are never written (their ranks return before the train
    iterator's state is taken), and with --use-sharded-state metaseq's own loader then fails
    (`assert "shard" in path_to_load`). FSDP saves every rank.
    """
    backend = str(getattr(ddp_backend, "value", ddp_backend))
    if data_parallel_size > 1 and backend != "fully_sharded":
        raise ConfigError(
            f"--ddp-backend {backend} with {data_parallel_size} data-parallel ranks cannot resume: metaseq saves "
            "rank 0 only, so the other ranks' data-stream positions are lost (and with --use-sharded-state "
            "metaseq's loader cannot read the checkpoint back). Use --ddp-backend fully_sharded, where every "
            "rank saves its shard and its stream state, or one data-parallel rank.")


def check_model_cfg(model_cfg: Any, document_masking: bool) -> None:
    """Refuse a model that would not apply the per-example attention mask the data relies on.

    The mask and positions come from the batch's segment ids (`segment_attention`), so
    `--self-attn-doc-sep` is not needed (with 2, as in the paper's run names, metaseq's own doc-sep
    positions and mask are computed and then replaced). `--attn-variant xformers_default` gets the
    documents as xformers' block-diagonal mask (`xformers_attention`), so xformers must import;
    `--sequence-parallel` runs a fused layer that takes no mask at all.
    """
    if not document_masking:
        return
    variant = getattr(model_cfg, "attn_variant", "default") or "default"
    if str(getattr(variant, "value", variant)) == XFORMERS_VARIANT:
        xformers_ops()
    if bool(getattr(model_cfg, "sequence_parallel", False)):
        raise ConfigError(
            "--sequence-parallel runs metaseq's fused transformer layer, which applies a plain causal mask "
            "and ignores the document mask, so packed examples would attend to each other. Drop "
            "--sequence-parallel (or pass --no-document-masking to train across packed examples).")


def check_grad_norm_once(fp16: bool, memory_efficient_fp16: bool, ddp_backend: Any) -> None:
    """Refuse `--grad-norm-replicated-once` where it cannot tell split from replicated weights:
    metaseq's `--fp16` without `--memory-efficient-fp16`, outside FSDP, clips fp32 copies of the
    weights, which carry neither Megatron's mark nor their module (`grad_norm`)."""
    backend = str(getattr(ddp_backend, "value", ddp_backend))
    if fp16 and not memory_efficient_fp16 and backend != "fully_sharded":
        raise ConfigError(
            "--grad-norm-replicated-once cannot tell split from replicated weights with --fp16 outside FSDP "
            "(metaseq clips fp32 copies of the weights): add --memory-efficient-fp16 or --ddp-backend "
            "fully_sharded, or drop --grad-norm-replicated-once")
