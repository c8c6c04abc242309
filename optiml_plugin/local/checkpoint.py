"""Training checkpoints: written atomically, the last N kept, and everything needed for an exact resume.

Why atomic: a run killed mid-save must never leave a directory that looks complete; files go to a temp
directory beside the target and are renamed in one step. Each rank stores its own data-pipeline and RNG
state (ranks read different stream partitions); rank 0 stores model, optimizer and scheduler.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from optiml_plugin.errors import ConfigError

STEP_DIR = re.compile(r"^step_(\d{8})$")
TRAINER_STATE = "trainer.pt"


def rng_state() -> Dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: Path) -> List[Path]:
    """Complete checkpoints under `root`, oldest first (temp directories are never listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_rank_files(tmp: Path, rank: int, files: Dict[str, Any]) -> None:
    """Every rank writes its own files (`<name>` for rank 0's shared state, `rank<r>_<name>` for its own)."""
    for name, obj in files.items():
        torch.save(obj, tmp / name)


def commit(tmp: Path, final: Path, keep_last: int) -> Path:
    """Rename the finished temp directory into place, then drop all but the newest `keep_last`."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def temp_dir(root: Path, step: int) -> Path:
    tmp = Path(root) / f".tmp_step_{step:08d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def load_file(directory: Path, name: str) -> Any:
    path = Path(directory) / name
    if not path.is_file():
        raise ConfigError(f"checkpoint {directory}: missing {name}")
    # our own files (numpy RNG state, python objects): not a weights-only pickle
    return torch.load(path, map_location="cpu", weights_only=False)
