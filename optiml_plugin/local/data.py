"""The trainer's data side: tokenizer, the core stream + packing pipeline for training, and fixed
validation batches per evaluation split.

Why validation is built once: the eval splits are read in file order (never sampled, capped per task by
the core's `validation_set`) and packed sequentially, so every validation pass scores exactly the same
tokens and curves are comparable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from optiml_plugin.conventions import TRAIN_SPLIT
from optiml_plugin.data.benchfiles import Bench
from optiml_plugin.data.packing import PackingConfig, pack
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.validation import ValidationSet, validation_set
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import DataConfig

TOKENIZER_SAMPLE_PER_TASK = 2000


def training_texts(bench: Bench, per_task: int = TOKENIZER_SAMPLE_PER_TASK) -> Iterator[str]:
    """The first `per_task` train rows of every task, source and target (the builtin tokenizer's corpus)."""
    for tf in bench.task_files(TRAIN_SPLIT):
        reader = bench.reader(tf)
        for i in range(min(len(reader), per_task)):
            row = reader[i]
            yield row["src"]
            yield row["tgt"]


def load_tokenizer(cfg: DataConfig, bench: Bench, saved: Optional[Path] = None) -> OptTokenizer:
    """Reuse the run's saved tokenizer (resume), else 'builtin' trains one on the bench, else a dir."""
    if saved is not None and (saved / "tokenizer.json").is_file():
        return OptTokenizer.from_dir(saved)
    if cfg.tokenizer == "builtin":
        return OptTokenizer.builtin(training_texts(bench), vocab_size=cfg.builtin_vocab_size)
    if not Path(cfg.tokenizer).is_dir():
        raise ConfigError(f"data.tokenizer: {cfg.tokenizer!r} is neither 'builtin' nor a directory")
    return OptTokenizer.from_dir(cfg.tokenizer)


def packing_config(cfg: DataConfig) -> PackingConfig:
    return PackingConfig(tokens_per_sample=cfg.tokens_per_sample, strategy=cfg.packing_strategy, window=cfg.packing_window,
                         truncation=cfg.truncation)


def validation_batches(bench: Bench, tokenizer: OptTokenizer,
                       cfg: DataConfig) -> Dict[str, Tuple[ValidationSet, List[dict]]]:
    """Per eval split: the first `max_valid_examples_per_task` rows of every task, packed next-fit once."""
    from optiml_plugin.data.pipeline import collate_blocks

    packing = PackingConfig(tokens_per_sample=cfg.tokens_per_sample, strategy="sequential",
                            truncation=cfg.truncation)
    out: Dict[str, Tuple[ValidationSet, List[dict]]] = {}
    for split in cfg.valid_splits:
        vset = validation_set(bench, split, tokenizer, packing, cfg.max_valid_examples_per_task or None)
        if not vset.items:
            continue
        blocks = pack(vset.items, packing, pad_id=tokenizer.pad_id)
        out[split] = (vset, [collate_blocks(blocks[i:i + cfg.batch_size], pad_id=tokenizer.pad_id)
                             for i in range(0, len(blocks), cfg.batch_size)])
    return out
