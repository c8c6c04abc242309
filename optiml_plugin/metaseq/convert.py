"""Convert metaseq OPT checkpoints (singleton or model-parallel shards) to a transformers OPT directory.

Why: metaseq runs can then be evaluated (and shared) without metaseq or Megatron installed.
Megatron tensor parallelism splits weights along fixed dims, so shards merge by concatenation:
column-parallel layers (the fused qkv projection, fc1) along output rows, row-parallel layers
(out_proj, fc2) along input columns, embeddings along the vocabulary; everything else is replicated.
metaseq's fused `qkv_proj` holds, per shard, that shard's K rows, then V, then Q (its forward splits
the projection as k, v, q), so each shard is split before the heads are concatenated.

Exactness: every decoder option that changes the forward is read from the checkpoint's config and
mapped, or the conversion is refused with the reason. metaseq's `gelu` is the tanh approximation
(transformers' `gelu_new`, not `gelu`); metaseq multiplies token embeddings by sqrt(d) unless
`--no-scale-embedding` (transformers' OPT never does), which is folded into an untied embedding and
refused for a tied one (the same matrix is the output projection).

Only unflattened state dicts are read: FSDP-flattened shards (`flat_param_*`) must first be
consolidated with metaseq's own consolidation script. Checkpoints are pickles: convert only
checkpoints you trust.
"""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from optiml_plugin.errors import ConfigError
from optiml_plugin.fsio import follow_umask

PathLike = Union[str, Path]
_IGNORED = re.compile(r"(^|\.)(version|_float_tensor)$")
_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")
_PART = re.compile(r"model_part-(\d+)")
COLUMN = ("fc1.weight", "fc1.bias", "self_attn.q_proj.weight", "self_attn.q_proj.bias",
          "self_attn.k_proj.weight", "self_attn.k_proj.bias", "self_attn.v_proj.weight",
          "self_attn.v_proj.bias")
ROW = ("fc2.weight", "self_attn.out_proj.weight")
VOCAB = ("decoder.embed_tokens.weight", "decoder.output_projection.weight")
RENAMES = {"decoder.layer_norm.weight": "decoder.final_layer_norm.weight",
           "decoder.layer_norm.bias": "decoder.final_layer_norm.bias",
           "decoder.project_in_dim.weight": "decoder.project_in.weight",
           "decoder.project_out_dim.weight": "decoder.project_out.weight"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "gpt2-vocab.json", "gpt2-merges.txt")
# metaseq `--activation-fn` -> transformers' ACT2FN name computing the same function
ACTIVATIONS = {"relu": "relu", "gelu": "gelu_new", "relu_squared": "relu2", "tanh": "tanh", "linear": "linear"}
# decoder options that change the forward, with metaseq main's defaults (its decoder is always pre-LN)
OPTIONS = {"decoder_attention_heads": None, "decoder_normalize_before": True, "activation_fn": "relu",
           "no_scale_embedding": False, "decoder_learned_pos": False, "alibi": False,
           "layernorm_embedding": False}


def load_checkpoint(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Any]:
    """(state dict, cfg or args) of one metaseq checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise ConfigError(f"{path}: not a metaseq checkpoint (a {type(ckpt).__name__}, not a dict)")
    sd = ckpt.get("model", ckpt)
    sd = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in sd.items()
          if isinstance(v, torch.Tensor)}
    if any("flat_param" in k for k in sd):
        raise ConfigError(f"{path}: FSDP-flattened parameters; consolidate the shards with metaseq's "
                          f"consolidation script first, then convert the consolidated model parts")
    if "decoder.embed_tokens.weight" not in sd:
        raise ConfigError(f"{path}: field 'model' has no 'decoder.embed_tokens.weight' "
                          f"(keys start with {sorted(sd)[:3]})")
    return sd, ckpt.get("cfg") or ckpt.get("args")


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    try:
        return getattr(obj, name)
    except Exception:  # omegaconf raises its own types for missing keys
        return None


def model_options(cfg: Any, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Decoder options from a checkpoint's `cfg['model']` (omegaconf/dict) or `args` (Namespace).

    Options the checkpoint does not record take metaseq's defaults, except the number of heads, which
    has none; `overrides` (from the command line) win over both. Refuses options transformers' OPT
    cannot express, saying which.
    """
    model = _get(cfg, "model") or cfg
    out = {}
    for key, default in OPTIONS.items():
        value = _get(model, key)
        out[key] = default if value is None else value
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    act = str(out["activation_fn"])
    if act not in ACTIVATIONS:
        raise ConfigError(f"activation_fn {act!r} has no transformers OPT equivalent "
                          f"(convertible: {sorted(ACTIVATIONS)}; gated units such as swiglu are not)")
    if out["alibi"]:
        raise ConfigError("the checkpoint uses ALiBi positions; transformers' OPT has learned positions only")
    if out["layernorm_embedding"]:
        raise ConfigError("the checkpoint normalizes embeddings (--layernorm-embedding); transformers' OPT does not")
    return out


def _same(name: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    for i, p in enumerate(parts[1:], start=1):
        if p.shape != parts[0].shape or not torch.equal(p, parts[0]):
            raise ConfigError(f"'{name}' should be replicated across model-parallel shards but shard {i} "
                              f"differs from shard 0 (are these shards of one checkpoint, in order?)")
    return parts[0]


def merge_shards(shards: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Model-parallel shards -> one state dict in metaseq naming, with q/k/v split out of qkv_proj."""
    keys = list(shards[0])
    for i, sd in enumerate(shards[1:], start=1):
        if set(sd) != set(keys):
            diff = sorted(set(sd) ^ set(keys))[:3]
            raise ConfigError(f"model-parallel shard {i} has different parameter names ({diff})")
    out: Dict[str, torch.Tensor] = {}
    for key in keys:
        if _IGNORED.search(key):
            continue
        parts = [sd[key] for sd in shards]
        layer = _LAYER.match(key)
        sub = layer.group(2) if layer else ""
        if sub.startswith("self_attn.qkv_proj."):
            kvq = [torch.chunk(p, 3, dim=0) for p in parts]
            for j, name in enumerate(("k_proj", "v_proj", "q_proj")):
                out[key.replace("qkv_proj", name)] = torch.cat([c[j] for c in kvq], dim=0)
        elif key in VOCAB or sub in COLUMN:
            out[key] = torch.cat(parts, dim=0)
        elif sub in ROW:
            out[key] = torch.cat(parts, dim=1)
        else:
            out[key] = _same(key, parts)
    return out


def to_hf(sd: Dict[str, torch.Tensor], options: Dict[str, Any],
          num_heads: Optional[int] = None) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(OPTConfig kwargs, transformers state dict) from a merged metaseq state dict."""
    heads = num_heads or options.get("decoder_attention_heads")
    if not heads:
        raise ConfigError("the checkpoint does not record decoder_attention_heads; pass --num-heads")
    emb = sd["decoder.embed_tokens.weight"]
    layers = sorted({int(m.group(1)) for m in map(_LAYER.match, sd) if m})
    if not layers:
        raise ConfigError("no decoder.layers.* parameters in the checkpoint")
    hidden = sd["decoder.layers.0.fc1.weight"].shape[1]
    if hidden % int(heads):
        raise ConfigError(f"hidden size {hidden} is not divisible by {heads} attention heads")
    if "decoder.embed_positions.weight" not in sd:
        raise ConfigError("no decoder.embed_positions.weight: the checkpoint has sinusoidal positions "
                          "(trained without --decoder-learned-pos); transformers' OPT has learned positions only")
    out_proj = sd.get("decoder.output_projection.weight")
    tied = out_proj is None or torch.equal(out_proj, emb)
    if not options.get("no_scale_embedding", False):
        if tied:
            raise ConfigError(
                f"the checkpoint scales token embeddings by sqrt({emb.shape[1]}) (trained without "
                "--no-scale-embedding) and ties them to the output projection: transformers' OPT cannot "
                "scale one without the other, so no exact conversion exists. (If the run did use "
                "--no-scale-embedding but its config does not say so, pass --no-scale-embedding.)")
        emb = emb * math.sqrt(emb.shape[1])
    config = {"vocab_size": emb.shape[0], "hidden_size": hidden, "num_hidden_layers": len(layers),
              "ffn_dim": sd["decoder.layers.0.fc1.weight"].shape[0], "num_attention_heads": int(heads),
              "max_position_embeddings": sd["decoder.embed_positions.weight"].shape[0] - 2,
              "word_embed_proj_dim": emb.shape[1],
              "do_layer_norm_before": bool(options.get("decoder_normalize_before", True)),
              "activation_function": ACTIVATIONS[str(options.get("activation_fn", "relu"))],
              "tie_word_embeddings": tied, "pad_token_id": 1, "bos_token_id": 2, "eos_token_id": 2,
              "dropout": 0.0, "attention_dropout": 0.0}
    hf = {}
    for key, value in sd.items():
        if key == "decoder.output_projection.weight":
            continue
        hf["model." + RENAMES.get(key, key)] = emb if key == "decoder.embed_tokens.weight" else value
    hf["lm_head.weight"] = emb if tied else out_proj
    return config, hf


def _ordered(paths: Sequence[PathLike]) -> List[Path]:
    """Shards in model-parallel rank order (by `model_part-N` in the name when present)."""
    paths = [Path(p) for p in paths]
    ranks = [_PART.search(p.name) for p in paths]
    if all(ranks):
        return [p for _, p in sorted(zip((int(m.group(1)) for m in ranks), paths))]
    return paths


def convert(checkpoints: Sequence[PathLike], out_dir: PathLike, num_heads: Optional[int] = None,
            tokenizer_dir: Optional[PathLike] = None, dtype: Optional[torch.dtype] = None,
            overrides: Optional[Dict[str, Any]] = None) -> Path:
    """Write a transformers OPT directory (config, weights, tokenizer files when given).

    `overrides` sets decoder options the checkpoint's config lacks (e.g. {"no_scale_embedding": True})."""
    from transformers import OPTConfig, OPTForCausalLM

    if not checkpoints:
        raise ConfigError("give at least one checkpoint file")
    if Path(out_dir).exists() and (not Path(out_dir).is_dir() or any(Path(out_dir).iterdir())):
        raise ConfigError(f"--out {out_dir} already exists and is not empty; the converter never writes over "
                          f"files: choose a new directory")
    loaded = [load_checkpoint(p) for p in _ordered(checkpoints)]
    options = model_options(loaded[0][1], overrides)
    config_kwargs, hf = to_hf(merge_shards([sd for sd, _ in loaded]), options, num_heads)
    model = OPTForCausalLM(OPTConfig(**config_kwargs))
    missing, unexpected = model.load_state_dict(hf, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConfigError(f"checkpoint does not match OPT: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if dtype is not None:
        model = model.to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    if tokenizer_dir is not None:
        found = [f for f in TOKENIZER_FILES if (Path(tokenizer_dir) / f).is_file()]
        if not found:
            raise ConfigError(f"{tokenizer_dir}: none of {TOKENIZER_FILES} found")
        for f in found:
            shutil.copyfile(Path(tokenizer_dir) / f, out / f)
    follow_umask(out)  # safetensors writes 0600: a converted model is shared like a trained one
    return out
