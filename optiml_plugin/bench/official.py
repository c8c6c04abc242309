"""Held-out instances of training tasks from the source's official dev/test splits (paper §2.3).

Why: the paper's fully supervised level evaluates trained-on tasks on "held-out validation/test
instances ... taken from the original data releases"; random rows of the training data (the default,
`heldout_instances: random`) are a different, easier set when a source repeats an example under
several templates. With `heldout_instances: official`, a training task whose records carry their
release split (`meta["split"]`: a `split` field, a split-named file such as `validation.jsonl`, or a
Hugging Face split) takes its valid instances from the release's validation/dev split and its test
instances from the test split (seeded samples of at most `heldout_valid`/`heldout_test`), and trains
on the train split only. Rows of other splits, and official rows beyond those counts, are not used
(counted as removed). A task without official dev/test rows falls back to random rows.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from optiml_plugin.bench.splits import SplitConfig, TaskKey, task_rng

MODES = ("random", "official")
#: release split names -> the bench part they feed
PARTS = {"train": "train", "training": "train", "validation": "valid", "valid": "valid", "dev": "valid",
         "test": "test"}


def official_instances(splits: Sequence[str], cfg: SplitConfig, seed: int, key: TaskKey
                       ) -> Optional[Tuple[List[int], List[int], List[int], int]]:
    """(train, valid, test, unused rows) by release split, or None when the task has no dev/test rows;
    `splits[i]` is record i's `meta["split"]` ("" when it has none)."""
    parts = [PARTS.get(str(s).lower()) for s in splits]
    if not any(p in ("valid", "test") for p in parts):
        return None
    train = [i for i, p in enumerate(parts) if p == "train"]
    valid = _sample([i for i, p in enumerate(parts) if p == "valid"], cfg.heldout_valid, seed, key, "valid")
    test = _sample([i for i, p in enumerate(parts) if p == "test"], cfg.heldout_test, seed, key, "test")
    return train, valid, test, len(splits) - len(train) - len(valid) - len(test)


def _sample(indices: List[int], n: int, seed: int, key: TaskKey, part: str) -> List[int]:
    if len(indices) <= n:
        return indices
    pick = task_rng(seed, key, f"official_{part}").choice(len(indices), size=n, replace=False)
    return sorted(indices[int(p)] for p in pick)
