"""Seeded hashing: splitmix64's finalizer, the one 64-bit mixer behind every seeded choice in the data.

Why one module: the stream's per-task permutations, the pipeline's shuffle draws and decontamination's
n-gram hashes are all pure functions of (seed, counters) so that resume and rebuilds are exact; they
must hash the same way everywhere, and a second hand-written copy of the constants is one typo from a
silently different stream. Arithmetic wraps modulo 2^64 (numpy uint64, or Python ints masked).
"""
from __future__ import annotations

from typing import Union

import numpy as np

GOLDEN = 0x9E3779B97F4A7C15          # 2^64 / golden ratio: splitmix64's increment
MASK64 = (1 << 64) - 1
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_U = np.uint64


def mix64(z: Union[int, np.ndarray, np.uint64]) -> Union[int, np.ndarray, np.uint64]:
    """splitmix64's finalizer: a fast avalanche hash of a uint64 (a Python int, or numpy uint64
    values element-wise)."""
    if isinstance(z, int):
        z &= MASK64
        z = ((z ^ (z >> 30)) * _M1) & MASK64
        z = ((z ^ (z >> 27)) * _M2) & MASK64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U(30))) * _U(_M1)
        z = (z ^ (z >> _U(27))) * _U(_M2)
        return z ^ (z >> _U(31))
