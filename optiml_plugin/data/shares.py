"""Realized mixture shares: the observer the training pipeline reports every example it reads to.

Why an observer: the mixture asks for shares of examples; what the model trains on is tokens and
target tokens, which only exist after tokenization and truncation. The pipeline tells this object
about each example once, when it is first tokenized (never again on a resume re-read), and the
trainer logs the realized shares beside the requested ones; the stream stays a pure function of
(seed, index) that knows nothing about tokens. Its counts are part of the pipeline's state.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from optiml_plugin.errors import ConfigError

KINDS = ("examples", "tokens", "target_tokens")


class ShareCounters:
    """Realized examples, tokens and target tokens per benchmark, against the requested shares."""

    def __init__(self, benchmarks: Sequence[str], requested: Sequence[float]) -> None:
        self.benchmarks: List[str] = list(benchmarks)
        self.requested = np.asarray(requested, dtype=np.float64)
        self.counts = np.zeros((len(KINDS), len(self.benchmarks)), dtype=np.int64)

    @property
    def examples(self) -> np.ndarray:
        return self.counts[0]

    @property
    def tokens(self) -> np.ndarray:
        return self.counts[1]

    @property
    def target_tokens(self) -> np.ndarray:
        return self.counts[2]

    def observe(self, benchmark_id: int, tokens: int, target_tokens: int) -> None:
        """One example read and tokenized (as packed: after truncation)."""
        self.counts[:, benchmark_id] += (1, tokens, target_tokens)

    def merge(self, other: "ShareCounters") -> None:
        """Add another partition's counters (sum over ranks/workers for the global picture)."""
        if other.benchmarks != self.benchmarks:
            raise ConfigError(f"cannot merge share counters of benchmarks {other.benchmarks} "
                              f"into {self.benchmarks}")
        self.counts += other.counts

    def shares(self, counts: Any = None) -> Dict[str, Dict[str, float]]:
        """{kind: {benchmark: realized share}} of `counts` (default: this partition's; give the
        counts summed over ranks for the global shares)."""
        counts = np.asarray(self.counts if counts is None else counts, dtype=np.float64)
        out = {}
        for k, kind in enumerate(KINDS):
            total = counts[k].sum()
            out[kind] = {name: float(counts[k, b] / total) if total > 0 else 0.0
                         for b, name in enumerate(self.benchmarks)}
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"benchmarks": self.benchmarks, **{kind: self.counts[k].tolist() for k, kind in enumerate(KINDS)}}

    def load_dict(self, d: Dict[str, Any]) -> None:
        if list(d["benchmarks"]) != self.benchmarks:
            raise ConfigError(f"share counters were saved for benchmarks {d['benchmarks']}, "
                              f"this mixture has {self.benchmarks}")
        for k, kind in enumerate(KINDS):
            self.counts[k] = d[kind]
