"""Shared builders for the evaluator tests: a tiny OPT built in code, a tokenizer, a small bench (written
by bench_factory.write_bench, the tests' one bench writer)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

import bench_factory

WORDS = ("yes no maybe red blue green cat dog bird the a is what color animal answer question "
         "translate hello world sentence positive negative true false").split()


@lru_cache(maxsize=1)
def tokenizer():
    from optiml_plugin.data.tokenizer import OptTokenizer

    texts = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 3
    return OptTokenizer.builtin(texts, vocab_size=320)


def tiny_opt(vocab_size: int, seed: int = 0, max_positions: int = 256, layers: int = 2):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=layers, ffn_dim=64,
                    num_attention_heads=4, max_position_embeddings=max_positions,
                    word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                    dropout=0.0, attention_dropout=0.0)
    model = OPTForCausalLM(cfg).eval()
    with torch.no_grad():  # larger weights than the default init, so scores differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model


def backend(seed: int = 0, max_positions: int = 256):
    from optiml_plugin.eval.backends.hf import HFBackend

    tok = tokenizer()
    return HFBackend(tiny_opt(tok.vocab_size, seed, max_positions), tok, model_id=f"tiny-opt-{seed}")


def row(benchmark: str, category: str, task: str, split: str, i: int, instruction: str, inp: str,
        refs: List[str], candidates: Optional[List[str]] = None, language: str = "en") -> Dict[str, Any]:
    src = f"{instruction}\n\n{inp}" + (("\n\nOPTIONS:\n- " + "\n- ".join(candidates)) if candidates else "")
    return {"id": f"{task}-{split}-{i}", "benchmark": benchmark, "category": category, "task": task,
            "split": split, "src": src + "\nAnswer:", "tgt": refs[0], "references": refs,
            "candidates": candidates, "instruction": instruction, "input": inp, "template": "",
            "language": language}


def write_bench(root: Path, n: int = 6) -> Path:
    """Three levels: a ranked training task (with train rows), a generated held-out task, a held-out
    category with a translation task (BLEU) and a ranked task."""
    specs = [  # benchmark, category, task, level, candidates?
        ("flan", "Sentiment", "sst2", "train", ["positive", "negative"]),
        ("niv2", "Question Answering", "task001_color", "heldout_tasks", None),
        ("niv2", "Translation", "task002_translate", "heldout_categories", None),
        ("flan", "Textual Entailment", "rte", "heldout_categories", ["yes", "no", "maybe", "true"]),
    ]
    parts = []
    for bench, cat, task, level, cands in specs:
        splits = ["train", "test_heldout_instances", "valid_heldout_instances"] if level == "train" else \
            [f"test_{level}", f"valid_{level}"]
        for split in splits:
            rows = []
            for i in range(n):
                word = WORDS[(i * 3 + len(task)) % len(WORDS)]
                refs = [cands[i % len(cands)]] if cands else [f"the {word} is {WORDS[i % 5]}", word]
                rows.append(row(bench, cat, task, split, i, f"Answer the {cat.lower()} question.",
                                f"what color is the {word} {i}", refs, cands))
            parts.append((bench, cat, task, level, split, rows))
    return bench_factory.write_bench(root, parts)


def saved_model(directory, seed: int = 6):
    """A tiny OPT and its tokenizer saved in `directory`, as `optiml train` leaves final/."""
    tok = tokenizer()
    tiny_opt(tok.vocab_size, seed=seed).save_pretrained(str(directory))
    tok.save(directory)
    return directory
