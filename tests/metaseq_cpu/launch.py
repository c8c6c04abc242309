"""Run metaseq's ``train`` on CPU with one process per rank, with the stand-ins installed.

    python tests/metaseq_cpu/launch.py --world-size 2 [--log-dir DIR] [--kill-after-save N] -- <metaseq-train args>

metaseq spawns no workers without GPUs, so each rank is started here with
``--distributed-world-size N --distributed-no-spawn --distributed-rank R
--distributed-init-method tcp://127.0.0.1:PORT --cpu`` (plus ``--distributed-backend gloo``
unless given). Each rank's output goes to ``rank{R}.log`` in the log directory; rank 0's is
also echoed to stdout. The exit status is non-zero if any rank fails. `--kill-after-save N`: every
rank SIGKILLs itself once it has saved its checkpoint at update N (a crash at an exact point, for
resume checks that must not depend on timing). For checks only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Dict, List, Optional, Sequence

_HERE = os.path.dirname(os.path.abspath(__file__))


def free_port() -> int:
    """A TCP port that is free now on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rank_args(train_args: Sequence[str], world_size: int, rank: int, port: int) -> List[str]:
    """The metaseq-train arguments of one rank."""
    extra = [
        "--distributed-world-size", str(world_size), "--distributed-no-spawn",
        "--distributed-rank", str(rank),
        "--distributed-init-method", f"tcp://127.0.0.1:{port}", "--cpu",
    ]
    if "--distributed-backend" not in train_args:
        extra += ["--distributed-backend", "gloo"]
    return list(train_args) + extra


def _pump(src: IO[bytes], log: IO[bytes], echo: bool) -> None:
    for line in iter(src.readline, b""):
        log.write(line)
        log.flush()
        if echo:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def _wait_all(procs: List["subprocess.Popen[bytes]"], grace_s: float = 30.0) -> List[int]:
    """Wait for every rank; once one has failed, the others may block in a collective forever,
    so they are terminated after ``grace_s`` seconds."""
    failed_at: Optional[float] = None
    while any(p.poll() is None for p in procs):
        if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
            failed_at = time.monotonic()
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        time.sleep(0.5)
    return [int(p.returncode) for p in procs]


def launch(train_args: Sequence[str], world_size: int, log_dir: Optional[str] = None,
           kill_after_save: Optional[int] = None) -> int:
    """Start every rank, wait for all, return 0 only if all succeeded."""
    log_dir = log_dir or tempfile.mkdtemp(prefix="metaseq_cpu_")
    os.makedirs(log_dir, exist_ok=True)
    port = free_port()
    env = dict(os.environ, ENABLE_NCCL_BASE_COLLECTIVES="0")
    procs, pumps = [], []
    for rank in range(world_size):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
        cmd += ["--kill-after-save", str(kill_after_save)] if kill_after_save is not None else []
        cmd += ["--"]
        cmd += rank_args(train_args, world_size, rank, port)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        log = open(os.path.join(log_dir, f"rank{rank}.log"), "wb")
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, rank == 0), daemon=True)
        pump.start()
        procs.append((proc, log))
        pumps.append(pump)
    codes = _wait_all([proc for proc, _ in procs])
    for pump in pumps:
        pump.join()
    for _, log in procs:
        log.close()
    failed = [r for r, c in enumerate(codes) if c != 0]
    if failed:
        print(f"metaseq_cpu.launch: ranks {failed} failed (exit {codes}); logs in {log_dir}",
              file=sys.stderr)
    return 1 if failed else 0


def train_records(log_path: str) -> List[Dict[str, Any]]:
    """The `train_inner` records (`--log-format json`) of one rank's log, in order."""
    marker = "| train_inner | "
    with open(log_path, encoding="utf-8") as f:
        return [json.loads(line.split(marker, 1)[1]) for line in f if marker in line]


def _kill_after_save(update: int) -> None:
    """SIGKILL this rank right after it has saved its checkpoint at `update`, once metaseq's background
    thread has linked it as `checkpoint_last` (a kill between the two leaves this rank without one)."""
    from metaseq import checkpoint_utils

    save = checkpoint_utils.save_checkpoint

    def save_then_die(cfg: Any, trainer: Any, *args: Any, **kwargs: Any) -> Any:
        out = save(cfg, trainer, *args, **kwargs)
        if trainer.get_num_updates() == update:
            if getattr(trainer, "async_checkpoint", None) is not None:
                trainer.async_checkpoint.shutdown(wait=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    checkpoint_utils.save_checkpoint = save_then_die


def worker(train_args: Sequence[str], kill_after_save: Optional[int] = None) -> None:
    """One rank: install the stand-ins, then metaseq's train entry point."""
    # tests/ on the path and the helpers by their own name: metaseq's editable install puts
    # metaseq's repository on sys.path, and its `tests` package would shadow ours
    sys.path.insert(0, os.path.dirname(_HERE))
    from metaseq_cpu import standins

    standins.install()
    if kill_after_save is not None:
        _kill_after_save(kill_after_save)
    from metaseq.cli.train import cli_main

    sys.argv = ["metaseq-train", *train_args]
    cli_main()


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, train_args = argv[:split], argv[split + 1:]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--log-dir", default=None)
    parser.add_argument("--kill-after-save", type=int, default=None, metavar="N",
                        help="every rank SIGKILLs itself after saving its checkpoint at update N")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(own)
    if opts.worker:
        worker(train_args, opts.kill_after_save)
        return 0
    return launch(train_args, opts.world_size, opts.log_dir, opts.kill_after_save)


if __name__ == "__main__":
    sys.exit(main())
