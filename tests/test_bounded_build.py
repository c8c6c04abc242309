"""The bounded-memory, multi-process bench build: its id index, spill files, source parts and workers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden_build import GOLDEN_FILE, as_format1, bench_digests, golden_configs, write_jsonl_sources
from optiml_plugin.bench import reading, spill
from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.idindex import IdIndex
from optiml_plugin.bench.records import Record
from optiml_plugin.errors import BadRecordError, ConfigError


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=400))
def test_id_index_answers_like_a_dict_first_occurrence_wins(ids):
    index, seen = IdIndex(filter_bits=64, recent=7, max_run=40), {}  # tiny: runs merge, move to disk,
    # and the filter grows
    for n, rid in enumerate(ids):
        assert index.get(rid) == seen.get(rid)
        if rid not in seen:
            index.add(rid, n)
            seen[rid] = n
    assert all(index.get(rid) == n for rid, n in seen.items())


def test_id_index_holds_24_bytes_per_id_and_only_the_newest_runs_in_memory():
    import gc
    import os

    import numpy as np

    index = IdIndex(recent=1000, max_run=8000)
    for n in range(50_000):
        index.add(f"task-{n}", n)
    runs = [a for run in index._runs for a in run]
    assert sum(a.nbytes for a in runs) == 24 * (50_000 - len(index._recent))
    in_memory = sum(a.nbytes for a in runs if not isinstance(a, np.memmap))
    assert 0 < in_memory <= 24 * 2 * 8000 and any(isinstance(a, np.memmap) for a in runs)
    assert len(index._bits) * 8 >= 8 * 50_000 // 2  # the filter grew with the ids
    assert all(index.get(f"task-{n}") == n for n in range(0, 50_000, 7))  # found on disk and in memory
    folder = index._dir
    assert folder and os.listdir(folder)
    del index, runs
    gc.collect()
    assert not os.path.exists(folder)  # the files go with the index


def test_spill_rows_round_trip_across_flushes(tmp_path):
    writer = spill.SpillWriter(tmp_path, buffer_bytes=300)  # a flush every few rows: many chunks per task
    recs = [Record(benchmark="b", task=f"t{k % 3}", category="C", sources=("s",), instruction="i" * k,
                   input=f"in {k}", outputs=("o", "p"), id=f"t-{k}", candidates=("x", "y") if k % 2 else None,
                   template=f"tp{k}", meta={"where": k, "path": "f.jsonl", "split": "test"})
           for k in range(40)]
    for r in recs:
        writer.add(("b", r.task), spill.incoming(r)[-1])
    writer.close()
    for t in ("t0", "t1", "t2"):
        assert len(writer.chunks(("b", t))) > 3
        back = [spill.to_record(row, ("b", t), "C") for row in spill.read_rows(writer.path, writer.chunks(("b", t)))]
        want = [r for r in recs if r.task == t]
        assert back == want and [r.meta for r in back] == [r.meta for r in want]
    spill.close_readers(writer.path)
    offset, length = writer.chunks(("b", "t1"))[-1]
    with open(writer.path, "r+b") as f:
        f.truncate(offset + length - 3)
    with pytest.raises(ValueError, match="truncated spill file"):
        list(spill.read_rows(writer.path, writer.chunks(("b", "t1"))))
    spill.close_readers(writer.path)


def test_jsonl_parts_cover_the_file_at_line_boundaries_with_their_line_numbers(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = [json.dumps({"n": i, "pad": "x" * (i % 17)}) + "\n" for i in range(300)]
    path.write_text("".join(lines))
    parts = reading.jsonl_ranges(path, 500)
    assert len(parts) > 10 and parts[0][0] == 0 and parts[-1][1] == path.stat().st_size
    data = path.read_bytes()
    for (start, end, first), (nxt, _, _) in zip(parts, parts[1:] + [(len(data), 0, 0)]):
        assert end == nxt and data[start - 1:start] in (b"", b"\n")
        assert json.loads(data[start:end].split(b"\n")[0])["n"] == first - 1


@pytest.fixture
def golden_jsonl(tmp_path):
    write_jsonl_sources(tmp_path / "data")
    return tmp_path


@pytest.mark.parametrize("workers", [1, 2])
def test_sources_read_in_small_parts_give_the_same_bench(golden_jsonl, monkeypatch, workers):
    """Parts of ~1 KB: duplicate ids across parts, a malformed line's number and the skip messages'
    order all survive the split, so the bench equals the in-memory builder's (golden digests)."""
    monkeypatch.setattr(reading, "UNIT_BYTES", 1024)
    raw = dict(golden_configs()["random"], sources=[{"type": "generic", "path": "data"}])
    build_bench(load_build_config(raw, base_dir=golden_jsonl), golden_jsonl / "jsonl", progress=False,
                workers=workers)
    want = json.loads(GOLDEN_FILE.read_text())["jsonl"]
    assert bench_digests(as_format1(golden_jsonl / "jsonl"), golden_jsonl) == want


def test_the_first_bad_record_is_the_error_whatever_the_parts(golden_jsonl, monkeypatch):
    monkeypatch.setattr(reading, "UNIT_BYTES", 1024)
    raw = dict(golden_configs()["random"], sources=[{"type": "generic", "path": "data"}], on_bad_record="error")
    errors = []
    for workers in (1, 2):
        with pytest.raises(BadRecordError) as e:
            build_bench(load_build_config(raw, base_dir=golden_jsonl), golden_jsonl / f"b{workers}",
                        progress=False, workers=workers)
        errors.append(str(e.value))
    assert errors[0] == errors[1]
    assert "gen.jsonl:6: field 'id': id 'task02-3' was already used at" in errors[0]
    assert not list(golden_jsonl.glob(".b*"))  # no temporary folder left behind


def test_a_tasks_filter_is_checked_over_all_parts_of_a_source(golden_jsonl, monkeypatch):
    monkeypatch.setattr(reading, "UNIT_BYTES", 1024)
    spec = {"type": "generic", "path": "data", "tasks": ["task00", "task23"]}
    raw = dict(golden_configs()["random"], sources=[spec], split={})
    m = build_bench(load_build_config(raw, base_dir=golden_jsonl), golden_jsonl / "ok", progress=False, workers=2)
    assert {t["task"] for t in m["tasks"]} == {"task00", "task23"}  # task23 sits in later parts only
    raw["sources"] = [dict(spec, tasks=["task00", "no_such_task"])]
    with pytest.raises(ConfigError, match="tasks not found: no_such_task"):
        build_bench(load_build_config(raw, base_dir=golden_jsonl), golden_jsonl / "bad", progress=False, workers=2)


def test_a_failed_source_read_is_not_reported_as_a_write_error(tmp_path, monkeypatch):
    """Only errors writing the bench (or its spill) become WriteError; a source that cannot be read
    surfaces as itself, from a worker as from the parent."""
    import errno

    from optiml_plugin.bench.sources import tabular

    src = tmp_path / "src"  # two files, so with two workers the parts are read in a pool
    src.mkdir()
    for name in ("d1", "d2"):
        (src / f"{name}.jsonl").write_text(json.dumps({"benchmark": "b", "task": name, "category": "Summarization",
                                                       "instruction": "i", "input": "x", "output": "y"}) + "\n")

    def unreadable(path, policy, byte_range):
        raise OSError(errno.EIO, "Input/output error", str(path))
        yield

    monkeypatch.setattr(tabular, "_jsonl_rows", unreadable)
    raw = {"sources": [{"type": "generic", "path": str(src)}]}
    for workers in (1, 2):
        with pytest.raises(OSError, match="Input/output error") as e:
            build_bench(load_build_config(raw), tmp_path / "bench", progress=False, workers=workers)
        assert e.value.filename == str(src / "d1.jsonl")


def test_workers_do_not_change_the_bench_of_the_sni_sample(sni_dir, tmp_path):
    raw = {"sources": [{"type": "sni", "path": str(sni_dir / "tasks")}], "seed": 2,
           "split": {"sni_split_dir": str(sni_dir / "splits" / "default"), "eval_test": 20, "eval_valid": 20,
                     "heldout_valid": 5, "heldout_test": 5}}
    for workers in (1, 2):
        build_bench(load_build_config(raw), tmp_path / f"w{workers}", progress=False, workers=workers)
    assert bench_digests(tmp_path / "w1", tmp_path) == bench_digests(tmp_path / "w2", tmp_path)
    assert len(list(Path(tmp_path / "w1").rglob("*.jsonl"))) > 20


def test_a_task_instruction_is_stored_once_and_read_back_in_every_row(sni_dir, tmp_path):
    """Format 2: SNI rows leave out their definition (the manifest holds it once per task); the reader
    gives every row whole, in the builder's key order; a row whose instruction differs keeps it."""
    from optiml_plugin.benchfiles import Bench

    raw = {"sources": [{"type": "sni", "path": str(sni_dir / "tasks")}], "seed": 2,
           "split": {"eval_test": 5, "eval_valid": 5, "heldout_valid": 2, "heldout_test": 2}}
    m = build_bench(load_build_config(raw), tmp_path / "b", progress=False)
    bench = Bench(tmp_path / "b")
    assert m["version"] == 2
    entry = m["tasks"][0]
    tf = bench.task_files("train")[0]
    raw_row = bench.reader(tf)[0]
    assert "instruction" not in raw_row and entry["instruction"].strip()
    row = bench.read(tf, 0)
    assert row["instruction"] == tf.instruction and list(row).index("instruction") == list(row).index("input") - 1
    saved = sum(len(t["instruction"].encode()) * sum(t["counts"].values()) for t in m["tasks"])
    on_disk = sum(p.stat().st_size for p in (tmp_path / "b").rglob("*.jsonl"))
    assert saved > 0.2 * (on_disk + saved)  # the definitions were over a fifth of the rows' bytes

    mixed = [Record(benchmark="b", task="t", category="Summarization", sources=("t",),
                    instruction="Say it." if i % 3 else "Say it twice.", input=f"x {i}", outputs=("y",), id=f"t-{i}")
             for i in range(40)]
    build_bench(load_build_config({"sources": [{"type": "builtin"}], "split": {"heldout_valid": 0,
                                                                             "heldout_test": 0}}),
                tmp_path / "m", records=mixed, progress=False)
    mb = Bench(tmp_path / "m")
    [tf] = mb.task_files("train")
    assert tf.instruction == "Say it twice."  # the first record's
    stored = [r.get("instruction") for r in mb.reader(tf)]
    assert stored.count("Say it.") == sum(1 for r in mixed if r.instruction == "Say it.")
    assert [mb.read(tf, i)["instruction"] for i in range(len(mixed))] == [r.instruction for r in mixed]


def test_two_tasks_with_one_file_name_are_refused_before_anything_is_written(tmp_path):
    from optiml_plugin.errors import OptimlError

    recs = [Record(benchmark="b", task=name, category="Summarization", sources=(name,), instruction="i",
                   input=f"{name} {i}", outputs=("o",), id=f"{name}-{i}") for name in ("a b", "a_b") for i in range(8)]
    raw = {"sources": [{"type": "builtin"}], "split": {"heldout_valid": 0, "heldout_test": 0}}
    with pytest.raises(OptimlError, match="map to the same file name 'b__summarization__a_b'"):
        build_bench(load_build_config(raw), tmp_path / "b", records=recs, progress=False)
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())
