"""Evaluator for the three generalization levels (`optiml eval`); see docs/evaluation.md.

The core here imports neither transformers nor metaseq; model backends live in `eval/backends/`.
"""
from __future__ import annotations
