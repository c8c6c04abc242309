"""Process-group setup for `torchrun` and model wrapping (DDP, or FSDP for models that do not fit one device).

Why its own module: the train loop only sees `Dist` (rank, world size, reductions); world size 1 without a
process group costs nothing. tests/test_local_distributed.py runs DDP and FSDP in a 2-process gloo world on
the CPU (FSDP needs the CPU named as its device there, and no CPU offload of state dicts; see below).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Set

import torch
import torch.distributed as dist

from optiml_plugin.errors import ConfigError


@dataclass
class Dist:
    mode: str          # none | ddp | fsdp
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (in place); a no-op without a process group."""
        if self.mode != "none":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.mode != "none":
            dist.barrier()


def init_distributed(mode: str, device: torch.device) -> Dist:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; 'auto' means DDP when more than one process runs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if mode == "auto":
        mode = "ddp" if world > 1 else "none"
    if mode == "none":
        if world > 1:
            raise ConfigError("run.distributed: 'none' with WORLD_SIZE > 1; use ddp or fsdp under torchrun")
        return Dist("none")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(mode, dist.get_rank(), dist.get_world_size(), local_rank)


def wrap_model(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    if d.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else d.local_rank] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if d.mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        import functools

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=decoder_layer_classes(model))
        return FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True,
                                        sharding_strategy=ShardingStrategy.FULL_SHARD,
                                        device_id=device)  # CPU too: FSDP refuses CPU unless named
    return model


def decoder_layer_classes(model: torch.nn.Module) -> Set[type]:
    """The classes of the model's decoder layers (transformers lists them in `_no_split_modules`): FSDP's
    units, one per layer, for any family (OPTDecoderLayer, LlamaDecoderLayer, GPTNeoXLayer, ...)."""
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    found = {type(m) for m in model.modules() if type(m).__name__ in names}
    if not found:
        raise ConfigError(f"run.distributed: fsdp: {type(unwrap(model)).__name__} names no decoder layer class "
                          f"(transformers' _no_split_modules) to shard by")
    return found


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def clip_grad_norm(model: torch.nn.Module, max_norm: float, d: Dist) -> torch.Tensor:
    """Clip by the norm of the whole gradient and return that norm.

    Why: under FSDP each rank holds one shard of the gradient, so `torch.nn.utils.clip_grad_norm_` over
    `model.parameters()` sees only its shard's norm and every rank clips by a different factor; FSDP's
    own method all-reduces the norm first."""
    if d.mode == "fsdp":
        return model.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


def _full_state_on_rank0(model: torch.nn.Module) -> Any:
    """FSDP's context for whole (unsharded) model and optimizer state dicts, built on rank 0 only.

    Why offload only from an accelerator: FSDP relies on `.cpu()` copying the gathered tensors; for
    parameters already on the CPU it is a no-op, and then the model state dict clones freed storage
    (segfault) and every optimizer state of a parameter aliases the last one gathered (exp_avg comes
    back equal to exp_avg_sq), as measured on torch 2.13 with gloo."""
    from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel,
                                        StateDictType)

    offload = any(p.device.type != "cpu" for p in model.parameters())
    return FullyShardedDataParallel.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True))


def full_state_dict(model: torch.nn.Module, d: Dist) -> Any:
    """The whole model's state dict on rank 0 (FSDP gathers it); other ranks get {} under FSDP."""
    if d.mode == "fsdp":
        with _full_state_on_rank0(model):
            return model.state_dict()
    return unwrap(model).state_dict()


def load_full_state_dict(model: torch.nn.Module, state: Any, d: Dist) -> None:
    """Load a whole-model state dict (as `full_state_dict` saved it) on every rank; FSDP shards it."""
    if d.mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel, StateDictType

        with FullyShardedDataParallel.state_dict_type(model, StateDictType.FULL_STATE_DICT):
            model.load_state_dict(state)
    else:
        unwrap(model).load_state_dict(state)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> Any:
    """The whole optimizer state keyed by parameter name on rank 0 under FSDP (others get {})."""
    if d.mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with _full_state_on_rank0(model):
            return FullyShardedDataParallel.optim_state_dict(model, optimizer)
    return optimizer.state_dict()


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: Any, d: Dist) -> None:
    if d.mode == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel

        state = FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, state)
    optimizer.load_state_dict(state)
