"""The `optiml` command: one subcommand per module under `optiml_plugin/commands/`.

Why a registry: each subcommand module owns its arguments and imports its heavy dependencies
(torch, transformers) only when it runs, so `optiml --help` stays fast and works without them.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional

from optiml_plugin import __version__
from optiml_plugin.errors import OptimlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiml", description="OPT-IML instruction meta-learning")
    parser.add_argument("--version", action="version", version=f"optiml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import optiml_plugin.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"optiml_plugin.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except OptimlError as e:
        print(f"optiml: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a missing or unreadable path: one line, not a traceback
        from optiml_plugin.fsio import os_error_message

        print(f"optiml: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("optiml: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
