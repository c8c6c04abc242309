"""The metaseq task's settings turned into the recipe's data settings, and the checks run before training.

Why: metaseq hands the task an omegaconf node (or a Namespace) of flat fields. The data, mixture,
packing and loss settings are the recipe's `DataFields` (the same names and defaults as `optiml
train`'s `data:` section, see `task_fields`); they are read back here, the text forms metaseq's
command line needs (JSON objects, comma lists) parsed, and checked by the same schema, without
importing metaseq, so the same code is tested everywhere and the task module stays a thin shell.
The checks refuse configurations that would silently train the wrong thing (sequence parallelism,
whose fused layer drops the mask; gradient accumulation through metaseq's length-based grouping; more
than one data-parallel rank outside FSDP) or could not start (the xformers attention without xformers).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from optiml_plugin.conventions import EVAL_SPLITS
from optiml_plugin.data.mixture import parse_proportions
from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq.xformers_attention import XFORMERS_VARIANT, xformers_ops
from optiml_plugin.recipe import DataFields, FieldSpec, metaseq_fields, validate

# `--valid-subset valid` (metaseq's default) stands for every validation split of the bench
VALID_ALIAS = "valid"
WHERE = "instruction_meta_learning options"


@dataclass
class AdapterSettings:
    """What the task needs from its config: the bench, the recipe's data settings, the mask switch."""

    data: Path
    fields: DataFields
    document_masking: bool


def task_fields() -> List[Tuple[str, Any, Any, str, Optional[Tuple[str, ...]]]]:
    """(name, command-line type, default, help, choices) of every `DataFields` setting, for the task's
    option dataclass: scalars keep their type; mappings and lists are text on metaseq's command line
    (a JSON object or a .json/.yaml file; a comma list), read back by `fields_from_cfg`."""
    out = []
    for name, spec in metaseq_fields().items():
        kind, default = _text_form(spec)
        out.append((name, kind, default, spec.help, spec.choices))
    return out


def _text_form(spec: FieldSpec) -> Tuple[Any, Any]:
    text = str(spec.type)
    if "Dict" in text:
        return Optional[str], ""
    if "List" in text:
        return str, ",".join(spec.default)
    if spec.default is None or "Optional" in text or "Union" in text:
        return Optional[int], spec.default
    return spec.type, spec.default


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
    for name, spec in metaseq_fields().items():
        value = getattr(cfg, name, spec.default)
        value = getattr(value, "value", value)  # metaseq's ChoiceEnum members
        if name == "benchmark_proportions":
            value = parse_proportions(value) if value is not None and str(value).strip() else None
        elif name == "benchmark_caps":
            value = _json_object(value, name)
        elif name == "valid_splits":
            parts = value.split(",") if isinstance(value, str) else list(value or [])
            value = [part.strip() for part in parts if part.strip()]
        elif name == "eps" and value is not None and int(value) <= 0:
            value = None  # metaseq's command line has no null: `--eps 0` means no cap
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
