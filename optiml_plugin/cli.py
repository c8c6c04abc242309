"""The `optiml` command: one subcommand per module under `optiml_plugin/commands/`.

Why a registry: each subcommand module owns its arguments and imports its heavy dependencies
(torch, transformers) only when it runs, so `optiml --help` stays fast and works without them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from typing import List, Optional

from optiml_plugin import __version__
from optiml_plugin.errors import OptimlError


class HelpFormatter(argparse.HelpFormatter):
    """Appends an option's default to its help unless the help already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, (list, tuple)) and not default)):
            return text
        return text + " (default: %(default)s)"


def _parsers(parser: argparse.ArgumentParser) -> List[argparse.ArgumentParser]:
    """`parser` and every sub-parser under it."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                out += _parsers(sub)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optiml", description="OPT-IML instruction meta-learning")
    parser.add_argument("--version", action="version", version=f"optiml {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import optiml_plugin.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"optiml_plugin.commands.{info.name}")
        module.register(sub)
    for p in _parsers(parser):
        p.formatter_class = HelpFormatter
    return parser


SMALL_MACHINE_CPUS = 4


def quiet_progress_bars() -> None:
    """`--no-progress` silences the libraries' bars too (transformers' "Loading weights" and "Writing model
    shards", huggingface_hub's downloads): through the environment for what imports them later (and the
    demo's worker processes), directly for what is already imported."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Optional[List[str]] = None) -> int:
    # tokenizers' own thread pool competes with torch on a few cores; the user's setting wins
    if (os.cpu_count() or 1) <= SMALL_MACHINE_CPUS:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", False):
        quiet_progress_bars()
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
