"""Docstrings that draw the data layout run as doctests, so the pictures cannot drift from the code."""
from __future__ import annotations

import doctest

from optiml_plugin.data import pipeline


def test_collate_docstring_draws_a_real_packed_row():
    result = doctest.testmod(pipeline, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 6 and result.failed == 0
