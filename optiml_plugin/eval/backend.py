"""What the evaluator needs from a model, so the core never imports transformers or metaseq.

Why: prompts, packing, metrics and aggregation are framework-free; a backend (eval/backends/) only
runs forward passes and greedy decoding. Scoring asks for log-probabilities at chosen positions so a
backend never has to return [B, L, vocab] tensors.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch

from optiml_plugin.conventions import EOS_ID, PAD_ID


class Backend:
    """Abstract model backend. Ids follow the model's own tokenizer."""

    model_id: str = "unknown"
    eos_id: int = EOS_ID
    pad_id: int = PAD_ID
    max_positions: int = 2048

    @property
    def prefix_ids(self) -> List[int]:
        """Ids put before every prompt (OPT: `</s>`, as its tokenizer and pretraining do)."""
        return []

    def encode(self, text: str) -> List[int]:
        raise NotImplementedError

    def encode_target(self, src: str, tgt: str) -> List[int]:
        """Ids of `tgt` as it follows `src` in training (the exact src/tgt boundary)."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_logprobs(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       attention: torch.Tensor, gather_pos: torch.Tensor,
                       gather_tok: torch.Tensor) -> torch.Tensor:
        """log p(gather_tok[b, g] | row b up to gather_pos[b, g]) as float32 [B, G].

        `input_ids`, `position_ids`: [B, L]; `attention`: bool [B, L, L], True where query q may
        attend to key k (already causal and padded rows safe).
        """
        raise NotImplementedError

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 stop_strings: Tuple[str, ...] = ()) -> List[List[int]]:
        """Greedy continuation of each prompt (one batch), stopping at `</s>` (not returned) or once the
        decoded continuation, leading whitespace stripped, holds one of `stop_strings` (its ids returned
        up to that token: the caller cuts the text at the stop)."""
        raise NotImplementedError
