"""Guarding a bench build's `--out`: what it may replace, and the leftovers of killed builds.

Why: `--overwrite` is destructive, so it only ever replaces an optiml bench (a directory with an optiml
manifest); an `--out` that is, or contains, one of the build's own inputs is refused outright (it once
replaced the source data with the bench). A killed build leaves `.<name>.building-<pid>` folders that
no later build would reuse; the next build of the same `--out` removes those of dead processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, List

from optiml_plugin.benchfiles import FORMAT_NAME, MANIFEST
from optiml_plugin.errors import ConfigError, OptimlError
from optiml_plugin.fsio import aside_prefix, remove_stale

_GLOB = "*?["


def building_prefix(out: Path) -> str:
    """The temp sibling a build writes into is `<prefix><pid>`."""
    return f".{out.name}.building-"


def is_bench(path: Path) -> bool:
    """A directory holding a readable optiml manifest."""
    try:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def literal_root(path: Path) -> Path:
    """The longest leading part of a (possibly glob) path without glob characters."""
    parts: List[str] = []
    for part in path.parts:
        if any(c in part for c in _GLOB):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def prepare_out(out: Path, inputs: Iterable[Path], overwrite: bool) -> None:
    """Refuse an `out` that would destroy inputs or non-bench data; remove dead builds' temp folders."""
    target = out.resolve()
    for p in inputs:
        src = literal_root(p).resolve()
        if src == target or target in src.parents:
            raise ConfigError(f"--out {out} is or contains the build input {p}: the bench would replace "
                              f"its own source data; choose another --out")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a directory; refusing to replace it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OptimlError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
        if not is_bench(out):
            raise ConfigError(f"--overwrite refused: {out} is not an optiml bench (no {MANIFEST} with format "
                              f"'{FORMAT_NAME}'), so it holds other data; remove it yourself or choose "
                              f"another --out")
    for prefix in (building_prefix(out), aside_prefix(out)):
        for stale in remove_stale(out.parent, prefix):
            print(f"optiml: removed {stale}, left by a killed build", file=sys.stderr)
