"""The build config: `load_build_config` validates a YAML file or mapping into a `BuildConfig`.

Why its own module: every key is checked (an unknown key is an error naming it) before a build reads a
byte, and the command line, the demo and the presets all load configs without building.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Dict, List, Mapping, Optional, Tuple, Union

from pydantic import Field, Strict

from optiml_plugin.bench.decontam import DecontamConfig
from optiml_plugin.bench.official import MODES as OFFICIAL_MODES
from optiml_plugin.bench.splits import SplitConfig, read_task_list
from optiml_plugin.bench.templates import PROMPT_FORMATS
from optiml_plugin.errors import ON_BAD_CHOICES, ConfigError
from optiml_plugin.recipe import (Bool, Fraction, NonNegInt, PosInt, Section, choice, located, setting,
                                  validate)
from optiml_plugin.yamlio import KeyPath, read_yaml_mapping_lines

DEFAULT_CAP = 100_000
DEFAULT_BENCHMARK_CAPS = {"flan": 30_000}  # the paper's per-task caps (§2.1)


@dataclass(frozen=True)
class BuildConfig:
    """A validated build config. `caps` maps a benchmark to its per-task training cap ("default" for
    the rest); `multiplex`: draw a training task's examples from all its templates' instantiations
    (bench/multiplex.py); `heldout_instances`: training tasks' held-out instances are "random" rows or
    the release's "official" dev/test splits (bench/official.py); `prompt_format`: how `src` is rendered,
    "paper" or "sni" (Tk-Instruct's prompt for SNI tasks, bench/templates.py); `raw` is the config as given (it
    goes into the manifest); relative paths resolve against `base_dir` (the config file's directory)."""

    sources: Tuple[Mapping[str, Any], ...]
    split: SplitConfig = SplitConfig()
    decontamination: DecontamConfig = DecontamConfig()
    caps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_BENCHMARK_CAPS,
                                                                 default=DEFAULT_CAP))
    taxonomy: Optional[str] = None
    seed: int = 0
    on_bad_record: str = "error"
    multiplex: bool = True
    heldout_instances: str = "random"
    prompt_format: str = "paper"
    base_dir: str = "."
    raw: Mapping[str, Any] = field(default_factory=dict)

    def cap_for(self, benchmark: str) -> int:
        return int(self.caps.get(benchmark, self.caps.get("default", DEFAULT_CAP)))

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


Name = Annotated[str, Strict(), Field(min_length=1)]
Names = List[Name]


class SplitSection(Section):
    """`split:` (bench/splits.py SplitConfig, one for one; a task list may be a split file's path)."""

    sni_split_dir: Optional[str] = setting(None, "SNI's split lists (train/test/excluded task files)")
    heldout_categories: Names = setting([], "categories held out whole (fully held-out level)")
    heldout_tasks: Union[Names, str] = setting([], "tasks held out (names, or a file: one task per line)")
    valid_tasks: Union[Names, str] = setting([], "dev tasks: wholly to the valid splits (names or a file)")
    eval_valid: NonNegInt = setting(250, "valid instances per dev task (paper: 250)")
    eval_test: NonNegInt = setting(100, "test examples per eval task outside eval_test_all (SNI: first 100)")
    eval_test_all: Names = setting(["flan", "promptsource"], "benchmarks whose eval tasks test on every instance")
    heldout_valid: NonNegInt = setting(50, "held-out valid examples per training task")
    heldout_test: NonNegInt = setting(50, "held-out test examples per training task")
    test_tasks_give_valid: Bool = setting(False, "test tasks also give valid rows (before issue 22)")
    sni_lists_complete: Bool = setting(False, "the data should hold every task SNI's lists name")


class DecontamSection(Section):
    """`decontamination:` (bench/decontam.py DecontamConfig, one for one)."""

    ngram: PosInt = setting(13, "n-gram length of the overlap report (paper: 13)")
    threshold: Fraction = setting(0.01, "overlap share that flags a pair (paper: 1%)")
    drop_flagged: Bool = setting(False, "drop training tasks above the threshold")
    source_overlap: choice(("drop", "move")) = setting(  # type: ignore[valid-type]
        "drop", "a training task sharing a source with an eval task: drop it, or move it to evaluation")
    allowed_shared_sources: Names = setting([], "broad resources whose sharing is not a conflict")
    allowed_pairs: Names = setting([], "'<train task>/<eval task>' pairs a review cleared")


class BuildFile(Section):
    """A build config file's keys and types, checked by the recipe's schema rules (errors name the file,
    the line and the key; `1e-2` is a number here too)."""

    sources: Annotated[List[Dict[str, Any]], Field(min_length=1)] = setting(
        ..., "the sources: - {type: sni, path: data/sni/tasks}, ...")
    taxonomy: Optional[str] = setting(None, "a taxonomy YAML (default: the packaged one)")
    split: SplitSection = Field(default_factory=SplitSection)
    caps: Dict[str, PosInt] = setting({}, "per-task training caps by benchmark ('default' for the rest)")
    decontamination: DecontamSection = Field(default_factory=DecontamSection)
    seed: NonNegInt = setting(0, "seed of every draw")
    on_bad_record: choice(ON_BAD_CHOICES) = setting("error", "error, or skip and count")  # type: ignore[valid-type]
    multiplex: Bool = setting(True, "draw a training task's examples from all its templates' instantiations")
    heldout_instances: choice(OFFICIAL_MODES) = setting(  # type: ignore[valid-type]
        "random", "training tasks' held-out examples: random, or the releases' dev/test splits (official)")
    prompt_format: choice(PROMPT_FORMATS) = setting(  # type: ignore[valid-type]
        "paper", "how src is rendered: paper, or sni (Tk-Instruct's prompt for SNI tasks)")


def load_build_config(source: Union[str, Path, Mapping[str, Any]],
                      base_dir: Optional[Union[str, Path]] = None) -> BuildConfig:
    """Validate a YAML file or a mapping into a `BuildConfig`; any unknown key is a ConfigError naming
    the file, its line and the key."""
    lines: Dict[KeyPath, int] = {}
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        origin = "build config"
        base = Path(base_dir) if base_dir is not None else Path(".")
    else:
        path = Path(source)
        raw, lines = read_yaml_mapping_lines(path, "build config")
        origin = str(path)
        base = Path(base_dir) if base_dir is not None else path.parent
    cfg: BuildFile = validate(BuildFile, raw, origin, lines)
    return BuildConfig(
        sources=tuple(dict(s) for s in cfg.sources), multiplex=cfg.multiplex,
        heldout_instances=cfg.heldout_instances, prompt_format=cfg.prompt_format,
        split=_split_config(cfg.split, base, origin, lines),
        decontamination=DecontamConfig(**{**cfg.decontamination.model_dump(),
                                          "allowed_shared_sources": tuple(cfg.decontamination.allowed_shared_sources),
                                          "allowed_pairs": tuple(cfg.decontamination.allowed_pairs)}),
        caps={**DEFAULT_BENCHMARK_CAPS, "default": DEFAULT_CAP, **{str(k): v for k, v in cfg.caps.items()}},
        taxonomy=cfg.taxonomy, seed=cfg.seed, on_bad_record=cfg.on_bad_record, base_dir=str(base), raw=raw)


def _split_config(section: SplitSection, base: Path, origin: str, lines: Dict[KeyPath, int]) -> SplitConfig:
    """SplitConfig of the checked section: task lists given as split files are read (one task per line),
    paths resolve against the config's folder."""
    values: Dict[str, Any] = section.model_dump()
    origins: Dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str) and key in ("heldout_tasks", "valid_tasks"):
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.is_file():
                raise ConfigError(f"{located(origin, lines, ('split', key))}: split.{key}: split file "
                                  f"'{value}' does not exist")
            values[key] = read_task_list(path)
            origins[key] = str(path)
        elif isinstance(value, list):
            values[key] = tuple(v.strip() for v in value)
    if values["sni_split_dir"] is not None:
        values["sni_split_dir"] = str(Path(values["sni_split_dir"]) if Path(values["sni_split_dir"]).is_absolute()
                                      else base / values["sni_split_dir"])
    return SplitConfig(origins=origins, **values)


def jsonable(value: Any) -> Any:
    """The config as given, made JSON-safe (YAML can hold dates, tuples, non-string keys)."""
    return json.loads(json.dumps(value, default=str, allow_nan=False))
