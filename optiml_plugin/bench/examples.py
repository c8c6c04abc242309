"""The underlying example of each record: the unit every held-out draw picks (paper §2.3, §4.1).

Why: PromptSource and FLAN render one example with several templates, and a held-out rendering
whose example trains under another template is no held-out instance at all (issue 22: 6 of 12
held-out COPA/ag_news renderings had their example in train; neither the exact-input nor the
13-gram check sees it, the prompts differ). So the split draws (bench/splits.py, bench/official.py)
pick examples, and every rendering of a picked example goes with it. A record's example is, first,
the one its source names (`meta["example"]`: a row's `example_id`, P3's integer `idx`, or the values
of the source's `example_fields` columns); else, for a record that names its template (a rendering),
its normalized input, which is the example's input field where the template lives elsewhere (in
the instruction); else the record is its own example (a repeated input of a one-template task is a
duplicate row, which the exact-input check keeps out of training). The key is scoped by the release
split (P3's COPA counts `idx` from 0 in train and again in validation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from optiml_plugin.bench.decontam import normalize_many
from optiml_plugin.bench.spill import ID, INPUT, META, TEMPLATE

#: how the build names an example, in words, for the manifest
KEY_WORDS = ("the example id the source gives (a row's `example_id`, P3's `idx`, or the source's "
             "`example_fields`) within its release split; else, for a record naming its template, its "
             "normalized input; else the record itself")
_BATCH = 4096


@dataclass
class Layout:
    """What the split draws need of one task's rows, read in one pass: each row's template, release
    split and example number (0.. in order of first appearance)."""

    templates: List[str]
    splits: List[str]
    groups: List[int]
    named: bool  # some row's example was named by its source (not taken from its input)

    @property
    def examples(self) -> int:
        return max(self.groups, default=-1) + 1

    def count(self, indices: Iterable[int]) -> int:
        """How many distinct examples `indices` hold."""
        return len({self.groups[i] for i in indices})


def layout(rows: Iterable[Sequence[Any]]) -> Layout:
    """The `Layout` of a task's spilled rows (bench/spill.py)."""
    templates: List[str] = []
    splits: List[str] = []
    keys: List[Any] = []
    pending: List[Tuple[int, str]] = []  # (row, input) of rows keyed by their input
    named = False
    for i, row in enumerate(rows):
        meta = row[META]
        split = meta.get("split") or ""
        templates.append(row[TEMPLATE])
        splits.append(split)
        given = meta.get("example")
        if given is not None:
            named = True
            keys.append(("example", split, str(given)))
        else:
            keys.append(("record", row[ID]))
            if row[TEMPLATE]:  # a rendering: its example may have others under other templates
                pending.append((i, row[INPUT]))
    for start in range(0, len(pending), _BATCH):
        batch = pending[start:start + _BATCH]
        for (i, _), text in zip(batch, normalize_many([t for _, t in batch])):
            if text:
                keys[i] = ("input", splits[i], text)
    numbers: Dict[Any, int] = {}
    groups = [numbers.setdefault(k, len(numbers)) for k in keys]
    return Layout(templates, splits, groups, named)
