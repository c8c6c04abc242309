"""`optiml train --dry-run`: everything a run checks before its first step, and its first batch, in seconds.

Why: a config mistake (a bench path, a split with no rows, a row length that cuts most examples) should
show before a model is built and an hour is spent. This opens the bench, loads or trains the tokenizer,
builds the mixture and the packer exactly as `Trainer` does, and reads one batch; it writes nothing.
"""
from __future__ import annotations

from collections import Counter
from typing import List

import yaml

from optiml_plugin.recipe import TrainConfig


def dry_run(config: TrainConfig) -> str:
    """The resolved recipe, the mixture and the first batch's statistics, as text."""
    from optiml_plugin.benchfiles import Bench
    from optiml_plugin.data.training_data import open_run
    from optiml_plugin.local.data import load_tokenizer

    bench = Bench(config.data.bench)
    tokenizer = load_tokenizer(config.data, bench)
    data = open_run(bench, tokenizer, config.data, config.data.batch_size, config.run.seed)
    batch = next(iter(data.batches))
    stats = batch["stats"]
    names = [getattr(t, "task", str(t)) for t in data.mixture.tasks]
    tasks = Counter(names[t] for t in batch["task_ids"].reshape(-1).tolist() if t >= 0)
    lines: List[str] = ["# resolved recipe (every key, defaults filled in)",
                        yaml.safe_dump(config.to_dict(), sort_keys=False).rstrip(), "",
                        f"bench: {bench.root} ({len(bench.manifest['tasks'])} tasks; train split: "
                        f"{bench.manifest['splits'].get('train', {}).get('examples', 0)} examples)",
                        f"tokenizer: {tokenizer.origin} ({tokenizer.vocab_size} ids)",
                        "validation subsets: " + (", ".join(f"{k} ({len(v.batches)} batches)"
                                                         for k, v in data.validation.items()) or "none"),
                        "", "mixture:", data.mixture.table(max_tasks=10), "",
                        f"first batch: {tuple(batch['input_ids'].shape)} (rows x tokens); {stats['examples']} "
                        f"examples ({stats['examples_per_row']:.1f} per row); {stats['tokens']} tokens, "
                        f"{stats['target_tokens']} of them targets; non-pad fraction {stats['non_pad_fraction']:.2f}; "
                        f"cut: {stats['cut_left_examples']} examples on the left ({stats['cut_left_tokens']} tokens), "
                        f"{stats['cut_right_examples']} on the right ({stats['cut_right_tokens']} tokens)"]
    if tasks:
        lines.append("first batch's tasks (tokens): " + ", ".join(f"{t} {n}" for t, n in tasks.most_common(8)))
    lines.append("dry run: the config and the bench are usable; nothing was trained or written")
    return "\n".join(lines)
