"""transformers causal LMs (OPT and any AutoModelForCausalLM) as an evaluation backend.

Why: models trained by the local trainer, HF OPT checkpoints and converted metaseq checkpoints are
all transformers directories; scoring passes the evaluator's tree mask as a 4D additive mask with
explicit position ids, and generation uses transformers' own greedy `generate` on left-padded batches
(OPT derives its position ids from the padding mask, so left padding keeps positions right).
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch

from optiml_plugin.conventions import EXAMPLE_START_ID
from optiml_plugin.data.tokenizer import OptTokenizer, join_texts
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


def _tokenizer(path: Path):
    """OptTokenizer when the directory has OPT-BPE files with OPT's ids, else AutoTokenizer."""
    try:
        return OptTokenizer.from_dir(path)
    except ConfigError as opt_err:
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path))
        except Exception as err:  # transformers raises many types for a missing/odd tokenizer
            raise ConfigError(f"{path}: no usable tokenizer ({opt_err}; AutoTokenizer: {err})") from err


class HFBackend(Backend):
    """A loaded transformers model plus its tokenizer (an `OptTokenizer` or a transformers one)."""

    def __init__(self, model: Any, tokenizer: Any, model_id: str = "model",
                 device: Optional[Union[str, torch.device]] = None) -> None:
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        self.tok = tokenizer
        self.model_id = model_id
        self._opt = isinstance(tokenizer, OptTokenizer)
        if self._opt:
            self.eos_id, self.pad_id = tokenizer.eos_id, tokenizer.pad_id
            self._prefix = [EXAMPLE_START_ID]  # the BOS rule: </s> opens every example, as in training
        else:
            self.eos_id = int(tokenizer.eos_token_id)
            pad = tokenizer.pad_token_id
            self.pad_id = int(pad if pad is not None else self.eos_id)
            self._prefix = list(tokenizer("", add_special_tokens=True)["input_ids"])
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
        tok = _tokenizer(root)
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
        if self._opt:
            return self.tok.encode(text)
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_target(self, src: str, tgt: str) -> List[int]:
        return self.encode(join_texts(src, tgt)[1])

    def decode(self, ids: Sequence[int]) -> str:
        if self._opt:
            return self.tok.decode(ids)
        return self.tok.decode(list(ids), skip_special_tokens=True)

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
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> List[List[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p))
            att[i, width - len(p):] = 1
        out = self.model.generate(input_ids=ids.to(self.device), attention_mask=att.to(self.device),
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                  eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        result = []
        for row in out[:, width:].tolist():
            result.append(row[:row.index(self.eos_id)] if self.eos_id in row else row)
        return result
