"""The validation examples of an evaluation split: the first N of EVERY task, tasks in manifest order.

Why per task: the paper validates on up to 250 examples per task (§4.1). A cap per split would keep the
first tasks of a large split and leave the later ones out of the validation curve entirely. Rows are
read in file order and never resampled, so every validation pass scores the same tokens; how many rows
each task gave (and had) is kept so reports can state what the cap left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from optiml_plugin.benchfiles import Bench, TaskFile
from optiml_plugin.data.packing import PackingConfig, PackItem, make_item
from optiml_plugin.data.tokenizer import OptTokenizer


@dataclass
class ValidationSet:
    """One split's capped examples; an item's `task_id` - `first_task` indexes `tasks`."""

    split: str
    tasks: List[TaskFile]
    items: List[PackItem] = field(default_factory=list)
    taken: List[int] = field(default_factory=list)       # rows used, per task
    available: List[int] = field(default_factory=list)   # rows in the task's file

    def counts(self) -> Dict[str, Any]:
        """Rows used and left out by the cap, per task and in total (for run reports)."""
        return {"split": self.split, "examples": sum(self.taken), "available": sum(self.available),
                "tasks": [{"task": t.task, "benchmark": t.benchmark, "category": t.category,
                           "examples": n, "available": a}
                          for t, n, a in zip(self.tasks, self.taken, self.available)]}


def validation_set(bench: Bench, split: str, tokenizer: OptTokenizer, packing: PackingConfig,
                   max_per_task: Optional[int], benchmarks: Sequence[str] = (),
                   first_index: int = 0, first_task: int = 0) -> ValidationSet:
    """Items for the first `max_per_task` rows (None: all) of every task of `split`, in order.

    Benchmark ids index `benchmarks` (e.g. the training mixture's list, so per-benchmark losses share
    its keys); a benchmark not in it gets -1. Item indices count up from `first_index` and task ids
    from `first_task`, so several splits can be packed together without clashing.
    """
    bench_id = {name: i for i, name in enumerate(benchmarks)}
    out = ValidationSet(split, bench.task_files(split))
    index = first_index
    for task_id, tf in enumerate(out.tasks):
        reader = bench.reader(tf)
        n = len(reader) if max_per_task is None else min(len(reader), max_per_task)
        rows = [reader[i] for i in range(n)]
        for src_ids, tgt_ids in tokenizer.encode_pairs([(r["src"], r["tgt"]) for r in rows]):
            out.items.append(make_item(src_ids, tgt_ids, packing, index=index, task_id=first_task + task_id,
                                       benchmark_id=bench_id.get(tf.benchmark, -1), eos_id=tokenizer.eos_id,
                                       start_id=tokenizer.start_id))
            index += 1
        out.taken.append(n)
        out.available.append(len(reader))
    return out
