"""`optiml demo`: build the built-in benchmark, train a tiny OPT, evaluate it, write a report (no downloads)."""
from __future__ import annotations

import argparse

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


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.errors import ConfigError
    from optiml_plugin.local.demo import run_demo

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    out = run_demo(args.out, steps=args.steps, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                   threads=args.threads)
    import json

    from optiml_plugin.local.demo import summary_table, verdicts

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    print("\n".join(["", "Test split, 95% bootstrap intervals in brackets:"] + summary_table(report["intervals"])
                    + [""] + verdicts(report["intervals"]) + [""]))
    print(f"optiml demo: report in {out / 'report.md'} "
          f"(charts levels.png, loss_curve.png; numbers in report.json; model in {out / 'train' / 'final'})")
    return 0
