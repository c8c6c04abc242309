"""The metaseq task's settings turned into core objects, and the checks run before training starts.

Why: metaseq hands the task an omegaconf node (or a Namespace) of flat fields; everything that
decides data, packing and loss is built here, without importing metaseq, so the same code is
tested everywhere and the task module stays a thin shell. The checks refuse configurations that
would silently train the wrong thing (document masking off in the model, the xformers attention
path that drops the mask, gradient accumulation through metaseq's length-based grouping).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from optiml_plugin.data.benchfiles import EVAL_SPLITS
from optiml_plugin.data.mixture import MixtureConfig, parse_proportions
from optiml_plugin.data.packing import PackingConfig
from optiml_plugin.data.tokenizer import EOS_ID
from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import NORMALIZE

# the attention variant whose kernel ignores `attn_mask`
XFORMERS_VARIANT = "xformers_default"
# `--valid-subset valid` (metaseq's default) stands for every validation split of the bench
VALID_ALIAS = "valid"
DEFAULT_VALID_SPLITS = "valid_heldout_instances,valid_heldout_tasks,valid_heldout_categories"


@dataclass
class AdapterSettings:
    """What the task needs from its config, as core objects."""

    data: Path
    mixture: MixtureConfig
    packing: PackingConfig
    loss_normalization: str
    document_masking: bool
    valid_splits: List[str]
    max_valid_examples_per_task: Optional[int]
    shuffle_buffer: Optional[int]   # blocks; None = the pipeline's default (10 x batch size)


def _get(cfg: Any, name: str, default: Any = None) -> Any:
    value = getattr(cfg, name, default)
    return default if value is None else value


def parse_caps(text: Any) -> Optional[Dict[str, int]]:
    """Per-benchmark EPS overrides from a JSON object string (opt_instruct's `--caps`), or None."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    if isinstance(text, dict):
        caps = text
    else:
        try:
            caps = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--benchmark-caps {text!r}: invalid JSON at column {e.colno}: {e.msg} "
                              f"(give an object such as '{{\"niv2\": 1024}}')") from None
    if not isinstance(caps, dict):
        raise ConfigError(f"--benchmark-caps must be a JSON object {{benchmark: cap}}, got {caps!r:.80}")
    out: Dict[str, int] = {}
    for name, cap in caps.items():
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ConfigError(f"--benchmark-caps: cap of {name!r} must be a positive integer, got {cap!r}")
        out[str(name)] = cap
    return out


def parse_split_list(text: Any) -> List[str]:
    """`"a,b"` or a list -> names, each a known bench split."""
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else list(text or []))]
    names = [s for s in names if s]
    for name in names:
        if name not in EVAL_SPLITS:
            raise ConfigError(f"--valid-splits: {name!r} is not an evaluation split; choose from "
                              f"{list(EVAL_SPLITS)}")
    return names


def settings_from_cfg(cfg: Any) -> AdapterSettings:
    """Build the mixture, packing and loss settings from the task config (omegaconf or Namespace)."""
    data = _get(cfg, "data", "")
    if not data:
        raise ConfigError("the data argument is required: metaseq-train BENCH_DIR ..., the bench directory "
                          "written by `optiml bench build`")
    if bool(_get(cfg, "add_bos_token", False)):
        raise ConfigError("--add-bos-token is not supported by instruction_meta_learning: every example "
                          "already starts with its source (or `</s>` as BOS when the source is empty); "
                          "drop the flag")
    proportions_text = _get(cfg, "benchmark_proportions", "")
    proportions = parse_proportions(proportions_text) if str(proportions_text).strip() else None
    eps = int(_get(cfg, "eps", 4096))
    mixture = MixtureConfig(proportions=proportions, eps=eps if eps > 0 else None,
                            caps=parse_caps(_get(cfg, "benchmark_caps", "")))
    packing = PackingConfig(tokens_per_sample=int(_get(cfg, "tokens_per_sample", 2048)),
                            strategy=str(_get(cfg, "packing_strategy", "best_fit")),
                            window=int(_get(cfg, "packing_window", 64)),
                            truncation=str(_get(cfg, "truncation", "left")))
    normalization = str(_get(cfg, "loss_normalization", "token"))
    if normalization not in NORMALIZE:
        raise ConfigError(f"--loss-normalization must be one of {NORMALIZE}, got {normalization!r}")
    max_valid = int(_get(cfg, "max_valid_examples_per_task", 250))
    shuffle = int(_get(cfg, "shuffle_buffer", -1))
    return AdapterSettings(
        data=Path(str(data)), mixture=mixture, packing=packing, loss_normalization=normalization,
        document_masking=not bool(_get(cfg, "no_document_masking", False)),
        valid_splits=parse_split_list(_get(cfg, "valid_splits", DEFAULT_VALID_SPLITS)),
        max_valid_examples_per_task=max_valid if max_valid > 0 else None,
        shuffle_buffer=shuffle if shuffle >= 0 else None)


def resolve_valid_subset(name: str, settings: AdapterSettings, available: Sequence[str]) -> List[str]:
    """The bench splits a metaseq `--valid-subset` name reads: `valid` = `--valid-splits`."""
    splits = list(settings.valid_splits) if name == VALID_ALIAS else [name]
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
    positions and mask are computed and then replaced); the xformers kernel takes no mask at all.
    """
    variant = str(getattr(model_cfg, "attn_variant", "default") or "default")
    variant = getattr(variant, "value", variant)
    if document_masking and variant == XFORMERS_VARIANT:
        raise ConfigError(
            f"--attn-variant {XFORMERS_VARIANT} runs with a plain causal bias and ignores the document mask, "
            "so packed examples would attend to each other. Use --attn-variant default (or pass "
            "--no-document-masking to train with plain causal attention across packed examples).")
