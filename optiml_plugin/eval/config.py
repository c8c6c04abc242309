"""`EvalConfig`: everything one evaluation run depends on (stored verbatim in results.json)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from optiml_plugin.data.benchfiles import LEVELS
from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.backend import Backend
from optiml_plugin.eval.prompts import PROMPT_FORMATS, TASK_LEVEL_BENCHMARKS

SPLIT_KINDS = ("valid", "test")
SCORING_MODES = ("packed", "separate")


@dataclass
class EvalConfig:
    """One evaluation run.

    `model` is a model directory (transformers format; see eval/backends/hf.py) or an already
    loaded `Backend`. `levels` are the bench levels; `split` picks `valid_*` or `test_*` files.
    `max_per_task` keeps the first N instances of each task file (SNI's "first 100").
    `task_groups` maps a task name to the task it is a sub-task of (e.g. the 57 MMLU subjects).
    `max_length` caps prompt + continuation tokens (default: the model's position limit).
    `prompt_format`: `paper` (the bench's rendering, OPT-IML's placement of demonstrations) or
    `sni` (Tk-Instruct's rendering for SNI tasks; docs/evaluation.md).
    `xlingual_bpe` is a directory with GPT-2/OPT byte-level BPE files for Rouge-L of non-English
    outputs (SNI's xlingual track); default: the model directory.
    """

    model: Any
    bench: str
    out_dir: Optional[str] = None
    split: str = "test"
    shots: Tuple[int, ...] = (0, 5)
    levels: Tuple[str, ...] = LEVELS
    max_per_task: Optional[int] = None
    batch_size: int = 8
    max_batch_tokens: int = 8192
    seed: int = 0
    separator: str = "\n\n"
    prompt_format: str = "paper"
    max_new_tokens: int = 256
    stop_strings: Tuple[str, ...] = ()
    task_groups: Dict[str, str] = field(default_factory=dict)
    task_level_benchmarks: Tuple[str, ...] = TASK_LEVEL_BENCHMARKS
    scoring: str = "packed"
    max_length: Optional[int] = None
    xlingual_bpe: Optional[str] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    on_bad_record: str = "error"
    progress: bool = True
    charts: bool = True

    def validate(self) -> "EvalConfig":
        if self.split not in SPLIT_KINDS:
            raise ConfigError(f"split must be one of {SPLIT_KINDS}, got {self.split!r}")
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ConfigError(f"levels must be a non-empty subset of {LEVELS}, got {list(self.levels)}")
        if not self.shots or any(int(k) < 0 for k in self.shots):
            raise ConfigError(f"shots must be non-negative integers, got {list(self.shots)}")
        if self.max_per_task is not None and self.max_per_task < 1:
            raise ConfigError(f"max_per_task must be >= 1, got {self.max_per_task}")
        if self.batch_size < 1 or self.max_batch_tokens < 1:
            raise ConfigError("batch_size and max_batch_tokens must be >= 1")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.on_bad_record not in ("error", "skip"):
            raise ConfigError(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        self.shots = tuple(sorted({int(k) for k in self.shots}))
        self.levels = tuple(self.levels)
        return self

    def to_dict(self) -> Dict[str, Any]:
        """JSON-safe view (a loaded backend is recorded by its model id)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["model"] = (self.model.model_id if isinstance(self.model, Backend) else str(self.model))
        out["bench"] = str(self.bench)
        out["xlingual_bpe"] = None if self.xlingual_bpe is None else str(self.xlingual_bpe)
        out["out_dir"] = None if self.out_dir is None else str(self.out_dir)
        out["shots"] = list(self.shots)
        out["levels"] = list(self.levels)
        out["stop_strings"] = list(self.stop_strings)
        out["task_level_benchmarks"] = list(self.task_level_benchmarks)
        return out
