"""Docstrings that draw the data layout run as doctests, so the pictures cannot drift from the code."""
from __future__ import annotations

import doctest

from optiml_plugin.data import pipeline


def test_collate_docstring_draws_a_real_packed_row():
    result = doctest.testmod(pipeline, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0


def test_architecture_names_every_top_level_data_and_metaseq_module():
    """docs/ARCHITECTURE.md describes the house as it is (it named data/shares.py and sweep.py at the top
    after they moved or went): every module of the top level, data/ and metaseq/ is named there."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    package = root / "optiml_plugin"
    modules = [p for folder in (package, package / "data", package / "metaseq") for p in folder.glob("*.py")
               if p.stem not in ("__init__", "__main__")]
    assert len(modules) > 25
    missing = [str(p.relative_to(package)) for p in modules
               if f"{p.stem}.py" not in text and f"{p.stem} (" not in text and f" {p.stem}," not in text
               and f", {p.stem}" not in text]
    assert missing == []
    for gone in ("shares.py", "ShareCounters", "target_cross_entropy(", "metaseq_fields", "observer"):
        assert gone not in text, gone
