"""The example stream: a deterministic, resumable, partitioned function of (seed, global index).

Why: training must see the mixture's proportions, never repeat an example of a task before the whole
task has been seen, resume exactly from a small state at any step, and split the work between
data-parallel ranks and loader workers without overlap, with memory independent of the bench size.

How (docs/mixture.md has the full contract):
- The index space is cut into chunks of `chunk_size`. Chunk c's task composition is a multinomial
  draw m_c ~ Multinomial(chunk_size, P) from a generator seeded by (seed, c); its order is a random
  arrangement of that multiset from the same generator. Together this is exactly i.i.d. draws from P,
  and any chunk is reached in O(1) without touching the others.
- Example i of task t is the k-th draw of t in the whole stream, k = S_c[t] + (earlier draws of t in
  chunk c) with S_c = sum of m_c' for c' < c. Draw k is at pass k // n_t, offset k % n_t, and reads
  row pi_(seed, t, pass)(offset), where pi is a keyed Feistel bijection on [0, n_t) (cycle-walking):
  O(1) memory per task, a fresh permutation per pass, so nothing repeats within a pass.
- Partition r of R = world_size * num_workers owns chunks c = r (mod R). S_c is global, so positions
  inside a task are unique across partitions and the stream itself does not depend on R.
- State: the next index plus S of its chunk (O(#tasks)); resuming regenerates one chunk.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from optiml_plugin.benchfiles import Bench
from optiml_plugin.hashing import GOLDEN, mix64
from optiml_plugin.data.mixture import Mixture
from optiml_plugin.errors import ConfigError, mismatch_error

STATE_VERSION = 1
STATE_WORDS = {"seed": "the seed (run.seed)", "chunk_size": "the stream chunk size",
               "mixture": "the bench's training tasks or the mixture (data.bench, data.proportions, data.eps)",
               "num_tasks": "the number of training tasks in the bench (data.bench)",
               "rank": "this process's rank", "world_size": "the number of processes (world size)",
               "worker": "the data-loader worker", "num_workers": "the number of data-loader workers"}
DEFAULT_CHUNK_SIZE = 8192
FEISTEL_ROUNDS = 6
_GOLDEN = np.uint64(GOLDEN)
_ROUND_KEYS = [np.uint64((r + 1) * 0x632BE59BD9B4E019 % (1 << 64)) for r in range(FEISTEL_ROUNDS)]


@dataclass
class Example:
    """One drawn example: its global stream index, task/benchmark ids (mixture order) and the row."""

    index: int
    task_id: int
    benchmark_id: int
    row: Dict[str, Any]


def permutation_keys(seed: int, task_ids: np.ndarray, passes: np.ndarray) -> np.ndarray:
    """The Feistel key of (seed, task, pass): a different permutation of each task in each pass."""
    with np.errstate(over="ignore"):
        k = mix64(np.uint64(seed) * _GOLDEN + np.uint64(0x5EED))
        k = mix64(k ^ task_ids.astype(np.uint64))
        return mix64(k ^ (passes.astype(np.uint64) * _GOLDEN))


def keyed_bijection(x: np.ndarray, n: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """pi_key(x) for x in [0, n): a bijection of [0, n) for each key, element-wise, in O(1) memory.

    An unbalanced Feistel network permutes [0, 2^bits) with 2^bits >= n (so < 2n): halves of
    widths (a, b), a + b = bits, swap widths every round. Cycle-walking (apply it again until the
    value falls inside [0, n)) restricts it to a bijection of [0, n); fewer than 2 rounds on average.
    """
    x = np.asarray(x, dtype=np.uint64).copy()
    n = np.asarray(n, dtype=np.uint64)
    keys = np.asarray(keys, dtype=np.uint64)
    sizes, inverse = np.unique(n, return_inverse=True)
    bits = np.array([max(int(v) - 1, 0).bit_length() for v in sizes], dtype=np.uint64)
    high_bits = (bits // np.uint64(2))[inverse.reshape(n.shape)]
    low_bits = bits[inverse.reshape(n.shape)] - high_bits
    one = np.uint64(1)
    todo = np.ones(x.shape, dtype=bool)
    with np.errstate(over="ignore"):
        while todo.any():
            wl, wr, k = high_bits[todo], low_bits[todo], keys[todo]
            left, right = x[todo] >> wr, x[todo] & ((one << wr) - one)
            for rk in _ROUND_KEYS:
                left, right = right, left ^ (mix64(k ^ mix64(right + rk)) & ((one << wl) - one))
                wl, wr = wr, wl
            x[todo] = (left << wr) | right
            todo = x >= n
    return x


class ExampleStream:
    """Iterator over this partition's examples; `example(i)` gives any global index's example."""

    def __init__(self, bench: Bench, mixture: Mixture, seed: int, rank: int = 0, world_size: int = 1,
                 worker: int = 0, num_workers: int = 1, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        for name, value, lo in (("seed", seed, 0), ("world_size", world_size, 1),
                                ("num_workers", num_workers, 1), ("chunk_size", chunk_size, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"stream {name} must be an integer >= {lo}, got {value!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"stream rank {rank} is outside 0..{world_size - 1}")
        if not 0 <= worker < num_workers:
            raise ConfigError(f"stream worker {worker} is outside 0..{num_workers - 1}")
        self.bench = bench
        self.mixture = mixture
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.worker, self.num_workers = int(worker), int(num_workers)
        self.chunk_size = int(chunk_size)
        self.partition = self.rank * self.num_workers + self.worker
        self.num_partitions = self.world_size * self.num_workers
        self._probs = mixture.probs
        self._sizes = mixture.sizes.astype(np.uint64)
        # cursor: next global index of this partition, and S (global draws per task) at its chunk start
        self._next = 0
        self._chunk_counts = np.zeros(len(mixture.tasks), dtype=np.int64)
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        # this partition's first chunk is chunk `partition` (partition r owns chunks r mod R)
        self._chunk_counts = self._counts_at(self.partition)
        self._next = self.partition * self.chunk_size

    # ---- the pure function of (seed, index) ----

    def _rng(self, chunk: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, chunk, 0x5A3])))

    def chunk_composition(self, chunk: int) -> np.ndarray:
        """m_c: how many draws of each task chunk `chunk` holds (O(#tasks), no arrangement)."""
        return self._rng(chunk).multinomial(self.chunk_size, self._probs).astype(np.int64)

    def _counts_at(self, chunk: int) -> np.ndarray:
        """S_chunk, walked from the nearest known chunk start (the cursor's, or 0)."""
        base_chunk, counts = self._next // self.chunk_size, self._chunk_counts.copy()
        if abs(chunk - base_chunk) > chunk:
            base_chunk, counts = 0, np.zeros_like(counts)
        for c in range(base_chunk, chunk):
            counts += self.chunk_composition(c)
        for c in range(chunk, base_chunk):
            counts -= self.chunk_composition(c)
        return counts

    def _chunk(self, chunk: int, counts: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(task id, row) of every position of a chunk, given S at its start (computed if absent)."""
        hit = self._cache.get(chunk)
        if hit is not None:
            return hit
        if counts is None:
            counts = self._counts_at(chunk)
        rng = self._rng(chunk)
        comp = rng.multinomial(self.chunk_size, self._probs)
        tasks = rng.permutation(np.repeat(np.arange(len(comp), dtype=np.int64), comp))
        order = np.argsort(tasks, kind="stable")
        starts = np.concatenate(([0], np.cumsum(comp)[:-1]))
        within = np.empty(self.chunk_size, dtype=np.int64)
        within[order] = np.arange(self.chunk_size) - np.repeat(starts, comp)
        draw = (counts[tasks] + within).astype(np.uint64)
        n = self._sizes[tasks]
        passes, offsets = draw // n, draw % n
        rows = keyed_bijection(offsets, n, permutation_keys(self.seed, tasks, passes)).astype(np.int64)
        if len(self._cache) >= 8:
            self._cache.pop(next(iter(self._cache)))
        self._cache[chunk] = (tasks, rows)
        return tasks, rows

    def locate(self, index: int) -> Tuple[int, int]:
        """(task id, row in the task file) of global index `index`, without reading the row."""
        if index < 0:
            raise IndexError(f"stream index must be >= 0, got {index}")
        tasks, rows = self._chunk(index // self.chunk_size)
        j = index % self.chunk_size
        return int(tasks[j]), int(rows[j])

    def example(self, index: int) -> Example:
        """The example at global index `index`: the same for every seed-equal stream, any partition."""
        task_id, row = self.locate(index)
        task_file = self.mixture.tasks[task_id]
        return Example(index=index, task_id=task_id,
                       benchmark_id=int(self.mixture.benchmark_of_task[task_id]),
                       row=self.bench.read(task_file, row))

    def owner(self, index: int) -> int:
        """The partition (rank * num_workers + worker) that yields global index `index`."""
        return (index // self.chunk_size) % self.num_partitions

    # ---- this partition's iteration ----

    @property
    def next_index(self) -> int:
        return self._next

    def __iter__(self) -> Iterator[Example]:
        return self

    def __next__(self) -> Example:
        return self.take(1)[0]

    def take(self, n: int) -> List[Example]:
        """The next `n` examples, exactly as `n` calls of `next()` give them, read a run of
        positions at a time (one chunk lookup per run, each file's rows read together)."""
        out: List[Example] = []
        while len(out) < n:
            i = self._next
            chunk, j = divmod(i, self.chunk_size)
            tasks, rows = self._chunk(chunk, self._chunk_counts)
            m = min(n - len(out), self.chunk_size - j)
            out.extend(self._read_run(i, tasks[j:j + m], rows[j:j + m]))
            if j + m < self.chunk_size:
                self._next = i + m
            else:  # jump to this partition's next chunk, carrying S over the chunks in between
                nxt = chunk + self.num_partitions
                for c in range(chunk, nxt):
                    self._chunk_counts += self.chunk_composition(c)
                self._next = nxt * self.chunk_size
        return out

    def _read_run(self, start: int, tasks: np.ndarray, rows: np.ndarray) -> List[Example]:
        """Examples `start, start + 1, ...` of (task, row) pairs; rows are read file by file in
        offset order, and counted once all are read."""
        benchmark_ids = self.mixture.benchmark_of_task[tasks]
        task_list, row_list = tasks.tolist(), rows.tolist()
        read: List[Any] = [None] * len(task_list)
        reader, current = None, -1
        for k in np.lexsort((rows, tasks)).tolist():
            if task_list[k] != current:
                current = task_list[k]
                reader = self.bench.reader(self.mixture.tasks[current])
            read[k] = reader[row_list[k]]
        return [Example(index=start + k, task_id=t, benchmark_id=b, row=row)
                for k, (t, b, row) in enumerate(zip(task_list, benchmark_ids.tolist(), read))]

    def _identity(self) -> Dict[str, Any]:
        return {"seed": self.seed, "chunk_size": self.chunk_size, "mixture": self.mixture.fingerprint(),
                "num_tasks": len(self.mixture.tasks), "rank": self.rank, "world_size": self.world_size,
                "worker": self.worker, "num_workers": self.num_workers}

    def state_dict(self) -> Dict[str, Any]:
        """JSON-serializable, O(#tasks): the next index and S at its chunk start."""
        return {"version": STATE_VERSION, **self._identity(), "next_index": self._next,
                "chunk_counts": self._chunk_counts.tolist()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ConfigError(f"stream state version {state.get('version')!r} is not {STATE_VERSION}")
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise mismatch_error("data stream", diff, STATE_WORDS)
        counts = np.asarray(state["chunk_counts"], dtype=np.int64)
        if counts.shape != self._chunk_counts.shape:
            raise ConfigError(f"stream state has {counts.shape[0]} task counters, "
                              f"the mixture has {self._chunk_counts.shape[0]} tasks")
        index = int(state["next_index"])
        if self.owner(index) != self.partition:
            raise ConfigError(f"stream state next_index {index} belongs to partition {self.owner(index)}, "
                              f"not {self.partition}")
        self._next = index
        self._chunk_counts = counts
        self._cache.clear()
