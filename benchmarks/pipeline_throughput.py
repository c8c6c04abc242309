"""Print end-to-end pipeline throughput (read + sample + tokenize + pack + collate) in tokens/s, and
its ratio to raw `tokenizers` batch-encode throughput on the same text (aim >= 0.7).

    python benchmarks/pipeline_throughput.py                     # SNI sample bench, 60 batches of 8 x 2048
    python benchmarks/pipeline_throughput.py --bench BENCH_DIR --batches 500
    python benchmarks/pipeline_throughput.py --synthetic        # bench_factory rows, builtin tokenizer
    python benchmarks/pipeline_throughput.py --tasks 28,448,2000  # the same rows spread over N task files

The bench defaults to one built in a temporary directory from ../shared/data/sni with the OPT BPE.
The raw baseline encodes exactly the (src, tgt) strings the pipeline consumed, already in memory,
in batches of the pipeline's encode chunk: the work no pipeline can avoid.
Only `tokenizers` runs on the pipeline's background thread; reading, item making, packing and
collate run on the caller's thread while it encodes, so the wall ratio gains from a spare core.
With the load average at or above the core count there is none, and wall and cpu ratios agree.
Pipeline and raw runs alternate (`--repeats`, best of each) so both see the same load.
`--tasks N,...` hard-links the bench's train files round-robin into N task files (same text, same
mixture weights per row), so the ratio at each N isolates what the number of files costs the reader.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from optiml_plugin.benchfiles import MANIFEST, TRAIN_SPLIT, Bench, file_stem, split_path  # noqa: E402
from optiml_plugin.data.mixture import Mixture, MixtureConfig  # noqa: E402
from optiml_plugin.data.packing import PackingConfig  # noqa: E402
from optiml_plugin.data.pipeline import DEFAULT_ENCODE_CHUNK, PackedBatches  # noqa: E402
from optiml_plugin.data.stream import ExampleStream  # noqa: E402
from optiml_plugin.data.tokenizer import OptTokenizer, join_texts  # noqa: E402

SHARED = Path(os.environ.get("OPTIML_SHARED", REPO.parent / "shared")) / "data"


def build_sni_bench(root: Path, sni: Path) -> Path:
    from optiml_plugin.bench.build import build_bench, load_build_config
    config = load_build_config({"sources": [{"type": "sni", "path": str(sni / "tasks")}],
                                "split": {"sni_split_dir": str(sni / "splits" / "default")}, "seed": 0})
    build_bench(config, root, progress=False)
    return root


def build_synthetic_bench(root: Path) -> Path:
    from bench_factory import make_bench
    specs = [{"benchmark": f"b{i % 4}", "category": f"c{i % 5}", "task": f"t{i}", "n": 300 + 40 * i}
             for i in range(40)]
    return make_bench(root, specs)


def spread_over_tasks(root: Path, out: Path, n: int) -> Path:
    """A bench at `out` whose N train task files are hard links of `root`'s, assigned round-robin."""
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    train = [t for t in manifest["tasks"] if TRAIN_SPLIT in t["files"]]
    tasks = []
    for k in range(n):
        base = train[k % len(train)]
        name = f"{base['task']}_copy{k}"
        path = split_path(out, TRAIN_SPLIT, file_stem(base["benchmark"], base["category"], name))
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", ".idx"):
            os.link(f"{root / base['files'][TRAIN_SPLIT]}{suffix}", f"{path}{suffix}")
        tasks.append({**base, "task": name, "files": {TRAIN_SPLIT: path.relative_to(out).as_posix()},
                      "counts": {TRAIN_SPLIT: base["counts"][TRAIN_SPLIT]}})
    manifest["tasks"] = sorted(tasks, key=lambda t: Path(t["files"][TRAIN_SPLIT]).name)
    (out / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return out


def consumed_texts(stream: ExampleStream, upto: int) -> List[Tuple[str, str]]:
    return [(ex.row["src"], ex.row["tgt"]) for ex in (stream.example(i) for i in range(upto))]


def measure(root: Path, tokenizer: OptTokenizer, args: argparse.Namespace) -> Tuple[float, float]:
    """Print the pipeline's and the raw encode's throughput on bench `root`; returns the (wall, cpu) ratios."""
    bench = Bench(root)
    mixture = Mixture.from_bench(bench, MixtureConfig(eps=4096))
    print(f"bench {root}: {len(mixture.tasks)} train tasks; tokenizer {tokenizer.origin}")
    packing = PackingConfig(tokens_per_sample=args.tokens_per_sample, strategy=args.strategy)
    print(f"load average before: {'/'.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")
    flat: List[str] = []
    best = {"wall": float("inf"), "cpu": float("inf"), "raw_wall": float("inf"), "raw_cpu": float("inf")}
    for rep in range(args.repeats):  # pipeline and raw runs alternate, so both see the same load
        stream = ExampleStream(bench, mixture, seed=args.seed)
        pipe = PackedBatches(stream, tokenizer, packing, args.batch_size, args.seed,
                             encode_chunk=args.encode_chunk)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.batches):
            next(pipe)
        state = pipe.state_dict()  # waits for the chunk the background thread is encoding
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        read = stream.next_index
        tokens = int(pipe.stats.tokens)   # in the batches yielded (examples still held are not counted)
        if not flat:
            flat = [x for s, t in consumed_texts(stream, read) for x in join_texts(s, t)]
        step = 2 * args.encode_chunk
        start, raw_cpu = time.perf_counter(), time.process_time()
        raw_tokens = sum(len(ids) for k in range(0, len(flat), step)
                         for ids in tokenizer.encode_batch(flat[k:k + step]))
        raw_wall, raw_cpu = time.perf_counter() - start, time.process_time() - raw_cpu
        # the pipeline's count also has one </s> per example (and BOS for empty sources)
        raw_rate = (raw_tokens + read) / raw_wall
        print(f"run {rep + 1}: pipeline {tokens / wall:,.0f} tokens/s ({tokens} tokens, {read} examples, "
              f"{wall:.2f} s, cpu {cpu:.2f} s); raw encode_batch {raw_rate:,.0f} tokens/s "
              f"({raw_wall:.2f} s, cpu {raw_cpu:.2f} s); ratio wall {tokens / wall / raw_rate:.2f}, "
              f"cpu {raw_cpu / cpu:.2f}")
        for key, value in (("wall", wall), ("cpu", cpu), ("raw_wall", raw_wall), ("raw_cpu", raw_cpu)):
            best[key] = min(best[key], value)
    rate, raw_rate = tokens / best["wall"], (raw_tokens + read) / best["raw_wall"]
    print(f"pipeline: {args.batches} batches of {args.batch_size} x {args.tokens_per_sample}, "
          f"{read} examples read, {tokens} tokens, best of {args.repeats}: {best['wall']:.2f} s "
          f"(cpu {best['cpu']:.2f} s): {rate:,.0f} tokens/s; packing non-pad {pipe.stats.non_pad_fraction:.2%}")
    print(f"raw tokenizers encode_batch on the same text, best of {args.repeats}: {raw_tokens} tokens in "
          f"{best['raw_wall']:.2f} s (cpu {best['raw_cpu']:.2f} s): {raw_rate:,.0f} tokens/s")
    ratios = (rate / raw_rate, best["raw_cpu"] / best["cpu"])
    print(f"ratio pipeline / raw (best / best): wall {ratios[0]:.2f}, cpu {ratios[1]:.2f} "
          f"(aim >= 0.7; on a shared machine wall figures swing with contention, cpu ones less)")
    if args.resume:
        fresh = PackedBatches(ExampleStream(bench, mixture, seed=args.seed), tokenizer, packing,
                              args.batch_size, args.seed, encode_chunk=args.encode_chunk)
        start = time.perf_counter()
        fresh.load_state_dict(state)
        next(fresh)
        print(f"resume after {args.batches} batches: re-read {pipe.held_examples} held examples "
              f"(packer window + shuffle buffer + pending), load + first batch "
              f"{time.perf_counter() - start:.2f} s; bounded by the buffers, not by the index")
    print(f"load average after: {'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=Path, help="an existing bench (default: built from the SNI sample)")
    ap.add_argument("--synthetic", action="store_true", help="use bench_factory rows + builtin tokenizer")
    ap.add_argument("--tasks", default="", help="comma-separated task-file counts, e.g. 28,448,2000")
    ap.add_argument("--bpe", type=Path, default=SHARED / "opt-bpe")
    ap.add_argument("--sni", type=Path, default=SHARED / "sni")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tokens-per-sample", type=int, default=2048)
    ap.add_argument("--strategy", default="best_fit", choices=["best_fit", "sequential"])
    ap.add_argument("--encode-chunk", type=int, default=DEFAULT_ENCODE_CHUNK)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="alternating pipeline/raw runs; best of each")
    ap.add_argument("--no-resume", dest="resume", action="store_false", help="skip the resume timing")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.bench:
            root = args.bench
        elif args.synthetic or not (args.sni / "tasks").is_dir():
            root = build_synthetic_bench(Path(tmp) / "bench")
        else:
            root = build_sni_bench(Path(tmp) / "bench", args.sni)
        if args.synthetic or not args.bpe.is_dir():
            bench = Bench(root)
            texts = [t for tf in bench.task_files("train") for i in range(min(tf.count, 50))
                     for t in (bench.read(tf, i)["src"], bench.read(tf, i)["tgt"])]
            tokenizer = OptTokenizer.builtin(texts, vocab_size=8000)
        else:
            tokenizer = OptTokenizer.from_dir(args.bpe)
        counts = [int(n) for n in args.tasks.split(",") if n.strip()]
        if not counts:
            measure(root, tokenizer, args)
            return
        ratios = {n: measure(spread_over_tasks(root, Path(tmp) / f"spread{n}", n), tokenizer, args)
                  for n in counts}
        print("task files | ratio wall | ratio cpu   (aim >= 0.7 at 2,000 files)")
        for n, (wall, cpu) in ratios.items():
            print(f"{n:>10,} | {wall:10.2f} | {cpu:9.2f}")


if __name__ == "__main__":
    main()
