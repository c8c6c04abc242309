"""`write_bench` / `make_bench`: small, valid bench directories written in code, for tests of every stage
after build (the evaluator's fixtures in eval_support.py use the same writer).

Why: the mixture, stream, packer, tasks and trainers all read a bench; building one through the
real builder would tie their tests to the sources. Rows have sources and targets of varying length
(deterministic in the row index) so packing and truncation get exercised.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Tuple, Union

from optiml_plugin.benchfiles import (FORMAT_NAME, FORMAT_VERSION, MANIFEST, SPLITS, TRAIN_SPLIT,
                                           atomic_write_bytes, file_stem, split_path,
                                           write_jsonl_with_index)

_WORDS = ("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "seven", "orange", "quiet")


def make_row(benchmark: str, category: str, task: str, split: str, i: int) -> Dict[str, Any]:
    """Row i of a task: an instruction, an input whose length cycles through 1..40 words, a target."""
    words = [_WORDS[(i * 3 + k) % len(_WORDS)] for k in range(1 + (i * 7) % 40)]
    target = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(1 + (i * 5) % 9))
    instruction = f"Task {task}: repeat the words after the colon."
    src = f"{instruction}\n\nInput: {' '.join(words)}\nOutput:"
    return {"id": f"{task}-{split}-{i}", "benchmark": benchmark, "category": category, "task": task,
            "split": split, "src": src, "tgt": target, "references": [target], "candidates": None,
            "instruction": instruction, "input": " ".join(words), "template": "test", "language": "en"}


TaskRows = Tuple[str, str, str, str, str, List[Dict[str, Any]]]   # benchmark, category, task, level, split, rows


def write_bench(root: Union[str, Path], parts: Iterable[TaskRows], seed: int = 0) -> Path:
    """The one test bench writer: each part is one task's rows of one split, written with the core's
    `write_jsonl_with_index` into the builder's layout, and a manifest listing the tasks in the order
    first given (a task may come once per split). Returns `root`."""
    root = Path(root)
    merged: Dict[Tuple[str, str, str], Dict[str, Any]] = {}
    splits: Dict[str, Dict[str, int]] = {}
    for b, c, t, level, split, rows in parts:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
        entry = merged.setdefault((b, c, t), {"task": t, "benchmark": b, "category": c, "level": level,
                                              "sources": [t], "files": {}, "counts": {}})
        if split in entry["files"]:
            raise ValueError(f"task {(b, c, t)} listed twice for split {split!r}")
        path = split_path(root, split, file_stem(b, c, t))
        n = write_jsonl_with_index(path, rows)
        entry["files"][split] = path.relative_to(root).as_posix()
        entry["counts"][split] = n
        agg = splits.setdefault(split, {"tasks": 0, "examples": 0})
        agg["tasks"] += 1
        agg["examples"] += n
    total = sum(s["examples"] for s in splits.values())
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "seed": seed, "optiml_version": "test",
                "config": {"made_by": "tests/bench_factory.py"}, "tasks": list(merged.values()),
                "splits": splits, "decontamination": {},
                "accounting": {"read": total, "kept": total, "skipped": {}, "removed": {}, "balanced": True}}
    atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    return root


def make_bench(root: Union[str, Path], tasks: List[Dict[str, Any]], seed: int = 0) -> Path:
    """Write a bench under `root`; each dict is {benchmark, category, task, n, level?, split?}, rows from
    `make_row`, tasks in file-name order (as the builder orders them).

    The same (benchmark, category, task) may appear once per split; `level` defaults to "train",
    `split` to "train". Returns `root`.
    """
    parts = []
    for spec in sorted(tasks, key=lambda s: file_stem(s["benchmark"], s["category"], s["task"])):
        b, c, t = spec["benchmark"], spec["category"], spec["task"]
        split = spec.get("split", TRAIN_SPLIT)
        parts.append((b, c, t, spec.get("level", "train"), split,
                      [make_row(b, c, t, split, i) for i in range(int(spec["n"]))]))
    return write_bench(root, parts, seed)


def micro_train_config(bench: Path, out: Path, **sections: Dict[str, Any]):
    """A local-trainer config for a micro OPT on `bench` (a few seconds per run); `sections` update
    the model/data/optim/run sections key by key."""
    from optiml_plugin.recipe import config_from_dict

    values = {"model": {"preset": "micro", "dropout": 0.1},
              "data": {"bench": str(bench), "tokens_per_sample": 64, "batch_size": 2, "builtin_vocab_size": 300,
                       "max_valid_examples_per_task": 8},
              "optim": {"lr": 3e-3, "warmup_updates": 2, "max_update": 6},
              "run": {"out_dir": str(out), "log_every": 1, "valid_every": 0, "save_every": 3, "progress": False,
                      "tensorboard": False, "threads": 1}}
    for name, extra in sections.items():
        values[name].update(extra)
    return config_from_dict(values)
