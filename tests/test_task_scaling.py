"""Task scaling (paper Tab 16): `data.max_train_tasks` trains on the first N training tasks of one fixed
order, nested across N, through the one data path; shares of benchmarks left without tasks are given
back and said."""
from __future__ import annotations

import pytest

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture, MixtureConfig, task_order
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.training_data import open_run
from optiml_plugin.local.data import training_texts
from optiml_plugin.recipe import DataFields

TASKS = [dict(benchmark="b1" if i < 6 else "b2", category="c", task=f"t{i:02d}", n=5 + i) for i in range(8)] + [
    dict(benchmark="b1", category="c", task="t05", n=3, split="valid_heldout_instances")]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return Bench(make_bench(tmp_path_factory.mktemp("scaling") / "bench", TASKS))


def stems(m: Mixture):
    return [t.task for t in m.tasks]


def test_the_first_n_tasks_are_nested_and_do_not_depend_on_file_order(bench):
    kept = {n: set(stems(Mixture.from_bench(bench, MixtureConfig(max_tasks=n)))) for n in (2, 4, 8)}
    assert len(kept[2]) == 2 and len(kept[4]) == 4 and len(kept[8]) == 8
    assert kept[2] < kept[4] < kept[8]
    assert all("t05" in k for k in kept.values())   # a fully supervised task is always kept (§4.4)
    names = [f"x{i}" for i in range(20)]
    order = [names[i] for i in task_order(names)]
    rev = names[::-1]
    assert [rev[i] for i in task_order(rev)] == order
    m = Mixture.from_bench(bench, MixtureConfig(max_tasks=4))
    assert len(m.left_out_tasks) == 4 and "task scaling" in m.table()
    assert m.to_dict()["left_out_tasks"] == m.left_out_tasks


def test_a_benchmark_left_without_tasks_gives_its_share_back(bench):
    full = Mixture.from_bench(bench, MixtureConfig(proportions={"b1": 0.5, "b2": 0.5}))
    assert set(full.benchmarks) == {"b1", "b2"}
    n = 1   # the first task is the fully supervised t05, of b1
    m = Mixture.from_bench(bench, MixtureConfig(proportions={"b1": 0.5, "b2": 0.5}, max_tasks=n))
    assert m.benchmarks == ["b1"] and m.dropped_shares == {"b2": 0.5}
    assert m.effective_benchmark_probs().tolist() == pytest.approx([1.0])
    assert "given back" in m.table()


def test_training_draws_only_the_kept_tasks(bench):
    tok = OptTokenizer.builtin(training_texts(bench), vocab_size=300)
    data = open_run(bench, tok, DataFields(tokens_per_sample=64, max_train_tasks=3,
                                                valid_splits=["valid_heldout_instances"]), 2, seed=1)
    kept = set(stems(data.mixture))
    drawn = {data.mixture.tasks[data.stream.example(i).task_id].task for i in range(200)}
    assert len(kept) == 3 and drawn == kept
