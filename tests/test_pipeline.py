"""PackedBatches on the real stream: batch contract, every example once, exact resume."""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_factory import make_bench, make_row
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture, MixtureConfig
from optiml_plugin.data.packing import PackingConfig, make_item
from optiml_plugin.data.pipeline import PackedBatches, collate_blocks
from optiml_plugin.data.stream import ExampleStream
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.errors import BadRecordError, ConfigError

TPS = 96
SPECS = [("niv2", "qa", 40), ("niv2", "cls", 7), ("flan", "gen", 60), ("p3", "qa", 25)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    specs = [{"benchmark": b, "category": c, "task": f"{b}_{c}", "n": n} for b, c, n in SPECS]
    return Bench(make_bench(tmp_path_factory.mktemp("bench"), specs))


@pytest.fixture(scope="module")
def mixture(bench):
    return Mixture.from_bench(bench, MixtureConfig({"flan": 0.3}, eps=32))


@pytest.fixture(scope="module")
def tok():
    texts = [make_row(b, c, f"{b}_{c}", "train", i)[k] for b, c, n in SPECS for i in range(n)
             for k in ("src", "tgt")]
    return OptTokenizer.builtin(texts, vocab_size=600)


def pipeline(bench, mixture, tok, strategy="best_fit", buffer=6, batch=3, tps=TPS, chunk=16):
    stream = ExampleStream(bench, mixture, seed=5, chunk_size=64)
    cfg = PackingConfig(tokens_per_sample=tps, strategy=strategy, window=4)
    return PackedBatches(stream, tok, cfg, batch_size=batch, seed=11, shuffle_buffer=buffer,
                         encode_chunk=chunk)


def expected_item(pipe, index):
    ex = pipe.stream.example(index)
    src, tgt = pipe.tokenizer.encode_pair(ex.row["src"], ex.row["tgt"])
    return ex, make_item(src, tgt, pipe.packing)


def test_batch_contract_and_every_example_once(bench, mixture, tok):
    pipe = pipeline(bench, mixture, tok)
    seen: List[int] = []
    for batch in itertools.islice(pipe, 12):
        B, L = batch["input_ids"].shape
        assert (B, L) == (3, TPS)
        for key in ("target_ids", "loss_mask", "segment_ids", "position_ids", "benchmark_ids", "task_ids"):
            assert batch[key].shape == (B, L)
        assert (batch["target_ids"][~batch["loss_mask"]] == tok.pad_id).all()
        for r in range(B):
            seg = batch["segment_ids"][r]
            block = torch.cat([batch["input_ids"][r], batch["target_ids"][r, -1:]])
            pad = seg == 0
            assert (batch["input_ids"][r][pad] == tok.pad_id).all()
            assert (batch["benchmark_ids"][r][pad] == -1).all() and (batch["task_ids"][r][pad] == -1).all()
            for k, index in enumerate(batch["example_indices"][r], start=1):
                ex, item = expected_item(pipe, index)
                where = (seg == k).nonzero().flatten()
                lo, n = int(where[0]), len(item)
                assert len(where) == n or int(where[-1]) == L - 1      # the last token may be target-only
                assert block[lo:lo + n].tolist() == item.tokens.tolist()
                assert batch["position_ids"][r, lo:lo + len(where)].tolist() == list(range(len(where)))
                # loss on exactly the target tokens and </s>: input j predicts block[j + 1]
                want_loss = [lo + j - 1 for j in range(item.n_src, n)]
                got_loss = [j for j in range(max(lo - 1, 0), min(lo + n, L)) if batch["loss_mask"][r, j]]
                assert got_loss == want_loss
                assert batch["task_ids"][r, lo] == ex.task_id
                assert batch["benchmark_ids"][r, lo] == ex.benchmark_id
                seen.append(index)
        assert 0 < batch["stats"]["non_pad_fraction"] <= 1
    state = pipe.state_dict()
    held = state["pending"] + [i for key in ("open_blocks", "incoming", "buffer", "ready")
                               for lst in state[key] for i in lst]
    assert len(seen) == len(set(seen)) and not set(seen) & set(held)
    # yielded + held = exactly what was read from the stream
    assert sorted(seen + held) == list(range(pipe.stream.next_index))
    assert pipe.held_examples == len(held)


def assert_same(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


_UNINTERRUPTED: Dict[Any, Any] = {}


def uninterrupted(bench, mixture, tok, strategy, buffer, n=10):
    """The reference run (cached per configuration: hypothesis calls the test many times)."""
    key = (strategy, buffer, n)
    if key not in _UNINTERRUPTED:
        pipe = pipeline(bench, mixture, tok, strategy, buffer)
        batches = list(itertools.islice(pipe, n))
        _UNINTERRUPTED[key] = (batches, pipe.stats.to_dict())
    return _UNINTERRUPTED[key]


@settings(max_examples=10, deadline=None)
@given(cut=st.integers(0, 9), strategy=st.sampled_from(["best_fit", "sequential"]),
       buffer=st.sampled_from([0, 1, 5]))
def test_resume_at_any_point_is_exact(bench, mixture, tok, cut, strategy, buffer):
    full, stats = uninterrupted(bench, mixture, tok, strategy, buffer)
    first = pipeline(bench, mixture, tok, strategy, buffer)
    head = list(itertools.islice(first, cut))
    state = json.loads(json.dumps(first.state_dict()))
    resumed = pipeline(bench, mixture, tok, strategy, buffer)
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed, 10 - cut))
    assert len(head + tail) == len(full)
    for a, b in zip(full, head + tail):
        assert_same(a, b)
    assert resumed.stats.to_dict() == stats
    rows = torch.cat([b["row_ids"] for b in head + tail]).tolist()   # sample ids continue across resume
    assert rows == list(range(len(rows)))


def test_state_mismatch_rejected(bench, mixture, tok):
    state = pipeline(bench, mixture, tok).state_dict()
    other = pipeline(bench, mixture, tok, strategy="sequential")
    with pytest.raises(ConfigError, match="strategy"):
        other.load_state_dict(state)


@dataclass
class FakeExample:
    index: int
    task_id: int
    benchmark_id: int
    row: Dict[str, Any]


class ListStream:
    """A finite stream for the end-of-data path (the real one is endless)."""

    def __init__(self, rows):
        self.rows, self.next = rows, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.next >= len(self.rows):
            raise StopIteration
        self.next += 1
        return self.example(self.next - 1)

    def example(self, i):
        return FakeExample(i, i % 2, 0, self.rows[i])

    def state_dict(self):
        return {"next": self.next}

    def load_state_dict(self, state):
        self.next = state["next"]


def test_finite_stream_drains_everything(tok):
    rows = [{"id": str(i), "src": "word " * (i % 13 + 1), "tgt": "out " * (i % 5)} for i in range(50)]
    pipe = PackedBatches(ListStream(rows), tok, PackingConfig(tokens_per_sample=64), batch_size=4,
                         seed=0, shuffle_buffer=3, drop_last=False)
    batches = list(pipe)
    indices = [i for b in batches for row in b["example_indices"] for i in row]
    assert sorted(indices) == list(range(50))
    assert pipe.stats.examples == 50
    assert pipe.stats.tokens == sum(len(make_item(*tok.encode_pair(r["src"], r["tgt"]), pipe.packing)) for r in rows)
    assert batches[-1]["input_ids"].shape[0] <= 4


def test_bad_row_names_the_example(tok):
    pipe = PackedBatches(ListStream([{"id": "x7", "src": "a"}]), tok, PackingConfig(tokens_per_sample=32),
                         batch_size=1, seed=0)
    with pytest.raises(BadRecordError, match="x7.*'tgt'"):
        next(pipe)


def test_collate_pads_rows(tok):
    cfg = PackingConfig(tokens_per_sample=16)
    from optiml_plugin.data.packing import pack
    blocks = pack([make_item([5, 6], [7], cfg, task_id=3, benchmark_id=1)], cfg)
    batch = collate_blocks(blocks, rows=3)
    assert batch["input_ids"].shape == (3, 16)
    assert batch["input_ids"][0, :5].tolist() == [2, 5, 6, 7, 2]   # </s> opens the example (BOS rule)
    assert batch["loss_mask"][0, :5].tolist() == [False, False, True, True, False]
    assert batch["target_ids"][0, :5].tolist() == [1, 1, 7, 2, 1]
    assert batch["task_ids"][0, :6].tolist() == [3, 3, 3, 3, 3, -1]
    assert (batch["segment_ids"][1:] == 0).all() and (batch["benchmark_ids"][1:] == -1).all()
    with pytest.raises(ConfigError):
        collate_blocks(blocks * 2, rows=1)


def test_prefetch_thread_changes_nothing(bench, mixture, tok):
    threaded = list(itertools.islice(pipeline(bench, mixture, tok, chunk=5), 6))
    inline_pipe = pipeline(bench, mixture, tok, chunk=5)
    inline_pipe.prefetch = False
    for a, b in zip(threaded, itertools.islice(inline_pipe, 6)):
        assert_same(a, b)
