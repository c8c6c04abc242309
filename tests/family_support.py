"""Tiny tokenizers and models of each decoder family, built in code (nothing downloaded).

Each tokenizer copies its family's published conventions, not its vocabulary: the special tokens and
their ids, the tokenizer_config.json keys, whether the post-processor adds BOS, and the pre-tokenizer
(GPT-2 byte-level BPE, or SentencePiece-style `▁` with or without a prepended marker).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from eval_support import WORDS

FAMILIES = ("opt", "llama", "mistral", "qwen2", "gemma", "gpt_neox")
PAIRS = [("Translate to French: the cat", "le chat"), ("", "plain pre-training text"),
         ("Is 7 odd? Answer yes or no.", "yes"), ("Question: what color is the bird? Answer:", "blue")]


def corpus() -> List[str]:
    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
    return (texts + [f"{s} {t}" for s, t in PAIRS]) * 3


def _byte_level(specials: List[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _sentencepiece(specials: List[str], bos: str, prepend: str, vocab_size: int = 300):
    """SentencePiece-style BPE: spaces become `▁`; `prepend` 'first' (Llama, Mistral) marks a text's start
    too, 'never' (Gemma) does not; the post-processor adds BOS, as theirs do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend, split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=prepend, split=True)
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def tokenizer_files(family: str) -> Tuple[Any, Dict[str, Any]]:
    """(a `tokenizers.Tokenizer`, its tokenizer_config.json) in `family`'s conventions; OPT has no config
    (optiml's own OPT BPE: tokenizer.json alone, OPT's ids 0-3)."""
    if family == "opt":
        return _byte_level(["<s>", "<pad>", "</s>", "<unk>"]), {}
    if family == "llama":  # <unk>=0 <s>=1 </s>=2, adds BOS, no pad
        return (_sentencepiece(["<unk>", "<s>", "</s>"], "<s>", "first"),
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
                 "pad_token": None})
    if family == "mistral":  # as Llama, but BOS only from the post-processor (no add_bos_token key), and
        # special tokens in transformers 4's serialized AddedToken form
        def added(content: str) -> Dict[str, Any]:
            return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
                    "rstrip": False, "single_word": False}

        return (_sentencepiece(["<unk>", "<s>", "</s>"], "<s>", "first"),
                {"bos_token": added("<s>"), "eos_token": added("</s>"), "unk_token": "<unk>"})
    if family == "gemma":  # <pad>=0 <eos>=1 <bos>=2 <unk>=3, adds BOS, no prepended marker
        return (_sentencepiece(["<pad>", "<eos>", "<bos>", "<unk>"], "<bos>", "never"),
                {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                 "add_bos_token": True})
    if family == "qwen2":  # no BOS at all; <|endoftext|> ends text and pads
        return (_byte_level(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
                {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "add_bos_token": False})
    if family == "gpt_neox":  # <|endoftext|> is BOS and EOS, not added; <|padding|> exists but is not pad
        return (_byte_level(["<|endoftext|>", "<|padding|>"]),
                {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    raise ValueError(family)


def write_tokenizer(family: str, root: Path) -> Path:
    """A checkpoint-style directory with the family's tokenizer.json (+ tokenizer_config.json, config.json's
    model_type)."""
    root.mkdir(parents=True, exist_ok=True)
    tok, config = tokenizer_files(family)
    tok.save(str(root / "tokenizer.json"))
    if config:
        (root / "tokenizer_config.json").write_text(json.dumps(config))
    (root / "config.json").write_text(json.dumps({"model_type": family}))
    return root


def tiny_model(family: str, tok, seed: int = 0, layers: int = 2, scale: float = 0.1) -> torch.nn.Module:
    """A micro `family` model for `tok` (its special ids), weights drawn larger than the default init (0.02) so
    that scores and greedy tokens differ visibly between contexts (logits of a few units, so that an absolute
    1e-5 is about fp32's rounding of a sum over the width, not a looser test)."""
    from optiml_plugin.local.model import build_model

    model = build_model("micro", family=family, vocab_size=tok.vocab_size, dropout=0.0, seed=seed,
                        overrides={"num_hidden_layers": layers},
                        special_ids={"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                     "pad_token_id": tok.pad_id})
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, scale)
    return model.eval()
