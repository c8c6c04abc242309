"""The local trainer on a micro OPT: learning, exact resume, checkpoints, gradient accumulation, DDP (gloo, 1)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bench_factory import make_bench, micro_train_config
from optiml_plugin.cli import main as cli_main
from optiml_plugin.errors import ConfigError
from optiml_plugin.local import checkpoint as ckpt
from optiml_plugin.recipe import config_from_dict, load_config
from optiml_plugin.local.trainer import BATCH_KEYS, Trainer, lr_lambda, read_log


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "bench"
    return make_bench(root, [
        dict(benchmark="b1", category="c1", task="t1", n=60),
        dict(benchmark="b2", category="c2", task="t2", n=40),
        dict(benchmark="b1", category="c1", task="t1", n=8, split="valid_heldout_instances"),
        dict(benchmark="b1", category="c3", task="t3", n=8, split="valid_heldout_categories",
             level="heldout_categories"),
    ])


def _train_losses(log):
    return [r["loss"] for r in log if "split" not in r]


def test_a_few_steps_lower_the_loss(bench, tmp_path):
    trainer = Trainer(micro_train_config(bench, tmp_path / "run", optim={"lr": 1e-2, "max_update": 12}))
    before = {name: m["loss"] for name, m in trainer.validate().items()}
    final = trainer.train()
    after = {name: m["loss"] for name, m in trainer.validate().items()}
    assert set(before) == {"valid_heldout_instances", "valid_heldout_categories"}
    for split in before:
        assert after[split] < before[split] - 0.3, split
    losses = _train_losses(read_log(trainer.log_path))
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    # in bits, per benchmark too, with the realized shares (the metaseq task's telemetry)
    train = [r for r in read_log(trainer.log_path) if "split" not in r]
    assert set(train[0]["loss_by_benchmark"]) <= {"b1", "b2"} and train[0]["loss_by_benchmark"]
    for kind in ("examples", "tokens", "target_tokens"):
        shares = train[-1]["realized_share"][kind]
        assert set(shares) <= {"b1", "b2"} and math.isclose(sum(shares.values()), 1.0)
    valid = [r for r in read_log(trainer.log_path) if "split" in r][-1]
    assert valid["valid_ppl"] == pytest.approx(2 ** valid["valid_loss"])
    assert (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    from transformers import OPTForCausalLM
    reloaded = OPTForCausalLM.from_pretrained(str(final))
    assert torch.equal(reloaded.lm_head.weight, trainer.lm.lm_head.weight.detach())


def test_resume_continues_exactly(bench, tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    config_file = tmp_path / "train.yaml"
    import yaml
    config_file.write_text(yaml.safe_dump(micro_train_config(bench, full_dir).to_dict()))
    assert cli_main(["train", str(config_file)]) == 0          # uninterrupted, through the CLI
    first = Trainer(micro_train_config(bench, cut_dir))
    assert first.train(until=3) is None                        # "killed" right after the step-3 checkpoint
    del first
    resumed = Trainer(micro_train_config(bench, cut_dir), resume=True)
    assert resumed.step == 3
    resumed.train()
    full, cut = read_log(full_dir / "log.jsonl"), read_log(cut_dir / "log.jsonl")
    assert [r["step"] for r in cut] == [r["step"] for r in full]
    assert _train_losses(cut) == _train_losses(full)           # same batches, same dropout, same curve
    from transformers import OPTForCausalLM
    a = OPTForCausalLM.from_pretrained(str(full_dir / "final")).state_dict()
    b = OPTForCausalLM.from_pretrained(str(cut_dir / "final")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_round_trip_and_keep_last(bench, tmp_path):
    cfg = micro_train_config(bench, tmp_path / "run", run={"save_every": 1, "keep_last": 2, "log_every": 1,
                                                           "progress": False, "tensorboard": False,
                                                           "valid_every": 0})
    trainer = Trainer(cfg)
    trainer.train(until=4)
    kept = ckpt.list_checkpoints(trainer.ckpt_root)
    assert [p.name for p in kept] == ["step_00000003", "step_00000004"]
    assert not [p for p in trainer.ckpt_root.iterdir() if p.name.startswith(".tmp")]
    other = Trainer(cfg, resume=True)
    assert other.step == 4
    for (name, p), q in zip(trainer.model.named_parameters(), other.model.parameters()):
        assert torch.equal(p, q), name
    assert other.scheduler.state_dict() == trainer.scheduler.state_dict()
    s1, s2 = trainer.optimizer.state_dict()["state"], other.optimizer.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)
    assert other.batches.state_dict() == trainer.batches.state_dict()


def test_gradient_accumulation_is_exactly_token_normalized(bench, tmp_path):
    """Two micro-batches of one update give the same step as one batch holding both."""
    cfg = micro_train_config(bench, tmp_path / "a", model={"preset": "micro", "dropout": 0.0})
    a = Trainer(cfg)
    b = Trainer(micro_train_config(bench, tmp_path / "b", model={"preset": "micro", "dropout": 0.0}))
    it = iter(a.batches)
    m1, m2 = next(it), next(it)
    assert int(m1["loss_mask"].sum()) != int(m2["loss_mask"].sum())  # uneven, so averaging would differ
    joined = {k: torch.cat([m1[k], m2[k]]) for k in BATCH_KEYS}
    sa, sb = a.train_step([m1, m2])["metrics"], b.train_step([joined])["metrics"]
    assert abs(sa["loss"] - sb["loss"]) < 1e-5
    assert sa["loss_by_benchmark"].keys() == sb["loss_by_benchmark"].keys() and sa["loss_by_benchmark"]
    assert all(abs(sa["loss_by_benchmark"][k] - sb["loss_by_benchmark"][k]) < 1e-5 for k in sa["loss_by_benchmark"])
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_ddp_world_of_one_matches_single_process(bench, tmp_path, monkeypatch):
    import torch.distributed as dist

    plain = Trainer(micro_train_config(bench, tmp_path / "plain", run={"save_every": 0, "progress": False,
                                                                       "tensorboard": False, "log_every": 1}))
    plain.train(until=2)
    monkeypatch.setenv("MASTER_PORT", "29533")
    ddp = Trainer(micro_train_config(bench, tmp_path / "ddp", run={"distributed": "ddp", "save_every": 0,
                                                                   "progress": False, "tensorboard": False,
                                                                   "log_every": 1}))
    try:
        assert ddp.dist.mode == "ddp" and ddp.dist.world_size == 1
        ddp.train(until=2)
        assert _train_losses(read_log(ddp.log_path)) == pytest.approx(_train_losses(read_log(plain.log_path)),
                                                                       abs=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_autocast_trains_and_resumes_exactly(bench, tmp_path, precision):
    """bf16/fp16 autocast (CPU here; the same code path on GPUs): the model runs in low precision, the loss
    falls, fp16's loss scaler is checkpointed, and a resumed run continues exactly."""
    opts = dict(model={"preset": "micro", "dropout": 0.0}, optim={"lr": 1e-2, "max_update": 6})
    fp32 = Trainer(micro_train_config(bench, tmp_path / "fp32", **opts))
    fp32.train()
    run = {"precision": precision, "save_every": 3}
    full = Trainer(micro_train_config(bench, tmp_path / "full", run=run, **opts))
    assert full.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert (full.scaler is not None) == (precision == "fp16")
    full.train()
    low, ref = _train_losses(read_log(full.log_path)), _train_losses(read_log(fp32.log_path))
    assert low != ref and low == pytest.approx(ref, rel=0.05)     # autocast really ran, and close to fp32
    assert sum(low[-2:]) < sum(low[:2])
    cut = Trainer(micro_train_config(bench, tmp_path / "cut", run=run, **opts))
    cut.train(until=3)
    saved = ckpt.load_file(ckpt.latest_checkpoint(cut.ckpt_root), ckpt.TRAINER_STATE)
    assert (saved["scaler"] is not None) == (precision == "fp16")
    resumed = Trainer(micro_train_config(bench, tmp_path / "cut", run=run, **opts), resume=True)
    if resumed.scaler is not None:
        assert resumed.scaler.get_scale() == cut.scaler.get_scale()
    resumed.train()
    assert _train_losses(read_log(resumed.log_path)) == low


def test_config_errors_name_the_key(bench, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lerning_rate: 1\n")
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(bad)
    with pytest.raises(ConfigError, match="data.bench"):
        config_from_dict({})
    with pytest.raises(ConfigError, match="attention"):
        Trainer(micro_train_config(bench, tmp_path / "x", run={"attention": "flash"}))


def test_fresh_run_refuses_a_directory_with_checkpoints(bench, tmp_path):
    Trainer(micro_train_config(bench, tmp_path / "run", optim={"max_update": 1})).train()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(micro_train_config(bench, tmp_path / "run", optim={"max_update": 1}))


def test_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(warmup=4, total=10)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(9) == pytest.approx(1 / 6) and f(10) == 0.0


def test_validation_cap_is_per_task_so_later_tasks_count(tmp_path):
    """A split whose first tasks are large: every task still gets its first N rows, in order."""
    import json

    from optiml_plugin.data.packing import PackingConfig
    from optiml_plugin.data.validation import validation_set

    root = make_bench(tmp_path / "bench", [
        dict(benchmark="b1", category="c1", task="t1", n=30),
        dict(benchmark="b1", category="c1", task="t1", n=20, split="valid_heldout_tasks", level="heldout_tasks"),
        dict(benchmark="b2", category="c2", task="t2", n=20, split="valid_heldout_tasks", level="heldout_tasks"),
        dict(benchmark="b3", category="c2", task="t3", n=2, split="valid_heldout_tasks", level="heldout_tasks"),
    ])
    cfg = micro_train_config(root, tmp_path / "run", data={"max_valid_examples_per_task": 3,
                                                           "valid_splits": ["valid_heldout_tasks"]})
    trainer = Trainer(cfg)
    subset = trainer.data.validation["valid_heldout_tasks"]
    (vset,), batches = subset.sets, subset.batches
    assert [t.task for t in vset.tasks] == ["t1", "t2", "t3"]
    assert vset.taken == [3, 3, 2] and vset.available == [20, 20, 2]
    assert [it.task_id for it in vset.items] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert [it.index for it in vset.items] == list(range(8))
    first_t2 = trainer.bench.reader(vset.tasks[1])[0]                 # read in order, never resampled
    src, tgt = trainer.tokenizer.encode_pairs([(first_t2["src"], first_t2["tgt"])])[0]
    assert list(vset.items[3].tokens[-len(tgt) - 1:-1]) == list(tgt)
    seen_tasks = set(torch.cat([b["task_ids"][b["loss_mask"]] for b in batches]).tolist())
    assert seen_tasks == {0, 1, 2}

    record = trainer.validate()["valid_heldout_tasks"]
    assert set(record["loss_by_benchmark"]) == {"b1", "b2", "b3"}
    assert set(record["loss_by_category"]) == {"c1", "c2"}
    assert record["target_tokens"] == sum(len(it) - it.n_src for it in vset.items)
    counts = json.loads((tmp_path / "run" / "validation_sets.json").read_text())
    assert counts[0]["examples"] == 8 and counts[0]["available"] == 42
    assert [t["examples"] for t in counts[0]["tasks"]] == [3, 3, 2]

    # the same core helper packs several splits without index clashes (the metaseq adapter's use)
    packing = PackingConfig(tokens_per_sample=64, strategy="sequential")
    later = validation_set(trainer.bench, "valid_heldout_tasks", trainer.tokenizer, packing, None,
                           benchmarks=["b2"], first_index=100)
    assert later.taken == [20, 20, 2] and later.items[0].index == 100
    assert {it.benchmark_id for it in later.items} == {-1, 0}


def test_old_split_cap_key_names_its_replacement(bench, tmp_path):
    with pytest.raises(ConfigError, match="max_valid_examples_per_task"):
        config_from_dict({"data": {"bench": str(bench), "max_valid_examples": 10}})


def test_adamw_is_fused_where_torch_has_it_and_falls_back_otherwise(monkeypatch):
    from optiml_plugin.recipe import OptimConfig
    from optiml_plugin.local.trainer import adamw

    o = OptimConfig(lr=0.1, adam_betas=[0.8, 0.9], adam_eps=1e-6)
    p = torch.nn.Parameter(torch.ones(3))
    opt = adamw([{"params": [p]}], o)
    assert opt.defaults["betas"] == (0.8, 0.9) and opt.defaults["eps"] == 1e-6 and opt.defaults["lr"] == 0.1
    assert opt.defaults["fused"] == (tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4))
    real = torch.optim.AdamW

    def no_fused(groups, fused=None, **kw):
        if fused:
            raise RuntimeError("fused=True requires all the params to be floating point Tensors of supported devices")
        return real(groups, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    slow = adamw([{"params": [p]}], o)
    assert not slow.defaults["fused"]
    p.grad = torch.ones(3)
    slow.step()
    assert torch.all(p < 1)
