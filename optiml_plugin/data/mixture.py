"""Mixture weights: per-task EPS caps plus benchmark proportions -> one probability per task.

Why: OPT-IML samples task t of benchmark b with P(t) = p_b * w_t / sum_{t' in b} w_t', where
w_t = min(n_t, cap_b or EPS) (examples-proportional with a cap, EPS = 4096 in the paper) and p_b is
the benchmark's share (4/2/20/25/45/2/2 in the paper). Benchmarks without a share split what is left
in proportion to their capped mass, as the authors' `_alpha_sampling` did. Extra streams (pretraining
text, chain-of-thought) are ordinary benchmarks of the bench with a share of their own.
EPS is a *rate* cap: it changes how often a task is drawn, never how many of its examples exist
(docs/mixture.md).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from optiml_plugin.benchfiles import Bench, TaskFile, file_stem, normalize_name
from optiml_plugin.conventions import EVAL_SPLITS, LEVEL_INSTANCES
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import number
from optiml_plugin.yamlio import read_yaml

TOLERANCE = 1e-6
#: the splits of held-out instances: their tasks are the fully supervised level, kept by task scaling
HELDOUT_INSTANCE_SPLITS = tuple(s for s in EVAL_SPLITS if s.endswith(LEVEL_INSTANCES))


@dataclass
class MixtureConfig:
    """What the user asks for. `caps` are per-benchmark EPS overrides (opt_instruct's `--caps`)."""

    proportions: Optional[Dict[str, float]] = None
    eps: Optional[int] = 4096
    caps: Optional[Dict[str, int]] = None
    max_tasks: Optional[int] = None   # task scaling: the first N tasks of `task_order` (None: all)


def task_order(stems: Sequence[str], first: Iterable[str] = ()) -> List[int]:
    """Indices of `stems` in the fixed order task scaling takes them from (paper Tab 16, §4.4: nested
    subsets that always include the fully supervised tasks): the tasks in `first` (those with held-out
    instances), then the rest, each group by a hash of the task's file stem, so the order depends neither
    on the bench's file order nor on the run seed, and the first 16 tasks are among the first 64."""
    first = set(first)
    keys = [hashlib.sha1(f"optiml-task-scaling\0{s}".encode("utf-8")).digest()[:8] for s in stems]
    return sorted(range(len(stems)), key=lambda i: (stems[i] not in first, keys[i], stems[i]))


def validate_proportions(props: Mapping[str, Any], benchmarks: Optional[Iterable[str]] = None
                         ) -> Dict[str, float]:
    """`props` as floats, or a ConfigError unless they are finite, non-negative numbers (by the recipe's
    number rule: `1e-1` is a number) summing to at most 1.

    With `benchmarks` (the bench's benchmark names) also reject unknown names and, when every
    benchmark is listed, a sum that is not 1 within 1e-6 (nothing would take the remainder).
    """
    if not isinstance(props, Mapping):
        raise ConfigError(f"benchmark proportions must be a mapping {{benchmark: share}}, "
                          f"got {type(props).__name__}")
    shares: Dict[str, float] = {}
    for name, share in props.items():
        try:
            shares[str(name)] = share = float(number(share))
        except (TypeError, ValueError):
            raise ConfigError(f"benchmark proportions: share of {name!r} is {share!r}, not a number") from None
        if not math.isfinite(share):
            raise ConfigError(f"benchmark proportions: share of {name!r} is {share}, not finite")
        if share < 0:
            raise ConfigError(f"benchmark proportions: share of {name!r} is negative ({share})")
    props = shares
    total = float(sum(props.values()))
    if total > 1 + TOLERANCE:
        raise ConfigError(f"benchmark proportions sum to {total:.9g} > 1 "
                          f"({_fmt_shares(props)}); lower some shares")
    if benchmarks is None:
        return props
    known = {normalize_name(b): b for b in benchmarks}
    unknown = [n for n in props if normalize_name(n) not in known]
    if unknown:
        raise ConfigError(f"benchmark proportions name unknown benchmark(s) {unknown}; "
                          f"the bench has {sorted(known.values())}")
    listed = {normalize_name(n) for n in props}
    if listed >= set(known) and abs(total - 1) > TOLERANCE:
        raise ConfigError(f"benchmark proportions list every benchmark but sum to {total:.9g}, "
                          f"not 1 within {TOLERANCE:g} ({_fmt_shares(props)})")
    return props


def _fmt_shares(props: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v}" for k, v in props.items())


def parse_proportions(text_or_path: Union[str, Path, Mapping[str, float]]) -> Dict[str, float]:
    """Proportions from a JSON string (`'{"niv2": 0.25}'`) or a YAML/JSON file holding one mapping."""
    if isinstance(text_or_path, Mapping):
        props: Any = dict(text_or_path)
        where = "benchmark proportions"
    else:
        text = str(text_or_path)
        path = Path(text)
        if not text.lstrip().startswith("{") and (path.suffix.lower() in (".json", ".yaml", ".yml")
                                                  or path.is_file()):
            where = str(path)
            props = read_yaml(path, "benchmark proportions")
        else:
            where = "benchmark proportions"
            try:
                props = json.loads(text)
            except json.JSONDecodeError as e:
                raise ConfigError(f"benchmark proportions {text!r}: invalid JSON at column {e.colno}: "
                                  f"{e.msg} (give a JSON object or a .json/.yaml file)") from None
    if not isinstance(props, dict) or not all(isinstance(k, str) for k in props):
        raise ConfigError(f"{where}: expected a mapping {{benchmark: share}}, got {props!r:.80}")
    return validate_proportions(props)


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class Mixture:
    """Per-task sampling probabilities for one split, with the numbers that explain them."""

    def __init__(self, tasks: List[TaskFile], benchmarks: List[str], benchmark_of_task: np.ndarray,
                 task_weights: np.ndarray, benchmark_probs: np.ndarray, requested: Dict[str, float],
                 config: MixtureConfig, empty_tasks: List[str], split: str,
                 left_out_tasks: Sequence[str] = (), dropped_shares: Optional[Dict[str, float]] = None) -> None:
        self.tasks = tasks
        self.benchmarks = benchmarks
        self.benchmark_of_task = benchmark_of_task
        self.task_weights = task_weights
        self.benchmark_probs = benchmark_probs
        self.requested = requested
        self.config = config
        self.empty_tasks = empty_tasks
        self.split = split
        mass = np.bincount(benchmark_of_task, weights=task_weights, minlength=len(benchmarks))
        self.benchmark_mass = mass.astype(np.int64)
        probs = np.zeros(len(tasks), dtype=np.float64)
        for b in range(len(benchmarks)):
            sel = benchmark_of_task == b
            if mass[b] > 0:
                probs[sel] = benchmark_probs[b] * task_weights[sel] / mass[b]
        self.probs = probs / probs.sum()
        self.sizes = np.array([t.count for t in tasks], dtype=np.int64)
        self.left_out_tasks = list(left_out_tasks)         # task scaling: training tasks not in the mixture
        self.dropped_shares = dict(dropped_shares or {})   # task scaling: shares of benchmarks left without tasks

    @classmethod
    def from_bench(cls, bench: Bench, config: MixtureConfig, split: str = "train") -> "Mixture":
        all_files = bench.task_files(split)
        names = sorted({t["benchmark"] for t in bench.manifest["tasks"]})
        by_norm = {normalize_name(b): b for b in names}
        props = validate_proportions(dict(config.proportions or {}), names)
        eps = None if config.eps is None else _check_positive_int(config.eps, "mixture eps")
        caps: Dict[str, int] = {}
        for name, cap in (config.caps or {}).items():
            if normalize_name(name) not in by_norm:
                raise ConfigError(f"mixture caps name unknown benchmark {name!r}; "
                                  f"the bench has {names}")
            caps[by_norm[normalize_name(name)]] = _check_positive_int(cap, f"mixture cap of {name!r}")
        tasks = [t for t in all_files if t.count > 0]
        empty = [file_stem(t.benchmark, t.category, t.task) for t in all_files if t.count == 0]
        if not tasks:
            raise ConfigError(f"{bench.root}: split {split!r} has no examples to sample from")
        left_out: List[str] = []
        if config.max_tasks is not None:
            n = _check_positive_int(config.max_tasks, "mixture max_tasks (data.max_train_tasks)")
            stems = [file_stem(t.benchmark, t.category, t.task) for t in tasks]
            supervised = {file_stem(t.benchmark, t.category, t.task) for s in HELDOUT_INSTANCE_SPLITS
                          for t in bench.task_files(s) if t.count > 0}
            keep = set(task_order(stems, first=supervised)[:n])
            left_out = [stems[i] for i in range(len(tasks)) if i not in keep]
            tasks = [t for i, t in enumerate(tasks) if i in keep]
        benchmarks = sorted({t.benchmark for t in tasks})
        bidx = {b: i for i, b in enumerate(benchmarks)}
        benchmark_of_task = np.array([bidx[t.benchmark] for t in tasks], dtype=np.int64)
        weights = np.array([min(t.count, caps.get(t.benchmark, eps) or t.count) for t in tasks],
                           dtype=np.int64)
        mass = np.bincount(benchmark_of_task, weights=weights, minlength=len(benchmarks))
        requested = {by_norm[normalize_name(k)]: float(v) for k, v in props.items()}
        dropped = {}
        if left_out:  # task scaling: a benchmark left without tasks gives its share back, said in the table
            dropped = {b: v for b, v in requested.items() if b not in bidx}
            kept_total = 1.0 - sum(dropped.values())
            requested = {b: v / kept_total for b, v in requested.items() if b in bidx} if kept_total > 0 else {}
        for name, share in requested.items():
            if share > 0 and name not in bidx:
                raise ConfigError(f"benchmark {name!r} has share {share} but no examples in split "
                                  f"{split!r} of {bench.root}")
        bprobs = np.zeros(len(benchmarks), dtype=np.float64)
        for name, share in requested.items():
            if name in bidx:
                bprobs[bidx[name]] = share
        leftover = 1.0 - sum(requested.values())
        unlisted = [i for i, b in enumerate(benchmarks) if b not in requested]
        if not props:
            bprobs = mass / mass.sum()
        elif unlisted:
            share_mass = mass[unlisted].sum()
            bprobs[unlisted] = max(leftover, 0.0) * mass[unlisted] / share_mass
        elif abs(leftover) > TOLERANCE:
            raise ConfigError(f"benchmark proportions sum to {1 - leftover:.9g}; the leftover "
                              f"{leftover:.3g} has no unlisted benchmark with examples in split "
                              f"{split!r} to take it (benchmarks there: {benchmarks})")
        if bprobs.sum() <= 0:
            raise ConfigError(f"benchmark proportions give every benchmark with examples in split "
                              f"{split!r} a zero share")
        return cls(tasks, benchmarks, benchmark_of_task, weights, bprobs, requested, config, empty, split,
                   left_out, dropped)

    def fingerprint(self) -> str:
        """Hash of tasks, sizes and probabilities: a stream state only resumes on the same mixture."""
        h = hashlib.sha1()
        for t, n in zip(self.tasks, self.sizes):
            h.update(f"{file_stem(t.benchmark, t.category, t.task)}\t{n}\n".encode())
        h.update(np.round(self.probs, 15).tobytes())
        return h.hexdigest()[:16]

    def effective_benchmark_probs(self) -> np.ndarray:
        return np.bincount(self.benchmark_of_task, weights=self.probs, minlength=len(self.benchmarks))

    def table(self, max_tasks: int = 40) -> str:
        """Effective per-benchmark then per-task probabilities (the `max_tasks` most likely tasks)."""
        eff = self.effective_benchmark_probs()
        natural = self.benchmark_mass / self.benchmark_mass.sum()
        eps = "none" if self.config.eps is None else str(self.config.eps)
        lines = [f"mixture of split {self.split!r}: {len(self.tasks)} tasks, {len(self.benchmarks)} "
                 f"benchmarks, EPS {eps}" + (f", caps {self.config.caps}" if self.config.caps else ""),
                 f"{'benchmark':<24} {'tasks':>6} {'capped':>6} {'examples':>10} {'capped mass':>11} "
                 f"{'natural':>8} {'requested':>9} {'P':>8}"]
        for b, name in enumerate(self.benchmarks):
            sel = self.benchmark_of_task == b
            req = f"{self.requested[name]:.4f}" if name in self.requested else (
                "leftover" if self.requested else "natural")
            lines.append(f"{name:<24} {int(sel.sum()):>6} {int((self.task_weights[sel] < self.sizes[sel]).sum()):>6} "
                         f"{int(self.sizes[sel].sum()):>10} {int(self.benchmark_mass[b]):>11} "
                         f"{natural[b]:>8.4f} {req:>9} {eff[b]:>8.4f}")
        order = np.argsort(-self.probs, kind="stable")
        shown = order[:max_tasks]
        lines.append(f"{'task':<56} {'n':>8} {'w':>6} {'P':>10}")
        for i in shown:
            t = self.tasks[i]
            lines.append(f"{file_stem(t.benchmark, t.category, t.task)[:56]:<56} {int(self.sizes[i]):>8} "
                         f"{int(self.task_weights[i]):>6} {self.probs[i]:>10.6f}")
        omitted = len(order) - len(shown)
        if omitted:
            rest = self.probs[order[max_tasks:]]
            lines.append(f"... {omitted} more tasks omitted (P from {rest.min():.6f} to {rest.max():.6f}, "
                         f"total {rest.sum():.4f})")
        if self.empty_tasks:
            lines.append(f"{len(self.empty_tasks)} tasks with no examples in split {self.split!r} "
                         f"are not sampled")
        if self.left_out_tasks:
            lines.append(f"task scaling: the first {len(self.tasks)} training tasks are kept, "
                         f"{len(self.left_out_tasks)} left out" + (
                             f"; shares of benchmarks left without tasks given back to the others: "
                             f"{self.dropped_shares}" if self.dropped_shares else ""))
        return "\n".join(lines)

    def to_dict(self) -> Dict[str, Any]:
        """Everything needed to audit the mixture, for manifests and logs (JSON-serializable)."""
        eff = self.effective_benchmark_probs()
        return {
            "split": self.split,
            "eps": self.config.eps,
            "caps": dict(self.config.caps or {}),
            "requested": dict(self.requested),
            "fingerprint": self.fingerprint(),
            "benchmarks": {name: {"tasks": int((self.benchmark_of_task == b).sum()),
                                  "examples": int(self.sizes[self.benchmark_of_task == b].sum()),
                                  "capped_mass": int(self.benchmark_mass[b]),
                                  "probability": float(eff[b])}
                           for b, name in enumerate(self.benchmarks)},
            "tasks": [{"task": file_stem(t.benchmark, t.category, t.task), "n": int(n), "weight": int(w),
                       "probability": float(p)}
                      for t, n, w, p in zip(self.tasks, self.sizes, self.task_weights, self.probs)],
            "empty_tasks": list(self.empty_tasks),
            "max_tasks": self.config.max_tasks,
            "left_out_tasks": list(self.left_out_tasks),
            "dropped_shares": dict(self.dropped_shares),
        }
