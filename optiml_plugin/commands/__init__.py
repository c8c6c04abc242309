"""Subcommands of `optiml`; each module defines `register(subparsers)` and sets `func` on its parser.

`add_common` gives every verb that does work the same three flags, so a user who learned them on
one verb can use them on the next.
"""
from __future__ import annotations

import argparse
from typing import Optional


def add_common(parser: argparse.ArgumentParser, out_help: str, seed_default: Optional[int],
               seed_help: str, out_required: bool = False, progress: bool = True) -> None:
    """--out DIR, --seed N and (for verbs that show progress bars) --no-progress, with the verb's own
    meaning and default."""
    parser.add_argument("--out", default=None, required=out_required, metavar="DIR", help=out_help)
    parser.add_argument("--seed", type=int, default=seed_default, help=seed_help)
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")
