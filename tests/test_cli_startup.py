"""The `optiml` parser, every verb's `--help` and the `bench` verbs import neither torch nor transformers.

Why: importing torch costs ~2-3 s and ~200 MB; a command that prints help or builds a bench needs
neither, so every command module imports them inside the function that runs. Each check runs in a fresh
interpreter (this test process has imported torch long ago), and the walk covers every registered
sub-command, so a verb added later is held to the same rule.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")

if importlib.util.find_spec("metaseq") is not None:   # where metaseq is installed, importing optiml_plugin
    pytestmark = pytest.mark.skip(reason="metaseq is installed: importing optiml_plugin registers its "
                                         "adapter (and so imports torch) by design")

# Prints {"parser": [...], "help": [...], "paths": [...]}: heavy modules loaded after building the parser,
# then after asking every sub-command path for --help.
HELP_SCRIPT = """
import argparse, contextlib, io, json, sys
from optiml_plugin.cli import build_parser, main
HEAVY = %r
parser = build_parser()
after_parser = [m for m in HEAVY if m in sys.modules]
paths = []
def walk(p, path):
    paths.append(path)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                walk(sub, path + [name])
walk(parser, [])
for path in paths:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(path + ["--help"])
        except SystemExit as e:
            assert e.code == 0, (path, e.code)
    assert out.getvalue().startswith("usage: optiml"), path
print(json.dumps({"parser": after_parser, "help": [m for m in HEAVY if m in sys.modules], "paths": paths}))
"""

BENCH_SCRIPT = """
import contextlib, io, json, sys
from optiml_plugin.cli import main
HEAVY = %r
with contextlib.redirect_stdout(io.StringIO()):
    build = main(["bench", "build", "--builtin", "--out", sys.argv[1], "--workers", "1", "--no-progress"])
    stats = main(["bench", "stats", sys.argv[1]])
print(json.dumps({"rc": [build, stats], "loaded": [m for m in HEAVY if m in sys.modules]}))
"""


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script % (HEAVY,), *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_parser_and_every_help_import_no_torch_or_transformers():
    result = _run(HELP_SCRIPT)
    assert result["parser"] == [], f"building the parser imported {result['parser']}"
    assert result["help"] == [], f"a --help imported {result['help']}"
    paths = {" ".join(p) for p in result["paths"]}
    assert {"", "bench", "bench build", "bench stats", "train", "eval", "sweep"} <= paths


def test_bench_build_and_stats_import_no_torch_or_transformers(tmp_path):
    result = _run(BENCH_SCRIPT, str(tmp_path / "bench"))
    assert result["rc"] == [0, 0]
    assert result["loaded"] == [], f"bench build/stats imported {result['loaded']}"
