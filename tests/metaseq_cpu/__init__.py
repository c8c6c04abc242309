"""Helpers to run the real metaseq on CPU in checks (never imported by optiml_plugin)."""
from __future__ import annotations

import importlib.util


def has_metaseq() -> bool:
    """Whether the real metaseq is installed (found without importing it)."""
    try:
        return importlib.util.find_spec("metaseq") is not None
    except (ImportError, ValueError):
        return False


def install_if_present() -> None:
    """Where the real metaseq is installed without its CUDA kernels (the CPU check environment of
    docs/metaseq.md), metaseq cannot even be imported, and importing optiml_plugin imports it (to
    register the task): install the CPU stand-ins first. Elsewhere (CI, no metaseq) this does nothing.
    Called by conftest.py, and by test modules whose spawned workers import optiml_plugin."""
    if has_metaseq():
        from metaseq_cpu import standins

        standins.install()
