"""Bench reader resource use: bounded descriptors, cheap reopening, picklable readers for loader workers."""
from __future__ import annotations

import os
import pickle
import resource

import optiml_plugin.benchfiles as bf
from bench_factory import make_bench


def _seven_tasks(tmp_path):
    return make_bench(tmp_path / "b", [{"benchmark": "b", "category": "c", "task": f"t{i}", "n": 4}
                                       for i in range(7)])


def test_open_descriptors_are_bounded(tmp_path):
    bench = bf.Bench(_seven_tasks(tmp_path), max_open=3)
    files = bench.task_files("train")
    assert len(files) == 7
    rows = [bench.read(tf, 1) for tf in files]
    assert [r["task"] for r in rows] == [tf.task for tf in files]
    assert len(bench._open) == 3 and all(r._fds is not None for r in bench._open.values())
    assert sum(r._fds is not None for r in bench._readers.values()) == 3
    assert bench.read(files[0], 0) == bf.IndexedJsonl(files[0].path)[0]  # reopened after eviction


def test_rereading_costs_no_reopen_within_the_limit_and_two_opens_beyond(tmp_path, monkeypatch):
    """The old reader kept 256 whole readers and re-mapped an index per miss: at 2,000 task files
    80% of reads paid ~100 us. Now every reader is kept; only descriptors are bounded."""
    root = _seven_tasks(tmp_path)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    for max_open, reopens in ((7, 0), (3, 2 * 7)):
        bench = bf.Bench(root, max_open=max_open)
        files = bench.task_files("train")
        first = [bench.read(tf, i) for i in (0, 3) for tf in files]
        opened.clear()
        again = [bench.read(tf, i) for i in (0, 3) for tf in files]
        assert again == first
        assert len(opened) == reopens * 2  # a data file and its index per reopen
        assert len(bench._readers) == 7
        bench.close()


def test_default_limit_follows_the_descriptor_limit(monkeypatch):
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (65536, 65536))
    assert bf.default_max_open_readers() == 16384    # a 2,000-file bench stays open
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (1024, 4096))
    assert bf.default_max_open_readers() == 256      # two descriptors each: half the limit
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (100, 4096))
    assert bf.default_max_open_readers() == bf.MIN_OPEN_READERS


def test_reader_and_bench_survive_pickling(tmp_path):
    root = make_bench(tmp_path / "b", [{"benchmark": "b", "category": "c", "task": "t", "n": 5}])
    bench = bf.Bench(root)
    tf = bench.task_files("train")[0]
    before = [bench.read(tf, i) for i in range(5)]
    clone = pickle.loads(pickle.dumps(bench))
    assert [clone.read(tf, i) for i in range(5)] == before
    reader = pickle.loads(pickle.dumps(bench.reader(tf)))
    assert list(reader) == before
