"""Rules of the house that a review found broken once (issue 23): each test fails if the problem comes back."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "optiml_plugin"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _where(pattern: str) -> list:
    rx = re.compile(pattern)
    return sorted(str(p.relative_to(PACKAGE)) for p in SOURCES if rx.search(_text(p)))


def test_one_nats_to_bits_constant():
    """Two constants for one unit (`BITS_PER_NAT` and `LN2`) lived in two modules; now only loss.py."""
    assert _where(r"log\(2\)|\bLN2\b") == ["loss.py"]


def test_special_ids_only_from_conventions():
    """No id literals for OPT's special tokens, and no re-export of them through the tokenizer module."""
    literal = r"\b(pad|eos|bos|unk)(_token)?_id\b\s*(:\s*int\s*)?=\s*[0-3]\b"
    assert _where(literal) == []
    assert _where(r"\b(BOS|PAD|EOS|UNK)(_ID)?\b = ") == ["conventions.py"]
    reexport = r"from optiml_plugin\.data\.tokenizer import [^\n]*\b(BOS|PAD|EOS|UNK)(_ID)?\b"
    assert _where(reexport) == []


def test_recipe_imports_neither_torch_nor_the_data_package():
    """recipe.py imported data.packing and loss (and with them torch) while data imports the recipe."""
    code = ("import sys, optiml_plugin.recipe as r; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('optiml_plugin.data')); "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["target_cross_entropy", "ShareCounters", "EXTRA_KEYS", "is_open",
                                  "ngram_overlap", "benchmark_sums", "examples_by_benchmark",
                                  "validate_detailed"])
def test_test_only_and_dead_code_stays_out_of_the_product(name):
    assert _where(rf"def {name}\b|class {name}\b|\b{name} = ") == []


def test_realized_shares_are_counted_in_one_place():
    """Once at tokenization (an observer) and once in the criterion (segment starts): now the telemetry."""
    assert _where(r"segment_starts\(") == ["attention.py", "telemetry.py"]
    assert _where(r"\bobserver\b") == []


def test_metaseq_command_line_knowledge_lives_in_the_metaseq_room():
    """The sweep, the launch config, the task's option dataclass and the checkpoint converter sat in four
    places (sweep.py, recipe.LaunchConfig, generated from type strings in options, eval/backends/)."""
    assert _where(r"class LaunchConfig\b") == ["metaseq/sweep.py"]
    assert _where(r"def train_command\(|def render_sbatch\(") == ["metaseq/sweep.py"]
    assert _where(r"def convert\(") == ["metaseq/convert.py"]
    assert _where(r"class TaskOptions\b") == ["metaseq/options.py"]
    assert _where(r"get_origin\(|get_args\(") == []          # no flag types guessed from type annotations
    assert not (PACKAGE / "sweep.py").exists() and not (PACKAGE / "eval" / "backends" / "metaseq_convert.py").exists()
