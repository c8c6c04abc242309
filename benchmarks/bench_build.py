"""Bench-build throughput (records/s), peak memory and disk bytes per row on a synthetic source, end to
end: planning, decontamination (all three checks), rendering and writing.

    python benchmarks/bench_build.py               # 50k records (default, ~seconds)
    python benchmarks/bench_build.py --records 1000000 --tasks 500
    python benchmarks/bench_build.py --sizes 100000,1000000 --tasks 500   # one process per size, via JSONL

Records are generated in memory (loader speed is a property of each source format, not of the
builder); `--jsonl` instead writes them to a generic JSONL file and builds through the loader.
`--sizes` runs each size in a fresh process through the JSONL loader (the way a real build reads),
so each peak (`ru_maxrss` of that process) belongs to that size alone. The build's worker processes
(`--workers`, default every core up to 8) report their own peak: the largest worker's is printed
beside the parent's, and parent + workers x largest bounds what the build held at once.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optiml_plugin.bench.build import build_bench, load_build_config  # noqa: E402
from optiml_plugin.bench.records import Record  # noqa: E402
from optiml_plugin.bench.workers import default_workers  # noqa: E402

WORDS = [f"w{i}" for i in range(5000)]
CATEGORIES = ["Question Answering", "Summarization", "Sentiment Analysis", "Text Categorization",
              "Question Generation", "Program Execution", "Named Entity Recognition", "Text Matching",
              "Word Semantics", "Textual Entailment"]  # SNI names, so the taxonomy knows them


def synthetic(n: int, tasks: int, seed: int):
    rng = random.Random(seed)
    per = max(1, n // tasks)
    for t in range(tasks):
        name = f"task{t:04d}"
        for i in range(per):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 60)))
            yield Record(benchmark=f"bench{t % 4}", task=name, category=CATEGORIES[t % len(CATEGORIES)],
                         sources=(name,),
                         instruction=f"Instruction of {name}: answer the question about the text.",
                         input=text, outputs=(rng.choice(WORDS),), id=f"{name}-{i}")


class PeakPss:
    """The largest proportional set size (PSS) of this process and its children together, sampled every
    0.2 s from /proc (Linux): what the build holds at once, pages shared after a fork counted once."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _pss(pid: str) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                return sum(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
        except OSError:
            return 0

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(0.2):
            pids = [me]
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[1] == me:
                            pids.append(pid)
                except (OSError, IndexError):
                    pass
            self.peak = max(self.peak, sum(self._pss(p) for p in pids))

    def __enter__(self) -> "PeakPss":
        if os.path.exists("/proc/self/smaps_rollup"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--jsonl", action="store_true", help="go through the generic JSONL loader")
    ap.add_argument("--sizes", default="", help="comma-separated record counts, one process each (JSONL)")
    ap.add_argument("--workers", type=int, default=None, help="build processes (default: every core, <= 8)")
    args = ap.parse_args()
    if args.sizes:
        for n in (int(float(x)) for x in args.sizes.split(",")):
            print(f"--- {n:,} records, {args.tasks} tasks", flush=True)
            more = ["--workers", str(args.workers)] if args.workers else []
            subprocess.run([sys.executable, __file__, "--records", str(n), "--tasks", str(args.tasks),
                            "--jsonl"] + more, check=True)
        return
    heldout = [f"task{t:04d}" for t in range(0, args.tasks, 10)]
    raw = {"sources": [{"type": "builtin"}], "seed": 0,
           "split": {"heldout_tasks": heldout, "heldout_categories": ["Textual Entailment"],
                     "heldout_valid": 10, "heldout_test": 10, "eval_valid": 50, "eval_test": 50}}
    with tempfile.TemporaryDirectory() as tmp:
        records = None
        if args.jsonl:
            path = Path(tmp) / "data.jsonl"
            with path.open("w", encoding="utf-8") as f:
                for r in synthetic(args.records, args.tasks, 0):
                    f.write(json.dumps({"benchmark": r.benchmark, "task": r.task, "category": r.category,
                                        "source": r.sources[0], "instruction": r.instruction,
                                        "input": r.input, "outputs": list(r.outputs), "id": r.id}) + "\n")
            raw["sources"] = [{"type": "generic", "path": str(path)}]
        else:
            records = list(synthetic(args.records, args.tasks, 0))
        config = load_build_config(raw)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start, cpu = time.perf_counter(), time.process_time()
        kwargs = {} if args.workers is None else {"workers": args.workers}
        with PeakPss() as pss:
            m = build_bench(config, Path(tmp) / "bench", records=records, progress=False, **kwargs)
        secs, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        workers = args.workers or default_workers()
        files = list((Path(tmp) / "bench").glob("*/00/*.jsonl"))  # split files, not the review files
        bench_bytes = sum(p.stat().st_size for p in files)
        index_bytes = sum(os.path.getsize(f"{p}.idx") for p in files)
        source_bytes = (Path(tmp) / "data.jsonl").stat().st_size if args.jsonl else 0
    acc = m["accounting"]
    print(f"records read: {acc['read']}  kept: {acc['kept']}  removed: {acc['removed']}")
    print(f"tasks: {len(m['tasks'])}  n-gram pairs checked: {m['decontamination']['ngram']['pairs_checked']}")
    print(f"build time: {secs:.2f} s  throughput: {acc['read'] / secs:,.0f} records/s "
          f"({'generic JSONL loader' if args.jsonl else 'in-memory records'})")
    cpu_all = cpu + child.ru_utime + child.ru_stime
    print(f"CPU time: {cpu_all:.2f} s ({cpu:.2f} s in the parent; {acc['read'] / cpu_all:,.0f} records per "
          f"CPU-second; wall-clock figures drop when other processes share the cores)")
    print(f"peak memory (ru_maxrss): parent {peak / 2**20:.2f} GiB ({(peak - before) * 1024 / acc['read']:,.0f} "
          f"bytes per record above the {before / 2**10:,.0f} MiB before the build), largest worker "
          f"{child.ru_maxrss / 2**20:.2f} GiB; at most {(peak + workers * child.ru_maxrss) / 2**20:.2f} GiB "
          f"at once with {workers} workers")
    if pss.peak:
        print(f"peak memory at once (PSS of the build and its workers, sampled every 0.2 s): "
              f"{pss.peak / 2**30:.2f} GiB")
    print(f"disk: {bench_bytes / acc['kept']:,.0f} bytes per kept row in JSONL (+{index_bytes / acc['kept']:.0f} "
          f"index)" + (f"; source JSONL {source_bytes / acc['read']:,.0f} bytes per record, bench/source "
                       f"{bench_bytes / acc['kept'] / (source_bytes / acc['read']):.2f}x" if source_bytes else ""))


if __name__ == "__main__":
    main()
