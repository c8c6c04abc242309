"""Guarding a bench build's `--out`: what it may replace, and the leftovers of killed builds.

Why: `--overwrite` is destructive, so it only ever replaces an optiml bench (a directory with an optiml
manifest); an `--out` that is, or contains, one of the build's own inputs is refused outright (it once
replaced the source data with the bench), and so is one inside a source folder (the next build read its
own bench back as input). A killed build leaves a `.<name>.building-<pid>` folder (often large); the next
build into any folder beside it, or `optiml bench clean PARENT`, removes those of dead processes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterable, List, Union

from optiml_plugin.benchfiles import FORMAT_NAME, MANIFEST
from optiml_plugin.errors import ConfigError, OptimlError
from optiml_plugin.fsio import remove_stale

_GLOB = "*?["


def building_prefix(out: Path) -> str:
    """The temp sibling a build writes into is `<prefix><pid>`."""
    return f".{out.name}.building-"


#: what a build leaves beside its `--out` while it runs: its temp folder and the replaced bench, each
#: named with the pid of the build (`fsio.replace_dir` names the latter)
STALE_PATTERNS = (r"\..+\.building-(\d+)", r"\..+\.old-(\d+)")


def remove_stale_builds(parent: Union[str, Path]) -> List[Path]:
    """Remove the temp folders of killed builds in `parent` (of any `--out`), saying each."""
    removed = []
    for pattern in STALE_PATTERNS:
        for stale in remove_stale(parent, pattern):
            print(f"optiml: removed {stale}, left by a killed build", file=sys.stderr)
            removed.append(stale)
    return removed


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
        if src in target.parents and src.is_dir():
            raise ConfigError(f"--out {out} is inside the build input {p}: the next build would read this "
                              f"bench back as source data; choose an --out outside it")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a directory; refusing to replace it")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OptimlError(f"{out} already exists and is not empty (pass --overwrite to replace it)")
        if not is_bench(out):
            raise ConfigError(f"--overwrite refused: {out} is not an optiml bench (no {MANIFEST} with format "
                              f"'{FORMAT_NAME}'), so it holds other data; remove it yourself or choose "
                              f"another --out")
    remove_stale_builds(out.parent)
