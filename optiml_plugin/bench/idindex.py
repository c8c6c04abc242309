"""The ids a build has seen, in bounded memory: 24 bytes per id, on disk but for the newest.

Why: duplicate ids are refused with "first occurrence wins", which needs every id seen so far; a dict
of id strings with their locations costs about 190 bytes per id (1.9 GB at 10M records; the paper's
train split is 17.9M).
The newest ids stay in a small dict; older ones are kept as a 128-bit key (two independent 64-bit
SipHash values of the string, so a false match needs on the order of 2^64 ids) with a 64-bit payload,
in sorted numpy runs merged as they grow. A run of `max_run` ids merges no more and moves to a
memory-mapped file in a temporary folder, so memory holds at most about two runs, whatever the ids.
A bit filter in front answers the common case (an id never seen) with one bytearray lookup; it
doubles as the index grows (8 bits per id, up to 32 MB), so a small source costs kilobytes.
Python's string hash is salted per process: an index lives and dies in the process that built it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Dict, List, Optional, Tuple

import numpy as np

_MASK64 = (1 << 64) - 1


class IdIndex:
    """`get(id)` -> the payload `add` stored for it, or None."""

    def __init__(self, filter_bits: int = 1 << 20, max_filter_bits: int = 1 << 28,
                 recent: int = 1 << 16, max_run: int = 1 << 20) -> None:
        self._bits = bytearray(filter_bits >> 3)
        self._mask = filter_bits - 1
        self._max_bits = max_filter_bits
        self._limit = recent
        self._max_run = max_run  # a run of this many ids (24 MB) merges no more and moves to disk
        self._dir: Optional[str] = None
        self._recent: Dict[str, int] = {}  # the newest ids as strings (no key to build per id)
        self._runs: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (h1, h2, payload) by h1
        self.size = 0

    def get(self, id: str) -> Optional[int]:
        slot = hash(id) & self._mask  # a str caches its hash: `add` reuses it
        if not self._bits[slot >> 3] & (1 << (slot & 7)):
            return None
        found = self._recent.get(id)
        if found is not None or not self._runs:
            return found
        key1, key2 = np.uint64(hash(id) & _MASK64), np.uint64(hash("\x00" + id) & _MASK64)
        for run_h1, run_h2, payload in self._runs:
            i = int(np.searchsorted(run_h1, key1))
            while i < len(run_h1) and run_h1[i] == key1:
                if run_h2[i] == key2:
                    return int(payload[i])
                i += 1
        return None

    def add(self, id: str, payload: int) -> None:
        """Record `id` (the caller has checked `get(id)` is None)."""
        slot = hash(id) & self._mask
        self._bits[slot >> 3] |= 1 << (slot & 7)
        self._recent[id] = payload
        self.size += 1
        if len(self._recent) >= self._limit:
            self._flush()
            if self.size * 8 > self._mask + 1 and self._mask + 1 < self._max_bits:
                self._grow()

    def _flush(self) -> None:
        ids = list(self._recent)
        h1 = np.array([hash(i) & _MASK64 for i in ids], dtype=np.uint64)
        h2 = np.array([hash("\x00" + i) & _MASK64 for i in ids], dtype=np.uint64)
        payload = np.fromiter(self._recent.values(), dtype=np.int64, count=len(ids))
        order = np.argsort(h1, kind="stable")
        self._recent = {}
        self._runs.append((h1[order], h2[order], payload[order]))
        while (len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0])
               and len(self._runs[-2][0]) + len(self._runs[-1][0]) <= self._max_run):
            b, a = self._runs.pop(), self._runs.pop()
            merged = [np.concatenate((x, y)) for x, y in zip(a, b)]
            order = np.argsort(merged[0], kind="stable")
            self._runs.append((merged[0][order], merged[1][order], merged[2][order]))
        if len(self._runs[-1][0]) * 2 > self._max_run:  # full: it will not merge again
            self._runs[-1] = self._to_disk(self._runs[-1])

    def _to_disk(self, run: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The run as read-only memory maps of files in a temporary folder (removed with the index):
        a lookup there reads a few pages, and only on a filter hit."""
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="optiml-ids-")
            weakref.finalize(self, shutil.rmtree, self._dir, True)
        out = []
        for array in run:
            path = os.path.join(self._dir, f"{len(os.listdir(self._dir))}.npy")
            np.save(path, array)
            out.append(np.load(path, mmap_mode="r"))
        return out[0], out[1], out[2]

    def _grow(self) -> None:
        """Double the filter until it has 8 bits per id, and set the bits of every id (all are in runs)."""
        bits = self._mask + 1
        while bits < min(self.size * 8, self._max_bits):
            bits *= 2
        table = np.zeros(bits >> 3, dtype=np.uint8)
        for run in self._runs:
            slots = run[0] & np.uint64(bits - 1)
            np.bitwise_or.at(table, (slots >> np.uint64(3)).astype(np.int64),
                             (np.uint8(1) << (slots & np.uint64(7)).astype(np.uint8)))
        self._bits, self._mask = bytearray(table.tobytes()), bits - 1
