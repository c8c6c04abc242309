"""Fully supervised level: held-out instances from the release's dev/test splits, stated in the manifest."""
from __future__ import annotations

import json

import pytest

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.errors import ConfigError


def write_rows(path, task, split_sizes, split_field=True):
    rows = [{"task": task, "benchmark": "crossfit", "category": "Sentiment Analysis", "instruction": "Rate it.",
             "input": f"{task} {split} review {i}", "output": "good", "id": f"{task}-{split}-{i}",
             **({"split": split} if split_field else {})}
            for split, n in split_sizes.items() for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def config(tmp_path, **extra):
    return load_build_config(dict({"sources": [{"type": "generic", "path": "data"}], "seed": 5,
                                   "split": {"heldout_valid": 4, "heldout_test": 3}}, **extra), tmp_path)


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data" / "imdb").mkdir(parents=True)
    write_rows(tmp_path / "data" / "sst2.jsonl", "sst2", {"train": 30, "validation": 10, "test": 2, "other": 1})
    write_rows(tmp_path / "data" / "plain.jsonl", "plain", {"train": 20}, split_field=False)
    write_rows(tmp_path / "data" / "imdb" / "train.jsonl", "imdb", {"train": 12}, split_field=False)
    write_rows(tmp_path / "data" / "imdb" / "validation.jsonl", "imdb", {"validation": 5}, split_field=False)
    return tmp_path


def rows(root, manifest, task, split):
    [entry] = [t for t in manifest["tasks"] if t["task"] == task]
    path = root / entry["files"][split]
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def test_official_splits_feed_the_fully_supervised_level(data):
    out = data / "bench"
    m = build_bench(config(data, heldout_instances="official"), out, progress=False)
    plan = m["split_plan"]["heldout_instances"]
    assert plan["mode"] == "official" and plan["official_split_tasks"] == ["imdb", "sst2"]
    valid = rows(out, m, "sst2", "valid_heldout_instances")
    assert len(valid) == 4 and all("-validation-" in i for i in valid)
    assert rows(out, m, "sst2", "test_heldout_instances") == ["sst2-test-0", "sst2-test-1"]
    assert all("-train-" in i for i in rows(out, m, "sst2", "train")) and len(rows(out, m, "sst2", "train")) == 30
    assert len(rows(out, m, "imdb", "valid_heldout_instances")) == 4  # split named by the file
    assert len(rows(out, m, "plain", "valid_heldout_instances")) == 4  # no release split: random rows
    # sst2: 6 validation rows beyond heldout_valid + 1 'other' row; imdb: 1 validation row
    assert m["accounting"]["removed"] == {"official_split_unused": 8} and m["accounting"]["balanced"]


def test_default_states_random_rows(data):
    m = build_bench(config(data), data / "bench", progress=False)
    assert m["split_plan"]["heldout_instances"] == {
        "mode": "random", "from": "random examples of every training task", "official_split_tasks": []}
    test = rows(data / "bench", m, "sst2", "test_heldout_instances")
    assert len(test) == 3 and any("-train-" in i for i in test)
    with pytest.raises(ConfigError, match=r"heldout_instances: must be one of \['random', 'official'\]"):
        config(data, heldout_instances="dev")


def test_a_source_without_release_splits_says_so(data):
    (data / "other").mkdir()
    write_rows(data / "other" / "flat.jsonl", "flat", {"train": 20}, split_field=False)
    raw = {"sources": [{"type": "generic", "path": "data"}, {"type": "generic", "path": "other"}], "seed": 5,
           "heldout_instances": "official", "split": {"heldout_valid": 4, "heldout_test": 3}}
    m = build_bench(load_build_config(raw, data), data / "bench", progress=False)
    plan = m["split_plan"]["heldout_instances"]
    assert plan["random_fallback_tasks"] == ["flat", "plain"]
    assert plan["sources_without_dev_test"] == ["other"]  # `data` has tasks with dev/test splits
