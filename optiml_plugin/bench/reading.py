"""A build's sources read on several processes, records and problems in the order one process sees.

Why: parsing is most of a build's work and one core did all of it. A source is cut into parts (a task
file, or about `UNIT_BYTES` of a JSONL file, starting at a line), each read by a worker through the
source's own loader under a `PartPolicy` that records bad records instead of raising, and encodes
each record's spill row there (`spill.incoming`). The parent
replays the parts in order: it counts the reads, reports each bad record where one process would have
(so the first error, the skip counts and the kept messages are the same), refuses duplicate ids with
the source's `RecordGate` and checks the `tasks` filter once the source's last part is in. Records
travel as tuples of builtins (a pickled dataclass costs 5x more to load) and are never rebuilt in
the parent. Sources that cannot be cut
(`text`, `datasets`, `builtin`) are one part each.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Set, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import (RecordGate, SourceSpec, has_suffix, missing_tasks,
                                              report_unreadable)
from optiml_plugin.bench.spill import Incoming, incoming
from optiml_plugin.bench.workers import ordered_map
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError

#: a JSONL file larger than this is read in parts of about this size
UNIT_BYTES = 4 << 20
_BAD, _RECORD = 0, 1


@dataclass(frozen=True)
class Part:
    """One piece of one `sources:` entry: `spec` None is the built-in benchmark."""

    source: int
    spec: Optional[SourceSpec]
    last: bool = True  # the source's last part: its `tasks` filter can be checked


class PartPolicy(BadRecordPolicy):
    """Records bad records as events in reading order; the parent replays them (see module doc)."""

    partial_source = True

    def __init__(self) -> None:
        super().__init__("skip")
        self.events: List[Tuple[Any, ...]] = []
        self.tasks_seen: Set[str] = set()

    def handle(self, err: BadRecordError, records: int = 1) -> None:
        self.events.append((_BAD, err, records))  # (kind, what, problem or count) like a record's


def validated(records: Iterable[Record], policy: BadRecordPolicy) -> Iterator[Record]:
    """Count each record as read and report the invalid ones (records not from a loader's gate)."""
    for r in records:
        policy.count_read()
        problems = r.problems()
        if problems:
            fld, reason, detail = problems[0]
            policy.handle(BadRecordError(r.meta.get("path", f"<{r.benchmark}>"), r.meta.get("where", r.id),
                                         fld, reason, detail))
            continue
        yield r


def read_sources(sources: Tuple[Dict[str, Any], ...], base_dir: Path, seed: int, taxonomy: Optional[Path],
                 policy: BadRecordPolicy, workers: int) -> Iterator[Incoming]:
    """Every record of `sources` (categorized, `spill.incoming` form), in source order."""
    gates: Dict[int, RecordGate] = {}
    seen: Dict[int, Set[str]] = {}
    read = functools.partial(_read_part, seed=seed, taxonomy=taxonomy)
    parts = ordered_map(read, _parts(sources, base_dir, policy), workers, window=4 * workers)  # ~8 MB of events each
    for part, (count, events, tasks_seen) in parts:
        policy.count_read(count)
        gate = None
        if part.spec is not None:
            gate = gates.get(part.source) or gates.setdefault(part.source, RecordGate(part.spec, policy))
        for kind, item, problem in events:
            if kind == _BAD:
                policy.handle(item, problem)
                continue
            if gate is not None and not gate.claim_id(item[2], item[4], item[5]):
                continue
            if problem is not None:
                policy.handle(problem)
                continue
            yield item
        if part.spec is not None:
            seen.setdefault(part.source, set()).update(tasks_seen)
            if part.last:
                missing_tasks(part.spec, seen[part.source])
                gates.pop(part.source, None)  # its id index is done with: free it before the next phase


def source_bytes(sources: Tuple[Dict[str, Any], ...], base_dir: Path) -> int:
    """The size of every file the sources name (0 for the built-in benchmark)."""
    from optiml_plugin.bench.sources import source_spec

    total = 0
    for raw in sources:
        if raw.get("type") != "builtin":
            total += sum(p.stat().st_size for p in source_spec(raw, base_dir).files if p.is_file())
    return total


def _parts(sources: Tuple[Dict[str, Any], ...], base_dir: Path, policy: BadRecordPolicy) -> Iterator[Part]:
    from optiml_plugin.bench.sources import LOADERS, source_spec
    from optiml_plugin.bench.sources.tabular import JSONL_SUFFIXES

    for index, raw in enumerate(sources):
        if raw.get("type") == "builtin":
            extra = sorted(set(raw) - {"type"})
            if extra:
                raise ConfigError(f"build config: unknown key 'sources[builtin].{extra[0]}' (allowed: type)")
            yield Part(index, None)
            continue
        spec = source_spec(raw, base_dir)
        report_unreadable(spec, policy)
        how = getattr(LOADERS[spec.type], "PARTS", None)
        if how is None:
            yield Part(index, spec)
            continue
        pieces: List[SourceSpec] = []
        for path in spec.files:
            one = dataclasses.replace(spec, files=(path,))
            if how == "lines" and has_suffix(path, JSONL_SUFFIXES) and path.stat().st_size > UNIT_BYTES:
                pieces.extend(dataclasses.replace(one, byte_range=r) for r in jsonl_ranges(path, UNIT_BYTES))
            else:
                pieces.append(one)
        for i, piece in enumerate(pieces):
            yield Part(index, piece, last=i == len(pieces) - 1)


def jsonl_ranges(path: Path, size: int) -> List[Tuple[int, int, int]]:
    """(start, end, first line number) of consecutive pieces of about `size` bytes, cut after a newline."""
    bounds = [0]
    total = path.stat().st_size
    with open(path, "rb") as f:
        while bounds[-1] + size < total:
            f.seek(bounds[-1] + size)
            f.readline()
            if f.tell() >= total:
                break
            bounds.append(f.tell())
        bounds.append(total)
        out, line = [], 1
        for start, end in zip(bounds, bounds[1:]):
            out.append((start, end, line))
            f.seek(start)
            line += f.read(end - start).count(b"\n")
    return out


@functools.lru_cache(maxsize=4)
def _taxonomy(path: Optional[Path]) -> Any:
    from optiml_plugin.bench.taxonomy import Taxonomy

    return Taxonomy.load(path)


def _read_part(part: Part, seed: int, taxonomy: Optional[Path]
               ) -> Tuple[int, List[Tuple[Any, ...]], Set[str]]:
    """(records attempted, events in order, tasks seen) of one part; runs in a worker."""
    policy = PartPolicy()
    events = policy.events
    if part.spec is None:
        from optiml_plugin.bench.builtin import builtin_records

        for r in validated(builtin_records(seed), policy):
            events.append((_RECORD, incoming(r, part.source), None))
        return policy.read, events, set()
    from optiml_plugin.bench.sources import LOADERS

    tax = _taxonomy(taxonomy)
    same: Dict[Any, Any] = {}  # one object per distinct key, category, sources, path: pickled once
    for r in LOADERS[part.spec.type].load(part.spec, policy):
        problem = None
        try:
            r = tax.categorize(r)
        except BadRecordError as e:
            problem = e.with_traceback(None)  # no frame -> exception -> frame cycle (the build pauses gc)
        key, category, rid, sources, path, *rest = incoming(r, part.source)
        item = (same.setdefault(key, key), same.setdefault(category, category), rid,
                same.setdefault(sources, sources), same.setdefault(path, path), *rest)
        events.append((_RECORD, item, problem))
    return policy.read, events, policy.tasks_seen
