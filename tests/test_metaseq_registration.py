"""With the real metaseq: the task and criterion register and the task refuses unsafe model configs
(`--attn-variant xformers_default` is masked by documents: tests/test_metaseq_xformers.py)."""
from __future__ import annotations

import metaseq_cpu
import pytest
import torch


pytestmark = [pytest.mark.metaseq,
              pytest.mark.skipif(not metaseq_cpu.has_metaseq(), reason="metaseq is not installed (install it "
                                 "from its git repository, see docs/metaseq.md)")]


def test_task_and_criterion_are_registered():
    import optiml_plugin  # noqa: F401  (registers)
    from metaseq.criterions import CRITERION_REGISTRY
    from metaseq.tasks import TASK_REGISTRY

    assert TASK_REGISTRY["instruction_meta_learning"].__name__ == "InstructionMetaLearningTask"
    assert CRITERION_REGISTRY["target_only_cross_entropy"].logging_outputs_can_be_summed()


def test_dictionary_is_padded_to_a_multiple_of_8():
    from optiml_plugin.metaseq.task import build_dictionary

    d = build_dictionary(50265)
    assert len(d) == 50272 and (d.bos(), d.pad(), d.eos(), d.unk()) == (0, 1, 2, 3)


@pytest.fixture(scope="module")
def metaseq_cfg(tmp_path_factory, opt_bpe_dir):
    """A real metaseq config parsed from a command line, as metaseq-train builds it."""
    from bench_factory import make_bench
    from metaseq import options
    from metaseq.dataclass.utils import convert_namespace_to_omegaconf

    import optiml_plugin  # noqa: F401  (registers)

    root = make_bench(tmp_path_factory.mktemp("bench"), [
        {"benchmark": "niv2", "category": "qa", "task": "a", "n": 30},
        {"benchmark": "flan", "category": "nli", "task": "b", "n": 20},
        {"benchmark": "niv2", "category": "qa", "task": "c", "n": 5, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
    ])
    argv = [str(root), "--task", "instruction_meta_learning",
            "--vocab-filename", str(opt_bpe_dir / "gpt2-vocab.json"),
            "--merges-filename", str(opt_bpe_dir / "gpt2-merges.txt"),
            "--tokens-per-sample", "64", "--benchmark-proportions", '{"niv2": 0.5}', "--eps", "16",
            "--valid-subset", "valid_heldout_tasks", "--max-valid-examples-per-task", "3",
            "--arch", "transformer_lm", "--decoder-layers", "1", "--decoder-embed-dim", "16",
            "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2", "--self-attn-doc-sep", "2",
            "--criterion", "target_only_cross_entropy", "--batch-size", "2", "--seed", "5", "--cpu",
            "--ddp-backend", "fully_sharded", "--optimizer", "adam", "--lr", "1e-3"]
    parser = options.get_training_parser()
    return convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv))


def test_task_setup_batches_and_criterion_through_metaseq(metaseq_cfg):
    from metaseq import tasks

    from optiml_plugin.metaseq.task import InstructionMetaLearningTask

    cfg = metaseq_cfg
    task = tasks.setup_task(cfg.task)
    assert isinstance(task, InstructionMetaLearningTask)
    # the omegaconf interpolations into the task config resolve
    assert (int(task.args.seed), int(task.args.batch_size), list(task.args.update_freq)) == (5, 2, [1])
    assert str(getattr(task.args.ddp_backend, "value", task.args.ddp_backend)) == "fully_sharded"
    assert task._gather({"x": 1}) == [{"x": 1}]  # FSDP, one rank: its own state
    assert len(task.target_dictionary) % 8 == 0 and task.eod == 2 == task.dictionary.eos()
    task.load_dataset("train")
    epoch_itr = task.get_batch_iterator(task.dataset("train"), max_sentences=2, num_shards=1, shard_id=0)
    sample = next(epoch_itr.next_epoch_itr(fix_batches_to_gpus=False, shuffle=True))
    assert sample["net_input"]["src_tokens"].shape == (2, 64)
    assert sample["ntokens_target"] == int(sample["target"].ne(task.dictionary.pad()).sum()) > 0

    class Logits(torch.nn.Module):  # stands in for a model: metaseq criterions call model(**net_input)
        def __init__(self, vocab):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, 8)
            self.out = torch.nn.Linear(8, vocab)

        def forward(self, src_tokens, segment_ids=None):
            return (self.out(self.emb(src_tokens)),)

    criterion = task.build_criterion(cfg.criterion)
    loss, sample_size, log = criterion(Logits(len(task.dictionary)), sample)
    assert int(sample_size) == sample["ntokens_target"] and loss.requires_grad
    assert set(task.benchmarks) == {"niv2", "flan"} and "nll_sum/benchmark/niv2" in log
    task.load_dataset("valid_heldout_tasks")
    valid = list(task.get_batch_iterator(task.dataset("valid_heldout_tasks")).next_epoch_itr(shuffle=False))
    assert sum(int(s["segment_ids"].max(dim=1).values.sum()) for s in valid) == 3
    # validation is scored per target token and grouped by the task's own benchmark and category
    _, valid_size, valid_log = criterion(Logits(len(task.dictionary)), valid[0])
    assert "nll_sum/category/qa" in valid_log and int(valid_size) == int(valid_log["target_tokens"])
    state = epoch_itr.state_dict()
    assert state["optiml_pipeline"]["ranks"][0]["stream"]["next_index"] > 0


def test_task_refuses_sequence_parallel_with_document_masking(metaseq_cfg):
    from metaseq import tasks
    from omegaconf import OmegaConf

    from optiml_plugin.errors import ConfigError

    task = tasks.setup_task(metaseq_cfg.task)
    model_cfg = OmegaConf.create(OmegaConf.to_container(metaseq_cfg.model))
    model_cfg.sequence_parallel = True
    with pytest.raises(ConfigError, match="--sequence-parallel"):
        task.build_model(model_cfg)
