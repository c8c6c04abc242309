"""Task -> category: SNI's 76 task types as the primary taxonomy, other clusters mapped onto them.

Why: OPT-IML holds out whole categories, so every task of every benchmark must land in one shared,
single-level taxonomy; a category name that matches nothing would silently create a new cluster and
break the held-out-category guarantee. The map lives in a user-editable YAML file (the packaged
default is `taxonomy.yaml` next to this module); see that file for its keys.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from pydantic import Field
from optiml_plugin.bench.records import Record
from optiml_plugin.errors import BadRecordError, ConfigError
from optiml_plugin.recipe import Bool, Section, choice, setting, validate
from optiml_plugin.yamlio import read_yaml_mapping_lines

DEFAULT_PATH = Path(__file__).with_name("taxonomy.yaml")
ALL = "all"
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_key(name: str) -> str:
    """The matching key of a category name: trimmed, whitespace/_/- collapsed to one space, casefolded."""
    return _SEPARATORS.sub(" ", name).strip().casefold()


def clean_name(name: str) -> str:
    """A category name as written, trimmed and with runs of whitespace collapsed."""
    return " ".join(name.split())


@dataclass(frozen=True)
class Taxonomy:
    """A loaded taxonomy; `categorize` maps a record's category onto it.

    `canonical` maps each normalized key of a known category to its spelling; `aliases` and `tasks`
    are per benchmark key (`all` applies everywhere) and already point at canonical names.
    """

    canonical: Mapping[str, str]
    aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    tasks: Mapping[str, Tuple[Tuple[str, str], ...]] = field(default_factory=dict)
    strict: bool = True
    source: str = "<memory>"
    _cache: Dict[Tuple[str, str, str], Optional[str]] = field(default_factory=dict, compare=False,
                                                              repr=False)

    @property
    def known(self) -> FrozenSet[str]:
        """The canonical category names."""
        return frozenset(self.canonical.values())

    @classmethod
    def load(cls, path: Union[str, Path, None] = None, strict: Optional[bool] = None) -> "Taxonomy":
        """Read a taxonomy YAML (default: the packaged one); `strict` overrides the file's setting."""
        data = _merged(Path(path) if path is not None else DEFAULT_PATH)
        taxonomy = cls.from_dict(data, source=str(path or DEFAULT_PATH))
        return taxonomy if strict is None else replace(taxonomy, strict=bool(strict), _cache={})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<memory>") -> "Taxonomy":
        """Build from the YAML structure; every alias and task target must be a known category."""
        names = _str_list(data.get("categories"), "categories", source) + _str_list(
            data.get("extra_categories") or [], "extra_categories", source)
        if not names:
            raise ConfigError(f"{source}: 'categories' must list at least one category")
        canonical: Dict[str, str] = {}
        for name in names:
            canonical.setdefault(normalize_key(name), clean_name(name))

        def target(value: Any, where: str) -> str:
            if not isinstance(value, str) or normalize_key(value) not in canonical:
                raise ConfigError(f"{source}: {where} maps to {value!r}, which is not a category "
                                  f"listed in 'categories' or 'extra_categories'")
            return canonical[normalize_key(value)]

        aliases: Dict[str, Dict[str, str]] = {}
        for bench, table in _bench_tables(data.get("aliases"), "aliases", source).items():
            for name, value in table.items():
                key = normalize_key(str(name))
                if key in canonical:
                    raise ConfigError(f"{source}: aliases.{bench}: '{name}' is already a category")
                aliases.setdefault(bench, {})[key] = target(value, f"aliases.{bench}.{name}")
        tasks = {bench: tuple((str(pattern).lower(), target(value, f"tasks.{bench}.{pattern}"))
                              for pattern, value in table.items())
                 for bench, table in _bench_tables(data.get("tasks"), "tasks", source).items()}
        strict = data.get("strict", True)
        if not isinstance(strict, bool):
            raise ConfigError(f"{source}: 'strict' must be true or false, got {strict!r}")
        return cls(canonical=canonical, aliases=aliases, tasks=tasks, strict=strict, source=source)

    def resolve(self, benchmark: str, task: str, category: str) -> Optional[str]:
        """The canonical category for (benchmark, task, category), or None when nothing matches."""
        key = (benchmark, task, category)
        if key not in self._cache:
            self._cache[key] = self._resolve(benchmark.lower(), task.lower(), category)
        return self._cache[key]

    def _resolve(self, benchmark: str, task: str, category: str) -> Optional[str]:
        for bench in (benchmark, ALL):
            for pattern, name in self.tasks.get(bench, ()):
                if fnmatch.fnmatchcase(task, pattern):
                    return name
        key = normalize_key(category)
        if key in self.canonical:
            return self.canonical[key]
        for bench in (benchmark, ALL):
            if key in self.aliases.get(bench, {}):
                return self.aliases[bench][key]
        return None

    def categorize(self, record: Record) -> Record:
        """The record with its category mapped onto the taxonomy.

        An unknown category raises BadRecordError (`unknown_category`, naming the record's file and
        line from `meta`) when `strict`, or an empty one always (there is no name to keep); otherwise
        the cleaned name is kept as a new category.
        """
        name = self.resolve(record.benchmark, record.task, record.category)
        if name is None:
            cleaned = clean_name(record.category)
            if self.strict or not cleaned:
                what = f"category '{record.category}'" if cleaned else "no category"
                raise BadRecordError(
                    str(record.meta.get("path", record.task)), record.meta.get("where", record.id),
                    "category", "unknown_category",
                    f"{what} for task '{record.task}' (benchmark '{record.benchmark}') matches no "
                    f"category, alias or task pattern of the taxonomy {self.source}; add one there")
            name = cleaned
        return record if name == record.category else replace(record, category=name)



class TaxonomyFile(Section):
    """A taxonomy YAML's keys and types, checked by the recipe's schema rules (errors name file, line
    and key); what the names must match is checked by `Taxonomy.from_dict`."""

    extends: Optional[choice(("default",))] = setting(  # type: ignore[valid-type]
        None, "default: lay this file over the packaged taxonomy")
    strict: Optional[Bool] = setting(None, "an unknown category is an error (default true)")
    categories: Optional[List[Annotated[str, Field(min_length=1)]]] = setting(None, "the categories")
    extra_categories: Optional[List[Annotated[str, Field(min_length=1)]]] = setting(None, "more categories")
    aliases: Optional[Dict[str, Dict[Any, Any]]] = setting(None, "benchmark -> {other name: category}")
    tasks: Optional[Dict[str, Dict[Any, Any]]] = setting(None, "benchmark -> {task pattern: category}")


def _merged(path: Path) -> Dict[str, Any]:
    """The YAML at `path`; with `extends: default`, laid over the packaged taxonomy."""
    data, lines = read_yaml_mapping_lines(path, "taxonomy")
    validate(TaxonomyFile, data, str(path), lines)
    if data.get("extends") is None:
        return data
    merged = _merged(DEFAULT_PATH)
    for key in ("categories", "extra_categories"):
        merged[key] = list(merged.get(key) or []) + _str_list(data.get(key) or [], key, str(path))
    for key in ("aliases", "tasks"):
        for bench, table in _bench_tables(data.get(key), key, str(path)).items():
            old = dict((merged.get(key) or {}).get(bench) or {})
            if key == "tasks":  # the user's patterns are checked before the packaged ones
                old = {**table, **{k: v for k, v in old.items() if k not in table}}
            else:
                old.update(table)
            merged.setdefault(key, {})[bench] = old
    if "strict" in data:
        merged["strict"] = data["strict"]
    return merged


def _str_list(value: Any, key: str, source: str) -> List[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{source}: '{key}' must be a list of non-empty strings")
    return list(value)


def _bench_tables(value: Any, key: str, source: str) -> Dict[str, Dict[Any, Any]]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(f"{source}: '{key}' must map benchmark keys (or '{ALL}') to mappings")
    return {str(bench).lower(): table for bench, table in value.items()}
