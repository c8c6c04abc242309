"""Mixture weights: EPS caps, benchmark shares, the leftover rule, errors and the table."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.mixture import Mixture, MixtureConfig, parse_proportions, validate_proportions
from optiml_plugin.errors import ConfigError

SPECS = [
    {"benchmark": "niv2", "category": "qa", "task": "a", "n": 5},
    {"benchmark": "niv2", "category": "qa", "task": "b", "n": 100},
    {"benchmark": "niv2", "category": "sum", "task": "c", "n": 5000},
    {"benchmark": "flan", "category": "nli", "task": "d", "n": 7},
    {"benchmark": "flan", "category": "nli", "task": "e", "n": 300},
    {"benchmark": "p3", "category": "qa", "task": "f", "n": 40},
    {"benchmark": "cot", "category": "reasoning", "task": "g", "n": 3, "split": "valid_heldout_tasks"},
]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return Bench(make_bench(tmp_path_factory.mktemp("bench"), SPECS))


def probs_by_task(m: Mixture):
    return {t.task: p for t, p in zip(m.tasks, m.probs)}


def test_eps_cap_and_leftover_rule_worked_by_hand(bench):
    m = Mixture.from_bench(bench, MixtureConfig({"flan": 0.5}, eps=200))
    # capped weights: niv2 a,b,c = 5, 100, 200 (305); flan d,e = 7, 200 (207); p3 f = 40.
    # flan takes 0.5; niv2 and p3 share the other 0.5 by capped mass 305 : 40.
    expected = {"a": 0.5 * 5 / 345, "b": 0.5 * 100 / 345, "c": 0.5 * 200 / 345,
                "d": 0.5 * 7 / 207, "e": 0.5 * 200 / 207, "f": 0.5 * 40 / 345}
    got = probs_by_task(m)
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    assert m.probs.dtype == np.float64 and m.probs.sum() == pytest.approx(1.0, abs=1e-12)
    assert m.task_weights.tolist() == [7, 200, 5, 100, 200, 40]  # manifest order: flan, niv2, p3
    assert m.benchmarks == ["flan", "niv2", "p3"]
    assert [m.benchmarks[b] for b in m.benchmark_of_task] == [t.benchmark for t in m.tasks]


def test_per_benchmark_caps_override_eps(bench):
    m = Mixture.from_bench(bench, MixtureConfig(None, eps=200, caps={"niv2": 50}))
    w = dict(zip((t.task for t in m.tasks), m.task_weights.tolist()))
    assert w == {"a": 5, "b": 50, "c": 50, "d": 7, "e": 200, "f": 40}
    assert probs_by_task(m)["c"] == pytest.approx(50 / (105 + 207 + 40))


def test_no_eps_is_examples_proportional(bench):
    m = Mixture.from_bench(bench, MixtureConfig(None, eps=None))
    total = 5 + 100 + 5000 + 7 + 300 + 40
    assert probs_by_task(m)["c"] == pytest.approx(5000 / total)


def test_extra_streams_are_benchmarks_with_shares(tmp_path):
    specs = SPECS[:6] + [{"benchmark": "pretrain", "category": "text", "task": "shard", "n": 9},
                         {"benchmark": "cot", "category": "reasoning", "task": "g", "n": 30}]
    m = Mixture.from_bench(Bench(make_bench(tmp_path, specs)),
                           MixtureConfig({"pretrain": 0.05, "cot": 0.01, "flan": 0.5}, eps=200))
    got = probs_by_task(m)
    assert got["shard"] == pytest.approx(0.05) and got["g"] == pytest.approx(0.01)
    assert got["c"] == pytest.approx(0.44 * 200 / 345)  # niv2 and p3 share the 0.44 left


@pytest.mark.parametrize("props, message", [
    ({"niv2": -0.1}, "share of 'niv2' is negative"),
    ({"niv2": 0.7, "flan": 0.4}, "sum to 1.1 > 1"),
    ({"niv2": 0.5, "flan": 0.2, "p3": 0.2, "cot": 0.0}, "list every benchmark but sum to 0.9"),
    ({"t5": 0.2}, r"unknown benchmark\(s\) \['t5'\]"),
    ({"niv2": "lots"}, "share of 'niv2' is 'lots', not a number"),
    ({"niv2": float("nan")}, "not finite"),
    ({"cot": 0.2}, "'cot' has share 0.2 but no examples in split 'train'"),
    ({"niv2": 0.4, "flan": 0.3, "p3": 0.2}, "leftover 0.1 has no unlisted benchmark with examples"),
])
def test_bad_configs_raise_clear_errors(bench, props, message):
    with pytest.raises(ConfigError, match=message):
        Mixture.from_bench(bench, MixtureConfig(props))


def test_bad_caps_and_eps(bench):
    with pytest.raises(ConfigError, match="caps name unknown benchmark 'xyz'"):
        Mixture.from_bench(bench, MixtureConfig(None, caps={"xyz": 3}))
    with pytest.raises(ConfigError, match="eps must be a positive integer"):
        Mixture.from_bench(bench, MixtureConfig(None, eps=0))


def test_validate_proportions_alone():
    validate_proportions({"a": 0.2, "b": 0.8})
    validate_proportions({"a": 0.2})  # the rest is left to unlisted benchmarks
    assert validate_proportions({"a": "1e-1"}) == {"a": 0.1}   # the recipe's number rule
    with pytest.raises(ConfigError, match="must be a mapping"):
        validate_proportions([0.5, 0.5])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a number"):
        validate_proportions({"a": True})


def test_parse_proportions_json_and_files(tmp_path):
    assert parse_proportions('{"niv2": 0.25, "flan": 0.2}') == {"niv2": 0.25, "flan": 0.2}
    y = tmp_path / "p.yaml"
    y.write_text("niv2: 0.25\nflan: 0.20\n")
    assert parse_proportions(str(y)) == {"niv2": 0.25, "flan": 0.2}
    j = tmp_path / "p.json"
    j.write_text('{"p3": 0.45}')
    assert parse_proportions(j) == {"p3": 0.45}
    with pytest.raises(ConfigError, match="invalid JSON at column"):
        parse_proportions('{"niv2": }')
    with pytest.raises(ConfigError, match="file not found"):
        parse_proportions(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 0.5\n- 0.5\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        parse_proportions(bad)
    with pytest.raises(ConfigError, match="negative"):
        parse_proportions('{"niv2": -1}')


def test_table_and_dict(bench):
    m = Mixture.from_bench(bench, MixtureConfig({"flan": 0.5}, eps=200))
    table = m.table(max_tasks=2)
    for name in ("flan", "niv2", "p3", "leftover", "EPS 200"):
        assert name in table
    assert "... 4 more tasks omitted" in table
    assert "flan__nli__e" in table  # the most likely task is shown
    full = m.table()
    assert "omitted" not in full and all(t.task in full for t in m.tasks)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["benchmarks"]["flan"]["probability"] == pytest.approx(0.5)
    assert sum(t["probability"] for t in d["tasks"]) == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.integers(1, 600), min_size=3, max_size=7),
       eps=st.one_of(st.none(), st.integers(1, 400)),
       shares=st.lists(st.floats(0.0, 1.0, allow_subnormal=False), min_size=3, max_size=3))
def test_probabilities_follow_the_rules(tmp_path_factory, sizes, eps, shares):
    names = ["b0", "b1", "b2"]
    specs = [{"benchmark": names[i % 3], "category": "c", "task": f"t{i}", "n": n} for i, n in enumerate(sizes)]
    bench = Bench(make_bench(tmp_path_factory.mktemp("h"), specs))
    total = sum(shares[:2]) or 1.0
    props = {"b0": shares[0] / total * 0.9, "b1": shares[1] / total * 0.9}  # b2 takes the leftover
    m = Mixture.from_bench(bench, MixtureConfig(props, eps=eps))
    assert m.probs.sum() == pytest.approx(1.0, abs=1e-9)
    eff = dict(zip(m.benchmarks, m.effective_benchmark_probs()))
    for name, share in props.items():
        assert eff[name] == pytest.approx(share / (sum(props.values()) + 0.1), abs=1e-9)
    for b in range(3):
        sel = m.benchmark_of_task == b
        w = np.minimum(m.sizes[sel], eps or np.iinfo(np.int64).max)
        assert np.array_equal(m.task_weights[sel], w)
        if m.probs[sel].sum() > 0:
            np.testing.assert_allclose(m.probs[sel] / m.probs[sel].sum(), w / w.sum(), rtol=1e-9)
