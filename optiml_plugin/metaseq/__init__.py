"""metaseq adapter: registers task `instruction_meta_learning` and criterion `target_only_cross_entropy`.

Why: `metaseq-train --user-dir <optiml_plugin>` imports the package, which imports this one when
metaseq is importable; the pure helpers beside task.py/criterion.py (options, batches, iterator,
lossmath, wiring) import no metaseq and can be used and tested anywhere.
"""
from __future__ import annotations

import importlib.util


def _metaseq_available() -> bool:
    try:
        return importlib.util.find_spec("metaseq.tasks") is not None
    except (ImportError, ValueError):
        return False


if _metaseq_available():
    from optiml_plugin.metaseq import criterion, task  # noqa: F401  (register on import)
