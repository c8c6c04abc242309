"""Prompt multiplexing (OPT-IML §4.1): a dataset's weight must not grow with its number of templates.

Why: PromptSource and FLAN render every example with several templates. For a dataset with N examples
and T templates the paper pools all N*T instantiations and samples N of them at random, so the task
(the dataset, not the template) enters the mixture and meets the EPS cap with N examples, whatever T.
N is the largest number of instantiations any one template has (a template that does not apply to
every example has fewer), so no example identity is needed. Only the training part of a training
task is multiplexed: held-out instances and evaluation tasks keep every variant, as the paper's test
sets did. The draw is seeded by (seed, task), so it does not depend on the order records arrive in.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from optiml_plugin.bench.splits import TaskKey, task_rng


@dataclass(frozen=True)
class Multiplexed:
    """What one task drew from: its templates, the pooled instantiations, and how many were kept."""

    key: TaskKey
    templates: int
    instantiations: int
    drawn: int

    def to_dict(self) -> Dict[str, Any]:
        return {"benchmark": self.key[0], "task": self.key[1], "templates": self.templates,
                "instantiations": self.instantiations, "drawn": self.drawn}


def multiplex_train(templates: Sequence[str], indices: Sequence[int], seed: int,
                    key: TaskKey) -> Tuple[List[int], Optional[Multiplexed]]:
    """(kept indices in their original order, what was drawn) for a task's training `indices`;
    `templates[i]` is record i's template (the builder streams a task, so it passes only those).

    A task whose records name fewer than two templates is returned unchanged with None."""
    per_template = Counter(templates[i] for i in indices)
    if len(per_template) < 2:
        return list(indices), None
    n = max(per_template.values())
    pick = task_rng(seed, key, "multiplex").choice(len(indices), size=n, replace=False)
    kept = [indices[i] for i in sorted(int(p) for p in pick)]
    return kept, Multiplexed(key, len(per_template), len(indices), n)
