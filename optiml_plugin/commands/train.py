"""`optiml train CONFIG`: the single-machine (or torchrun) trainer on transformers' OPT.

Rank 0 holds the run folder's lock (outlock.py) for the whole run, so a second job into the same
`run.out_dir` stops at once; the other ranks read only files rank 0 wrote atomically (tokenizer, checkpoints).
"""
from __future__ import annotations

import argparse
import json
import os

from optiml_plugin.commands import add_common


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train OPT on a bench (one machine; several GPUs via torchrun)",
                       description="Train a transformers OPT model on a bench directory. Config keys: "
                                   "docs/local_training.md; example: configs/train_tiny.yaml.")
    p.add_argument("config", help="YAML training config")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the newest checkpoint in run.out_dir (from step 0 if none)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and the bench, print the resolved recipe and the first batch's "
                        "stats, and stop (no model, nothing written)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (YAML-parsed), e.g. --set optim.max_update=50")
    add_common(p, out_help="run directory: checkpoints, log, final model (default: the config's run.out_dir)",
               seed_default=None, seed_help="seed of initialization and data order (default: the config's run.seed)")
    p.set_defaults(func=run)


def _flag_overrides(args: argparse.Namespace) -> list:
    """The common flags as `--set` overrides, applied after the user's own (JSON strings are YAML)."""
    out = []
    if args.out is not None:
        out.append(f"run.out_dir={json.dumps(args.out)}")
    if args.seed is not None:
        out.append(f"run.seed={args.seed}")
    if args.no_progress:
        out.append("run.progress=false")
    return out


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.recipe import load_config

    config = load_config(args.config, list(args.overrides) + _flag_overrides(args))
    if args.dry_run:
        from optiml_plugin.local.dry_run import dry_run

        print(dry_run(config))
        return 0
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun's other ranks: rank 0 holds the lock for them
        return _train(config, args.resume)
    from optiml_plugin.outlock import locked

    with locked(config.run.out_dir, "optiml train"):
        return _train(config, args.resume)


def _train(config, resume: bool) -> int:
    from optiml_plugin.local.trainer import Trainer

    trainer = Trainer(config, resume=resume)
    final = trainer.train()
    if trainer.dist.is_main:
        print(f"optiml train: final model and tokenizer in {final}; log in {trainer.log_path}")
    return 0
