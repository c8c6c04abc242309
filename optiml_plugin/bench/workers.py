"""Run a function over items on forked worker processes, results in the items' order.

Why: the bench build is CPU-bound Python (JSON parsing, rendering, hashing), so a second core needs
a second process. Forking (not spawning) lets workers share what the parent built before the pool
started (evaluation n-gram index, exact-input set) without pickling it, and keeps Python's per-process
string-hash salt, which the n-gram hashes depend on. At most `window` items are in flight, so results
never pile up in memory. Where fork is unavailable, or with one worker, items run in this process:
the same code, the same results.
"""
from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from typing import Any, Callable, Deque, Iterable, Iterator, Optional, Tuple, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Every core this process may use, at most 8 (the build's memory grows with each worker)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                window: Optional[int] = None) -> Iterator[Tuple[T, R]]:
    """(item, fn(item)) in the order of `items`; a worker's exception is raised here, at its item.

    `window` (default 8 per worker) bounds the items submitted and not yet consumed: enough that a slow
    item at the head of the line does not leave the other workers idle."""
    it = iter(items)
    head = list(itertools.islice(it, 2))
    if workers <= 1 or len(head) < 2 or not can_fork():  # one item: a pool would only add its start
        for item in itertools.chain(head, it):
            yield item, fn(item)
        return
    window = window or 8 * workers
    it = itertools.chain(head, it)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pending: Deque[Tuple[Any, Any]] = deque()
        for item in it:
            pending.append((item, pool.apply_async(fn, (item,))))
            if len(pending) >= window:
                break
        while pending:
            item, result = pending.popleft()
            value = result.get()
            for nxt in it:
                pending.append((nxt, pool.apply_async(fn, (nxt,))))
                break
            yield item, value
