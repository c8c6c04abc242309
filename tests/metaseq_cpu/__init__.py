"""Helpers to run the real metaseq on CPU in checks (never imported by optiml_plugin).

Imported by its own name (`metaseq_cpu`, with tests/ on sys.path), never as `tests.metaseq_cpu`:
metaseq's editable install puts metaseq's repository on sys.path, and its `tests` package would
shadow this repository's."""
from __future__ import annotations

import contextlib
import importlib.util
from datetime import timedelta
from pathlib import Path
from typing import Iterator

# what a test marked `metaseq` prints when it skips: the install block it points to is the one that
# builds the environment these tests pass in (tests/test_docs.py checks the heading exists)
INSTALL_SECTION = "Install into a metaseq environment"
SKIP_REASON = f"metaseq is not installed: build the environment of docs/metaseq.md, '{INSTALL_SECTION}'"


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


@contextlib.contextmanager
def one_rank_world(store_dir: Path) -> Iterator[None]:
    """This process as a one-rank gloo world with metaseq's model-parallel groups (size 1) and RNG
    tracker: what building metaseq's Megatron layers needs."""
    import torch.distributed as dist
    from metaseq.modules.megatron import mpu

    dist.init_process_group("gloo", init_method=f"file://{store_dir / 'store'}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    mpu.initialize_model_parallel(1)
    mpu.model_parallel_cuda_manual_seed(0)
    try:
        yield
    finally:
        mpu.destroy_model_parallel()
        dist.destroy_process_group()
