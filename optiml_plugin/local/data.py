"""The local trainer's tokenizer: the run's saved one, the builtin BPE trained on the bench, or a directory.

Everything else the trainer takes from the data (batches, validation, logging keys) comes from the core's
`data.training_data`, as for the metaseq task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from optiml_plugin.conventions import TRAIN_SPLIT
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.tokenizer import OptTokenizer
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
