"""The builder writes, byte for byte, the bench the in-memory builder wrote (tests/golden_build.py)."""
from __future__ import annotations

import json

import pytest

from golden_build import GOLDEN_FILE, build_all


@pytest.mark.parametrize("workers", [1, 2])
def test_bench_is_byte_for_byte_the_in_memory_builders(tmp_path, workers):
    want = json.loads(GOLDEN_FILE.read_text())
    got = build_all(tmp_path, **({"workers": workers} if workers != 1 else {}))
    for name in want:
        assert sorted(got[name]) == sorted(want[name]), name
        changed = [f for f in want[name] if got[name][f] != want[name][f]]
        assert not changed, f"{name}: {changed}"
