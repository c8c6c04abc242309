"""transformers causal LMs (OPT, Llama, Mistral, Gemma, Qwen2, GPT-NeoX: any AutoModelForCausalLM) as an
evaluation backend.

Why: models trained by the local trainer, HF checkpoints and converted metaseq checkpoints are all
transformers directories; their tokenizer comes from the house resolver with the model's own BOS rule.
Scoring passes the evaluator's tree mask as a 4D additive mask with explicit position ids (rotary
models read them as OPT does); generation uses transformers' own greedy `generate` on left-padded
batches (`generate` derives position ids from the padding mask, so left padding keeps positions right).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch

from optiml_plugin.data.tokenizer import OptTokenizer, resolve_tokenizer
from optiml_plugin.errors import ConfigError, CorruptFileError, first_line
from optiml_plugin.eval.backend import Backend

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "gpt2-vocab.json",
                   "tokenizer.model", "spiece.model", "vocab.txt")
WEIGHT_MARKERS = ("*.safetensors", "pytorch_model*.bin", "*.index.json", "tf_model.h5", "flax_model.msgpack")


def check_model_dir(root: Path) -> None:
    """Refuse a model directory without weights or without a tokenizer before loading anything (a
    missing tokenizer otherwise surfaced as an unrelated error deep in scoring)."""
    if not (root / "config.json").is_file():
        raise ConfigError(f"{root}: not a transformers model directory (config.json missing); "
                          f"convert metaseq checkpoints with `optiml eval convert-metaseq`")
    if not any(any(root.glob(pattern)) for pattern in WEIGHT_MARKERS):
        raise ConfigError(f"{root}: no model weights (expected model.safetensors or pytorch_model.bin); "
                          f"copy them from the run's final/ directory or point --model at one that has them")
    if not any((root / name).is_file() for name in TOKENIZER_MARKERS):
        raise ConfigError(f"{root}: no tokenizer (expected tokenizer.json, or vocab.json + merges.txt); "
                          f"copy the tokenizer files of the model it was trained from into it")


class HFBackend(Backend):
    """A loaded transformers model plus its tokenizer (the house's `OptTokenizer`, with the model's rules)."""

    def __init__(self, model: Any, tokenizer: OptTokenizer, model_id: str = "model",
                 device: Optional[Union[str, torch.device]] = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.tok = tokenizer
        self.model_id = model_id
        self.eos_id, self.pad_id = tokenizer.eos_id, tokenizer.pad_id
        self._prefix = [tokenizer.start_id]  # the BOS rule: the token that opens every example in training
        cfg = model.config
        self.max_positions = int(getattr(cfg, "max_position_embeddings", None)
                                 or getattr(cfg, "n_positions", None) or 2048)
        self._keep = "logits_to_keep" in inspect.signature(model.forward).parameters

    @classmethod
    def from_dir(cls, path: Union[str, Path], device: Optional[str] = None,
                 dtype: Optional[str] = None) -> "HFBackend":
        from safetensors import SafetensorError  # a dependency of transformers
        from transformers import AutoModelForCausalLM

        root = Path(path)
        check_model_dir(root)
        if dtype is not None and dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        tok = resolve_tokenizer(root, what=f"{root}: the tokenizer")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(root), dtype=DTYPES.get(dtype or "float32"))
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # a truncated or foreign weights file
            raise CorruptFileError(f"{root}: cannot load the model weights ({first_line(e)})") from None
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model, tok, model_id=root.resolve().name, device=dev)

    @property
    def prefix_ids(self) -> List[int]:
        return list(self._prefix)

    def encode(self, text: str) -> List[int]:
        return self.tok.encode(text)

    def encode_target(self, src: str, tgt: str) -> List[int]:
        return self.tok.encode_target(src, tgt)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)

    @torch.no_grad()
    def token_logprobs(self, input_ids, position_ids, attention, gather_pos, gather_tok):
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(attention.shape, dtype=dtype)
        mask.masked_fill_(~attention, torch.finfo(dtype).min)
        kwargs = {}
        if self._keep:  # only the positions that predict a scored token go through the LM head
            keep, gather_pos = torch.unique(gather_pos, sorted=True, return_inverse=True)
            kwargs["logits_to_keep"] = keep.to(self.device)
        logits = self.model(input_ids=input_ids.to(self.device), position_ids=position_ids.to(self.device),
                            attention_mask=mask[:, None].to(self.device), use_cache=False, **kwargs).logits
        rows = torch.arange(logits.shape[0], device=self.device)[:, None]
        picked = logits[rows, gather_pos.to(self.device)].float().log_softmax(-1)
        return picked.gather(-1, gather_tok.to(self.device)[..., None])[..., 0].cpu()

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                 stop_strings: Tuple[str, ...] = ()) -> List[List[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p))
            att[i, width - len(p):] = 1
        stops = StopAtStrings(self.decode, width, stop_strings, len(prompts)) if stop_strings else None
        if stops is not None:
            from transformers import StoppingCriteriaList
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                  **({"stopping_criteria": StoppingCriteriaList([stops])} if stops else {}))
        result = []
        for i, row in enumerate(out[:, width:].tolist()):
            if stops is not None and stops.ends[i] is not None:
                row = row[:stops.ends[i]]
            result.append(row[:row.index(self.eos_id)] if self.eos_id in row else row)
        return result


class StopAtStrings:
    """Ends each row once its decoded continuation (leading whitespace stripped) holds a stop string, so
    an answer followed by the prompt format's next-example separator stops there, not at the cap."""

    def __init__(self, decode: Callable[[Sequence[int]], str], start: int, stops: Tuple[str, ...],
                 rows: int) -> None:
        self.decode, self.start, self.stops = decode, start, tuple(s for s in stops if s)
        self.ends: List[Optional[int]] = [None] * rows

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        for i, row in enumerate(input_ids[:, self.start:].tolist()):
            if self.ends[i] is None:
                text = self.decode(row).lstrip()
                if any(s in text for s in self.stops):
                    self.ends[i] = len(row)
        return torch.tensor([e is not None for e in self.ends], dtype=torch.bool, device=input_ids.device)
