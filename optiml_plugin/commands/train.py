"""`optiml train CONFIG`: the single-machine (or torchrun) trainer on transformers' OPT."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train OPT on a bench (one machine; several GPUs via torchrun)",
                       description="Train a transformers OPT model on a bench directory. Config keys: "
                                   "docs/local_training.md; example: configs/train_tiny.yaml.")
    p.add_argument("config", help="YAML training config")
    p.add_argument("--resume", action="store_true",
                   help="continue exactly from the newest checkpoint in run.out_dir (from step 0 if none)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (YAML-parsed), e.g. --set optim.max_update=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.recipe import load_config
    from optiml_plugin.local.trainer import Trainer

    config = load_config(args.config, args.overrides)
    trainer = Trainer(config, resume=args.resume)
    final = trainer.train()
    if trainer.dist.is_main:
        print(f"optiml train: final model and tokenizer in {final}; log in {trainer.log_path}")
    return 0
