"""The release's own splits: training tasks' held-out instances from its dev/test splits (paper §2.3),
and the rows an eval task may test on.

Why: the paper's fully supervised level evaluates trained-on tasks on "held-out validation/test
instances ... taken from the original data releases"; random rows of the training data (the
`heldout_instances: random` mode) are another set. With `heldout_instances: official` (the paper
preset), a training task whose records carry their release split (`meta["split"]`: a `split` field,
a split-named file such as `validation.jsonl`, or a Hugging Face split) takes its valid instances
from the release's validation/dev split and its test instances from the test split (seeded samples
of at most `heldout_valid`/`heldout_test` examples, each with all its renderings:
bench/examples.py), and trains on the train split only. Rows of other splits, and official rows
beyond those counts, are not used (counted as removed). A task without official dev/test rows falls
back to random examples. Eval tasks test only on rows of the release's evaluation splits (Tab 1:
the test sets are the releases' evaluation data): `eval_rows`.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from optiml_plugin.bench.splits import SplitConfig, TaskKey, task_rng

MODES = ("random", "official")
#: release split names -> the bench part they feed
PARTS = {"train": "train", "training": "train", "validation": "valid", "valid": "valid", "dev": "valid",
         "test": "test"}
_QUALIFIED = re.compile(r"^([a-z]+)(?:[_-].*)?$")  # ANLI's dev_r1, MNLI's validation_matched


def release_part(split: str) -> Optional[str]:
    """The bench part a release split feeds: "train", "valid", "test", or None (unknown name);
    a qualified name counts as its head (`dev_r1` -> valid, `test_matched` -> test)."""
    name = str(split).lower()
    found = PARTS.get(name)
    if found is None:
        head = _QUALIFIED.match(name)
        found = PARTS.get(head.group(1)) if head else None
    return found


def eval_rows(splits: Sequence[str]) -> Tuple[List[int], Dict[str, int]]:
    """(rows an eval task may test on, rows dropped by reason): rows of the release's evaluation
    splits (validation/dev/test) and rows without a split (SNI's task files); never a training-split
    row (`eval_task_train_split`) or a row of a split of unknown name (`eval_task_other_split`)."""
    usable: List[int] = []
    dropped = {"eval_task_train_split": 0, "eval_task_other_split": 0}
    for i, split in enumerate(splits):
        part = release_part(split) if split else "test"
        if part in ("valid", "test"):
            usable.append(i)
        else:
            dropped["eval_task_train_split" if part == "train" else "eval_task_other_split"] += 1
    return usable, {k: v for k, v in dropped.items() if v}


def official_instances(splits: Sequence[str], groups: Sequence[int], cfg: SplitConfig, seed: int, key: TaskKey
                       ) -> Optional[Tuple[List[int], List[int], List[int], int]]:
    """(train, valid, test, unused rows) by release split, or None when the task has no dev/test rows;
    `splits[i]` is record i's `meta["split"]` ("" when it has none), `groups[i]` its example: the
    valid and test draws pick examples, with all their renderings."""
    parts = [release_part(s) for s in splits]
    if not any(p in ("valid", "test") for p in parts):
        return None
    train = [i for i, p in enumerate(parts) if p == "train"]
    valid = _sample([i for i, p in enumerate(parts) if p == "valid"], groups, cfg.heldout_valid, seed, key, "valid")
    test = _sample([i for i, p in enumerate(parts) if p == "test"], groups, cfg.heldout_test, seed, key, "test")
    return train, valid, test, len(splits) - len(train) - len(valid) - len(test)


def _sample(indices: List[int], groups: Sequence[int], n: int, seed: int, key: TaskKey, part: str) -> List[int]:
    """The rows of `n` examples of `indices` drawn at random (seeded), or all when there are no more."""
    order: Dict[int, None] = dict.fromkeys(groups[i] for i in indices)
    if len(order) <= n:
        return indices
    found = list(order)
    pick = task_rng(seed, key, f"official_{part}").choice(len(found), size=n, replace=False)
    chosen = {found[int(p)] for p in pick}
    return [i for i in indices if groups[i] in chosen]
