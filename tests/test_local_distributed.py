"""The local trainer in a real 2-process world on CPU (gloo): DDP and FSDP correctness, not just "it runs".

Why one spawn for every scenario: starting two processes (torch + transformers imports) costs more than
all the micro-model training together, so a module fixture runs each scenario once in one 2-rank world,
every rank saves what it saw, and the tests below check those records against independent computations
(the stream read directly, the loss recomputed example by example with the initial model).
"""
from __future__ import annotations

import math
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import torch.distributed as dist

import metaseq_cpu

metaseq_cpu.install_if_present()  # spawned workers import this module, and optiml_plugin imports metaseq

from bench_factory import make_bench, micro_train_config  # noqa: E402
from optiml_plugin.errors import ConfigError  # noqa: E402
from optiml_plugin.local.trainer import Trainer, read_log  # noqa: E402

WORLD = 2
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available here")


def _config(bench: Path, out: Path, mode: str = "ddp", dropout: float = 0.1, model: Any = None, **optim: Any):
    return micro_train_config(bench, out, model={"dropout": dropout, **(model or {})}, optim=optim,
                              run={"distributed": mode, "device": "cpu"})


def _record_steps(trainer: Trainer, seen: List[List[Dict[str, Any]]]) -> None:
    """Keep a copy of every update's micro-batches (the instance attribute shadows the method)."""
    inner = trainer.train_step

    def step(micro: List[Dict[str, Any]]) -> Dict[str, float]:
        seen.append([{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in micro])
        return inner(micro)

    trainer.train_step = step


def _params(trainer: Trainer) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def _run_and_resume(cfg, cut: int) -> None:
    first = Trainer(cfg)
    first.train(until=cut)
    del first
    Trainer(cfg, resume=True).train()


def _worker(rank: int, port: int, bench: Path, root: Path) -> None:
    """One rank: every scenario in turn; what it saw goes to root/<scenario>_rank<r>.pt."""
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD)})
    # our own group with a short timeout, so a rank that fails does not leave the other waiting 30 minutes
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        # DDP, no dropout: the first update's loss is recomputable from the initial model
        trainer = Trainer(_config(bench, root / "ddp_step", dropout=0.0, max_update=3))
        seen: List[List[Dict[str, Any]]] = []
        _record_steps(trainer, seen)
        before = _params(trainer)
        trainer.save_model(root / "ddp_step" / "initial")
        trainer.train(until=3)
        torch.save({"before": before, "after": _params(trainer), "steps": seen,
                    "pipeline": trainer.batches.state_dict()}, root / f"ddp_step_rank{rank}.pt")
        del trainer

        # uninterrupted vs stopped at step 3 and resumed (dropout on: per-rank RNG states must resume too)
        groups = {}
        for mode in ("ddp", "fsdp"):
            trainer = Trainer(_config(bench, root / f"{mode}_full", mode=mode))
            groups[mode] = [(g["weight_decay"], len(g["params"])) for g in trainer.optimizer.param_groups]
            trainer.train()
            del trainer
        torch.save(groups, root / f"param_groups_rank{rank}.pt")
        _run_and_resume(_config(bench, root / "ddp_cut"), cut=3)
        _run_and_resume(_config(bench, root / "fsdp_cut", mode="fsdp"), cut=3)
        # sharded vs replicated training, clipping out of play (see test_fsdp_clips_by_the_global_norm)
        for mode in ("ddp", "fsdp"):
            Trainer(_config(bench, root / f"{mode}_noclip", mode=mode, clip_norm=1e9, max_update=4)).train()
        # a Llama-family model (rotary positions, no hidden dropout: attention dropout on) sharded and resumed
        llama = {"family": "llama", "attention_dropout": 0.1}
        for mode in ("ddp", "fsdp"):
            Trainer(_config(bench, root / f"{mode}_llama_full", mode=mode, model=llama)).train()
        _run_and_resume(_config(bench, root / "fsdp_llama_cut", mode="fsdp", model=llama), cut=3)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "bench"
    return make_bench(root, [
        dict(benchmark="b1", category="c1", task="t1", n=60),
        dict(benchmark="b2", category="c2", task="t2", n=40),
        # 3 validation batches: shared out unevenly over 2 ranks
        dict(benchmark="b1", category="c1", task="t1", n=6, split="valid_heldout_instances"),
    ])


@pytest.fixture(scope="module")
def world(bench, tmp_path_factory) -> Path:
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("world")
    mp.spawn(_worker, args=(_free_port(), bench, root), nprocs=WORLD, join=True)
    return root


def _ranks(world: Path, scenario: str) -> List[Dict[str, Any]]:
    return [torch.load(world / f"{scenario}_rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _losses(run: Path) -> List[float]:
    return [r["loss"] for r in read_log(run / "log.jsonl") if "split" not in r]


def _final_state(run: Path) -> Dict[str, torch.Tensor]:
    from transformers import OPTForCausalLM

    return OPTForCausalLM.from_pretrained(str(run / "final")).state_dict()


def test_ddp_ranks_keep_identical_parameters(world):
    r0, r1 = _ranks(world, "ddp_step")
    first0, first1 = r0["steps"][0][0], r1["steps"][0][0]
    assert not torch.equal(first0["input_ids"], first1["input_ids"])         # different data per rank...
    for name in r0["before"]:
        assert torch.equal(r0["before"][name], r1["before"][name]), name     # same start
        assert torch.equal(r0["after"][name], r1["after"][name]), name       # ...same update: grads synced
    assert any(not torch.equal(r0["before"][k], r0["after"][k]) for k in r0["before"])


def test_ddp_ranks_read_disjoint_partitions_of_one_stream(world, bench):
    from optiml_plugin.benchfiles import Bench
    from optiml_plugin.data.mixture import Mixture, MixtureConfig
    from optiml_plugin.data.stream import ExampleStream

    cfg = _config(bench, world / "unused")
    b = Bench(str(bench))
    mixture = Mixture.from_bench(b, MixtureConfig(proportions=cfg.data.benchmark_proportions, eps=cfg.data.eps))
    single = ExampleStream(b, mixture, seed=cfg.run.seed)
    consumed = []
    for rank, rec in enumerate(_ranks(world, "ddp_step")):
        trained = [i for micro in rec["steps"] for batch in micro for row in batch["example_indices"] for i in row]
        assert len(trained) == len(set(trained))
        state = rec["pipeline"]
        held = list(state["pending"]) + [i for group in ("open_blocks", "incoming", "buffer", "ready")
                                         for block in state[group] for i in block]
        drawn = sorted(trained + held)
        part = ExampleStream(b, mixture, seed=cfg.run.seed, rank=rank, world_size=WORLD)
        assert drawn == [ex.index for ex in part.take(len(drawn))]             # exactly this rank's prefix
        assert state["stream"]["next_index"] > drawn[-1]
        for micro in rec["steps"]:                                             # the rows the stream gives
            for batch in micro:
                for r, row in enumerate(batch["example_indices"]):
                    for s, index in enumerate(row, start=1):
                        tasks = batch["task_ids"][r][batch["segment_ids"][r] == s].unique().tolist()
                        assert tasks == [single.example(index).task_id]
        consumed.append(set(trained))
    assert consumed[0] and consumed[1] and not consumed[0] & consumed[1]


def _example_nll(lm: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """[nll sum, target count] of a packed batch, each example run alone with plain causal attention."""
    total = torch.zeros(2, dtype=torch.float64)
    for r in range(batch["input_ids"].shape[0]):
        for s in batch["segment_ids"][r].unique().tolist():
            if s == 0:
                continue
            at = batch["segment_ids"][r] == s
            mask = batch["loss_mask"][r][at].bool()
            logits = lm(input_ids=batch["input_ids"][r][at][None],
                        position_ids=batch["position_ids"][r][at][None]).logits[0]
            nll = torch.nn.functional.cross_entropy(logits[mask], batch["target_ids"][r][at][mask], reduction="sum")
            total += torch.stack([nll.double(), mask.sum().double()])
    return total


@torch.no_grad()
def test_ddp_logged_loss_is_the_global_target_weighted_loss(world):
    from transformers import OPTForCausalLM

    lm = OPTForCausalLM.from_pretrained(str(world / "ddp_step" / "initial"), attn_implementation="eager").eval()
    per_rank = [sum(_example_nll(lm, b) for b in rec["steps"][0]) for rec in _ranks(world, "ddp_step")]
    assert per_rank[0][1] != per_rank[1][1]                 # uneven target counts: a mean of means would differ
    nll, targets = per_rank[0] + per_rank[1]
    logged = read_log(world / "ddp_step" / "log.jsonl")[0]
    assert logged["step"] == 1
    assert logged["loss"] == pytest.approx(float(nll / targets) / math.log(2), rel=1e-5)   # bits
    mean_of_means = float(sum(p[0] / p[1] for p in per_rank) / WORLD) / math.log(2)
    assert abs(logged["loss"] - mean_of_means) > 1e-4


def test_ddp_resume_continues_exactly(world):
    full, cut = world / "ddp_full", world / "ddp_cut"
    assert len(_losses(full)) == 6
    assert _losses(cut) == _losses(full)
    a, b = _final_state(full), _final_state(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_world_size_is_refused(world, bench):
    with pytest.raises(ConfigError, match="world size 2"):
        Trainer(_config(bench, world / "ddp_full", mode="none"), resume=True)


def test_fsdp_matches_ddp(world):
    assert _losses(world / "fsdp_noclip") == pytest.approx(_losses(world / "ddp_noclip"), rel=1e-5)
    a, b = _final_state(world / "ddp_noclip"), _final_state(world / "fsdp_noclip")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_fsdp_clips_by_the_global_norm(world):
    ddp, fsdp = (read_log(world / run / "log.jsonl") for run in ("ddp_full", "fsdp_full"))
    assert fsdp[0]["grad_norm"] == pytest.approx(ddp[0]["grad_norm"], rel=1e-5)   # same model, same batches
    assert _losses(world / "fsdp_full") == pytest.approx(_losses(world / "ddp_full"), rel=1e-5)


def test_fsdp_puts_the_same_parameters_under_weight_decay(world):
    for rank in _ranks(world, "param_groups"):
        assert rank["fsdp"] == rank["ddp"]


def test_llama_under_ddp_and_fsdp_resumes_exactly(world):
    from transformers import AutoModelForCausalLM

    full, cut = world / "fsdp_llama_full", world / "fsdp_llama_cut"
    assert _losses(cut) == _losses(full) and len(_losses(full)) == 6
    assert _losses(full) == pytest.approx(_losses(world / "ddp_llama_full"), rel=1e-5)   # sharded = replicated
    a, b = (AutoModelForCausalLM.from_pretrained(str(run / "final")) for run in (full, cut))
    assert type(a).__name__ == "LlamaForCausalLM"
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_fsdp_resume_continues_exactly(world):
    full, cut = world / "fsdp_full", world / "fsdp_cut"
    assert _losses(cut) == _losses(full)
    a, b = _final_state(full), _final_state(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_validation_shared_over_ranks_equals_one_process(world, bench, tmp_path, mode):
    """The final validation, each rank scoring its share of the batches (3 batches over 2 ranks), logs what
    one process scoring every batch with the final model gives."""
    from transformers import OPTForCausalLM

    logged = [r for r in read_log(world / f"{mode}_full" / "log.jsonl") if "split" in r][-1]
    single = Trainer(_config(bench, tmp_path / "single", mode="none"))
    assert len(single.data.validation[logged["split"]].batches) == 3
    final = OPTForCausalLM.from_pretrained(str(world / f"{mode}_full" / "final"))
    single.lm.load_state_dict(final.state_dict())
    ref = single.validate()[logged["split"]]
    assert logged["valid_target_tokens"] == ref["target_tokens"]
    assert logged["valid_loss"] == pytest.approx(ref["loss"], rel=1e-6)
