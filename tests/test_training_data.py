"""One data path for both trainers (optiml_plugin/data/training_data.py): training batches, fixed validation
batches, logging keys and per-benchmark caps (the local trainer's logs: test_local_trainer.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture, MixtureConfig
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.training_data import open_run
from optiml_plugin.local.data import training_texts
from optiml_plugin.recipe import DataFields


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return make_bench(tmp_path_factory.mktemp("bench") / "bench", [
        dict(benchmark="b1", category="c1", task="t1", n=60),
        dict(benchmark="b1", category="c1", task="t4", n=50),
        dict(benchmark="b2", category="c2", task="t2", n=40),
        dict(benchmark="b1", category="c1", task="t1", n=9, split="valid_heldout_instances"),
        dict(benchmark="b2", category="c2", task="t2", n=7, split="valid_heldout_instances"),
        dict(benchmark="b3", category="c3", task="t3", n=8, split="valid_heldout_categories",
             level="heldout_categories"),
    ])


@pytest.fixture(scope="module")
def tok(bench) -> OptTokenizer:
    return OptTokenizer.builtin(training_texts(Bench(bench)), vocab_size=300)


def data(**kw) -> DataFields:
    return DataFields(**{"tokens_per_sample": 64, **kw})


def test_caps_reach_the_mixture(bench, tok):
    """The local trainer ignored per-benchmark caps before; the one data path applies them."""
    capped = open_run(Bench(bench), tok, data(eps=4096, benchmark_caps={"b1": 5}), 2, 1)
    want = Mixture.from_bench(Bench(bench), MixtureConfig(eps=4096, caps={"b1": 5}), split="train")
    plain = Mixture.from_bench(Bench(bench), MixtureConfig(eps=4096), split="train")
    assert np.allclose(capped.mixture.probs, want.probs) and not np.allclose(want.probs, plain.probs)
    assert capped.benchmarks == ["b1", "b2"]


def test_validation_is_packed_next_fit_whatever_the_training_packer(bench, tok):
    a = open_run(Bench(bench), tok, data(packing_strategy="best_fit", packing_window=3), 2, 1)
    b = open_run(Bench(bench), tok, data(packing_strategy="sequential"), 2, 1)
    assert list(a.validation) == ["valid_heldout_instances", "valid_heldout_categories"]  # no empty split
    for name in a.validation:
        assert len(a.validation[name].batches) == len(b.validation[name].batches)
        for x, y in zip(a.validation[name].batches, b.validation[name].batches):
            assert all(torch.equal(x[k], y[k]) for k in x)
    # benchmark ids index the training mixture; b3 (validation only) is -1
    cats = torch.cat([bt["benchmark_ids"][bt["loss_mask"]] for bt in a.validation["valid_heldout_categories"].batches])
    assert set(cats.tolist()) == {-1}


@pytest.mark.parametrize("world", [2, 3])
def test_validation_shards_cover_every_row_once_with_equal_counts(bench, tok, world):
    one = open_run(Bench(bench), tok, data(), 2, 1, valid_subsets={"valid": ["valid_heldout_instances",
                                                                               "valid_heldout_categories"]})
    ranks = [open_run(Bench(bench), tok, data(), 2, 1, rank=r, world_size=world,
                           valid_subsets={"valid": ["valid_heldout_instances", "valid_heldout_categories"]})
             for r in range(world)]
    subset = one.validation["valid"]
    assert [t.task for t in subset.tasks] == ["t1", "t2", "t3"]
    counts = {len(r.validation["valid"].batches) for r in ranks}
    assert len(counts) == 1                                             # same number of forwards per rank

    def rows(batches):
        return {int(i): (b["input_ids"][k], b["task_ids"][k]) for b in batches for k, i in enumerate(b["row_ids"])
                if b["loss_mask"][k].any()}
    single = rows(subset.batches)
    sharded = [rows(r.validation["valid"].batches) for r in ranks]
    assert sum(len(s) for s in sharded) == len(single)                 # disjoint ...
    merged = {i: v for s in sharded for i, v in s.items()}
    assert merged.keys() == single.keys()                               # ... and complete
    assert all(torch.equal(merged[i][0], single[i][0]) and torch.equal(merged[i][1], single[i][1]) for i in single)
    tasks = torch.cat([b["task_ids"][b["loss_mask"]] for b in subset.batches])
    assert set(tasks.tolist()) == {0, 1, 2}                              # task ids run across the splits
