"""Build a transformers decoder (OPT, Llama, Mistral, Gemma, Qwen2, GPT-NeoX) from a preset, a config or a checkpoint.

Why presets: tests and the demo need models of a few million parameters built in code (no downloads);
real runs start from a local directory (e.g. a user-fetched facebook/opt-125m or a Llama-family model).
Presets are family-neutral shapes (width, depth, heads, feed-forward) that `FAMILIES` turns into each
family's config, so the same "small" model exists as OPT, Llama, ... for side-by-side runs.
Vocabularies are padded to a multiple of 8 (tensor-core friendly, as metaseq does); padded rows are never
targets because the tokenizer never emits them. Any family whose attention goes through transformers'
attention interface works; the ones named in `FAMILIES` are tested for exact packing.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import linear_cross_entropy

# Family-neutral shapes (OPT's ratios: ffn = 4 x hidden). "micro"/"tiny" are the test/demo sizes, "small"
# the family-neutral starting point for side-by-side runs; "opt-125m" is OPT's published shape.
PRESETS: Dict[str, Dict[str, Any]] = {
    "micro": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=128),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
}
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim")
OPT_VOCAB_SIZE = 50272


@dataclass(frozen=True)
class Family:
    """How a neutral shape and optiml's dropout settings become one family's transformers config."""

    config_class: str
    shape: Callable[[Dict[str, int]], Dict[str, Any]]
    dropout_field: Optional[str]  # the config field model.dropout sets (None: the family has no such dropout)


def _rotary(s: Dict[str, int]) -> Dict[str, Any]:
    return dict(hidden_size=s["hidden_size"], num_hidden_layers=s["num_hidden_layers"],
                num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_attention_heads"],
                intermediate_size=s["ffn_dim"], head_dim=s["hidden_size"] // s["num_attention_heads"])


FAMILIES: Dict[str, Family] = {
    "opt": Family("OPTConfig", lambda s: dict(s, word_embed_proj_dim=s["hidden_size"], do_layer_norm_before=True,
                                              activation_dropout=0.0), "dropout"),
    "llama": Family("LlamaConfig", _rotary, None),
    "mistral": Family("MistralConfig", lambda s: dict(_rotary(s), sliding_window=None), None),
    "qwen2": Family("Qwen2Config", lambda s: dict(_rotary(s), use_sliding_window=False), None),
    "gemma": Family("GemmaConfig", _rotary, None),
    "gpt_neox": Family("GPTNeoXConfig", lambda s: dict(
        hidden_size=s["hidden_size"], num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"], intermediate_size=s["ffn_dim"]), "hidden_dropout"),
}


def dropout_fields(model_type: str, dropout: float) -> Dict[str, float]:
    """The config field that takes model.dropout in this family ({} where it has none or is not listed)."""
    family = FAMILIES.get(model_type)
    return {family.dropout_field: dropout} if family is not None and family.dropout_field else {}


def pad_vocab(n: int, multiple: int = 8) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def _check_fields(config_class: Any, fields: Dict[str, Any], where: str) -> None:
    """Refuse names the config class does not define (transformers would keep a typo as a new attribute and
    ignore it) with the setting's name, instead of a TypeError or silence."""
    known = set(config_class().to_dict()) | set(getattr(config_class, "attribute_map", {}))
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"{where}: {config_class.__name__} has no field {unknown[0]!r} (unknown: {unknown})")


def preset_config(preset: str, family: str, vocab_size: int, max_positions: int, dropout: float,
                  attention_dropout: float, overrides: Optional[Dict[str, Any]] = None,
                  special_ids: Optional[Dict[str, Optional[int]]] = None) -> Any:
    """`preset`'s shape as `family`'s transformers config; `overrides` are that config's own fields (a shape key
    of the preset, or any field such as attention_dropout), applied last."""
    import transformers

    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if family not in FAMILIES:
        raise ConfigError(f"model.family: unknown family {family!r}; choose one of {sorted(FAMILIES)}, or give "
                          f"model.config (a config.json of any decoder) or model.checkpoint")
    spec = FAMILIES[family]
    config_class = getattr(transformers, spec.config_class)
    overrides = dict(overrides or {})
    shape = dict(PRESETS[preset])
    for key in SHAPE_KEYS:  # a shape key overrides the preset before the family maps it
        if key in overrides:
            shape[key] = overrides.pop(key)
    _check_fields(config_class, overrides, "model.overrides")
    if shape["hidden_size"] % shape["num_attention_heads"]:
        raise ConfigError(f"model: hidden_size {shape['hidden_size']} is not a multiple of num_attention_heads "
                          f"{shape['num_attention_heads']}")
    fields = dict(spec.shape(shape), vocab_size=pad_vocab(vocab_size), max_position_embeddings=max_positions,
                  attention_dropout=attention_dropout)
    if spec.dropout_field is not None:
        fields[spec.dropout_field] = dropout
    fields.update({k: v for k, v in (special_ids or {}).items() if v is not None})
    fields.update(overrides)
    return config_class(**fields)


def file_config(path: str, vocab_size: int, dropout: float, attention_dropout: float,
                overrides: Optional[Dict[str, Any]] = None) -> Any:
    """A transformers config.json (or a directory holding one) for random init, with `overrides` applied."""
    from transformers import AutoConfig

    root = os.path.expanduser(path)
    if not os.path.exists(root):
        raise ConfigError(f"model.config: {path!r} does not exist")
    try:
        if os.path.isdir(root):
            data = AutoConfig.from_pretrained(root).to_dict()
        else:
            with open(root, encoding="utf-8") as f:
                data = json.load(f)
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"model.config: cannot read {path!r}: {e}") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ConfigError(f"model.config: {path}: no model_type (a transformers config.json has one)")
    config_class = type(AutoConfig.for_model(data["model_type"]))
    _check_fields(config_class, dict(overrides or {}), "model.overrides")
    if "attention_dropout" in config_class().to_dict():
        data["attention_dropout"] = attention_dropout
    data.update(dropout_fields(data["model_type"], dropout))
    data.update(overrides or {})
    config = AutoConfig.for_model(**data)
    if config.vocab_size < vocab_size:
        raise ConfigError(f"model.config: {path!r} has vocab_size {config.vocab_size} but the tokenizer needs "
                          f"{vocab_size}")
    return config


def check_supported(model: torch.nn.Module, where: str) -> torch.nn.Module:
    """Refuse models whose attention bypasses transformers' attention interface (the document masks could
    not reach it) or whose logits are not the plain output projection."""
    supported = getattr(model, "_supports_attention_backend", None)
    if supported is None:  # transformers without the flag: the modeling module dispatches through the interface
        supported = hasattr(sys.modules.get(type(model).__module__), "ALL_ATTENTION_FUNCTIONS")
    if not supported:
        raise ConfigError(f"{where}: {type(model).__name__} does not route attention through transformers' "
                          f"attention interface, so packed rows cannot be document-masked; supported: "
                          f"{sorted(FAMILIES)} and other decoders that do")
    check_logits(model.config, where)
    return model


def check_logits(config: Any, where: str) -> None:
    """Refuse configs whose logits are not the plain output projection (the fused target loss assumes it)."""
    for field in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(config, field, None) not in (None, 1, 1.0):
            raise ConfigError(f"{where}: {config.model_type} transforms its logits ({field}); the fused "
                              f"target loss uses the plain output projection")


def build_model(preset: Optional[str] = None, checkpoint: Optional[str] = None, vocab_size: int = OPT_VOCAB_SIZE,
                max_positions: int = 2048, dropout: float = 0.1, overrides: Optional[Dict[str, Any]] = None,
                attn_implementation: str = "sdpa", seed: Optional[int] = None, family: str = "opt",
                config: Optional[str] = None, attention_dropout: float = 0.0,
                special_ids: Optional[Dict[str, Optional[int]]] = None) -> torch.nn.Module:
    """Random-init `family` from `preset` (+ `overrides`) or from a `config` file, or load `checkpoint`.

    `vocab_size` (the tokenizer's) is padded to a multiple of 8 for presets; a checkpoint or config whose
    embedding is smaller than the tokenizer needs is an error rather than a silent resize. `special_ids`
    (bos/eos/pad_token_id, the tokenizer's) go into a preset's config, so `generate` stops where it should.
    """
    from transformers import AutoModelForCausalLM

    if sum(x is not None for x in (preset, checkpoint, config)) != 1:
        raise ConfigError("model: give exactly one of 'preset', 'config' or 'checkpoint'")
    if checkpoint is not None:
        return _load_checkpoint(checkpoint, vocab_size, dropout, attention_dropout, overrides, attn_implementation)
    if config is not None:
        cfg = file_config(config, vocab_size, dropout, attention_dropout, overrides)
        where = f"model.config {config}"
    else:
        cfg = preset_config(preset, family, vocab_size, max_positions, dropout, attention_dropout, overrides,
                            special_ids)
        where = f"model.preset {preset} ({family})"
    check_logits(cfg, where)
    if seed is not None:
        torch.manual_seed(seed)
    cfg._attn_implementation = attn_implementation
    try:
        model = AutoModelForCausalLM.from_config(cfg)
    except ValueError as e:  # e.g. an architecture without the attention implementation asked for
        raise ConfigError(f"{where}: transformers cannot build it: {str(e).splitlines()[0]}") from None
    return check_supported(model, where)


def _load_checkpoint(checkpoint: str, vocab_size: int, dropout: float, attention_dropout: float,
                     overrides: Optional[Dict[str, Any]], attn_implementation: str) -> torch.nn.Module:
    """A checkpoint directory (or a hub name, with network) in fp32, its config fields overridden before
    the modules are built (attention dropout is read from the config at construction)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = os.path.expanduser(checkpoint)
    if checkpoint.startswith((".", "/", "~")) and not os.path.isdir(path):
        raise ConfigError(f"model.checkpoint: directory {checkpoint!r} does not exist")
    try:
        loaded = AutoConfig.from_pretrained(path)
        config_class = type(loaded)
        fields = dict(overrides or {})
        _check_fields(config_class, fields, "model.overrides")
        for key, value in dropout_fields(loaded.model_type, dropout).items():
            fields.setdefault(key, value)
        if "attention_dropout" in config_class().to_dict():
            fields.setdefault("attention_dropout", attention_dropout)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn_implementation,
                                                     dtype=torch.float32, **fields)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.checkpoint: cannot load {checkpoint!r}: {e}") from e
    if model.config.vocab_size < vocab_size:
        raise ConfigError(f"model.checkpoint: {checkpoint!r} has vocab_size {model.config.vocab_size} "
                          f"but the tokenizer needs {vocab_size}")
    return check_supported(model, f"model.checkpoint {checkpoint}")


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class TargetLM(torch.nn.Module):
    """A causal LM whose forward returns the target-only loss numerator and per-target NLL, not logits.

    Why: instruction data has few target tokens per row (about 10% on SNI), and with a 32k-150k vocab the
    output projection dominates a small model's step; projecting only the positions that carry loss, chunk
    by chunk through the fused linear + cross entropy, removes that cost and the [targets, vocab] buffers
    without changing the loss. It is a module so DDP/FSDP wrap it (their hooks need the wrapped forward to
    run, and FSDP gathers the output projection's weight only inside it). Any family: the decoder is the
    model's `base_model` and the projection its output embeddings.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, loss_mask: torch.Tensor, target_ids: torch.Tensor, coefficients: Optional[torch.Tensor] = None,
                **inputs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sum of coefficients x NLL over target tokens, NLL [n]) in `loss_mask`'s row-major order."""
        hidden = self.lm.base_model(**inputs, use_cache=False).last_hidden_state
        mask = loss_mask.bool()
        head = self.lm.get_output_embeddings()
        return linear_cross_entropy(hidden[mask], head.weight, target_ids[mask], coefficients)
