"""Writing files safely: atomic replace, the user's umask, clear disk errors, stale temp folders.

Why one module: every output of optiml (bench files, manifest, eval results, reports, checkpoints) must
(1) never look complete when half-written, (2) be readable by whoever the user's umask allows (temp
files are created 0600), and (3) fail on a full disk with one line naming the file, not a traceback.
"""
from __future__ import annotations

import errno
import io
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, List, Union

from optiml_plugin.errors import WriteError


def umask() -> int:
    """The process umask: from /proc on Linux (no side effect), else by setting and restoring it (POSIX
    has no getter; that briefly changes it for other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_error(err: OSError, path: Union[str, Path]) -> WriteError:
    """A one-line error for a failed write; a full disk says so and what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return WriteError(f"{path}: no space left on device ({err.strerror}); nothing half-written was "
                          f"kept: free some space and run again")
    return WriteError(f"{path}: cannot write: {err.strerror or err}")


def os_error_message(err: OSError) -> str:
    """One line for an OSError that reached the command line (full disk, missing or unreadable path)."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(write_error(err, err.filename or "output"))
    return f"{err.filename}: {err.strerror}" if err.filename else str(err)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write via a temp file in the same directory and rename: readers never see a partial file.

    The file gets the mode a plain `open(path, "w")` would (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(e, path) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def aside_prefix(path: Union[str, Path]) -> str:
    """`replace_dir` moves the replaced `path` to `<prefix><pid>` beside it for the instant of the swap."""
    return f".{Path(path).name}.old-"


def replace_dir(tmp: Union[str, Path], final: Union[str, Path]) -> Path:
    """Rename the finished directory `tmp` to `final`, replacing what was there only once `tmp` is
    complete (the old one is moved aside for the instant of the swap, then removed)."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists() or final.is_symlink():
        old = final.parent / f"{aside_prefix(final)}{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()
    return final


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale(parent: Union[str, Path], pattern: str) -> List[Path]:
    """Remove the entries of `parent` whose whole name matches `pattern` (a regex whose first group is
    a pid) and whose process is dead: a killed run's leftovers.

    Returns what was removed, so the caller can say so. Entries of live processes (a concurrent build)
    and names without a trailing pid are left alone."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    regex = re.compile(pattern)
    removed = []
    for p in sorted(parent.iterdir()):
        m = regex.fullmatch(p.name)
        if m is None or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    return removed


def follow_umask(root: Union[str, Path]) -> None:
    """Give every file under `root` the mode a plain `open(path, "w")` would (0666 minus the umask).

    Why: libraries write some outputs 0600 (safetensors' model file), so a model the user shares
    through a group-readable folder was unreadable to the group while the bench beside it was not."""
    mode = 0o666 & ~umask()
    root = Path(root)
    for p in [root] if root.is_file() else root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def save_figure(fig: Any, path: Union[str, Path], **savefig_kwargs: Any) -> Path:
    """A matplotlib figure as a PNG at `path`, atomically (a full disk names the file, like every write)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
