"""benchmarks/trl_sft.py: SKIPPED without trl; with trl, both sides train and the leakage check runs.

Why: the TRL comparison is only repeatable if the script keeps working as both libraries move.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "trl_sft.py"


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code, str(SCRIPT), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


RUN = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def test_trl_benchmark_prints_skipped_without_trl():
    out = _run("import sys; sys.modules['trl'] = None; " + RUN)   # `import trl` now raises ImportError
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("SKIPPED: trl is not importable")


def test_trl_benchmark_runs_both_sides_and_checks_leakage(sni_dir, tmp_path):
    pytest.importorskip("trl")
    env = dict(os.environ, PYTHONPATH=str(REPO), OPTIML_SHARED=str(sni_dir.parents[1]))
    out = subprocess.run([sys.executable, str(SCRIPT), "--preset", "micro", "--rows", "1", "--tokens-per-sample",
                          "256", "--steps", "1", "--repeats", "1", "--tokenizer", "builtin", "--cache", str(tmp_path)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("optiml  target tokens/s") for line in lines), out.stdout
    assert any(line.startswith("TRL     target tokens/s") for line in lines), out.stdout
    ours = next(line for line in lines if line.startswith("cross-example attention, optiml"))
    assert ours.endswith("(none)"), ours
    assert any(line.startswith("cross-example attention, TRL: max logit difference") for line in lines)
