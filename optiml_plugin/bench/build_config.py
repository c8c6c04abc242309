"""The build config: `load_build_config` validates a YAML file or mapping into a `BuildConfig`.

Why its own module: every key is checked (an unknown key is an error naming it) before a build reads a
byte, and the command line, the demo and the presets all load configs without building.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from optiml_plugin.bench.decontam import DecontamConfig
from optiml_plugin.bench.official import MODES as OFFICIAL_MODES
from optiml_plugin.bench.splits import SplitConfig, read_task_list
from optiml_plugin.bench.templates import PROMPT_FORMATS
from optiml_plugin.errors import BadRecordPolicy, ConfigError
from optiml_plugin.recipe import number
from optiml_plugin.yamlio import read_yaml

DEFAULT_CAP = 100_000
DEFAULT_BENCHMARK_CAPS = {"flan": 30_000}  # the paper's per-task caps (§2.1)
_TOP_KEYS = ("sources", "taxonomy", "split", "caps", "decontamination", "seed", "on_bad_record",
             "multiplex", "heldout_instances", "prompt_format")
_LIST_KEYS = ("heldout_categories", "heldout_tasks", "valid_tasks", "eval_test_all")
_FILE_LIST_KEYS = ("heldout_tasks", "valid_tasks")


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


def load_build_config(source: Union[str, Path, Mapping[str, Any]],
                      base_dir: Optional[Union[str, Path]] = None) -> BuildConfig:
    """Validate a YAML file or a mapping into a `BuildConfig`; any unknown key is a ConfigError."""
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        origin = "build config"
        base = Path(base_dir) if base_dir is not None else Path(".")
    else:
        path = Path(source)
        raw = read_yaml(path, "build config")
        origin = str(path)
        base = Path(base_dir) if base_dir is not None else path.parent
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: a build config must be a mapping, got {type(raw).__name__}")
    _unknown(raw, _TOP_KEYS, origin, "")
    sources = raw.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, Mapping) for s in sources):
        raise ConfigError(f"{origin}: 'sources' must be a non-empty list of mappings "
                          f"(e.g. - {{type: sni, path: data/sni/tasks}})")
    seed = _int(raw.get("seed", 0), origin, "seed")
    on_bad = raw.get("on_bad_record", "error")
    BadRecordPolicy(on_bad)  # validates the value with the same message everywhere
    taxonomy = raw.get("taxonomy")
    if taxonomy is not None and not isinstance(taxonomy, str):
        raise ConfigError(f"{origin}: 'taxonomy' must be a path, got {taxonomy!r}")
    multiplex = raw.get("multiplex", True)
    if not isinstance(multiplex, bool):
        raise ConfigError(f"{origin}: 'multiplex' must be true or false, got {multiplex!r}")
    prompt_format = raw.get("prompt_format", "paper")
    if prompt_format not in PROMPT_FORMATS:
        raise ConfigError(f"{origin}: 'prompt_format' must be one of {', '.join(PROMPT_FORMATS)}, "
                          f"got {prompt_format!r}")
    heldout = raw.get("heldout_instances", "random")
    if heldout not in OFFICIAL_MODES:
        raise ConfigError(f"{origin}: 'heldout_instances' must be one of {', '.join(OFFICIAL_MODES)}, "
                          f"got {heldout!r}")
    return BuildConfig(
        sources=tuple(dict(s) for s in sources), multiplex=multiplex, heldout_instances=heldout,
        prompt_format=prompt_format,
        split=_split_config(raw.get("split") or {}, origin, base),
        decontamination=_decontam_config(raw.get("decontamination") or {}, origin),
        caps=_caps(raw.get("caps") or {}, origin), taxonomy=taxonomy, seed=seed,
        on_bad_record=on_bad, base_dir=str(base), raw=raw)


def _unknown(section: Mapping[str, Any], allowed: Sequence[str], origin: str, prefix: str) -> None:
    for key in section:
        if key not in allowed:
            raise ConfigError(f"{origin}: unknown key '{prefix}{key}' (allowed: {', '.join(allowed)})")


def _int(value: Any, origin: str, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{origin}: '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def _str_list(value: Any, origin: str, name: str) -> Tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{origin}: '{name}' must be a list of names, got {value!r}")
    return tuple(v.strip() for v in value)


def _split_config(section: Any, origin: str, base: Path) -> SplitConfig:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'split' must be a mapping")
    names = [f.name for f in dataclasses.fields(SplitConfig) if f.name != "origins"]
    _unknown(section, names, origin, "split.")
    values: Dict[str, Any] = {}
    origins: Dict[str, str] = {}
    for key, value in section.items():
        if key in _FILE_LIST_KEYS and isinstance(value, str):  # a split file, one task per line
            path = Path(value) if Path(value).is_absolute() else base / value
            if not path.is_file():
                raise ConfigError(f"{origin}: split file 'split.{key}' = '{value}' does not exist")
            values[key] = read_task_list(path)
            origins[key] = str(path)
        elif key in _LIST_KEYS:
            values[key] = _str_list(value, origin, f"split.{key}")
        elif key == "sni_split_dir":
            if not isinstance(value, str):
                raise ConfigError(f"{origin}: 'split.sni_split_dir' must be a path, got {value!r}")
            values[key] = str(Path(value) if Path(value).is_absolute() else base / value)
        elif key in ("sni_lists_complete", "test_tasks_give_valid"):
            if not isinstance(value, bool):
                raise ConfigError(f"{origin}: 'split.{key}' must be true or false")
            values[key] = value
        else:
            values[key] = _int(value, origin, f"split.{key}")
    return SplitConfig(origins=origins, **values)


def _decontam_config(section: Any, origin: str) -> DecontamConfig:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'decontamination' must be a mapping")
    _unknown(section, [f.name for f in dataclasses.fields(DecontamConfig)], origin, "decontamination.")
    values: Dict[str, Any] = dict(section)
    if "ngram" in values:
        _int(values["ngram"], origin, "decontamination.ngram", minimum=1)
    th = values.get("threshold", 0.01)
    try:
        th = number(th)  # the recipe's number rule: `1e-2` is a number in every file
    except ValueError:
        pass
    if isinstance(th, bool) or not isinstance(th, (int, float)) or not 0 <= th <= 1:
        raise ConfigError(f"{origin}: 'decontamination.threshold' must be a fraction in [0, 1], got {th!r}")
    values["threshold"] = float(th)
    if not isinstance(values.get("drop_flagged", False), bool):
        raise ConfigError(f"{origin}: 'decontamination.drop_flagged' must be true or false")
    if values.get("source_overlap", "drop") not in ("drop", "move"):
        raise ConfigError(f"{origin}: 'decontamination.source_overlap' must be 'drop' or 'move', "
                          f"got {values.get('source_overlap')!r}")
    for key in ("allowed_shared_sources", "allowed_pairs"):
        if key in values:
            values[key] = _str_list(values[key], origin, f"decontamination.{key}")
    return DecontamConfig(**values)


def _caps(section: Any, origin: str) -> Dict[str, int]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{origin}: 'caps' must map benchmark names (or 'default') to per-task caps")
    caps = dict(DEFAULT_BENCHMARK_CAPS, default=DEFAULT_CAP)
    for key, value in section.items():
        caps[str(key)] = _int(value, origin, f"caps.{key}", minimum=1)
    return caps


def jsonable(value: Any) -> Any:
    """The config as given, made JSON-safe (YAML can hold dates, tuples, non-string keys)."""
    return json.loads(json.dumps(value, default=str, allow_nan=False))
