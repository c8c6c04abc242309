"""`EvalConfig`: everything one evaluation run depends on (stored verbatim in results.json)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from optiml_plugin.conventions import LEVELS
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import NonNegInt, Section, choice, setting, validate
from optiml_plugin.yamlio import KeyPath
from optiml_plugin.eval.backend import Backend
from optiml_plugin.bench.templates import PROMPT_FORMATS, TASK_LEVEL_BENCHMARKS

SPLIT_KINDS = ("valid", "test")
TASK_METRICS = ("accuracy", "rougeL")  # rank classification, or generation scored by Rouge-L (and EM)
SCORING_MODES = ("packed", "separate")


class TaskSetting(Section):
    """One task's entry of `--task-settings` (the recipe's schema rules: errors name file, line and key)."""

    metric: Optional[choice(TASK_METRICS)] = setting(  # type: ignore[valid-type]
        None, "accuracy (rank classification) or rougeL (generation); default: the paper's")
    shots: Optional[List[NonNegInt]] = setting(None, "shot counts of this task; default: --shots")


def task_settings(values: Any, where: str, lines: Optional[Dict[KeyPath, int]] = None) -> Dict[str, Dict[str, Any]]:
    """{task: TaskSetting} of a `--task-settings` mapping, checked entry by entry; unset keys left out."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: task settings must be a mapping {{task: {{metric, shots}}}}, "
                          f"got {type(values).__name__}")
    return {str(task): validate(TaskSetting, entry, where, lines, prefix=(task,)).model_dump(exclude_none=True)
            for task, entry in values.items()}


def task_groups(values: Any, where: str) -> Dict[str, str]:
    """A `--task-groups` mapping {sub-task: task}."""
    if not isinstance(values, dict) or not all(isinstance(v, str) and v for v in values.values()):
        raise ConfigError(f"{where}: task groups must be a mapping {{sub-task: task}} of names")
    return {str(k): v for k, v in values.items()}


@dataclass
class EvalConfig:
    """One evaluation run.

    `model` is a model directory (transformers format; see eval/backends/hf.py) or an already
    loaded `Backend`. `levels` are the bench levels; `split` picks `valid_*` or `test_*` files.
    `max_per_task` keeps the first N instances of each task file (SNI's "first 100").
    `task_groups` maps a task name to the task it is a sub-task of (e.g. the 57 MMLU subjects).
    `max_length` caps prompt + continuation tokens (default: the model's position limit).
    `prompt_format`: `paper` (the bench's rendering, OPT-IML's placement of demonstrations) or
    `sni` (Tk-Instruct's rendering for SNI tasks; docs/evaluation.md), with Tk-Instruct's options
    `sni_negative_examples` (its `num_neg_examples`, shown with k >= 1 shots) and `sni_explanations`
    (its `add_explanation`): 2 shots, 2 negatives and explanations are its `pos_2_neg_2_expl`.
    `task_settings` maps a task name to {"metric": "accuracy" | "rougeL", "shots": [k, ...]}; a task
    not listed gets the paper's choice (`task_metric`, `task_shots`).
    Generation: a task's answers get at most `cap_multiple` x its longest reference outside the evaluated
    split, in tokens (0: no per-task cap), never more than `max_new_tokens` (the paper's 256); they stop at
    `</s>`, at `stop_strings`, and (`stop_at_separator`) at `separator`, the prompt format's break between
    examples, unless one of the task's references holds it (eval/runner.py `GenerationCaps`).
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
    sni_negative_examples: int = 0
    sni_explanations: bool = False
    max_new_tokens: int = 256
    cap_multiple: float = 2.0
    stop_strings: Tuple[str, ...] = ()
    stop_at_separator: bool = True
    task_groups: Dict[str, str] = field(default_factory=dict)
    task_settings: Dict[str, Dict[str, Any]] = field(default_factory=dict)
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
        if self.cap_multiple < 0:
            raise ConfigError(f"cap_multiple must be >= 0 (0: no per-task cap), got {self.cap_multiple}")
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ConfigError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")
        if self.sni_negative_examples < 0:
            raise ConfigError(f"sni_negative_examples must be >= 0, got {self.sni_negative_examples}")
        if (self.sni_negative_examples or self.sni_explanations) and self.prompt_format != "sni":
            raise ConfigError("sni_negative_examples and sni_explanations are options of prompt_format "
                              f"'sni' (Tk-Instruct's prompts), not of {self.prompt_format!r}")
        if self.on_bad_record not in ("error", "skip"):
            raise ConfigError(f"on_bad_record must be 'error' or 'skip', got {self.on_bad_record!r}")
        self.task_settings = task_settings(self.task_settings, "task_settings")
        self.shots = tuple(sorted({int(k) for k in self.shots}))
        self.levels = tuple(self.levels)
        return self

    def task_metric(self, task: str, has_candidates: bool) -> str:
        """The task's metric: its setting, else the paper's. Test: accuracy for tasks with candidates
        (FLAN, PromptSource and OPT evals, P §5), Rouge-L otherwise; valid: Rouge-L (P §4.1: the dev
        tasks are scored as generation, all but four the paper does not name)."""
        metric = self.task_settings.get(task, {}).get("metric")
        if metric is not None:
            return metric
        return "accuracy" if has_candidates and self.split == "test" else "rougeL"

    def task_shots(self, task: str, category: str) -> Tuple[int, ...]:
        """The task's shot counts: its setting, else `shots` (summarization: 0-shot only, P §4.1)."""
        if "shots" in self.task_settings.get(task, {}):
            return tuple(self.task_settings[task]["shots"])
        if "summarization" in category.lower():
            return tuple(k for k in self.shots if k == 0)
        return self.shots

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
