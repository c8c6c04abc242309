"""Bench reader resource use: bounded descriptors, picklable readers for loader workers."""
from __future__ import annotations

import pickle

import optiml_plugin.data.benchfiles as bf
from bench_factory import make_bench


def test_open_descriptors_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(bf, "MAX_OPEN_FILES", 3)
    root = make_bench(tmp_path / "b", [{"benchmark": "b", "category": "c", "task": f"t{i}", "n": 4}
                                       for i in range(7)])
    bench = bf.Bench(root)
    files = bench.task_files("train")
    assert len(files) == 7
    rows = [bench.read(tf, 1) for tf in files]
    assert [r["task"] for r in rows] == [tf.task for tf in files]
    assert len(bench._open) == 3 and all(r.is_open for r in bench._open.values())
    assert bench.read(files[0], 0) == bf.IndexedJsonl(files[0].path)[0]  # reopened after eviction


def test_reader_and_bench_survive_pickling(tmp_path):
    root = make_bench(tmp_path / "b", [{"benchmark": "b", "category": "c", "task": "t", "n": 5}])
    bench = bf.Bench(root)
    tf = bench.task_files("train")[0]
    before = [bench.read(tf, i) for i in range(5)]
    clone = pickle.loads(pickle.dumps(bench))
    assert [clone.read(tf, i) for i in range(5)] == before
    reader = pickle.loads(pickle.dumps(bench.reader(tf)))
    assert list(reader) == before
