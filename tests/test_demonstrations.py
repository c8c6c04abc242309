"""MetaICL training and Flan-style mixed prompts (data/demonstrations.py) through the one data path
(`training_data`, which both trainers consume): the k law, which tokens carry loss, where demonstrations
come from, and exact resume."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch

from bench_factory import write_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.demonstrations import DemoConfig, Demonstrations, zipf_probs
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.training_data import open_run
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import DataFields


def rows(task: str, split: str, n: int, tag: str = "") -> List[Dict]:
    return [{"id": f"{task}-{split}-{i}", "benchmark": task[:2], "category": "c", "task": task, "split": split,
             "src": f"{tag}{task} question {i}: what follows {i}?", "tgt": f"{tag}{task}answer{i}",
             "references": [f"{task}answer{i}"], "candidates": None, "instruction": "", "input": "",
             "template": "t", "language": "en"} for i in range(n)]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    return write_bench(tmp_path_factory.mktemp("demo") / "bench", [
        ("b1", "c", "b1task", "train", "train", rows("b1task", "train", 30)),
        ("b1", "c", "b1task", "train", "valid_heldout_instances",
         rows("b1task", "valid_heldout_instances", 10, tag="HELDOUT")),
        ("b2", "c", "b2task", "train", "train", rows("b2task", "train", 30)),
    ])


@pytest.fixture(scope="module")
def tok(bench) -> OptTokenizer:
    texts = [r[k] for t in ("b1task", "b2task") for r in rows(t, "train", 30) + rows(t, "x", 10, "HELDOUT")
             for k in ("src", "tgt")]
    return OptTokenizer.builtin(texts + ["\n\n\n"], vocab_size=400)


def fields(**kw) -> DataFields:
    return DataFields(**{"tokens_per_sample": 256, "valid_splits": ["valid_heldout_instances"],
                         "packing_strategy": "sequential", **kw})


def segments(batch, tok: OptTokenizer) -> List[Tuple[str, str]]:
    """(whole text, text of the loss-carrying targets) of every packed example of a batch."""
    out = []
    inputs, targets = batch["input_ids"].numpy(), batch["target_ids"].numpy()
    mask, seg = batch["loss_mask"].numpy(), batch["segment_ids"].numpy()
    for r in range(inputs.shape[0]):
        for s in sorted(set(seg[r].tolist()) - {0}):
            sel = seg[r] == s
            whole = tok.decode(inputs[r][sel].tolist())
            loss = tok.decode(targets[r][sel & mask[r]].tolist())
            out.append((whole, loss))
    return out


def first_batches(bench, tok, n=3, **kw):
    data = open_run(Bench(bench), tok, fields(**kw), batch_size=2, seed=3)
    it = iter(data.batches)
    return data, [next(it) for _ in range(n)]


def chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    """Pearson's chi-square test: the p-value of `observed` counts under `expected` (k - 1 degrees of
    freedom), as the regularized upper incomplete gamma function Q(df / 2, stat / 2)."""
    stat = float(((observed - expected) ** 2 / expected).sum())
    df = len(observed) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def test_zipf_law_is_truncated_and_renormalized():
    """P(k) ~ (k+1)^-a over k = 0..5: the two P(0) the paper's figures imply, and a chi-square test of
    1e5 draws against the law."""
    assert zipf_probs(4, 5)[0] == pytest.approx(0.925, abs=5e-4)
    assert zipf_probs(2, 5)[0] == pytest.approx(0.671, abs=5e-4)
    assert zipf_probs(2, 5).sum() == pytest.approx(1.0)
    demos = Demonstrations(DemoConfig(zipf_a=2), 0, ["b"], [100], None, None)
    rng = np.random.default_rng(0)
    draws = np.bincount([demos.draw_k(rng, 0) for _ in range(100_000)], minlength=6)
    assert chi_square_p(draws, zipf_probs(2, 5) * 100_000) > 0.001
    # a wrong law (a = 4 instead of 2) is rejected by the same test
    assert chi_square_p(draws, zipf_probs(4, 5) * 100_000) < 1e-6


def test_metaicl_loss_is_on_the_trained_example_target_only(bench, tok):
    _, batches = first_batches(bench, tok, metaicl_zipf_a=0.5)   # a small a: most examples get demos
    seen_k = []
    for batch in batches:
        for whole, loss in segments(batch, tok):
            parts = whole.split("\n\n\n")
            seen_k.append(len(parts) - 1)
            query = parts[-1]
            m = re.match(r"(b\dtask) question (\d+):", query)
            assert m, whole
            task, i = m.group(1), m.group(2)
            assert loss.strip() == f"{task}answer{i}"                      # only the query's target
            for demo in parts[:-1]:
                d = re.match(rf"{task} question (\d+): what follows \d+\? {task}answer(\d+)$", demo)
                assert d and d.group(1) == d.group(2) and d.group(1) != i, demo  # same task, not itself
            assert "HELDOUT" not in whole                                   # never a held-out row
    assert max(seen_k) >= 2 and 0 in seen_k


def test_metaicl_suffix_loss_starts_at_the_first_demonstration_target(bench, tok):
    _, batches = first_batches(bench, tok, metaicl_zipf_a=0.5, metaicl_suffix_loss=True)
    with_demos = 0
    for batch in batches:
        for whole, loss in segments(batch, tok):
            parts = whole.split("\n\n\n")
            first_src, _, first_tgt = parts[0].partition("? ")
            if len(parts) == 1:
                assert loss.strip() == first_tgt
                continue
            with_demos += 1
            # the loss text is everything from the first demonstration's target on
            assert loss.strip() == whole[whole.index(first_tgt):].strip()
            assert first_src not in loss
    assert with_demos > 0


def test_mixed_prompts_follow_the_share_per_benchmark(bench, tok):
    data, batches = first_batches(bench, tok, n=40, fewshot_share={"b1": 1.0}, max_demonstrations=2)
    by_bench = {"b1": [], "b2": []}
    for batch in batches:
        for whole, _loss in segments(batch, tok):
            by_bench[whole[:2]].append(whole.count("\n\n\n"))
            assert "HELDOUT" not in whole
    assert by_bench["b2"] and set(by_bench["b2"]) == {0}          # unlisted: zero-shot
    assert by_bench["b1"] and set(by_bench["b1"]) <= {1, 2} and len(set(by_bench["b1"])) == 2
    # the batch carries each token's k; at each example's first token it is the k just counted
    ks = [int(b["demo_k"][r][s]) for b in batches for r in range(b["demo_k"].shape[0])
          for s in range(b["demo_k"].shape[1]) if b["segment_ids"][r][s] > 0
          and (s == 0 or b["segment_ids"][r][s] != b["segment_ids"][r][s - 1])]
    assert sorted(ks) == sorted(by_bench["b1"] + by_bench["b2"])


def test_demonstrations_resume_exactly(bench, tok):
    kw = dict(metaicl_zipf_a=1.0, metaicl_suffix_loss=True)
    data = open_run(Bench(bench), tok, fields(**kw), batch_size=2, seed=3)
    it = iter(data.batches)
    for _ in range(3):
        next(it)
    state = data.batches.state_dict()
    want = [next(it) for _ in range(3)]
    again = open_run(Bench(bench), tok, fields(**kw), batch_size=2, seed=3)
    again.batches.load_state_dict(state)
    got = [next(iter(again.batches)) for _ in range(3)]
    for a, b in zip(want, got):
        for key in ("input_ids", "loss_mask", "segment_ids", "demo_k"):
            assert (a[key] == b[key]).all()
    other = open_run(Bench(bench), tok, fields(metaicl_zipf_a=2.0), batch_size=2, seed=3)
    with pytest.raises(ConfigError, match="demonstration settings"):
        other.batches.load_state_dict(state)


def test_demonstrations_that_do_not_fit_are_dropped_and_counted(bench, tok):
    """At a short row length the farthest demonstrations go first; the query is never cut for them."""
    data, batches = first_batches(bench, tok, metaicl_zipf_a=0.1, tokens_per_sample=40)
    for batch in batches:
        for _whole, loss in segments(batch, tok):
            assert re.fullmatch(r"b\dtaskanswer\d+", loss.strip()), loss   # the query's target, whole
    assert data.batches.stats.cut_right_examples == 0
    assert max(int(b["demo_k"].max()) for b in batches) <= 2   # at most two demonstrations fit in 40 tokens


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="set one of them"):
        DemoConfig(zipf_a=2, fewshot_share={"b1": 0.5})
    with pytest.raises(ConfigError, match="needs data.metaicl_zipf_a"):
        DemoConfig(suffix_loss=True)
    with pytest.raises(ConfigError, match="does not have"):
        Demonstrations(DemoConfig(fewshot_share={"nope": 0.5}), 0, ["b1"], [3], None, None)


def test_the_local_trainer_logs_the_realized_k_and_resumes_exactly(bench, tmp_path):
    """The trainer consumes the same batches: the realized k distribution is in its log (TensorBoard on, as
    by default), and a run killed after a checkpoint continues with the very same losses and counts."""
    import json

    from bench_factory import micro_train_config
    from optiml_plugin.local.trainer import Trainer, read_log

    data = {"metaicl_zipf_a": 1.0, "metaicl_suffix_loss": True, "tokens_per_sample": 128,
            "valid_splits": ["valid_heldout_instances"]}
    full = Trainer(micro_train_config(bench, tmp_path / "full", data=data, run={"tensorboard": True}))
    full.train()
    cut = Trainer(micro_train_config(bench, tmp_path / "cut", data=data))
    assert cut.train(until=3) is None
    del cut
    resumed = Trainer(micro_train_config(bench, tmp_path / "cut", data=data), resume=True)
    resumed.train()
    a = [r for r in read_log(tmp_path / "full" / "log.jsonl") if "split" not in r]
    b = [r for r in read_log(tmp_path / "cut" / "log.jsonl") if "split" not in r]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["demonstrations"] for r in a] == [r["demonstrations"] for r in b]
    shares = {k: sum(r["demonstrations"].get(k, 0) for r in a) / len(a) for k in "012345"}
    assert set(a[-1]["demonstrations"]) <= set("012345") and sum(a[-1]["demonstrations"].values()) == pytest.approx(1.0)
    assert shares["0"] < 1.0 and sum(shares.values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "full" / "mixture.json").read_text())["benchmarks"].keys() == {"b1", "b2"}
