"""benchmarks/gpu.py: SKIPPED without CUDA, and every row's code path runs on CPU (`--cpu-smoke`).

Why: a GPU is lent for minutes; a bug in the script must show up here, not on the device.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def test_gpu_script_prints_skipped_without_cuda():
    out = _run()
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SKIPPED: no CUDA device") and "| row |" not in out.stdout


def test_gpu_script_cpu_smoke_prints_every_row_and_packed_equals_alone():
    out = _run("--cpu-smoke")
    assert out.returncode == 0, out.stdout + out.stderr
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert all(len(c) == 3 for c in cells), table
    variants = {(c[0], c[1]) for c in cells}
    assert {("training", "per_example document mask"), ("training", "plain causal (leaks)"),
            ("attention", "flex document mask"), ("attention", "flex causal"), ("attention", "SDPA causal"),
            ("packed = alone", "bf16, 5 examples"), ("packed = alone", "fp16, 5 examples")} <= variants
    verdicts = [c[2] for c in cells if c[0] == "packed = alone"]
    assert len(verdicts) == 2 and all(v.startswith("PASS") for v in verdicts), verdicts
    assert all("tokens/s" in c[2] for c in cells if c[0] == "training" and "/" not in c[1])
