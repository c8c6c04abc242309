"""Run the README's figures and print its "Measured figures" table (markdown): each figure's median
[min-max] over alternated runs, the load while it ran, the date, the machine.

    python benchmarks/readme_table.py                         # every default row (tens of minutes)
    python benchmarks/readme_table.py --quick                 # small sizes: checks the table, not a figure
    python benchmarks/readme_table.py --rows train,rank --repeats 5
    python benchmarks/readme_table.py --readme README.md      # also replace the README's table with it

Why: a figure typed by hand drifts from the code; this script is the only writer of the README's table.
Each row runs benchmark scripts of this folder as separate processes. Where a row compares variants
(in memory vs JSONL, bare Python vs `optiml --help`, ...) the variants alternate, A B B A A B ..., so load
from other processes and clock drift hit them alike; ratios are taken per pair. Scripts that alternate
internally (pipeline, training, TRL) run once per repeat. The load column gives the 1-minute load average
seen before and after the row's runs (the machine's cores are in the header). A row whose script says
SKIP (missing ../shared data, no trl) says so in its result. `--list` names the rows.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- readme_table.py: begin -->", "<!-- readme_table.py: end -->"
NUM = r"([-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?)"


@dataclass
class Run:
    """One process: its output (stdout and stderr) and wall seconds."""

    out: str
    wall: float


@dataclass
class Row:
    key: str
    figure: str
    aim: str
    variants: Callable[[bool, Path], Dict[str, List[str]]]    # (quick, cache) -> {variant: argv}
    metrics: Dict[str, str]                                    # name -> regex with one number group
    render: Callable[["Results"], str]
    repeats: int = 3                                           # default
    quick_repeats: int = 1                                     # with --quick
    exit_codes: Sequence[int] = (0,)                           # the script's exits that carry figures
    default: bool = True
    shown: List[str] = field(default_factory=list)             # the commands, for the table


class Results:
    """Per variant, per metric: the values of every repeat (in run order); ratios pair repeats."""

    def __init__(self, values: Dict[str, Dict[str, List[float]]], runs: Dict[str, List[Run]]) -> None:
        self.values, self.runs = values, runs

    def med(self, variant: str, metric: str, fmt: str = "{:,.0f}", spread: bool = True) -> str:
        return summarize(self.values[variant][metric], fmt, spread)

    def ratio(self, a: str, b: str, metric: str, fmt: str = "{:.2f}") -> str:
        """a / b per repeat (a pair), median [range]."""
        return summarize([x / y for x, y in zip(self.values[a][metric], self.values[b][metric])], fmt)

    def ratio_of(self, variant: str, a: str, b: str, fmt: str = "{:.2f}") -> str:
        """metric a / metric b of one variant, per run."""
        return summarize([x / y for x, y in zip(self.values[variant][a], self.values[variant][b])], fmt)

    def wall(self, variant: str) -> List[float]:
        return [r.wall for r in self.runs[variant]]


def summarize(values: Sequence[float], fmt: str = "{:,.0f}", spread: bool = True) -> str:
    mid = fmt.format(statistics.median(values))
    if not spread or len(values) < 2:
        return mid
    return f"{mid} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def python(*argv: str) -> List[str]:
    return [sys.executable, *argv]


def script(name: str, *argv: str) -> List[str]:
    return python(f"benchmarks/{name}", *argv)


def _pick(quick: bool, full: Sequence[str], small: Sequence[str]) -> List[str]:
    return list(small if quick else full)


# ---- the rows -----------------------------------------------------------------------------------

def _cli_render(r: Results) -> str:
    bare = [w * 1e3 for w in r.wall("bare")]
    cli = [w * 1e3 for w in r.wall("help")]
    return (f"bare Python {summarize(bare)} ms, `optiml --help` {summarize(cli)} ms "
            f"({summarize([c / b for c, b in zip(cli, bare)], '{:.2f}')}x)")


def _build_render(r: Results) -> str:
    return (f"{r.med('memory', 'rps')} records/s in memory; {r.med('jsonl', 'rps')} records/s through the "
            f"generic JSONL loader (JSONL / in memory: {r.ratio('jsonl', 'memory', 'rps')}x)")


def _scale_render(r: Results) -> str:
    return (f"{r.med('jsonl', 'records', '{:,.0f}', False)} records through the JSONL loader: "
            f"{r.med('jsonl', 'secs', '{:.1f}')} s, {r.med('jsonl', 'rps')} records/s, "
            f"{r.med('jsonl', 'pss', '{:.2f}')} GiB held at once (PSS of build + workers), rows of "
            f"{r.med('jsonl', 'row_bytes', '{:,.0f}', False)} bytes; the in-memory builder: "
            f"{r.med('memory', 'secs', '{:.1f}')} s, {r.med('memory', 'pss', '{:.2f}')} GiB including the "
            f"benchmark's own record list (JSONL / in memory records/s: {r.ratio('jsonl', 'memory', 'rps')}x)")


def _scale_1e7_render(r: Results) -> str:
    return (f"{r.med('jsonl', 'records', '{:,.0f}', False)} records: {r.med('jsonl', 'secs', '{:.0f}')} s, "
            f"{r.med('jsonl', 'rps')} records/s, {r.med('jsonl', 'pss', '{:.2f}')} GiB held at once")


def _resume_render(r: Results) -> str:
    return (f"{r.med('run', 'far', '{:.2f}')} ms vs {r.med('run', 'near', '{:.2f}')} ms "
            f"(far / near {r.ratio_of('run', 'far', 'near')}x)")


def _packing_render(r: Results) -> str:
    text = (f"synthetic: best-fit {r.med('run', 'syn_best', '{:.2f}', False)}% vs next-fit "
            f"{r.med('run', 'syn_next', '{:.2f}', False)}% non-pad")
    if "sni_best" in r.values["run"]:
        text += (f"; SNI sample: best-fit {r.med('run', 'sni_best', '{:.2f}', False)}% vs next-fit "
                 f"{r.med('run', 'sni_next', '{:.2f}', False)}%")
    else:
        text += "; SNI sample: not found (set OPTIML_SHARED), not measured"
    return text


def _pipeline_render(r: Results) -> str:
    counts = sorted(int(k.split("_")[1]) for k in r.values["run"] if k.startswith("wall_"))
    walls = " / ".join(r.med("run", f"wall_{n}", "{:.2f}") for n in counts)
    cpus = " / ".join(r.med("run", f"cpu_{n}", "{:.2f}") for n in counts)
    return f"at {' / '.join(f'{n:,}' for n in counts)} task files: CPU ratio {cpus}, wall {walls}"


def _mask_render(r: Results) -> str:
    names = (("positions", "positions"), ("flex", "FlexAttention block mask"), ("bool", "dense bool mask"),
             ("docsep", "vectorized doc-sep mask"), ("loop", "metaseq-style loop"))
    return "; ".join(f"{label} {r.med('run', key, '{:.2f}')} ms" for key, label in names if key in r.values["run"])


def _mask_training_render(r: Results) -> str:
    variant = next(iter(r.values))
    return (f"dense mask {r.med(variant, 'dense', '{:.2f}')}x, per-example attention "
            f"{r.med(variant, 'per_example', '{:.2f}')}x of plain causal (s/step)")


def _train_render(r: Results) -> str:
    parts = []
    for variant in r.values:
        label = f"{variant}: " if len(r.values) > 1 else ""
        parts.append(f"{label}{r.med(variant, 'speedup', '{:.2f}')}x "
                     f"({r.med(variant, 'packed', '{:,.1f}', False)} vs {r.med(variant, 'padded', '{:,.1f}', False)})")
    return "; ".join(parts)


def _rank_render(r: Results) -> str:
    return (f"{r.med('run', 'speedup', '{:.2f}')}x, same answers {r.med('run', 'agree', '{:.0f}', False)}/"
            f"{r.med('run', 'instances', '{:.0f}', False)}, max score difference "
            f"{r.med('run', 'diff', '{:.1e}', False)}")


def _trl_render(r: Results) -> str:
    variant = next(iter(r.values))
    return (f"optiml {r.med(variant, 'target', '{:.2f}', False)}x TRL's target tokens/s, "
            f"{r.med(variant, 'total', '{:.2f}', False)}x its tokens/s (median over the script's alternated pairs); "
            f"packed vs alone, max logit difference: optiml {r.med(variant, 'leak_ours', '{:.2g}', False)}, "
            f"TRL {r.med(variant, 'leak_trl', '{:.2g}', False)}")


def _suite_render(r: Results) -> str:
    counts = [f"{r.med('run', k, '{:.0f}', False)} {k}" for k in ("failed", "passed", "skipped")
              if k in r.values["run"]]
    return f"{', '.join(counts)} in {r.med('run', 'secs', '{:.0f}', False)} s"


# the pipeline script's closing table: "  2,000 |       0.76 |      0.80" (task files | wall | cpu)
PIPELINE_METRICS = {name: pattern for n in (28, 200, 448, 2000) for name, pattern in (
    (f"wall_{n}?", rf"^\s*{n:,}\s*\|\s*([\d.]+)\s*\|"), (f"cpu_{n}?", rf"^\s*{n:,}\s*\|\s*[\d.]+\s*\|\s*([\d.]+)"))}
MASK_TRAINING_METRICS = {"dense": r"^dense\s+[\d.]+ s/step.*?([\d.]+)x plain causal",
                         "per_example": r"^per_example\s+[\d.]+ s/step.*?([\d.]+)x plain causal"}
TRAIN_METRICS = {"packed": r"packed \+ document mask\s+([\d.]+) target",
                 "padded": r"one example per row, padded\s+([\d.]+) target",
                 "speedup": r"speed-up \(target tokens/s\): ([\d.]+)x"}
TRL_METRICS = {"target": r"optiml / TRL target tokens/s: ([\d.]+)", "total": r"optiml / TRL tokens/s: ([\d.]+)",
               "leak_ours": r"cross-example attention, optiml: max logit difference packed vs alone " + NUM,
               "leak_trl": r"cross-example attention, TRL: max logit difference packed vs alone " + NUM}
BUILD_METRICS = {"rps": r"throughput: ([\d,]+) records/s", "secs": r"build time: ([\d.]+) s",
                 "pss": r"peak memory at once \(PSS[^)]*\): ([\d.]+) GiB",
                 "row_bytes": r"disk: ([\d,]+) bytes per kept row", "records": r"records read: (\d+)"}
ROWS: List[Row] = [
    Row("cli", "start-up: `optiml --help` vs bare `python3 -c pass`", "within a few times bare Python",
        lambda quick, cache: {"bare": python("-c", "pass"), "help": python("-m", "optiml_plugin", "--help")},
        {}, _cli_render, repeats=10, quick_repeats=3),
    Row("build", "bench build throughput (50k records, 100 tasks, 2 workers)", "≥ 20k records/s",
        lambda quick, cache: {
            "memory": script("bench_build.py", *_pick(quick, [], ["--records", "5000", "--tasks", "20"])),
            "jsonl": script("bench_build.py", "--jsonl", *_pick(quick, [], ["--records", "5000", "--tasks", "20"]))},
        {"rps": BUILD_METRICS["rps"]}, _build_render, repeats=3),
    Row("build_scale", "bench build at scale (1e6 synthetic records, 500 tasks, 2 workers)",
        "peak < 2 GB, not growing with the records",
        lambda quick, cache: {
            "jsonl": script("bench_build.py", "--sizes", *_pick(quick, ["1000000", "--tasks", "500"],
                                                                ["20000", "--tasks", "20"])),
            "memory": script("bench_build.py", "--records", *_pick(quick, ["1000000", "--tasks", "500"],
                                                                   ["20000", "--tasks", "20"]))},
        BUILD_METRICS, _scale_render, repeats=2),
    Row("build_1e7", "bench build at 1e7 records (2,000 tasks, JSONL loader, 2 workers)", "peak < 2 GB",
        lambda quick, cache: {"jsonl": script("bench_build.py", "--sizes", *_pick(
            quick, ["10000000", "--tasks", "2000"], ["50000", "--tasks", "50"]))},
        BUILD_METRICS, _scale_1e7_render, repeats=1, default=False),
    Row("stream_resume", "stream resume at index 10^7 vs 10", "independent of index",
        lambda quick, cache: {"run": script("stream_resume.py", *_pick(quick, [], ["--tasks", "20", "--max-rows",
                                                                                  "1000", "--repeats", "2"]))},
        {"near": r"resume at index\s+10:\s+([\d.]+) ms wall",
         "far": r"resume at index\s+10,000,000:\s+([\d.]+) ms wall"},
        _resume_render, repeats=3),
    Row("packing", "packing efficiency at 2048: paper-like lengths (mean 258, std 572) and the SNI sample",
        "≥ 99% (best-fit)",
        lambda quick, cache: {"run": script("packing_efficiency.py", *_pick(
            quick, [], ["--synthetic", "5000", "--sni-examples", "3000"]))},
        {"syn_next": r"== synthetic[\s\S]*?\nsequential\s+([\d.]+)%",
         "syn_best": r"== synthetic[\s\S]*?\nbest_fit\(w=64\)\s+([\d.]+)%",
         "sni_next?": r"== SNI[\s\S]*?\nsequential\s+([\d.]+)%",
         "sni_best?": r"== SNI[\s\S]*?\nbest_fit\(w=64\)\s+([\d.]+)%"},
        _packing_render, repeats=1),
    Row("pipeline", "pipeline (read + sample + tokenize + pack) vs raw `tokenizers` encode, SNI sample over "
                    "N task files",
        "≥ 0.7 at 2,000 files",
        lambda quick, cache: {"run": script("pipeline_throughput.py", "--tasks", *_pick(
            quick, ["28,448,2000", "--batches", "120", "--repeats", "3"],
            ["28,200", "--batches", "10", "--repeats", "1", "--no-resume"]))},
        PIPELINE_METRICS,
        _pipeline_render, repeats=1),
    Row("mask_meta", "document-mask metadata, 8 × 2048", "no dense mask where avoidable",
        lambda quick, cache: {"run": script("mask_cost.py", *_pick(quick, [], ["--repeats", "2"]))},
        {"positions": r"segment ids -> positions \(O\(B x L\)\)\s+([\d.]+)",
         "flex?": r"FlexAttention block mask\s+([\d.]+)", "bool": r"dense bool mask \[B,1,L,L\]\s+([\d.]+)",
         "docsep": r"vectorized metaseq doc-sep mask \+ positions\s+([\d.]+)",
         "loop": r"metaseq per-batch loop \(float mask \+ positions\)\s+([\d.]+)"},
        _mask_render, repeats=3),
    Row("mask_training", "cost of masking in training, tiny OPT (2 × 1024)", "≤ 1.3x, < 1x when skipping blocks",
        lambda quick, cache: {"tiny": script("mask_cost_training.py", "--tokens-per-sample", "1024", "--rows", "2",
                                             "--steps", "1" if quick else "6", "--cache", str(cache))},
        MASK_TRAINING_METRICS, _mask_training_render, repeats=2),
    Row("mask_training_125m", "cost of masking in training, opt-125m shape (2 × 1024)",
        "≤ 1.3x, < 1x when skipping blocks",
        lambda quick, cache: {"opt-125m shape": script(
            "mask_cost_training.py", "--tokens-per-sample", "1024", "--rows", "2", "--steps", "1" if quick else "3",
            "--preset", "opt-125m", "--cache", str(cache))},
        MASK_TRAINING_METRICS, _mask_training_render, repeats=2),
    Row("train", "training throughput of the tiny OPT, packed vs padded (target tokens/s)", "≥ 2x",
        lambda quick, cache: {
            "4096-token vocabulary": script("train_throughput.py", "--tokenizer", "builtin", "--cache", str(cache),
                                            *_pick(quick, [], ["--steps", "1"])),
            "OPT's 50k vocabulary": script("train_throughput.py", "--cache", str(cache),
                                           *_pick(quick, [], ["--steps", "1"]))},
        TRAIN_METRICS, _train_render, repeats=3),
    Row("train_125m", "training throughput at the opt-125m shape, 2 × 1024, packed vs padded (target tokens/s)",
        "≥ 2x",
        lambda quick, cache: {"opt-125m shape": script("train_throughput.py", "--preset", "opt-125m", "--rows", "2",
                                                       "--steps", "1" if quick else "3", "--cache", str(cache))},
        TRAIN_METRICS, _train_render, repeats=2),
    Row("rank", "rank classification, packed tree mask vs one sequence per candidate", "≥ 2x",
        lambda quick, cache: {"run": script("rank_classification.py", *_pick(quick, [], ["--instances", "8"]))},
        {"speedup": r"speedup: ([\d.]+)x", "diff": r"max \|score diff\| " + NUM,
         "agree": r"same argmax (\d+)/\d+", "instances": r"same argmax \d+/(\d+)"},
        _rank_render, repeats=3),
    Row("trl", "optiml vs TRL's SFTTrainer, tiny OPT, 4 × 1024 (same model, examples, token budget)",
        "no cross-example attention; faster",
        lambda quick, cache: {"tiny OPT": script("trl_sft.py", "--cache", str(cache), *_pick(
            quick, [], ["--preset", "micro", "--rows", "1", "--tokens-per-sample", "256", "--steps", "1",
                        "--repeats", "1", "--tokenizer", "builtin"]))},
        TRL_METRICS, _trl_render, repeats=1),
    Row("trl_125m", "optiml vs TRL's SFTTrainer, opt-125m shape, 2 × 1024", "no cross-example attention; faster",
        lambda quick, cache: {"opt-125m shape": script(
            "trl_sft.py", "--cache", str(cache), "--preset", "opt-125m", "--rows", "2",
            "--steps", "1" if quick else "2", "--repeats", "1" if quick else "2")},
        TRL_METRICS, _trl_render, repeats=1),
    Row("suite", "test suite", "< 15 min",
        lambda quick, cache: {"run": python("-m", "pytest", "-q", "-p", "no:cacheprovider",
                                            *(["tests/test_cli_help.py"] if quick else []))},
        {"passed": r"(\d+) passed", "failed?": r"(\d+) failed", "skipped?": r"(\d+) skipped",
         "secs": r" in ([\d.]+)s"},
        _suite_render, repeats=1, exit_codes=(0, 1)),   # pytest exits 1 when a test fails: a result
]


# ---- running ------------------------------------------------------------------------------------

def run_once(argv: List[str], env: Dict[str, str], exit_codes: Sequence[int] = (0,)) -> Run:
    """One process from the repository root. (Its peak RSS is not taken: a child's ru_maxrss counts the
    forking parent's pages too, which would make bare Python and `optiml --help` look alike.)"""
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = proc.stdout.decode("utf-8", "replace")
    if proc.returncode not in exit_codes:
        raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{text[-3000:]}")
    return Run(text, wall)


def extract(row: Row, variant: str, text: str) -> Dict[str, float]:
    """Every metric of `row` from one run's output; a name ending in '?' is optional."""
    values = {}
    for name, pattern in row.metrics.items():
        optional = name.endswith("?")
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            if optional:
                continue
            raise RuntimeError(f"row {row.key}, {variant}: no match for {name} ({pattern!r}) in the output:\n"
                               f"{text[-3000:]}")
        values[name.rstrip("?")] = float(m.group(1).replace(",", ""))
    return values


def skipped(text: str) -> Optional[str]:
    """The script's own SKIP/SKIPPED line, if it measured nothing."""
    return next((ln for ln in text.splitlines() if ln.startswith("SKIP")), None)


def run_row(row: Row, quick: bool, repeats: int, cache: Path, env: Dict[str, str]) -> Dict[str, str]:
    variants = row.variants(quick, cache)
    names = list(variants)
    runs: Dict[str, List[Run]] = {n: [] for n in names}
    loads = [os.getloadavg()[0]]
    for i in range(repeats):
        for name in (names if i % 2 == 0 else names[::-1]):   # A B, B A, A B ...
            print(f"[{row.key}] {i + 1}/{repeats} {name}: {' '.join(variants[name][1:])}", file=sys.stderr, flush=True)
            runs[name].append(run_once(variants[name], env, row.exit_codes))
            loads.append(os.getloadavg()[0])
    shown = "; ".join(f"`python {' '.join(argv[1:])}`".replace(str(cache), "CACHE") for argv in variants.values())
    load = f"{min(loads):.1f}–{max(loads):.1f}"
    why = next((s for rs in runs.values() for s in [skipped(rs[0].out)] if s), None)
    if why:
        return {"result": f"skipped: {why}", "load": load, "command": shown, "n": "0"}
    values = {n: {} for n in names}   # type: Dict[str, Dict[str, List[float]]]
    for n in names:
        for r in runs[n]:
            for metric, v in extract(row, n, r.out).items():
                values[n].setdefault(metric, []).append(v)
    return {"result": row.render(Results(values, runs)), "load": load, "command": shown, "n": str(repeats)}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal")) / 2 ** 20
    except (OSError, StopIteration, ValueError):
        mem = float("nan")
    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return out.stdout.strip() + (" with local changes" if dirty else "")
    except OSError:
        return "unknown commit"


def table(rows: List[Row], results: Dict[str, Dict[str, str]], quick: bool, started: str,
          repeats: Optional[int], at_commit: str) -> str:
    lines = [f"Measured {started} UTC by `python benchmarks/readme_table.py{' --quick' if quick else ''}"
             f"{' --rows ' + ','.join(r.key for r in rows) if [r.key for r in rows] != DEFAULTS else ''}"
             f"{f' --repeats {repeats}' if repeats else ''}` "
             f"(commit {at_commit}) on {machine()}. Each result is the median [min–max] over n runs"
             f"{' (QUICK MODE: small sizes, not figures)' if quick else ''}; variants alternated; load is the "
             f"1-minute load average during the row.",
             "", "| figure | result | aim | n | load | command |", "|---|---|---|---|---|---|"]
    for row in rows:
        r = results[row.key]
        lines.append(f"| {row.figure} | {r['result']} | {row.aim} | {r['n']} | {r['load']} | {r['command']} |")
    return "\n".join(lines)


def replace_readme(path: Path, text: str) -> None:
    readme = path.read_text(encoding="utf-8")
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block to replace")
    head, rest = readme.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


DEFAULTS = [r.key for r in ROWS if r.default]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(DEFAULTS),
                    help=f"comma-separated rows (default: {','.join(DEFAULTS)}; also: "
                         f"{','.join(r.key for r in ROWS if not r.default)})")
    ap.add_argument("--quick", action="store_true", help="small sizes, one run each: checks the table, not figures")
    ap.add_argument("--repeats", type=int, default=None, help="runs per variant (default: each row's own)")
    ap.add_argument("--readme", type=Path, default=None, help="replace the table block of this README too")
    ap.add_argument("--list", action="store_true", help="print the rows and exit")
    args = ap.parse_args()
    by_key = {r.key: r for r in ROWS}
    if args.list:
        for r in ROWS:
            print(f"{r.key:<19} {'default' if r.default else 'opt-in ':<8} {r.figure}")
        return 0
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(by_key)}")
    rows = [by_key[k] for k in keys]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    at_commit = commit()   # the code measured: taken before the runs
    results, failed = {}, []
    with tempfile.TemporaryDirectory(prefix="optiml_readme_") as cache:
        for row in rows:
            repeats = args.repeats or (row.quick_repeats if args.quick else row.repeats)
            try:
                results[row.key] = run_row(row, args.quick, repeats, Path(cache), env)
            except RuntimeError as e:   # one broken row must not cost the others' runs
                print(f"[{row.key}] ERROR: {e}", file=sys.stderr, flush=True)
                failed.append(row.key)
                results[row.key] = {"result": "ERROR (see stderr)", "load": "", "command": "", "n": "0"}
            print(f"[{row.key}] {results[row.key]['result']}", file=sys.stderr, flush=True)
    text = table(rows, results, args.quick, started, args.repeats, at_commit)
    print(text)
    if failed:
        print(f"rows that failed: {', '.join(failed)}; the README was not changed", file=sys.stderr)
        return 1
    if args.readme:
        replace_readme(args.readme, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
