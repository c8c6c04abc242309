"""The local trainer's tokenizer: the run's saved one, the model checkpoint's, the builtin BPE trained on the
bench, or a directory (all through `data.tokenizer.resolve_tokenizer`).

Everything else the trainer takes from the data (batches, validation, logging keys) comes from the core's
`data.training_data`, as for the metaseq task.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional

from optiml_plugin.conventions import TRAIN_SPLIT
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.tokenizer import BUILTIN, TOKENIZER_JSON, OptTokenizer, resolve_tokenizer
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import DataConfig

TOKENIZER_SAMPLE_PER_TASK = 2000
MODEL = "model"  # data.tokenizer: the model checkpoint's own tokenizer


def training_texts(bench: Bench, per_task: int = TOKENIZER_SAMPLE_PER_TASK) -> Iterator[str]:
    """The first `per_task` train rows of every task, source and target (the builtin tokenizer's corpus)."""
    for tf in bench.task_files(TRAIN_SPLIT):
        reader = bench.reader(tf)
        for i in range(min(len(reader), per_task)):
            row = reader[i]
            yield row["src"]
            yield row["tgt"]


def load_tokenizer(cfg: DataConfig, bench: Bench, saved: Optional[Path] = None,
                   checkpoint: Optional[str] = None) -> OptTokenizer:
    """Reuse the run's saved tokenizer (resume), else resolve `data.tokenizer`: 'model' is the model
    checkpoint's own, 'builtin' trains one on the bench, else a tokenizer directory or file."""
    if saved is not None and (saved / TOKENIZER_JSON).is_file():
        return resolve_tokenizer(saved, what="the run's saved tokenizer")
    spec = cfg.tokenizer
    if spec == MODEL:
        if checkpoint is None:
            raise ConfigError("data.tokenizer: 'model' takes the tokenizer of model.checkpoint, which is not set")
        spec = checkpoint
    elif spec == BUILTIN and checkpoint is not None:
        raise ConfigError(f"data.tokenizer: 'builtin' trains new ids, which the pretrained model.checkpoint "
                          f"{checkpoint!r} does not know; use 'model' (its own tokenizer) or a directory")
    return resolve_tokenizer(spec, builtin_texts=lambda: training_texts(bench),
                             builtin_vocab_size=cfg.builtin_vocab_size, what="data.tokenizer")
