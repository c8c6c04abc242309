"""One writer per output folder: an advisory lock beside every folder a verb writes.

Why: two jobs (two users, a resubmitted SLURM job, a typo) given the same `--out` on a shared file system
both ran to the end, the later silently replacing the earlier's bench or interleaving a training log.
The lock is `fcntl.flock` on `<parent>/.<name>.lock`: the kernel releases it when the holder dies (even
by SIGKILL), so no lock outlives its process, and on NFS Linux maps it to a POSIX lock the server
arbitrates between machines. It lives beside the folder, not in it, because a bench build replaces the
folder by a rename. The file holds the holder's pid, host and verb, which a refused writer names; a file
left by a killed holder is taken over, and said. Where the file system has no locks (Lustre mounted
without `flock`), the error says so and `OPTIML_NO_LOCK=1` writes without one.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Union

from optiml_plugin.errors import OptimlError
from optiml_plugin.fsio import write_error

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here, and no shared cluster file system either
    fcntl = None  # type: ignore[assignment]

NO_LOCK_ENV = "OPTIML_NO_LOCK"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class OutputLockedError(OptimlError):
    """Another live process holds the output folder's lock."""


def lock_path(out: Union[str, Path]) -> Path:
    """`<parent>/.<name>.lock`, beside the folder `out` (which a bench build replaces by a rename)."""
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}.lock"


def _holder(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


def _try_lock(path: Path, out: Path) -> Optional[int]:
    """An open descriptor of `path` holding its lock; None when the file was replaced meanwhile."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd) or "another process"
        os.close(fd)
        raise OutputLockedError(f"{out} is being written by {holder} (lock {path}): wait for it to finish "
                                f"or choose another --out") from None
    except OSError as e:
        os.close(fd)
        if e.errno in _UNSUPPORTED:
            raise OptimlError(f"{path}: the file system of {out.parent} does not support locks "
                              f"({e.strerror}); set {NO_LOCK_ENV}=1 to write without one, and then never "
                              f"run two writers into {out} at once") from None
        raise
    try:  # a holder that released the lock unlinks the file: then lock the new one
        same = os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


@contextmanager
def locked(out: Union[str, Path], verb: str) -> Iterator[Optional[Path]]:
    """Hold `out`'s lock for the block: refuse at once when a live process holds it (naming its pid and
    host), take over a lock file its dead holder left behind (and say so), remove the file on leaving."""
    out = Path(os.path.abspath(out))
    if fcntl is None or os.environ.get(NO_LOCK_ENV, "") not in ("", "0"):
        yield None
        return
    path = lock_path(out)
    fd = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while fd is None:
            fd = _try_lock(path, out)
        left = _holder(fd)
        if left:
            print(f"optiml: took over the lock of {out} from {left}, which is no longer running",
                  file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} ({verb}, since "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n").encode("utf-8"), 0)
    except OSError as e:
        if fd is not None:
            os.close(fd)
        raise write_error(e, path) from None
    try:
        yield path
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
