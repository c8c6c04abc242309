"""Demonstrations before a training example: MetaICL training (§4.8) and Flan-style mixed prompts.

Why: two of the paper's instruction-tuning decisions put k solved examples of the SAME task before
the trained one. MetaICL training (Tab 8, Tab 20) draws k from a Zipf law truncated to k <= K and
renormalized over k = 0..K, P(k) proportional to (k + 1)^-a (a = 4 gives P(0) = 0.925, a = 2 gives
0.671, the figures the paper implies), with the loss on the trained example's target, or with the
"suffix loss" on the first demonstration's target and every full sequence after it. Flan-style mixed
prompts (Chung et al. 2022, Longpre et al. 2023) render a share of each benchmark's examples few-shot
(k uniform on 1..K) and the rest zero-shot.

How: demonstrations come from the trained example's own task file in the TRAINING split (never a
held-out row: the mixture reads only `train`), drawn without replacement and never the example itself,
by a generator seeded by (run seed, stream index), so resume re-draws the very same ones. Each
demonstration is `src + tgt` as the tokenizer joins them, separated by `separator` (three newlines,
MetaICL's); tokens are concatenated per part, so the boundary of each target is exact. A row that would
not fit the block loses its demonstrations farthest from the trained example first, and the realized k
travels with it (the batch's `demo_k`, counted by the telemetry where the example is trained). The
result is ONE packed example (one segment, one document mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from optiml_plugin.benchfiles import normalize_name
from optiml_plugin.errors import ConfigError

#: MetaICL's separator between demonstrations (and before the trained example)
SEPARATOR = "\n\n\n"
_TAG = 0xDE305


def zipf_probs(a: float, max_k: int) -> np.ndarray:
    """P(k) for k = 0..max_k: (k + 1)^-a, renormalized (the Zipf law truncated to K = max_k)."""
    if not a > 0:
        raise ConfigError(f"metaicl_zipf_a must be > 0, got {a!r}")
    w = np.arange(1, max_k + 2, dtype=np.float64) ** -float(a)
    return w / w.sum()


@dataclass(frozen=True)
class DemoConfig:
    """Which law draws k (one of the two, or none); `fewshot_share` maps benchmark -> share of its
    examples rendered few-shot (an unlisted benchmark stays zero-shot)."""

    zipf_a: Optional[float] = None
    suffix_loss: bool = False
    fewshot_share: Optional[Mapping[str, float]] = None
    max_k: int = 5
    separator: str = SEPARATOR

    def __post_init__(self) -> None:
        if self.zipf_a is not None and self.fewshot_share:
            raise ConfigError("data.metaicl_zipf_a and data.fewshot_share are two ways to draw "
                              "demonstrations; set one of them")
        if self.suffix_loss and self.zipf_a is None:
            raise ConfigError("data.metaicl_suffix_loss needs data.metaicl_zipf_a (MetaICL training)")
        if self.max_k < 1:
            raise ConfigError(f"data.max_demonstrations must be >= 1, got {self.max_k}")
        for name, share in (self.fewshot_share or {}).items():
            if not 0 <= share <= 1:
                raise ConfigError(f"data.fewshot_share[{name!r}] must be in [0, 1], got {share!r}")
        if self.zipf_a is not None:
            zipf_probs(self.zipf_a, self.max_k)

    def identity(self) -> Dict[str, Any]:
        """What a resumed pipeline must share with the saved one (JSON)."""
        return {"zipf_a": self.zipf_a, "suffix_loss": self.suffix_loss, "max_k": self.max_k,
                "fewshot_share": dict(self.fewshot_share or {}), "separator": self.separator}

    @property
    def active(self) -> bool:
        return self.zipf_a is not None or bool(self.fewshot_share)


@dataclass
class Assembled:
    """One example's token ids with its demonstrations in place, and how many were kept."""

    src_ids: List[int]
    tgt_ids: List[int]
    k: int


@dataclass
class Demonstrations:
    """Draws each stream example's demonstrations and assembles its tokens (see the module docstring).

    `locate(index) -> (task id, row)` and `read(task id, rows) -> rows` come from the example stream;
    `benchmarks` are the mixture's benchmark names (an example's `benchmark_id` indexes them)."""

    config: DemoConfig
    seed: int
    benchmarks: Sequence[str]
    sizes: Sequence[int]
    locate: Any
    read: Any

    def __post_init__(self) -> None:
        shares = {normalize_name(k): float(v) for k, v in (self.config.fewshot_share or {}).items()}
        known = {normalize_name(b) for b in self.benchmarks}
        unknown = sorted(set(shares) - known)
        if unknown:
            raise ConfigError(f"data.fewshot_share names benchmark(s) {unknown} that the training "
                              f"mixture does not have ({sorted(self.benchmarks)})")
        self._share = np.array([shares.get(normalize_name(b), 0.0) for b in self.benchmarks])
        self._zipf = zipf_probs(self.config.zipf_a, self.config.max_k) if self.config.zipf_a else None

    def draw_k(self, rng: np.random.Generator, benchmark_id: int) -> int:
        """k for one example: Zipf (MetaICL) or few-shot with the benchmark's share (k ~ U{1..K})."""
        if self._zipf is not None:
            return int(rng.choice(len(self._zipf), p=self._zipf))
        if rng.random() < self._share[benchmark_id]:
            return int(rng.integers(1, self.config.max_k + 1))
        return 0

    def texts(self, example: Any) -> List[Tuple[str, str]]:
        """(src, tgt) of the example's demonstrations: a pure function of (seed, stream index), drawn from
        the example's own training task file."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, example.index, _TAG])))
        k = self.draw_k(rng, example.benchmark_id)
        task_id, own = self.locate(example.index)
        n = int(self.sizes[task_id])
        k = min(k, n - 1)
        rows: List[int] = []
        if k > 0:
            picks = rng.choice(n - 1, size=k, replace=False)
            rows = [int(p) + (p >= own) for p in picks]   # every row but the example's own
        return [(d["src"], d["tgt"]) for d in self.read(task_id, rows)]

    def assemble(self, pairs: Sequence[Tuple[List[int], List[int]]], separator: List[int],
                 block_size: int) -> Assembled:
        """Token ids of demonstrations + the example, as one (source, target) pair.

        Plain: the loss is on the example's target only. Suffix loss: on the first kept
        demonstration's target and every token after it. Demonstrations farthest from the example
        are dropped while the whole (with the opening and closing token) exceeds `block_size`."""
        demos, (q_src, q_tgt) = list(pairs[:-1]), pairs[-1]
        size = 2 + len(q_src) + len(q_tgt) + sum(len(s) + len(t) + len(separator) for s, t in demos)
        while demos and size > block_size:
            s, t = demos.pop(0)
            size -= len(s) + len(t) + len(separator)
        k = len(demos)
        if not demos:
            return Assembled(list(q_src), list(q_tgt), 0)
        body: List[int] = []
        for s, t in demos[1:]:
            body += s + t + separator
        if self.config.suffix_loss:
            d_src, d_tgt = demos[0]
            return Assembled(list(d_src), d_tgt + separator + body + q_src + q_tgt, k)
        d_src, d_tgt = demos[0]
        return Assembled(d_src + d_tgt + separator + body + q_src, list(q_tgt), k)


