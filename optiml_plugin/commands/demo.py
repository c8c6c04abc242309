"""`optiml demo`: build the built-in benchmark, train a tiny OPT, evaluate it, write a report (no downloads)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole job in minutes on a CPU: build, train a tiny OPT, evaluate, report")
    p.add_argument("--out", default=None, help="run directory (default runs/demo-<date>-<time>)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 1000; 30 with --quick)")
    p.add_argument("--quick", action="store_true", help="a smaller model, data and eval (about 10 s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the tiny model gains little from more, and on a "
                        "busy machine extra threads spin; 0 keeps torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.errors import ConfigError
    from optiml_plugin.local.demo import run_demo

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    out = run_demo(args.out, steps=args.steps, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                   threads=args.threads)
    print(f"optiml demo: report in {out / 'report.md'} "
          f"(also report.json, loss_curve.png; model in {out / 'train' / 'final'})")
    return 0
