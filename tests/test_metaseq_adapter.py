"""The metaseq adapter's pure parts: config -> core objects, checks, batches, criterion arithmetic, resume."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys
import typing
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from bench_factory import make_bench
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.errors import ConfigError
from loss_reference import target_cross_entropy
from optiml_plugin.telemetry import Telemetry
from optiml_plugin.metaseq import batches, iterator, lossmath, options, train_cli, wiring

HAS_METASEQ = importlib.util.find_spec("metaseq") is not None and \
    importlib.util.find_spec("metaseq.tasks") is not None


def cfg(**kw):
    base = dict(data="/bench", tokens_per_sample=64, benchmark_proportions='{"niv2": 0.5}', eps=128,
                benchmark_caps='{"flan": 16}', packing_strategy="sequential", packing_window=8,
                truncation="left", loss_normalization="token", no_document_masking=False,
                valid_splits="valid_heldout_tasks", max_valid_examples_per_task=250, shuffle_buffer=0)
    base.update(kw)
    return Namespace(**base)


# ---- options ---------------------------------------------------------------------------------

def test_settings_are_the_recipe_data_fields():
    s = options.settings_from_cfg(cfg())
    f = s.fields
    assert f.benchmark_proportions == {"niv2": 0.5} and f.eps == 128 and f.benchmark_caps == {"flan": 16}
    assert (f.tokens_per_sample, f.packing_strategy, f.packing_window, f.truncation) == (64, "sequential", 8, "left")
    assert s.document_masking and f.valid_splits == ["valid_heldout_tasks"]
    assert f.max_valid_examples_per_task == 250 and f.shuffle_buffer == 0
    none = options.settings_from_cfg(cfg(eps=0, benchmark_proportions="", benchmark_caps="", shuffle_buffer=-1,
                                         max_valid_examples_per_task=0, no_document_masking=True))
    f = none.fields
    assert f.eps == 0 and f.benchmark_proportions is None and f.benchmark_caps is None and f.shuffle_buffer is None
    assert f.max_valid_examples_per_task == 0 and not none.document_masking


def test_task_options_have_the_recipe_names_and_defaults():
    """The metaseq task's flags are generated from the recipe: same names, same defaults as `optiml train`."""
    from optiml_plugin.recipe import DataFields

    declared = dataclasses.fields(options.TaskOptions)
    got = {f.name: f.default for f in declared}
    assert list(got) == list(DataFields.model_fields)           # one for one, in the schema's order
    defaults = DataFields()
    assert options.fields_from_cfg(Namespace(**got)) == defaults
    assert got["valid_splits"] == ",".join(defaults.valid_splits) and got["eps"] == defaults.eps == 4096
    assert all(f.metadata["help"] for f in declared)
    choices = {f.name: f.metadata.get("choices") for f in declared if f.metadata.get("choices")}
    assert choices == {"packing_strategy": ("best_fit", "sequential"), "truncation": ("left", "right"),
                       "loss_normalization": ("token", "example")}
    # a plain dataclass with real types, not types guessed from type strings
    types = typing.get_type_hints(options.TaskOptions)
    assert types["tokens_per_sample"] is int and types["benchmark_proportions"] == typing.Optional[str]


def test_proportions_from_yaml_file(tmp_path):
    path = tmp_path / "mix.yaml"
    path.write_text("niv2: 0.25\nflan: 0.75\n")
    assert options.settings_from_cfg(cfg(benchmark_proportions=str(path))).fields.benchmark_proportions == \
        {"niv2": 0.25, "flan": 0.75}


@pytest.mark.parametrize("kw, message", [
    (dict(data=""), "data argument is required"),
    (dict(benchmark_caps="{bad"), "--benchmark-caps"),
    (dict(benchmark_caps='{"flan": 0}'), "benchmark_caps.flan"),
    (dict(valid_splits="train"), "valid_splits.0: must be one of"),
    (dict(loss_normalization="row"), "loss_normalization: must be one of"),
    (dict(packing_strategy="first_fit"), "packing_strategy: must be one of"),
    (dict(tokens_per_sample=2048.5), "tokens_per_sample"),
    (dict(add_bos_token=True), "--add-bos-token is not supported"),
])
def test_bad_settings_say_what_to_change(kw, message):
    with pytest.raises(ConfigError, match=message):
        options.settings_from_cfg(cfg(**kw))


def test_valid_alias_and_missing_split():
    s = options.settings_from_cfg(cfg(valid_splits="valid_heldout_tasks,valid_heldout_instances"))
    have = ["train", "valid_heldout_tasks", "valid_heldout_instances"]
    assert options.resolve_valid_subset("valid", s, have) == ["valid_heldout_tasks", "valid_heldout_instances"]
    assert options.resolve_valid_subset("valid_heldout_tasks", s, have) == ["valid_heldout_tasks"]
    with pytest.raises(ConfigError, match="has no 'valid_heldout_categories'"):
        options.resolve_valid_subset("valid_heldout_categories", s, have)


def test_update_freq_above_one_is_refused_clearly():
    options.check_update_freq([1])
    with pytest.raises(ConfigError, match="--update-freq 4 is not supported.*--batch-size"):
        options.check_update_freq([4])


def test_model_checks_for_document_masking(monkeypatch):
    options.check_model_cfg(Namespace(self_attn_doc_sep=2, attn_variant="default"), True)
    options.check_model_cfg(Namespace(self_attn_doc_sep=-1, attn_variant="default"), True)  # masks from segments
    # metaseq's fused sequence-parallel layer applies a plain causal mask
    with pytest.raises(ConfigError, match="--sequence-parallel .* ignores the document mask"):
        options.check_model_cfg(Namespace(attn_variant="default", sequence_parallel=True), True)
    options.check_model_cfg(Namespace(attn_variant="default", sequence_parallel=True), False)
    # xformers attention is masked by documents (xformers_attention); without xformers it cannot start
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    with pytest.raises(ConfigError, match="xformers_default with document masking needs xformers.*--attn-variant "
                                          "default"):
        options.check_model_cfg(Namespace(self_attn_doc_sep=-1, attn_variant="xformers_default"), True)
    options.check_model_cfg(Namespace(self_attn_doc_sep=-1, attn_variant="xformers_default"), False)


class _Positions(torch.nn.Embedding):
    """metaseq's LearnedPositionalEmbedding contract: precomputed positions only with padding_idx None,
    otherwise positions from the padding (padding_idx + 1 on at the first token)."""

    def forward(self, input, incremental_state=None, positions=None):
        assert positions is None or self.padding_idx is None
        if positions is None and self.padding_idx is not None:
            keep = input.ne(self.padding_idx).long()
            positions = torch.cumsum(keep, dim=1) * keep + self.padding_idx
        return torch.nn.functional.embedding(positions, self.weight, self.padding_idx)


class _Decoder(torch.nn.Module):
    """The parts of metaseq's decoder that `use_segment_masks` adapts."""

    padding_idx = 1

    def __init__(self):
        super().__init__()
        self.embed_positions = _Positions(16, 4, padding_idx=1)

    def buffered_future_mask(self, tensor, input_tokens=None):
        return torch.zeros(0)

    def forward(self, tokens):
        x = self.embed_positions(tokens)
        return x, self.buffered_future_mask(x)


def test_packed_forward_leaves_positions_for_a_later_plain_forward():
    """A forward with segment ids must not leave the position module without its padding_idx: metaseq's
    generation and plain validation subsets run forwards without them (a TypeError in metaseq before)."""
    from optiml_plugin.metaseq.segment_attention import use_segment_masks

    decoder = _Decoder()
    use_segment_masks(decoder)
    tokens = torch.tensor([[5, 6, 7, 8, 1, 1]])
    packed, mask = decoder(tokens, segment_ids=torch.tensor([[1, 1, 2, 2, 0, 0]]))
    assert mask.shape == (1, 6, 6)  # the document mask
    table = decoder.embed_positions.weight
    assert torch.equal(packed[0], table[[2, 3, 2, 3, 1, 1]])  # positions restart with each example
    assert decoder.embed_positions.padding_idx == 1
    plain, mask = decoder(tokens)
    assert mask.numel() == 0 and torch.equal(plain[0], table[[2, 3, 4, 5, 1, 1]])


# ---- batches ---------------------------------------------------------------------------------

def core_batch():
    # row 0: example [5 6 | 7 2] then [8 | 9 2], then pad; row 1: empty-source example [2 | 4 2]
    tokens = torch.tensor([[5, 6, 7, 2, 8, 9, 2, 1, 1], [2, 4, 2, 1, 1, 1, 1, 1, 1]])
    target_flag = torch.tensor([[0, 0, 1, 1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    seg = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0]])
    bench = torch.tensor([[0, 0, 0, 0, 1, 1, 1, -1, -1], [1, 1, 1, -1, -1, -1, -1, -1, -1]])
    return {"input_ids": tokens[:, :-1], "target_ids": tokens[:, 1:], "loss_mask": target_flag[:, 1:],
            "segment_ids": seg[:, :-1], "benchmark_ids": bench[:, :-1]}


def test_metaseq_sample_format():
    b = core_batch()
    s = batches.to_metaseq_sample(b, torch.arange(2))
    assert s["net_input"]["src_tokens"].equal(b["input_ids"])
    assert s["target"].equal(torch.where(b["loss_mask"], b["target_ids"], torch.tensor(1)))
    assert s["ntokens_target"] == int(b["loss_mask"].sum()) == 6
    assert s["ntokens"] == int(b["input_ids"].ne(1).sum()) and s["nsentences"] == 2
    assert s["segment_ids"].equal(b["segment_ids"]) and s["benchmark_ids"].equal(b["benchmark_ids"])
    # the decoder masks by segment ids (segment_attention), so they travel in net_input
    assert s["net_input"]["segment_ids"].equal(b["segment_ids"])
    plain = batches.to_metaseq_sample(b, torch.arange(2), document_masking=False)
    assert set(plain["net_input"]) == {"src_tokens"}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = make_bench(tmp_path_factory.mktemp("bench"), [
        {"benchmark": "niv2", "category": "qa", "task": "a", "n": 40},
        {"benchmark": "flan", "category": "nli", "task": "b", "n": 30},
        {"benchmark": "niv2", "category": "qa", "task": "c", "n": 7, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
        {"benchmark": "flan", "category": "sum", "task": "d", "n": 9, "split": "valid_heldout_tasks",
         "level": "heldout_tasks"},
    ])
    return Bench(root)


@pytest.fixture(scope="module")
def tokenizer(opt_bpe_dir):
    return OptTokenizer.from_files(opt_bpe_dir / "gpt2-vocab.json", opt_bpe_dir / "gpt2-merges.txt")


def test_validation_is_in_order_capped_and_equal_on_every_rank(bench, tokenizer):
    s = options.settings_from_cfg(cfg(max_valid_examples_per_task=5, tokens_per_sample=128))
    world, bsz = 3, 2
    per_rank = [wiring.build_valid_samples(s, bench, tokenizer, "valid_heldout_tasks", bsz, r, world,
                                           ["niv2", "flan"], True) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank runs the same number of batches
    examples = sum(int(smp["segment_ids"].max(dim=1).values.sum()) for p in per_rank for smp in p)
    assert examples == 10  # first 5 of each of the two tasks, each once
    ids = sorted(int(i) for p in per_rank for smp in p for i in smp["id"])
    assert ids == list(range(len(ids)))  # row ids number the rows across ranks
    bench_ids = {int(b) for p in per_rank for smp in p for b in smp["benchmark_ids"][smp["segment_ids"] > 0]}
    assert bench_ids == {0, 1}
    again = wiring.build_valid_samples(s, bench, tokenizer, "valid_heldout_tasks", bsz, 0, world,
                                       ["niv2", "flan"], True)
    assert all(a["net_input"]["src_tokens"].equal(b["net_input"]["src_tokens"]) for a, b in zip(again, per_rank[0]))


# ---- criterion arithmetic ------------------------------------------------------------------------

def test_loss_sums_match_core_and_split_by_benchmark():
    torch.manual_seed(0)
    b = core_batch()
    sample = batches.to_metaseq_sample(b, torch.arange(2))
    logits = torch.randn(2, 8, 16)
    mask = sample["target"].ne(1)
    core = target_cross_entropy(logits, sample["target"], mask, sample["segment_ids"])
    nll = lossmath.target_nll(logits, sample["target"], mask)
    loss, size, log = lossmath.loss_and_logging(nll, sample, Telemetry(["niv2", "flan"], "token"))
    assert torch.allclose(loss, core.nll_sum) and int(size) == 6
    ex_loss, ex_size, _ = lossmath.loss_and_logging(nll, sample, Telemetry(["niv2", "flan"], "example"))
    assert torch.allclose(ex_loss, core.example_nll_sum) and int(ex_size) == 3
    assert [float(log[f"target_tokens/benchmark/{n}"]) for n in ("niv2", "flan")] == [2.0, 4.0]
    assert math.isclose(float(log["nll_sum/benchmark/niv2"] + log["nll_sum/benchmark/flan"]),
                        float(core.nll_sum), rel_tol=1e-6)


def test_sample_size_is_target_tokens_and_logs_are_in_bits():
    torch.manual_seed(1)
    sample = batches.to_metaseq_sample(core_batch(), torch.arange(2))
    logits = torch.randn(2, 8, 16)
    mask = sample["target"].ne(1)
    nll = lossmath.target_nll(logits, sample["target"], mask)
    loss, size, log = lossmath.loss_and_logging(nll, sample, Telemetry(["niv2", "flan"], "token"))
    assert int(size) == 6 and torch.allclose(loss, nll.sum())
    assert float(log["capacity"]) == 16 and float(log["examples"]) == 3
    # two workers' outputs summed (what metaseq does) give the same per-token loss
    summed = {k: v + v for k, v in log.items()}
    got = {k: v for k, v, _ in lossmath.reduced_scalars([summed])}
    assert got["loss"] == pytest.approx(float(nll.sum()) / 6 / math.log(2))
    assert got["nll_loss"] == pytest.approx(got["loss"])
    niv2 = nll[sample["benchmark_ids"][mask] == 0]
    assert got["loss_by_benchmark/niv2"] == pytest.approx(float(niv2.sum()) / 2 / math.log(2))
    assert got["packing_efficiency"] == pytest.approx(sample["ntokens"] / 16)
    assert got["examples_per_row"] == pytest.approx(1.5)
    # realized shares of what was trained, per benchmark: one niv2 example (row 0), two flan (rows 0 and 1)
    assert got["realized_share/examples/niv2"] == pytest.approx(1 / 3)
    assert got["realized_share/examples/flan"] == pytest.approx(2 / 3)
    assert got["realized_share/target_tokens/niv2"] == pytest.approx(2 / 6)


# ---- resume without replay -------------------------------------------------------------------

class CounterPipeline:
    """Stands in for PackedBatches: batch k is determined by its position; state = position."""

    def __init__(self):
        self.pos = 0

    def __iter__(self):
        while True:
            self.pos += 1
            yield {"k": self.pos}

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def make_iter(pipe, world=1, rank=0, gather=None):
    return iterator.PipelineEpochIterator(iterator.endless(lambda: iter(pipe)), get_state=pipe.state_dict,
                                          set_state=pipe.load_state_dict, gather=gather, rank=rank,
                                          world_size=world)


def test_resume_continues_exactly_without_replay():
    pipe = CounterPipeline()
    it = make_iter(pipe)
    itr = it.next_epoch_itr()
    seen = [next(itr)["k"] for _ in range(5)]
    assert itr.has_next() and not it.end_of_epoch()  # endless; has_next must not consume a batch
    state = it.state_dict()
    assert state["iterations_in_epoch"] == 5
    rest = [next(itr)["k"] for _ in range(3)]
    pipe2 = CounterPipeline()
    it2 = make_iter(pipe2)
    it2.load_state_dict(state)
    itr2 = it2.next_epoch_itr()
    assert [next(itr2)["k"] for _ in range(3)] == rest and seen == [1, 2, 3, 4, 5]
    assert it2.iterations_in_epoch == 8


def test_resume_refuses_what_it_cannot_do_exactly():
    pipe = CounterPipeline()
    ddp = make_iter(pipe, world=2, rank=0, gather=lambda s: None)  # DDP: only rank 0 saves
    ddp.next_epoch_itr()
    state = ddp.state_dict()
    with pytest.raises(ConfigError, match="--reset-dataloader"):
        make_iter(CounterPipeline(), world=2, rank=1, gather=lambda s: None).load_state_dict(state)
    fsdp = make_iter(pipe, world=2, rank=0, gather=lambda s: [s, {"pos": 99}])
    fsdp.next_epoch_itr()
    saved = fsdp.state_dict()
    rank1 = CounterPipeline()
    make_iter(rank1, world=2, rank=1).load_state_dict(saved)
    assert rank1.pos == 99
    with pytest.raises(ConfigError, match="saved with 2 data-parallel ranks"):
        make_iter(CounterPipeline(), world=4, rank=1).load_state_dict(saved)


def test_validation_iterator_is_finite_and_restarts_in_order():
    samples = [{"k": i} for i in range(3)]
    it = iterator.PipelineEpochIterator.over(samples)
    for _ in range(2):
        itr = it.next_epoch_itr(shuffle=False, set_dataset_epoch=False)
        assert len(itr) == 3 and [s["k"] for s in itr] == [0, 1, 2]
    assert it.first_batch == samples[0]


# ---- entry point -------------------------------------------------------------------------------

@pytest.mark.skipif(HAS_METASEQ, reason="checks the message shown when metaseq is absent")
def test_train_cli_without_metaseq_exits_with_a_clear_message(capsys):
    assert train_cli.main(["--task", "instruction_meta_learning"]) == 2
    assert "needs metaseq" in capsys.readouterr().err


@pytest.mark.parametrize("backend,ranks,refused", [("pytorch_ddp", 2, True), ("c10d", 8, True),
                                                   ("pytorch_ddp", 1, False), ("fully_sharded", 2, False)])
def test_unresumable_backends_are_refused_up_front(backend, ranks, refused):
    """metaseq saves rank 0 only outside FSDP: other ranks' stream positions would be lost at resume."""
    if refused:
        with pytest.raises(ConfigError, match="fully_sharded"):
            options.check_resumable(backend, ranks)
    else:
        options.check_resumable(backend, ranks)


# ---- model-parallel gradient norm -------------------------------------------------------------

class ColumnParallelLinear(torch.nn.Module):  # named as Megatron's layers: grad_norm reads the class name
    pass


class RowParallelLinear(torch.nn.Module):
    pass


def _flat(infos, numels, grads, sharded=False):
    """An FSDP flat parameter as fairscale lays it out: weights concatenated in `_param_infos` order."""
    p = torch.nn.Parameter(torch.zeros(len(grads)))
    p.grad = torch.tensor(grads, dtype=torch.float32)
    p._param_infos, p._param_numels, p._is_sharded = infos, numels, sharded
    return p


def test_flat_parameter_segments_follow_megatron_layers_and_the_shard():
    from optiml_plugin.metaseq import grad_norm

    col, row, norm = ColumnParallelLinear(), RowParallelLinear(), torch.nn.LayerNorm(2)
    infos = [("c", col, "weight"), ("c", col, "bias"), ("r", row, "weight"), ("r", row, "bias"), ("n", norm, "weight")]
    numels = [4, 2, 4, 1, 2]  # 13 elements: split, split, split, replicated, replicated
    whole = _flat(infos, numels, [0.0] * 13)
    assert grad_norm.flat_segments(whole, 0, 1) == [(0, 4, True), (4, 6, True), (6, 10, True), (10, 11, False),
                                                    (11, 13, False)]
    shard = _flat(infos, numels, [0.0] * 7, sharded=True)  # torch.chunk(13, 2): 7 + 6, the second padded
    assert grad_norm.flat_segments(shard, 0, 2) == [(0, 4, True), (4, 6, True), (6, 7, True)]
    assert grad_norm.flat_segments(shard, 1, 2) == [(0, 3, True), (3, 4, False), (4, 6, False)]
    # a tied weight is split if any module holding it splits it (the embedding shared with the output)
    tied = _flat([("out", norm, "weight")], [2], [0.0, 0.0])
    tied._shared_param_infos = [("emb", "out", col, "weight", norm, "weight")]
    assert grad_norm.flat_segments(tied, 0, 1) == [(0, 2, True)]
    plain = torch.nn.Parameter(torch.zeros(3))
    assert grad_norm.param_segments(plain, 0, 1) == [(0, 3, False)]
    plain.tensor_model_parallel = True
    assert grad_norm.param_segments(plain, 0, 1) == [(0, 3, True)]


def test_norm_counts_replicated_weights_once_at_model_parallel_2_and_fsdp_2():
    """Four ranks (model parallel 2 x FSDP 2) of one model: summed as metaseq's all-reduces sum them,
    the norm is the full gradient's; metaseq's own rule counts the replicated weights twice."""
    from optiml_plugin.metaseq import grad_norm

    torch.manual_seed(0)
    full_w, full_b, ln = torch.randn(4, 3), torch.randn(3), torch.randn(3)  # row-parallel weight split in 2
    true_sq = float(full_w.pow(2).sum() + full_b.pow(2).sum() + ln.pow(2).sum())
    row, norm = RowParallelLinear(), torch.nn.LayerNorm(3)
    infos = [("r", row, "weight"), ("r", row, "bias"), ("n", norm, "weight")]
    total, metaseq_rule = 0.0, 0.0
    for mp_rank in range(2):
        local = torch.cat([full_w[2 * mp_rank:2 * mp_rank + 2].reshape(-1), full_b, ln])  # 6 + 3 + 3 = 12
        metaseq_rule += float(local.pow(2).sum())
        for dp_rank in range(2):
            p = _flat(infos, [6, 3, 3], local[6 * dp_rank:6 * dp_rank + 6].tolist(), sharded=True)
            plain, sharded = grad_norm.squared_norm_once([p], 2, dp_rank, 2)
            assert float(plain) == 0.0
            total += float(sharded)
    assert total == pytest.approx(true_sq, rel=1e-6)  # summed over data-parallel, then model-parallel ranks
    assert metaseq_rule > true_sq * 1.05


def test_install_block_is_the_one_the_skip_message_names():
    """The metaseq tests' skip message points at docs/metaseq.md's install section; its block installs
    what the plugin imports (this repository with [metaseq], not --no-deps) and what the tests need."""
    import metaseq_cpu

    root = Path(__file__).resolve().parents[1]
    docs = (root / "docs" / "metaseq.md").read_text(encoding="utf-8")
    assert "docs/metaseq.md" in metaseq_cpu.SKIP_REASON and metaseq_cpu.INSTALL_SECTION in metaseq_cpu.SKIP_REASON
    section = docs.split(f"## {metaseq_cpu.INSTALL_SECTION}\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    assert 'pip install -e "/path/to/optiml[metaseq]"' in block
    assert "fixing_memory_issues_with_keeping_overlap_may24" in block and "--no_megatron" in block
    assert "python -m pytest -m metaseq" in block
    extras = (root / "setup.py").read_text(encoding="utf-8").split('"metaseq": [', 1)[1].split("]", 1)[0]
    assert "pytest" in extras and "hypothesis" in extras


def test_grad_norm_once_refused_where_weights_are_copied():
    """metaseq's --fp16 without --memory-efficient-fp16 clips fp32 copies: split and replicated weights
    cannot be told apart there, outside FSDP."""
    with pytest.raises(ConfigError, match="--memory-efficient-fp16 or --ddp-backend fully_sharded"):
        options.check_grad_norm_once(True, False, "pytorch_ddp")
    options.check_grad_norm_once(True, True, "pytorch_ddp")
    options.check_grad_norm_once(True, False, "fully_sharded")
    options.check_grad_norm_once(False, False, "pytorch_ddp")
