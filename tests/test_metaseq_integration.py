"""End to end without metaseq: bench -> the task's wiring -> metaseq samples -> criterion arithmetic
-> iterator state -> resume, exactly as task.py puts it together (metaseq is only the caller)."""
from __future__ import annotations

import json
import math
from argparse import Namespace

import pytest
import torch

from bench_factory import make_bench
from optiml_plugin.data.pipeline import PackedBatches
from optiml_plugin.data.stream import ExampleStream
from optiml_plugin.data.training_data import packing_config
from loss_reference import target_cross_entropy
from optiml_plugin.metaseq import lossmath, options, wiring
from optiml_plugin.telemetry import Telemetry

PAD = 1
BATCH = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory, opt_bpe_dir):
    root = make_bench(tmp_path_factory.mktemp("bench"), [
        {"benchmark": "niv2", "category": "qa", "task": "a", "n": 60},
        {"benchmark": "flan", "category": "nli", "task": "b", "n": 40},
        {"benchmark": "t5", "category": "sum", "task": "e", "n": 25},
        {"benchmark": "niv2", "category": "qa", "task": "c", "n": 9, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
        {"benchmark": "flan", "category": "sum", "task": "d", "n": 4, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
    ])
    cfg = Namespace(data=str(root), tokens_per_sample=96, benchmark_proportions='{"niv2": 0.5}', eps=64,
                    benchmark_caps="", packing_strategy="best_fit", packing_window=4, truncation="left",
                    loss_normalization="token", no_document_masking=False,
                    valid_splits="valid_heldout_tasks", max_valid_examples_per_task=6, shuffle_buffer=-1)
    settings = options.settings_from_cfg(cfg)
    bench = wiring.open_bench(settings)
    tokenizer = wiring.load_tokenizer(str(opt_bpe_dir / "gpt2-vocab.json"),
                                      str(opt_bpe_dir / "gpt2-merges.txt"), None)
    return settings, bench, tokenizer


def make_train(setup, seed=7):
    settings, bench, tokenizer = setup
    train = wiring.build_train_data(settings, bench, tokenizer, BATCH, seed)
    return train, wiring.train_iterator(train, PAD, True)


def test_train_samples_are_the_core_batches_in_metaseq_format(setup):
    settings, bench, tokenizer = setup
    train, epoch_itr = make_train(setup)
    assert train.batches.shuffle_buffer == 10 * BATCH  # -1 = the pipeline's default
    # the same core pipeline, built directly, gives the reference batches
    ref = PackedBatches(ExampleStream(bench, train.mixture, seed=7), tokenizer, packing_config(settings.fields),
                        BATCH, 7)
    itr = epoch_itr.next_epoch_itr(shuffle=True, fix_batches_to_gpus=False)
    names = wiring.benchmark_names(settings, bench)
    assert names == list(train.mixture.benchmarks) and set(names) == {"niv2", "flan", "t5"}
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(tokenizer.vocab_size, 8),
                                torch.nn.Linear(8, tokenizer.vocab_size))
    seen_ids = []
    for _ in range(3):
        sample, core = next(itr), next(ref)
        src, target = sample["net_input"]["src_tokens"], sample["target"]
        assert src.shape == (BATCH, settings.fields.tokens_per_sample)
        assert src.equal(core["input_ids"]) and sample["segment_ids"].equal(core["segment_ids"])
        assert target.equal(torch.where(core["loss_mask"], core["target_ids"], torch.tensor(PAD)))
        assert sample["ntokens_target"] == int(core["loss_mask"].sum()) == int(target.ne(PAD).sum())
        assert sample["ntokens"] == int(src.ne(PAD).sum()) and sample["nsentences"] == BATCH
        bench_ids = sample["benchmark_ids"]
        assert bench_ids.equal(core["benchmark_ids"])
        assert bool((bench_ids[sample["segment_ids"] == 0] == -1).all())
        assert bool(((bench_ids >= 0) & (bench_ids < len(names)))[sample["segment_ids"] > 0].all())
        seen_ids += sample["id"].tolist()
        # criterion arithmetic on a tiny model's logits equals the core loss
        logits = model(src)
        mask = target.ne(PAD)
        nll = lossmath.target_nll(logits, target, mask)
        core_sums = target_cross_entropy(logits, core["target_ids"], core["loss_mask"], core["segment_ids"])
        loss, sample_size, log = lossmath.loss_and_logging(nll, sample, Telemetry(names, "token"))
        assert torch.allclose(loss, core_sums.nll_sum, rtol=1e-5)
        assert int(sample_size) == sample["ntokens_target"]
        assert math.isclose(sum(float(log[f"nll_sum/benchmark/{n}"]) for n in names), float(core_sums.nll_sum),
                            rel_tol=1e-5)
        assert sum(float(log[f"target_tokens/benchmark/{n}"]) for n in names) == sample["ntokens_target"]
        loss.backward()  # the loss the trainer gets is differentiable
    assert seen_ids == list(range(3 * BATCH))


def test_stop_save_resume_gives_the_same_following_batches(setup):
    train, epoch_itr = make_train(setup)
    itr = epoch_itr.next_epoch_itr()
    before = [next(itr) for _ in range(5)]
    assert itr.has_next() and not epoch_itr.end_of_epoch()
    # what metaseq writes into the checkpoint (torch.save of plain Python data)
    saved = json.loads(json.dumps(epoch_itr.state_dict()))
    assert saved["iterations_in_epoch"] == 5
    expected = [next(itr) for _ in range(3)]

    fresh, fresh_itr = make_train(setup)   # a new process: same config, fresh pipeline
    reads = []
    example = fresh.stream.example
    fresh.stream.example = lambda i: reads.append(i) or example(i)
    fresh_itr.load_state_dict(saved)
    # no replay: the stream continues at the saved cursor and re-reads only the examples still held
    # in the pipeline (packer window, shuffle buffer), not the ones already trained on
    pipe = saved["optiml_pipeline"]["ranks"][0]
    assert fresh.stream.state_dict() == pipe["stream"]
    held = set(pipe["pending"]) | {i for group in ("open_blocks", "incoming", "buffer", "ready")
                                   for idx in pipe[group] for i in idx}
    assert sorted(reads) == sorted(held)
    trained_on = sum(int(s["segment_ids"].max(dim=1).values.sum()) for s in before)
    # every example read so far (world size 1: indices 0..next_index-1) was trained on or is held
    assert trained_on > 0 and trained_on + len(held) == pipe["stream"]["next_index"]
    resumed = fresh_itr.next_epoch_itr()
    got = [next(resumed) for _ in range(3)]
    for a, b in zip(expected, got):
        assert a["net_input"]["src_tokens"].equal(b["net_input"]["src_tokens"])
        assert a["target"].equal(b["target"]) and a["id"].equal(b["id"])
    assert fresh_itr.iterations_in_epoch == 8
    assert fresh.batches.stats.blocks == train.batches.stats.blocks


def test_validation_subsets_are_in_order_capped_and_never_resampled(setup):
    settings, bench, tokenizer = setup
    names = wiring.benchmark_names(settings, bench)
    samples = wiring.build_valid_samples(settings, bench, tokenizer, "valid", 2, 0, 1, names, True)
    n_rows = sum(int(s["net_input"]["src_tokens"].shape[0]) for s in samples)
    # first 6 of task c (9 rows), all 4 of task d: 10 examples, each once, ending with </s>
    n_examples = sum(int(s["segment_ids"].max(dim=1).values.sum()) for s in samples)
    assert n_examples == 10 and n_rows == 2 * len(samples)
    first = wiring.valid_iterator(samples)
    passes = [[s["net_input"]["src_tokens"] for s in first.next_epoch_itr(shuffle=True)] for _ in range(2)]
    assert len(passes[0]) == len(samples) and all(a.equal(b) for a, b in zip(*passes))
    again = wiring.build_valid_samples(settings, bench, tokenizer, "valid_heldout_tasks", 2, 0, 1, names, True)
    assert all(a["target"].equal(b["target"]) for a, b in zip(samples, again))
    # two data-parallel ranks see the same number of batches and, together, every target token once
    ranks = [wiring.build_valid_samples(settings, bench, tokenizer, "valid", 2, r, 2, names, True) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1])
    assert sum(s["ntokens_target"] for r in ranks for s in r) == sum(s["ntokens_target"] for s in samples)
    # benchmark ids are the training mixture's: task c is niv2, task d flan
    present = {names[int(b)] for s in samples for b in s["benchmark_ids"][s["segment_ids"] > 0].unique()}
    assert present == {"niv2", "flan"}
