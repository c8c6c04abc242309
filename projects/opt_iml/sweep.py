"""Launch the OPT-IML runs from this folder: `python projects/opt_iml/sweep.py --preset 30b --dry-run`.

The same as `optiml sweep ...`; the logic lives in optiml_plugin/sweep.py.
"""
from __future__ import annotations

import sys

from optiml_plugin.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep"] + sys.argv[1:]))
