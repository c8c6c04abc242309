"""The example stream: frequencies, no repeat within a pass, exact resume, disjoint covering partitions."""
from __future__ import annotations

import itertools
import json
from collections import defaultdict
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture, MixtureConfig
from optiml_plugin.data.stream import ExampleStream, keyed_bijection, permutation_keys
from optiml_plugin.errors import ConfigError

SIZES = {"niv2": [3, 5, 11, 64], "flan": [7, 200], "p3": [1, 40]}
CHUNK = 64


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    specs = [{"benchmark": b, "category": "c", "task": f"{b}{i}", "n": n}
             for b, ns in SIZES.items() for i, n in enumerate(ns)]
    return Bench(make_bench(tmp_path_factory.mktemp("bench"), specs))


@pytest.fixture(scope="module")
def mixture(bench):
    return Mixture.from_bench(bench, MixtureConfig({"flan": 0.3, "p3": 0.2}, eps=32))


def take(stream, n):
    return list(itertools.islice(stream, n))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5000), key=st.integers(0, 2 ** 64 - 1))
def test_keyed_bijection_is_a_permutation(n, key):
    x = np.arange(n, dtype=np.uint64)
    out = keyed_bijection(x, np.full(n, n), np.full(n, key, dtype=np.uint64))
    assert np.array_equal(np.sort(out), x)


def test_keyed_bijection_handles_huge_tasks_in_constant_memory():
    n = 10 ** 12
    x = np.arange(0, n, n // 1000, dtype=np.uint64)
    out = keyed_bijection(x, np.full(len(x), n), permutation_keys(3, np.zeros(len(x)), np.zeros(len(x))))
    assert (out < n).all() and len(np.unique(out)) == len(x)


def test_task_frequencies_match_the_mixture(bench, mixture):
    """Chi-square goodness of fit on 40k draws with a fixed seed.

    The critical value is the Wilson-Hilferty approximation of the chi-square quantile,
    df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3 with z the normal quantile; it is within about 1% of
    the exact quantile for df >= 3, far below the margin a broken sampler would produce (a wrong
    weight on one task moves the statistic by hundreds at this sample size). alpha = 1e-4.
    """
    stream = ExampleStream(bench, mixture, seed=11, chunk_size=1000)
    draws = 40_000
    tasks = np.array([stream.locate(i)[0] for i in range(draws)])
    observed = np.bincount(tasks, minlength=len(mixture.tasks))
    expected = mixture.probs * draws
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(mixture.tasks) - 1
    z = NormalDist().inv_cdf(1 - 1e-4)
    critical = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
    assert stat < critical, (stat, critical, observed.tolist(), expected.round(1).tolist())
    # the statistic must be able to fail: the same draws against uniform weights do
    uniform = np.full(len(observed), draws / len(observed))
    assert float(((observed - uniform) ** 2 / uniform).sum()) > critical


def test_no_example_repeats_within_a_pass_and_passes_differ(bench, mixture):
    stream = ExampleStream(bench, mixture, seed=5, chunk_size=CHUNK)
    seq = defaultdict(list)
    for i in range(3000):
        task, row = stream.locate(i)
        seq[task].append(row)
    differ = False
    for task, rows in seq.items():
        n = int(mixture.sizes[task])
        passes = [rows[k:k + n] for k in range(0, len(rows) - n + 1, n)]
        assert passes, f"task {task} was not seen for a full pass"
        for p in passes:
            assert sorted(p) == list(range(n)), (task, p)
        differ |= any(a != b for a, b in zip(passes, passes[1:]))
    assert differ, "every pass of every task used the same order"


def test_iteration_reads_the_rows_of_example_i(bench, mixture):
    stream = ExampleStream(bench, mixture, seed=2, chunk_size=CHUNK)
    other = ExampleStream(bench, mixture, seed=2, chunk_size=CHUNK, rank=1, world_size=3)
    for ex in take(stream, 150):
        assert ex.index < 150
        again = other.example(ex.index)
        assert again == ex
        task = mixture.tasks[ex.task_id]
        assert ex.row["task"] == task.task and ex.row["benchmark"] == mixture.benchmarks[ex.benchmark_id]
    different_seed = ExampleStream(bench, mixture, seed=3, chunk_size=CHUNK)
    assert [different_seed.locate(i) for i in range(50)] != [stream.locate(i) for i in range(50)]


def test_partitions_are_disjoint_and_cover_the_stream(bench, mixture):
    single = ExampleStream(bench, mixture, seed=4, chunk_size=CHUNK)
    per = 3 * CHUNK  # every partition yields three whole chunks
    seen = []
    for rank in range(2):
        for worker in range(3):
            s = ExampleStream(bench, mixture, seed=4, chunk_size=CHUNK, rank=rank, world_size=2,
                              worker=worker, num_workers=3)
            exs = take(s, per)
            assert all(s.owner(e.index) == s.partition for e in exs)
            assert [e.index for e in exs] == sorted(e.index for e in exs)
            seen.extend(exs)
    indices = [e.index for e in seen]
    assert len(set(indices)) == len(indices)
    assert sorted(indices) == list(range(6 * per))
    for e in seen[::17]:
        assert e == single.example(e.index)


@settings(max_examples=30, deadline=None)
@given(stop=st.integers(0, 400), rank=st.integers(0, 1), after=st.integers(1, 150))
def test_resume_equals_an_uninterrupted_run(bench, mixture, stop, rank, after):
    def make():
        return ExampleStream(bench, mixture, seed=9, chunk_size=CHUNK, rank=rank, world_size=2)
    full = take(make(), stop + after)
    first = make()
    take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    assert take(resumed, after) == full[stop:]


def test_state_is_small_and_checked(bench, mixture):
    s = ExampleStream(bench, mixture, seed=1, chunk_size=CHUNK)
    take(s, 100)
    state = s.state_dict()
    assert len(state["chunk_counts"]) == len(mixture.tasks)
    with pytest.raises(ConfigError, match=r"changed: the seed \(run.seed\) \(saved 1, now 2\)"):
        ExampleStream(bench, mixture, seed=2, chunk_size=CHUNK).load_state_dict(state)
    with pytest.raises(ConfigError, match="the number of processes"):
        ExampleStream(bench, mixture, seed=1, chunk_size=CHUNK, rank=1, world_size=2).load_state_dict(state)


def test_bad_partition_arguments(bench, mixture):
    with pytest.raises(ConfigError, match="rank 2 is outside 0..1"):
        ExampleStream(bench, mixture, seed=0, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
        ExampleStream(bench, mixture, seed=-1)


def test_stream_draws_the_requested_benchmark_shares(bench, mixture):
    ids = [ex.benchmark_id for ex in take(ExampleStream(bench, mixture, seed=6, chunk_size=CHUNK), 500)]
    realized = np.bincount(ids, minlength=len(mixture.benchmarks)) / len(ids)
    assert np.abs(realized - mixture.effective_benchmark_probs()).max() < 0.08


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 3 * CHUNK), min_size=1, max_size=5), partition=st.integers(0, 3))
def test_take_equals_repeated_next_across_chunks_and_partitions(bench, mixture, sizes, partition):
    def make():
        return ExampleStream(bench, mixture, seed=12, chunk_size=CHUNK, rank=partition // 2, world_size=2,
                             worker=partition % 2, num_workers=2)
    batched, single = make(), make()
    for n in sizes:
        assert batched.take(n) == [next(single) for _ in range(n)]
        assert batched.state_dict() == single.state_dict()
