"""Parity of the two trainers' front ends: one recipe on one bench through the local path (`open_run` and
the trainer's telemetry) and through the metaseq adapter's pure parts (options -> wiring -> samples ->
criterion arithmetic -> `reduce_metrics`' scalars) gives identical batches and identical metric
dictionaries, step by step and over a logging window, in training and in validation.

The "model" is a fixed table of logits per input token, so both sides score the very same numbers; what
is compared is everything around it: batches, target masks, counters, their reduction, the metric names.
"""
from __future__ import annotations

import json
from argparse import Namespace
from typing import Any, Dict, List

import pytest
import torch

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.conventions import PAD_ID
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.training_data import open_run
from optiml_plugin.local.data import training_texts
from optiml_plugin.metaseq import lossmath, options, wiring
from optiml_plugin.recipe import DataFields
from optiml_plugin.telemetry import Telemetry, add, flat, nested, scalars

STEPS, BATCH, SEED = 4, 3, 7
RECIPE: Dict[str, Any] = {"tokens_per_sample": 48, "packing_strategy": "best_fit", "packing_window": 4,
                          "truncation": "left", "benchmark_proportions": {"niv2": 0.6}, "eps": 30,
                          "benchmark_caps": {"flan": 20}, "shuffle_buffer": 5,
                          "valid_splits": ["valid_heldout_tasks", "valid_heldout_categories"],
                          "max_valid_examples_per_task": 6, "loss_normalization": "example"}


def metaseq_cfg(bench: str, recipe: Dict[str, Any]) -> Namespace:
    """The recipe as metaseq's command line gives it to the task (JSON objects, comma lists)."""
    text = {k: json.dumps(v) if isinstance(v, dict) else ",".join(v) if isinstance(v, list) else v
            for k, v in recipe.items()}
    return Namespace(data=bench, no_document_masking=False, add_bos_token=False, **text)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_bench(tmp_path_factory.mktemp("bench"), [
        {"benchmark": "niv2", "category": "qa", "task": "a", "n": 50},
        {"benchmark": "flan", "category": "nli", "task": "b", "n": 40},
        {"benchmark": "t5", "category": "sum", "task": "e", "n": 25},
        {"benchmark": "niv2", "category": "qa", "task": "c", "n": 9, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
        {"benchmark": "flan", "category": "sum", "task": "d", "n": 4, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
        # a benchmark absent from training: validation keeps it (and its category)
        {"benchmark": "bigbench", "category": "logic", "task": "f", "n": 5, "split": "valid_heldout_categories",
         "level": "heldout_categories"},
    ])
    bench = Bench(root)
    tok = OptTokenizer.builtin(training_texts(bench), vocab_size=300)
    table = torch.randn(tok.vocab_size, tok.vocab_size, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)   # both sides score in float64: what differs is not the model
    return root, bench, tok, table


def logits_of(table: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return table[tokens]


@pytest.fixture(scope="module")
def local(setup) -> Dict[str, Any]:
    """What the local trainer computes: `open_run`'s batches, per-token NLL, the telemetry's counters."""
    root, bench, tok, table = setup
    run = open_run(bench, tok, DataFields(**RECIPE), BATCH, SEED)
    steps: List[Dict[str, Any]] = []
    it = iter(run.batches)
    for _ in range(STEPS):
        b = next(it)
        mask = b["loss_mask"]
        nll = torch.nn.functional.cross_entropy(logits_of(table, b["input_ids"])[mask], b["target_ids"][mask],
                                                reduction="none")
        counters = run.telemetry.train_counters(nll, mask, b["segment_ids"], b["benchmark_ids"])
        steps.append({"batch": b, "counters": counters})
    valid = {}
    for name, subset in run.validation.items():
        counters = {}
        for b in subset.batches:
            mask = b["loss_mask"]
            nll = torch.nn.functional.cross_entropy(logits_of(table, b["input_ids"])[mask],
                                                    b["target_ids"][mask], reduction="none")
            counters = add(counters, Telemetry.valid_counters(nll, b["task_ids"][mask], subset.groups))
        valid[name] = flat(nested(scalars(counters)))
    return {"run": run, "steps": steps, "valid": valid}


@pytest.fixture(scope="module")
def meta(setup) -> Dict[str, Any]:
    """What the metaseq task and criterion compute, without metaseq."""
    root, bench, tok, table = setup
    settings = options.settings_from_cfg(metaseq_cfg(str(root), RECIPE))
    benchmarks = wiring.benchmark_names(settings, bench)
    telemetry = Telemetry(benchmarks, settings.fields.loss_normalization)   # the criterion's
    train = wiring.build_train_data(settings, bench, tok, BATCH, SEED)
    samples = train.samples(PAD_ID, settings.document_masking)
    steps = []
    for _ in range(STEPS):
        sample = next(samples)
        nll = lossmath.target_nll(logits_of(table, sample["net_input"]["src_tokens"]), sample["target"],
                                  sample["target"].ne(PAD_ID))
        _, _, log = lossmath.loss_and_logging(nll, sample, telemetry)
        steps.append({"sample": sample, "log": log})
    valid = {}
    for split in settings.fields.valid_splits:
        logs = []
        for sample in wiring.build_valid_samples(settings, bench, tok, split, BATCH, 0, 1, benchmarks, True):
            nll = lossmath.target_nll(logits_of(table, sample["net_input"]["src_tokens"]), sample["target"],
                                      sample["target"].ne(PAD_ID))
            logs.append(lossmath.loss_and_logging(nll, sample, telemetry)[2])
        valid[split] = {k: v for k, v, _ in lossmath.reduced_scalars(logs)}
    return {"benchmarks": benchmarks, "steps": steps, "valid": valid}


def window_average(per_step: List[List[Any]]) -> Dict[str, float]:
    """metaseq's meters over a log interval: each key's values averaged with their weights."""
    num: Dict[str, float] = {}
    den: Dict[str, float] = {}
    for items in per_step:
        for key, value, weight in items:
            num[key] = num.get(key, 0.0) + value * weight
            den[key] = den.get(key, 0.0) + weight
    return {k: num[k] / den[k] for k in num}


def assert_same_metrics(a: Dict[str, float], b: Dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


def test_same_batches_and_same_metrics_for_n_steps(local, meta):
    assert meta["benchmarks"] == local["run"].benchmarks == ["flan", "niv2", "t5"]
    for step, (lo, ms) in enumerate(zip(local["steps"], meta["steps"])):
        b, s = lo["batch"], ms["sample"]
        assert s["net_input"]["src_tokens"].equal(b["input_ids"]), step
        assert s["target"].equal(torch.where(b["loss_mask"], b["target_ids"], torch.tensor(PAD_ID))), step
        assert s["segment_ids"].equal(b["segment_ids"]) and s["benchmark_ids"].equal(b["benchmark_ids"])
        local_metrics = flat(nested(scalars(lo["counters"])))        # the local log line's metrics
        meta_metrics = {k: v for k, v, _ in lossmath.reduced_scalars([ms["log"]])}   # metrics.log_scalar
        assert_same_metrics(local_metrics, meta_metrics)
        assert {"loss", "nll_loss", "packing_efficiency", "realized_share/examples/niv2",
                "realized_share/target_tokens/flan", "loss_by_benchmark/niv2"} <= local_metrics.keys()
    # a logging window of all steps: the local trainer sums counters, metaseq averages with the weights
    window: Dict[str, Any] = {}
    for lo in local["steps"]:
        window = add(window, lo["counters"])
    meta_window = window_average([lossmath.reduced_scalars([ms["log"]]) for ms in meta["steps"]])
    assert_same_metrics(flat(nested(scalars(window))), meta_window)


def test_validation_metrics_are_the_same_and_keep_held_out_benchmarks(local, meta):
    assert local["valid"].keys() == meta["valid"].keys() == {"valid_heldout_tasks", "valid_heldout_categories"}
    for name in local["valid"]:
        assert_same_metrics(local["valid"][name], meta["valid"][name])
    held_out = local["valid"]["valid_heldout_categories"]
    assert "loss_by_benchmark/bigbench" in held_out and "loss_by_category/logic" in held_out
    tasks = local["valid"]["valid_heldout_tasks"]
    assert {k for k in tasks if k.startswith("loss_by_category/")} == {"loss_by_category/qa", "loss_by_category/sum"}
    assert tasks["loss"] == tasks["nll_loss"]     # validation is per target token whatever the training loss


def test_realized_shares_count_what_was_trained(local):
    """Shares come from the trained batches themselves: examples by their segment starts, tokens and targets
    by position; they equal a direct count of the examples in those batches."""
    run = local["run"]
    window: Dict[str, Any] = {}
    examples = {name: 0 for name in run.benchmarks}
    for lo in local["steps"]:
        window = add(window, lo["counters"])
        for row in lo["batch"]["example_indices"]:
            for index in row:
                examples[run.benchmarks[run.stream.example(index).benchmark_id]] += 1
    shares = nested(scalars(window))["realized_share"]
    total = sum(examples.values())
    assert shares["examples"] == {k: pytest.approx(v / total) for k, v in examples.items()}
    assert sum(shares["tokens"].values()) == pytest.approx(1.0)
