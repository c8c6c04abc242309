"""Training checkpoints: written atomically, the last N kept, and everything needed for an exact resume.

Why atomic: a run killed mid-save must never leave a directory that looks complete; files go to a temp
directory beside the target and are renamed in one step. Each rank stores its own data-pipeline and RNG
state (ranks read different stream partitions); rank 0 stores model, optimizer and scheduler.
Rank 0 also writes `sizes.json` (every file's size) last, so a checkpoint whose files were truncated
afterwards (copied partially, disk trouble) is recognized before unpickling, and resume falls back to the
newest complete one.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from optiml_plugin.errors import CorruptFileError, OptimlError, WriteError, first_line
from optiml_plugin.fsio import atomic_write_bytes, replace_dir

STEP_DIR = re.compile(r"^step_(\d{8})$")
TRAINER_STATE = "trainer.pt"
SIZES = "sizes.json"


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
        try:
            torch.save(obj, tmp / name)
        except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
            shutil.rmtree(tmp, ignore_errors=True)
            raise WriteError(f"{tmp / name}: cannot write the checkpoint ({first_line(e)}); the incomplete "
                             f"checkpoint was removed and the earlier ones are intact: free disk space "
                             f"and resume with --resume") from None


def write_sizes(tmp: Path) -> None:
    """Record every file's size (rank 0, after all ranks wrote): the completeness check of `verify`."""
    sizes = {p.name: p.stat().st_size for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    atomic_write_bytes(Path(tmp) / SIZES, (json.dumps(sizes, indent=1) + "\n").encode())


def verify(directory: Path) -> None:
    """Raise CorruptFileError if a file listed in `sizes.json` is missing or has another size
    (checkpoints from before `sizes.json` are only checked when loaded)."""
    listing = Path(directory) / SIZES
    if not listing.is_file():
        return
    try:
        sizes = json.loads(listing.read_text())
    except ValueError as e:
        raise CorruptFileError(f"{listing}: unreadable ({e})") from None
    for name, size in sizes.items():
        path = Path(directory) / name
        if not path.is_file():
            raise CorruptFileError(f"{path}: missing from the checkpoint (listed in {SIZES})")
        if path.stat().st_size != size:
            raise CorruptFileError(f"{path}: {path.stat().st_size} bytes, {SIZES} says {size} (truncated?)")


def commit(tmp: Path, final: Path, keep_last: int) -> Path:
    """Rename the finished temp directory into place, then drop all but the newest `keep_last`."""
    replace_dir(tmp, final)
    for old in list_checkpoints(final.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def temp_dir(root: Path, step: int) -> Path:
    """A fresh temp directory for this save; earlier ones are a killed save's leftovers (one run writes
    one `checkpoints/`), so they go too."""
    for stale in Path(root).glob(".tmp_step_*") if Path(root).is_dir() else ():
        shutil.rmtree(stale)
    tmp = Path(root) / f".tmp_step_{step:08d}"
    tmp.mkdir(parents=True)
    return tmp


def load_file(directory: Path, name: str) -> Any:
    path = Path(directory) / name
    if not path.is_file():
        raise CorruptFileError(f"{path}: missing from the checkpoint")
    try:  # our own files (numpy RNG state, python objects): not a weights-only pickle
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError... for a damaged file
        raise CorruptFileError(f"{path}: unreadable checkpoint file ({first_line(e)})") from None


def load_checkpoint(directory: Path, rank: int) -> Dict[str, Any]:
    """Every file one rank needs from `directory`, read before any is applied (so a damaged file
    leaves the model untouched): {"trainer", "model", "optimizer", "rank"}."""
    verify(directory)
    return {"trainer": load_file(directory, TRAINER_STATE), "model": load_file(directory, "model.pt"),
            "optimizer": load_file(directory, "optimizer.pt"), "rank": load_file(directory, f"rank{rank}.pt")}


def load_newest(root: Path, rank: int, say: Callable[[str], None]) -> Optional[Dict[str, Any]]:
    """The newest checkpoint under `root` that loads, falling back past damaged ones (each one said);
    None when there is none. `result["directory"]` is the one loaded."""
    found = list_checkpoints(root)
    for directory in reversed(found):
        try:
            loaded = load_checkpoint(directory, rank)
        except CorruptFileError as e:
            say(f"checkpoint {directory.name} is damaged: {e}")
            continue
        if directory != found[-1]:
            say(f"falling back to {directory.name}, the newest complete checkpoint")
        loaded["directory"] = directory
        return loaded
    if found:
        raise OptimlError(f"{root}: none of the {len(found)} checkpoints can be loaded (see above); "
                          f"start a new run.out_dir")
    return None
