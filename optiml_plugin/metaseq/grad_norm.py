"""The model-parallel gradient norm with every weight counted once (`--grad-norm-replicated-once`).

Why: metaseq's `Trainer.clip_grad_norm` all-reduces each model-parallel rank's squared norm of ALL
its gradients. Weights that every model-parallel rank holds whole (layer norms, the biases of
row-parallel layers, learned positions) are thus counted once per rank, so the norm, and with
`--clip-norm` the clipping, depends on the model-parallel size: in the CPU check of docs/metaseq.md
the first update's norm was 3.555 at model parallel 2 against 3.440 from the full gradients, and the
losses drifted apart. With the option, each rank weights the squares of replicated elements by
1 / model-parallel size before the same all-reduce, which gives the norm of the full gradient at any
model-parallel size. Which weights are split is Megatron's own mark (`tensor_model_parallel`), or,
inside FSDP's flattened parameters where that mark is gone, the Megatron layer each piece comes from.

Nothing here imports metaseq but `install`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

# Megatron's layers and the parameters they split across model-parallel ranks (metaseq's
# modules/megatron/mpu/layers.py: `set_tensor_model_parallel_attributes(..., True, ...)`)
PARALLEL_PARAMS: Dict[str, Tuple[str, ...]] = {
    "ColumnParallelLinear": ("weight", "bias"),
    "RowParallelLinear": ("weight",),
    "VocabParallelEmbedding": ("weight",),
}
# (start, end, is model-parallel) within one parameter's local data
Segments = List[Tuple[int, int, bool]]


def splits_across_ranks(module: Any, name: str) -> bool:
    """Whether `module.<name>` is a Megatron parameter split across model-parallel ranks."""
    return name in PARALLEL_PARAMS.get(type(module).__name__, ())


def flat_segments(param: Any, rank: int, world_size: int) -> Segments:
    """The pieces of one FSDP flat parameter's local shard, with whether each is model-parallel.

    The flat parameter concatenates its weights in `_param_infos` order (`_param_numels` each);
    a sharded one holds chunk `rank` of `world_size` of it (fairscale's `_get_shard`: `torch.chunk`,
    padding after). A weight shared between modules (tied embeddings) is split if any of its
    modules splits it."""
    infos = param._param_infos
    split = [splits_across_ranks(module, name) for _, module, name in infos]
    # (name, first's name, module, param name, first's module, first's param name)
    for _, _, module, name, first_module, first_name in getattr(param, "_shared_param_infos", ()):
        for i, (_, held_module, held_name) in enumerate(infos):
            if held_module is first_module and held_name == first_name and splits_across_ranks(module, name):
                split[i] = True
    total = sum(param._param_numels)
    start, end = 0, total
    if getattr(param, "_is_sharded", False):
        chunk = -(-total // world_size)
        start, end = min(rank * chunk, total), min((rank + 1) * chunk, total)
    out: Segments = []
    offset = 0
    for numel, parallel in zip(param._param_numels, split):
        lo, hi = max(offset, start), min(offset + numel, end)
        if lo < hi:
            out.append((lo - start, hi - start, parallel))
        offset += numel
    return out


def param_segments(param: Any, rank: int, world_size: int) -> Segments:
    """Pieces of a parameter's local data and whether each is model-parallel."""
    if hasattr(param, "_param_infos"):
        return flat_segments(param, rank, world_size)
    return [(0, param.numel(), bool(getattr(param, "tensor_model_parallel", False)))]


def squared_norm_once(params: Iterable[Any], model_parallel_size: int, rank: int, world_size: int,
                      cache: Optional[Dict[int, Segments]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(squared norm of the unsharded gradients, of the FSDP-sharded ones) of this rank, in float32, the
    replicated elements weighted by 1 / model_parallel_size: summed over the model-parallel group (and
    the sharded part over the data-parallel group), it is the full gradient's squared norm."""
    plain = torch.zeros((), dtype=torch.float32)
    sharded = torch.zeros((), dtype=torch.float32)
    for p in params:
        grad = p.grad.detach().reshape(-1)
        key = id(p)
        if cache is None or key not in cache:
            segments = param_segments(p, rank, world_size)
            if cache is not None:
                cache[key] = segments
        else:
            segments = cache[key]
        sq = torch.zeros((), dtype=torch.float32, device=grad.device)
        for lo, hi, parallel in segments:
            part = grad[lo:hi].float().pow(2).sum()
            sq = sq + (part if parallel else part / model_parallel_size)
        if getattr(p, "_is_sharded", False):
            sharded = sharded.to(sq.device) + sq
        else:
            plain = plain.to(sq.device) + sq
    return plain, sharded


def clip_grad_norm_once(original: Callable[..., torch.Tensor], cache: Dict[int, Segments],
                        params: Any, max_norm: float, norm_type: str = "l2",
                        aggregate_norm_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        device: Any = None) -> torch.Tensor:
    """metaseq's `utils.clip_grad_norm_` with replicated weights counted once: the same arguments, the
    same clipping rule (coefficient max_norm / (norm + 1e-6), at most 1) and the norm returned.
    Model parallel 1 (no `aggregate_norm_fn`) and the max norm (`inf`) are metaseq's own."""
    from metaseq.distributed import utils as dist_utils

    mp_size = dist_utils.get_model_parallel_world_size()
    if aggregate_norm_fn is None or norm_type != "l2" or mp_size == 1:
        return original(params, max_norm, norm_type, aggregate_norm_fn, device)
    if isinstance(params, torch.Tensor):
        params = [params]
    params = [p for p in params if p is not None and getattr(p, "grad", None) is not None]
    plain, sharded = squared_norm_once(params, mp_size, dist_utils.get_data_parallel_rank(),
                                       dist_utils.get_data_parallel_world_size(), cache)
    if any(getattr(p, "_is_sharded", False) for p in params) and torch.distributed.is_initialized():
        torch.distributed.all_reduce(sharded, group=dist_utils.get_data_parallel_group())
    total_norm = aggregate_norm_fn((plain + sharded.to(plain.device)).sqrt())
    if max_norm > 0:
        clip_coef = (float(max_norm) / (total_norm + 1e-6)).clamp_(max=1)
        for p in params:
            p.grad.detach().mul_(clip_coef.to(p.grad.device))
    return total_norm


def install() -> None:
    """Make metaseq's optimizers clip with `clip_grad_norm_once` (they call `metaseq.utils.clip_grad_norm_`
    by module attribute). Idempotent."""
    from metaseq import utils

    if getattr(utils.clip_grad_norm_, "_optiml_once", False):
        return
    patched = functools.partial(clip_grad_norm_once, utils.clip_grad_norm_, {})
    patched._optiml_once = True  # type: ignore[attr-defined]
    utils.clip_grad_norm_ = patched

