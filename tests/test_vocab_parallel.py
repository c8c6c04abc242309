"""The criterion's arithmetic under model parallelism, on simulated vocabulary shards in a real 2-rank world.

Why: metaseq main gathers full-vocabulary logits unless told otherwise, and handing those to a
vocab-parallel loss adds exactly ln 2 per token at model parallel 2 (measured: 17.208 vs 16.208 bits).
Here each of two gloo ranks holds one half of the vocabulary's logits, and the same code the criterion
runs (`lossmath.target_nll` + `train_loss`, the telemetry's counters) must give the full-vocabulary
loss, per-benchmark sums and gradients of one process, for token and example normalization.
"""
from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path
from typing import Dict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import metaseq_cpu

metaseq_cpu.install_if_present()  # spawned workers import this module, and optiml_plugin imports metaseq

from optiml_plugin.metaseq.lossmath import target_nll, train_loss  # noqa: E402
from optiml_plugin.telemetry import Telemetry  # noqa: E402

WORLD = 2
VOCAB = 24          # divisible by WORLD: Megatron pads the vocabulary to a multiple of 8 x model parallel
NORMALIZE = ("token", "example")
pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available here")


def _batch() -> Dict[str, torch.Tensor]:
    """Two packed rows: three examples of two benchmarks, padding, targets in every vocabulary half."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, VOCAB, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, VOCAB, (2, 7), generator=g)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    segments = torch.tensor([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 0, 0]])
    benchmarks = torch.tensor([[0, 0, 0, 1, 1, 1, -1], [1, 1, 1, 1, 1, -1, -1]])
    return {"logits": logits, "target": target, "mask": mask, "segments": segments, "benchmarks": benchmarks}


def _loss(logits: torch.Tensor, batch: Dict[str, torch.Tensor], normalize: str, rank: int = 0,
          group: object = None):
    nll = target_nll(logits, batch["target"], batch["mask"], rank, group)
    loss, size = train_loss(nll, batch["mask"], batch["segments"], normalize)
    c = Telemetry(["b0", "b1"], normalize).train_counters(nll, batch["mask"], batch["segments"], batch["benchmarks"])
    bnll = torch.stack([c["nll_sum/benchmark/b0"], c["nll_sum/benchmark/b1"]])
    bcount = torch.stack([c["target_tokens/benchmark/b0"], c["target_tokens/benchmark/b1"]])
    return loss / size, nll.sum(), bnll, bcount


def _worker(rank: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))  # a lost peer fails the test instead of hanging it
    batch = _batch()
    width = VOCAB // WORLD
    results = {}
    for normalize in NORMALIZE:
        shard = batch["logits"][..., rank * width:(rank + 1) * width].clone().requires_grad_(True)
        loss, nll_sum, bnll, bcount = _loss(shard, batch, normalize, rank, dist.group.WORLD)
        loss.backward()
        results[normalize] = {"loss": loss.detach(), "nll_sum": nll_sum.detach(),
                              "bnll": bnll, "bcount": bcount, "grad": shard.grad}
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Dict[int, dict]:
    out = tmp_path_factory.mktemp("vocab_parallel")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, out), nprocs=WORLD, join=True)
    return {r: torch.load(out / f"rank{r}.pt") for r in range(WORLD)}


@pytest.mark.parametrize("normalize", NORMALIZE)
def test_sharded_loss_and_gradients_equal_full_vocabulary(sharded: Dict[int, dict], normalize: str) -> None:
    batch = _batch()
    full = batch["logits"].clone().requires_grad_(True)
    loss, nll_sum, bnll, bcount = _loss(full, batch, normalize)
    loss.backward()
    # the plain reference: torch's cross entropy on the target positions
    mask = batch["mask"]
    ref_nll = torch.nn.functional.cross_entropy(batch["logits"][mask], batch["target"][mask], reduction="none")
    assert torch.allclose(nll_sum, ref_nll.sum(), rtol=1e-12)
    width = VOCAB // WORLD
    for rank, res in sharded.items():
        got = res[normalize]
        assert torch.allclose(got["loss"], loss.detach(), rtol=1e-10), (rank, got["loss"], loss)
        assert torch.allclose(got["bnll"], bnll) and torch.equal(got["bcount"], bcount)
        assert torch.allclose(got["grad"], full.grad[..., rank * width:(rank + 1) * width], rtol=1e-9, atol=1e-12)
    assert bcount.tolist() == [2.0, 5.0]

