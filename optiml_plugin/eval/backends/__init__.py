"""Model backends for the evaluator: the only part of `optiml_plugin.eval` that imports transformers."""
from __future__ import annotations
