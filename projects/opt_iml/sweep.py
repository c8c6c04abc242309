"""Launch the OPT-IML runs from this folder: `python projects/opt_iml/sweep.py --preset 30b --dry-run`.

The same as `optiml sweep ...` (the generic rendering lives in optiml_plugin/metaseq/sweep.py), reading the
presets of THIS folder (`presets/`), not the copy installed with the package: edit them here and run.
"""
from __future__ import annotations

import sys
from pathlib import Path

from optiml_plugin.cli import main

PRESETS = Path(__file__).resolve().parent / "presets"

if __name__ == "__main__":
    sys.exit(main(["sweep", "--preset-dir", str(PRESETS)] + sys.argv[1:]))
