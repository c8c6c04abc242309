"""`optiml-metaseq-train`: metaseq's training entry point with this plugin registered.

Why: an installed plugin should need no `--user-dir` path; this imports the adapter (which
registers the task and criterion) and hands the command line to `metaseq.cli.train`. It adds
`--user-dir <installed optiml_plugin>` so processes metaseq spawns (one per GPU) register the
plugin too, and marks that path as imported in this process (metaseq refuses to import a user
dir whose module name is already loaded). Importing this module needs no metaseq; running it
without metaseq exits with a clear message.
"""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import optiml_plugin

MISSING = ("optiml-metaseq-train needs metaseq (installed from https://github.com/facebookresearch/metaseq "
           "with fairscale; the PyPI package named `metaseq` is unrelated). See docs/metaseq.md.")


def main(argv: Optional[List[str]] = None) -> int:
    try:
        from metaseq.cli import train as metaseq_train
    except ImportError as err:
        print(f"error: {MISSING} ({err})", file=sys.stderr)
        return 2
    from metaseq import utils as metaseq_utils

    from optiml_plugin.metaseq import criterion, task  # noqa: F401  (register before parsing)

    args = list(sys.argv[1:] if argv is None else argv)
    plugin_dir = os.path.dirname(os.path.abspath(optiml_plugin.__file__))
    if "--user-dir" not in args and not any(a.startswith("--user-dir=") for a in args):
        args += ["--user-dir", plugin_dir]
    memo = getattr(metaseq_utils.import_user_module, "memo", set())
    memo.add(plugin_dir)
    metaseq_utils.import_user_module.memo = memo
    sys.argv = [sys.argv[0]] + args
    metaseq_train.cli_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
