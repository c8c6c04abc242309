"""The paper's §4 ablations as recipe settings that the metaseq task reads under the same names
(its flags are generated from the recipe's data fields): MetaICL, mixed prompts, task scaling."""
from __future__ import annotations

import dataclasses
import typing
from argparse import Namespace
from typing import Optional

import pytest

from optiml_plugin.errors import ConfigError
from optiml_plugin.metaseq import options
from optiml_plugin.recipe import DataFields


def task_cfg(**kw) -> Namespace:
    """A metaseq task config: every task option at its default, then `kw`."""
    got = {f.name: f.default for f in dataclasses.fields(options.TaskOptions)}
    return Namespace(**{**got, **kw})


def test_metaseq_flags_carry_the_ablation_settings():
    kinds = typing.get_type_hints(options.TaskOptions)
    assert kinds["metaicl_zipf_a"] == Optional[float]   # a float flag, not an int one
    f = options.fields_from_cfg(task_cfg(metaicl_zipf_a=2.0, metaicl_suffix_loss=True, max_train_tasks=64,
                                         max_demonstrations=5))
    assert (f.metaicl_zipf_a, f.metaicl_suffix_loss, f.max_train_tasks) == (2.0, True, 64)
    g = options.fields_from_cfg(task_cfg(fewshot_share='{"flan": 0.5, "niv2": 0.25}'))
    assert g.fewshot_share == {"flan": 0.5, "niv2": 0.25}
    assert options.fields_from_cfg(task_cfg()) == DataFields()


def test_bad_ablation_values_name_the_setting():
    with pytest.raises(ConfigError, match="fewshot_share"):
        options.fields_from_cfg(task_cfg(fewshot_share='{"flan": 1.5}'))
    with pytest.raises(ConfigError, match="metaicl_zipf_a"):
        options.fields_from_cfg(task_cfg(metaicl_zipf_a=-1.0))


def test_the_metaseq_task_trains_on_the_same_demonstration_rows(tmp_path):
    """MetaICL with the suffix loss through the metaseq adapter's pure wiring: the samples it hands to
    metaseq are the local trainer's batches, token for token and loss mask for loss mask."""
    import torch

    from bench_factory import make_bench
    from optiml_plugin.benchfiles import Bench
    from optiml_plugin.data.tokenizer import OptTokenizer
    from optiml_plugin.data.training_data import open_run
    from optiml_plugin.local.data import training_texts
    from optiml_plugin.metaseq import wiring

    bench = Bench(make_bench(tmp_path / "bench", [dict(benchmark="niv2", category="qa", task="a", n=40),
                                                  dict(benchmark="flan", category="nli", task="b", n=30)]))
    tok = OptTokenizer.builtin(training_texts(bench), vocab_size=300)
    settings = options.settings_from_cfg(task_cfg(data=str(bench.root), tokens_per_sample=256,
                                                  metaicl_zipf_a=1.0, metaicl_suffix_loss=True))
    train = wiring.build_train_data(settings, bench, tok, batch_size=2, seed=5)
    local = open_run(bench, tok, settings.fields, 2, 5, valid_subsets={})
    samples, batches = train.samples(tok.pad_id, True), iter(local.batches)
    with_demos = 0
    for _ in range(4):
        s, b = next(samples), next(batches)
        assert s["net_input"]["src_tokens"].equal(b["input_ids"])
        assert s["target"].equal(torch.where(b["loss_mask"], b["target_ids"], torch.tensor(tok.pad_id)))
        assert s["net_input"]["segment_ids"].equal(b["segment_ids"])
        assert s["demo_k"].equal(b["demo_k"])   # the criterion's telemetry counts k from it
        with_demos += int((b["demo_k"] > 0).sum())
    assert with_demos > 0
