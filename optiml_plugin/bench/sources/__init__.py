"""Source loaders: each turns one on-disk format into validated `Record`s.

Why one entry point: the build config lists sources as `{type: ..., path: ..., ...}` and the builder
should not know which module reads which format. `load_source` checks the entry (unknown type or key
is a ConfigError naming it), resolves `path` against `base_dir`, and streams records; every record
attempted is counted with `policy.count_read()` and every bad one goes through `policy.handle`.
The formats and the generic schema are documented in docs/sources.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, Mapping

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources import dialogue, flan, generic, hf_datasets, p3, sni, text
from optiml_plugin.bench.sources.base import SourceSpec, parse_spec, report_unreadable
from optiml_plugin.errors import BadRecordPolicy, ConfigError

LOADERS = {"sni": sni, "p3": p3, "flan": flan, "generic": generic, "text": text, "dialogue": dialogue,
           "datasets": hf_datasets}
#: benchmark key each source type gets unless the entry sets `benchmark` (generic: per row or entry)
DEFAULT_BENCHMARKS: Dict[str, Any] = {name: mod.DEFAULT_BENCHMARK for name, mod in LOADERS.items()}


def source_spec(spec: Mapping[str, Any], base_dir: Path = Path(".")) -> SourceSpec:
    """Validate one `sources:` entry without reading records (lets a config be checked up front)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"each entry of 'sources' must be a mapping, got {spec!r}")
    kind = spec.get("type")
    if kind not in LOADERS:
        raise ConfigError(f"source entry {dict(spec)!r}: unknown 'type' {kind!r} "
                          f"(one of: {', '.join(sorted(LOADERS))})")
    module = LOADERS[kind]
    return parse_spec(spec, Path(base_dir), module.KEYS, module.SUFFIXES, getattr(module, "locate", None))


def load_source(spec: Mapping[str, Any], policy: BadRecordPolicy,
                base_dir: Path = Path(".")) -> Iterator[Record]:
    """Stream the records of one `sources:` entry (see the module docstring)."""
    parsed = source_spec(spec, base_dir)
    report_unreadable(parsed, policy)
    return LOADERS[parsed.type].load(parsed, policy)


__all__ = ["DEFAULT_BENCHMARKS", "LOADERS", "SourceSpec", "load_source", "source_spec"]
