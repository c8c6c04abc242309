"""Shared fixtures: where ../shared is, and skips that say why when it is not there."""
from __future__ import annotations

import os
from pathlib import Path

import metaseq_cpu
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    return Path(os.environ.get("OPTIML_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def sni_dir() -> Path:
    """The real Super-NaturalInstructions sample (../shared/data/sni); skipped when absent."""
    path = shared_root() / "data" / "sni"
    if not (path / "tasks").is_dir():
        pytest.skip(f"real SNI sample not found at {path} (set OPTIML_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def opt_bpe_dir() -> Path:
    """The OPT BPE files (../shared/data/opt-bpe); skipped when absent."""
    path = shared_root() / "data" / "opt-bpe"
    if not (path / "gpt2-vocab.json").is_file():
        pytest.skip(f"OPT BPE files not found at {path} (set OPTIML_SHARED to the shared/ folder)")
    return path


metaseq_cpu.install_if_present()
