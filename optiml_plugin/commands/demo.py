"""`optiml demo`: build the built-in benchmark, train a tiny OPT, evaluate it, write a report (no downloads)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from optiml_plugin.commands import add_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job in minutes on a CPU: build, train a tiny OPT, evaluate, report")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1000; 30 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smaller model, data and eval (about 10 s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tiny model gains little from more, and on a "
                        "busy machine extra threads spin; 0 keeps torch's default)")
    add_common(p, out_help="run directory (default: runs/demo-<date>-<time>)", seed_default=1,
               seed_help="seed of the bench, the initialization, the data order and the bootstrap")
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
    from optiml_plugin.local.demo import run_demo
    from optiml_plugin.outlock import locked

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    out = Path(args.out) if args.out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    check_out(out)
    with locked(out, "optiml demo"):
        out = run_demo(out, steps=args.steps, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                       threads=args.threads)
    import json

    from optiml_plugin.local.demo import summary_table, verdicts

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print("\n".join(["", "Test split, 95% bootstrap intervals in brackets:"] + summary_table(report["intervals"])
                    + [""] + verdicts(report["intervals"]) + [""]))
    print(f"optiml demo: report in {out / 'report.md'} "
          f"(charts levels.png, loss_curve.png; numbers in report.json; model in {out / 'train' / 'final'})")
    return 0
