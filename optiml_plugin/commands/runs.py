"""`optiml runs [DIR]`: the training, evaluation and demo runs under a folder, with their key settings and
results, one line each (read from the files every run writes; nothing is loaded)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("runs", help="list the runs in a folder with their key settings and results",
                       description="Find training runs (train_config.yaml + log.jsonl), evaluation runs "
                                   "(results.json) and demo runs (report.json) under DIR and print one line "
                                   "each: settings (model, bench, steps, lr, shots) and results (last losses, "
                                   "level scores, verdicts).")
    p.add_argument("folder", nargs="?", default="runs", help="folder to search (default: runs)")
    p.add_argument("--depth", type=int, default=4, help="how many folder levels to search")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optiml_plugin.errors import ConfigError
    from optiml_plugin.runs import find_runs, describe

    root = Path(args.folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: no such folder")
    found = find_runs(root, args.depth)
    for run_dir, kind in found:
        print(describe(run_dir, kind, root))
    print(f"optiml runs: {len(found)} run{'s' if len(found) != 1 else ''} under {root}")
    return 0
