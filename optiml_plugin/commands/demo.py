"""`optiml demo`: build the built-in benchmark, train a tiny OPT, evaluate it, write a report (no downloads)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from optiml_plugin.commands import add_common

DESCRIPTION = """The whole job on a CPU with no data and no downloads: build the built-in benchmark (word-list
tasks with held-out tasks and a held-out category), train a tiny OPT on several seeds (side by side on the
machine's cores), evaluate each trained model and its untrained initialization on the three generalization
levels, and write report.md (per level: chance, untrained and trained scores with task-level 95% intervals,
the spread over seeds, a verdict; per task; loss curves in bits per target token)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job in minutes on a CPU: build, train a tiny OPT, evaluate, report",
                       description=DESCRIPTION)
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1000; 30 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smaller model, data and eval (about 10 s a seed)")
    p.add_argument("--seeds", type=int, default=3,
                   help="training seeds (--seed, --seed + 1, ...); the verdict needs the gain on most of them")
    p.add_argument("--jobs", type=int, default=0,
                   help="seeds trained at once (default 0: all of them, one process each)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per seed (default 1: the tiny model gains little from more, and on a "
                        "busy machine extra threads spin; 0 keeps torch's default)")
    add_common(p, out_help="run directory (default: runs/demo-<date>-<time>)", seed_default=1,
               seed_help="seed of the bench and of the first training run (initialization, data order, bootstrap)")
    p.set_defaults(func=run)


def check_out(out: Path) -> None:
    """Refuse, before anything is written, an `--out` that holds something other than an earlier demo:
    every demo run starts with its bench in `OUT/bench`, and its training run is `OUT/train`."""
    from optiml_plugin.bench.outdir import is_bench
    from optiml_plugin.errors import ConfigError

    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a folder; choose another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not is_bench(out / "bench"):
        raise ConfigError(f"--out {out} is not empty and is not an earlier demo run (no optiml bench in "
                          f"{out / 'bench'}); the demo writes only into an empty folder or its own run: "
                          f"choose another --out")
    train = out / "train"
    if train.exists() and not (train / "train_config.yaml").is_file():
        raise ConfigError(f"{train} exists and is not a training run; the demo replaces only its own "
                          f"output: choose another --out")


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.errors import ConfigError
    from optiml_plugin.demo import run_demo
    from optiml_plugin.outlock import locked

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.jobs < 0:
        raise ConfigError(f"--jobs must be >= 0, got {args.jobs}")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    check_out(out)
    with locked(out, "optiml demo"):
        out = run_demo(out, steps=args.steps, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                       threads=args.threads, seeds=args.seeds, jobs=args.jobs or None)
    import json

    from optiml_plugin.demo import summary_table, verdicts

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print("\n".join(["", f"Test split, seeds {', '.join(map(str, report['seeds']))}; 95% task-level bootstrap "
                         "intervals in brackets:"] + summary_table(report["across_seeds"])
                    + [""] + verdicts(report["across_seeds"]) + [""]))
    print(f"optiml demo: report in {out / 'report.md'} (charts levels.png, loss_curve.png; numbers in "
          f"report.json; per seed: seed_<s>/eval, seed_<s>/train/final) in {report['timings']['total_s']:.0f} s")
    return 0
