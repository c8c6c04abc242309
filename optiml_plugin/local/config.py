"""`optiml train` configuration: nested dataclasses loaded from YAML, unknown keys rejected by name.

Why dataclasses: one place states every key with its default (docs/local_training.md lists them), and a typo
in a YAML file fails before any work starts instead of being ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import yaml

from optiml_plugin.errors import ConfigError
from optiml_plugin.yamlio import read_yaml_mapping

EVAL_SPLITS = ["valid_heldout_instances", "valid_heldout_tasks", "valid_heldout_categories"]


@dataclass
class ModelConfig:
    preset: Optional[str] = "tiny"          # see local/model.py PRESETS; null when checkpoint is given
    checkpoint: Optional[str] = None       # a transformers OPT directory (or a hub name, with network)
    dropout: float = 0.1
    overrides: Dict[str, Any] = field(default_factory=dict)   # OPTConfig fields over the preset


@dataclass
class DataConfig:
    bench: str = ""
    tokenizer: str = "builtin"             # "builtin" (BPE trained in code on the bench) or a tokenizer dir
    builtin_vocab_size: int = 2048
    tokens_per_sample: int = 2048
    batch_size: int = 8                    # rows per micro-batch per rank
    packing: str = "best_fit"              # or "sequential" (the authors' next-fit)
    window: int = 64
    truncation: str = "left"
    proportions: Optional[Dict[str, float]] = None
    eps: Optional[int] = 4096
    valid_splits: List[str] = field(default_factory=lambda: list(EVAL_SPLITS))
    max_valid_examples_per_task: int = 250  # first N rows of every task (paper §4.1), never resampled; 0 = all


@dataclass
class OptimConfig:
    lr: float = 5e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    adam_eps: float = 1e-8
    weight_decay: float = 0.0              # the paper does not state it
    warmup_steps: int = 60
    max_steps: int = 1000
    clip_norm: float = 1.0
    grad_accum: int = 1
    loss_normalize: str = "token"          # or "example"


@dataclass
class RunConfig:
    out_dir: str = "runs/train"
    seed: int = 1
    device: str = "auto"                   # auto | cpu | cuda
    precision: str = "auto"                # auto (bf16 on CUDA when supported, else fp32) | fp32 | bf16 | fp16
    attention: str = "auto"                # auto | per_example | dense | flex | causal (no document mask)
    distributed: str = "auto"              # auto (ddp when WORLD_SIZE > 1) | none | ddp | fsdp
    threads: int = 0                       # CPU threads for torch; 0 keeps torch's default
    log_every: int = 10
    valid_every: int = 100                 # 0: only at the end
    save_every: int = 100                  # 0: only at the end
    keep_last: int = 2
    tensorboard: bool = True
    progress: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        checks = [
            (self.data.bench != "", "data.bench: give the bench directory"),
            (self.data.tokens_per_sample >= 2, "data.tokens_per_sample must be >= 2"),
            (self.data.batch_size >= 1, "data.batch_size must be >= 1"),
            (self.data.max_valid_examples_per_task >= 0, "data.max_valid_examples_per_task must be >= 0"),
            (self.optim.max_steps >= 1, "optim.max_steps must be >= 1"),
            (0 <= self.optim.warmup_steps, "optim.warmup_steps must be >= 0"),
            (self.optim.grad_accum >= 1, "optim.grad_accum must be >= 1"),
            (len(self.optim.betas) == 2, "optim.betas must be two numbers"),
            (self.optim.lr > 0, "optim.lr must be > 0"),
            (self.run.threads >= 0, "run.threads must be >= 0"),
            (self.run.keep_last >= 1, "run.keep_last must be >= 1"),
            (self.run.precision in ("auto", "fp32", "bf16", "fp16"), "run.precision: auto|fp32|bf16|fp16"),
            (self.run.distributed in ("auto", "none", "ddp", "fsdp"), "run.distributed: auto|none|ddp|fsdp"),
            (self.run.device in ("auto", "cpu", "cuda"), "run.device: auto|cpu|cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


# keys that changed meaning, so an old config fails with the new name instead of a bare "unknown"
RENAMED = {"max_valid_examples": "max_valid_examples_per_task (the validation cap is per task, not per split)"}


def _build(cls: Any, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hints = "".join(f"; {k} is now {RENAMED[k]}" for k in unknown if k in RENAMED)
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}{hints}")
    kwargs = {}
    for name, value in values.items():
        sub = _SECTIONS.get(name) if cls is TrainConfig else None
        kwargs[name] = _build(sub, value, f"{where}.{name}") if sub else value
    return cls(**kwargs)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}


def config_from_dict(values: Dict[str, Any], where: str = "config") -> TrainConfig:
    return _build(TrainConfig, values, where).validate()


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None) -> TrainConfig:
    """Read a YAML file; `overrides` are `section.key=value` strings (values parsed as YAML)."""
    values = read_yaml_mapping(path, "train config")
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2:
            raise ConfigError(f"override {item!r}: expected section.key=value")
        values.setdefault(parts[0], {})
        if not isinstance(values[parts[0]], dict):
            raise ConfigError(f"override {item!r}: section {parts[0]!r} is not a mapping")
        values[parts[0]][parts[1]] = yaml.safe_load(raw)
    return config_from_dict(values, where=str(path))
