"""Print the example stream's resume cost at index 10 vs 10^7 (must not depend on the index) and
its throughput (examples/s with rows read and parsed, and task draws/s without reading).

    python benchmarks/stream_resume.py                      # synthetic bench, 100 tasks
    python benchmarks/stream_resume.py --tasks 2000 --max-rows 20000 --far 100000000
    python benchmarks/stream_resume.py --bench BENCH_DIR --split train

Why: training resumes from `ExampleStream.state_dict()` at any step; the cost must stay that of one
chunk (O(chunk_size + #tasks)), never grow with how far training got.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from optiml_plugin.benchfiles import Bench  # noqa: E402
from optiml_plugin.data.mixture import Mixture, MixtureConfig  # noqa: E402
from optiml_plugin.data.stream import DEFAULT_CHUNK_SIZE, ExampleStream  # noqa: E402


def synthetic_bench(root: Path, tasks: int, max_rows: int, seed: int) -> Path:
    """Heavy-tailed task sizes (log-normal, like the paper's mix of tiny and 100k-example tasks)."""
    from bench_factory import make_bench
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(5.5, 1.5, size=tasks).astype(int), 1, max_rows)
    specs = [{"benchmark": f"bench{i % 7}", "category": f"cat{i % 13}", "task": f"task{i}", "n": int(n)}
             for i, n in enumerate(sizes)]
    return make_bench(root, specs)


def state_at(stream: ExampleStream, index: int) -> Dict[str, Any]:
    """The stream's state at the start of its partition's first chunk at or after `index`, built from
    the public chunk compositions (S = the sum of every earlier chunk's)."""
    chunk = -(-index // stream.chunk_size)
    chunk += (stream.partition - chunk) % stream.num_partitions
    counts = np.zeros(len(stream.mixture.tasks), dtype=np.int64)
    for c in range(chunk):
        counts += stream.chunk_composition(c)
    return {**stream.state_dict(), "next_index": chunk * stream.chunk_size, "chunk_counts": counts.tolist()}


def resume_seconds(bench: Bench, mixture: Mixture, args: argparse.Namespace, index: int) -> Tuple[float, float]:
    """Median (wall, CPU) time of: new stream, load a state saved at `index`, yield the first example.

    CPU time is printed beside wall time because a shared machine inflates wall time."""
    src = ExampleStream(bench, mixture, seed=args.seed, chunk_size=args.chunk_size, rank=args.partitions - 1,
                        world_size=args.partitions)
    state = state_at(src, index)  # not timed: training gets it from a checkpoint
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        s = ExampleStream(bench, mixture, seed=args.seed, chunk_size=args.chunk_size, rank=args.partitions - 1,
                          world_size=args.partitions)
        s.load_state_dict(state)
        next(s)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="an existing bench directory (default: a synthetic one)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--tasks", type=int, default=100, help="synthetic bench: number of tasks")
    ap.add_argument("--max-rows", type=int, default=5000, help="synthetic bench: largest task")
    ap.add_argument("--eps", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    ap.add_argument("--partitions", type=int, default=1, help="world_size x workers for the measurement")
    ap.add_argument("--near", type=int, default=10)
    ap.add_argument("--far", type=int, default=10 ** 7)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--examples", type=int, default=20000, help="examples to read for the throughput")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.bench or synthetic_bench(Path(tmp), args.tasks, args.max_rows, args.seed)
        bench = Bench(root)
        mixture = Mixture.from_bench(bench, MixtureConfig(None, eps=args.eps), split=args.split)
        print(f"bench {root if args.bench else '(synthetic)'}: {len(mixture.tasks)} tasks, "
              f"{int(mixture.sizes.sum())} examples; chunk {args.chunk_size}; partitions {args.partitions}")
        near = resume_seconds(bench, mixture, args, args.near)
        far = resume_seconds(bench, mixture, args, args.far)
        for index, (wall, cpu) in ((args.near, near), (args.far, far)):
            print(f"resume at index {index:>13,}: {wall * 1e3:8.2f} ms wall, {cpu * 1e3:8.2f} ms CPU")
        print(f"ratio far/near: {far[0] / near[0]:.2f} wall, {far[1] / near[1]:.2f} CPU")

        t0 = time.perf_counter()
        for task_file in mixture.tasks:  # load every offset index once, outside the steady state
            bench.reader(task_file)
        print(f"opening {len(mixture.tasks)} offset indexes: {time.perf_counter() - t0:.2f} s")
        s = ExampleStream(bench, mixture, seed=args.seed, chunk_size=args.chunk_size, world_size=args.partitions)
        t0 = time.perf_counter()
        for _ in range(args.examples):
            next(s)
        dt = time.perf_counter() - t0
        print(f"iteration with rows read: {args.examples / dt:,.0f} examples/s")
        s = ExampleStream(bench, mixture, seed=args.seed, chunk_size=args.chunk_size)
        draws = 20 * args.chunk_size
        t0 = time.perf_counter()
        for c in range(20):
            s._chunk(c)  # tasks and rows of a chunk, vectorized
        dt = time.perf_counter() - t0
        print(f"task and row draws (no reading): {draws / dt:,.0f} draws/s")
        bench.close()


if __name__ == "__main__":
    main()
