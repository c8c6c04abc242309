"""Build a transformers `OPTForCausalLM` from a named preset, a config dict or a checkpoint directory.

Why presets: tests and the demo need models of a few million parameters built in code (no downloads);
real runs start from a local directory (e.g. a user-fetched facebook/opt-125m) or, with network, a hub name.
Vocabularies are padded to a multiple of 8 (tensor-core friendly, as metaseq does); padded rows are never
targets because the tokenizer never emits them.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch

from optiml_plugin.conventions import BOS_ID, EOS_ID, PAD_ID
from optiml_plugin.errors import ConfigError
from optiml_plugin.loss import linear_cross_entropy

# Shapes follow OPT's ratios (ffn = 4 * hidden, pre-layer-norm, ReLU). "tiny" is the test/demo size.
PRESETS: Dict[str, Dict[str, Any]] = {
    "micro": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=128),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024),
    "opt-125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072),
}
OPT_VOCAB_SIZE = 50272


def pad_vocab(n: int, multiple: int = 8) -> int:
    return ((n + multiple - 1) // multiple) * multiple


def build_model(preset: Optional[str] = None, checkpoint: Optional[str] = None, vocab_size: int = OPT_VOCAB_SIZE,
                max_positions: int = 2048, dropout: float = 0.1, overrides: Optional[Dict[str, Any]] = None,
                attn_implementation: str = "sdpa", seed: Optional[int] = None) -> torch.nn.Module:
    """Random-init OPT from `preset` (+ `overrides`), or load `checkpoint` (a directory or a hub name).

    `vocab_size` (the tokenizer's) is padded to a multiple of 8; a checkpoint whose embedding is smaller
    than the tokenizer needs is an error rather than a silent resize.
    """
    from transformers import OPTConfig, OPTForCausalLM

    if (preset is None) == (checkpoint is None):
        raise ConfigError("model: give exactly one of 'preset' or 'checkpoint'")
    if checkpoint is not None:
        if checkpoint.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(checkpoint)):
            raise ConfigError(f"model.checkpoint: directory {checkpoint!r} does not exist")
        try:
            model = OPTForCausalLM.from_pretrained(os.path.expanduser(checkpoint),
                                                   attn_implementation=attn_implementation, dtype=torch.float32)
        except OSError as e:
            raise ConfigError(f"model.checkpoint: cannot load {checkpoint!r}: {e}") from e
        if model.config.vocab_size < vocab_size:
            raise ConfigError(f"model.checkpoint: {checkpoint!r} has vocab_size {model.config.vocab_size} "
                              f"but the tokenizer needs {vocab_size}")
        return model
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    shape = dict(PRESETS[preset])
    shape.update(overrides or {})
    config = OPTConfig(vocab_size=pad_vocab(vocab_size), max_position_embeddings=max_positions,
                       word_embed_proj_dim=shape["hidden_size"], dropout=dropout, attention_dropout=0.0,
                       activation_dropout=0.0, do_layer_norm_before=True, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                       eos_token_id=EOS_ID, **shape)
    if seed is not None:
        torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    return OPTForCausalLM(config)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class TargetLM(torch.nn.Module):
    """OPT whose forward returns the target-only loss numerator and per-target NLL, not logits.

    Why: instruction data has few target tokens per row (about 10% on SNI), and with OPT's 50k vocab the
    output projection dominates a small model's step; projecting only the positions that carry loss, chunk
    by chunk through the fused linear + cross entropy, removes that cost and the [targets, vocab] buffers
    without changing the loss. It is a module so DDP/FSDP wrap it (their hooks need the wrapped forward to
    run, and FSDP gathers the output projection's weight only inside it).
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, loss_mask: torch.Tensor, target_ids: torch.Tensor, coefficients: Optional[torch.Tensor] = None,
                **inputs: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        """(sum of coefficients x NLL over target tokens, NLL [n]) in `loss_mask`'s row-major order."""
        hidden = self.lm.model(**inputs, use_cache=False).last_hidden_state
        mask = loss_mask.bool()
        return linear_cross_entropy(hidden[mask], self.lm.lm_head.weight, target_ids[mask], coefficients)
