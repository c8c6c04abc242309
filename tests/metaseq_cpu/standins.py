"""CPU stand-ins that let metaseq main (f7ffa5f) run on a machine without CUDA.

For checks only: the plugin (``optiml_plugin``) must never import this module. Call
:func:`install` before anything imports metaseq. The stand-ins are labelled as in
``/work/shared/metaseq-cpu/README.md`` (P1-P4 for metaseq, F1-F4 for fairscale's FSDP); P5 is
one that list lacks (resuming metaseq's own streaming task with several ranks); X1 is xformers'
attention kernel, for `--attn-variant xformers_default` where xformers is installed. Where CUDA is
available only P1 is installed, and only for kernels that were not built.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from typing import Any, Iterator, List, Optional

import torch
import torch.distributed as dist

_KERNELS = "metaseq.modules.megatron.fused_kernels"
_INSTALLED = False


# --- P1: the Megatron fused-softmax kernels, in plain torch ------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """Softmax in at least fp32, as the CUDA kernels accumulate."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _softmax_backward(
    output_grads: torch.Tensor, softmax_results: torch.Tensor, scale: Any
) -> torch.Tensor:
    """d(softmax(scale * x))/dx applied to the output gradients."""
    dt = _compute_dtype(softmax_results)
    y, g = softmax_results.to(dt), output_grads.to(dt)
    grad = float(scale) * y * (g - (g * y).sum(dim=-1, keepdim=True))
    return grad.to(output_grads.dtype)


def _upper_triang_forward(inputs: torch.Tensor, scale: Any) -> torch.Tensor:
    """Scale, mask key j > query i with -inf (causal), softmax over keys. Input [b*np, sq, sk]."""
    x = inputs.to(_compute_dtype(inputs)) * float(scale)
    sq, sk = x.shape[-2], x.shape[-1]
    causal = torch.ones(sq, sk, dtype=torch.bool, device=x.device).triu(1)
    return torch.softmax(x.masked_fill(causal, float("-inf")), dim=-1).to(inputs.dtype)


def _masked_forward(inputs: torch.Tensor, mask: torch.Tensor, scale: Any) -> torch.Tensor:
    """Scale, fill positions where ``mask`` is true with -10000.0 (as the kernel), softmax."""
    x = inputs.to(_compute_dtype(inputs)) * float(scale)
    return torch.softmax(x.masked_fill(mask.bool(), -10000.0), dim=-1).to(inputs.dtype)


def _kernel_module(name: str, forward: Any) -> types.ModuleType:
    module = types.ModuleType(f"{_KERNELS}.{name}")
    module.forward = forward  # type: ignore[attr-defined]
    module.backward = _softmax_backward  # type: ignore[attr-defined]
    module.get_batch_per_block = lambda *args: 1  # type: ignore[attr-defined]
    return module


def _kernel_built(name: str) -> bool:
    """Whether metaseq was built with this kernel (looked up on disk: importing needs P1)."""
    spec = importlib.util.find_spec("metaseq")
    if spec is None or not spec.submodule_search_locations:
        return False
    root = list(spec.submodule_search_locations)[0]
    folder = os.path.join(root, "modules", "megatron", "fused_kernels")
    files = os.listdir(folder) if os.path.isdir(folder) else []
    return any(f.startswith(name + ".") and f.endswith(".so") for f in files)


def _install_kernels() -> None:
    """metaseq imports the two kernel extensions at module level; without them nothing imports."""
    for name, fwd in (
        ("scaled_upper_triang_masked_softmax_cuda", _upper_triang_forward),
        ("scaled_masked_softmax_cuda", _masked_forward),
    ):
        if not _kernel_built(name):
            sys.modules.setdefault(f"{_KERNELS}.{name}", _kernel_module(name, fwd))


# --- F1: CUDA streams that do nothing -----------------------------------------------------------


class CpuStream:
    """Stands in for ``torch.cuda.Stream``: on CPU all work is already in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device = torch.device("cpu")

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> Any:
        return event

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_CPU_STREAM = CpuStream()


@contextlib.contextmanager
def _cpu_stream_ctx(stream: Any = None) -> Iterator[None]:
    yield


def _install_streams() -> None:
    """fairscale's FSDP branch calls the CUDA stream API without checking for CUDA."""
    torch.cuda.Stream = CpuStream  # type: ignore[assignment,misc]
    torch.cuda.current_stream = lambda device=None: _CPU_STREAM  # type: ignore[assignment]
    torch.cuda.default_stream = lambda device=None: _CPU_STREAM  # type: ignore[assignment]
    torch.cuda.stream = _cpu_stream_ctx  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]
    original = torch.Tensor.record_stream

    def record_stream(self: torch.Tensor, stream: Any) -> None:
        if not isinstance(stream, CpuStream):
            original(self, stream)

    torch.Tensor.record_stream = record_stream  # type: ignore[assignment,method-assign]


# --- F4: reduce_scatter on gloo -----------------------------------------------------------------


class _DoneWork:
    """The handle an ``async_op=True`` collective returns; the emulated one is already done."""

    def wait(self, *args: Any) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


def _install_reduce_scatter() -> None:
    """gloo has no reduce_scatter in torch 2.0.1: all_reduce the inputs, keep this rank's slice."""
    original = dist.reduce_scatter

    def reduce_scatter(
        output: torch.Tensor,
        input_list: List[torch.Tensor],
        op: Any = dist.ReduceOp.SUM,
        group: Optional[Any] = None,
        async_op: bool = False,
    ) -> Any:
        if dist.get_backend(group) != "gloo":
            return original(output, input_list, op=op, group=group, async_op=async_op)
        flat = torch.cat([t.reshape(-1) for t in input_list])
        dist.all_reduce(flat, op=op, group=group)
        n = output.numel()
        rank = dist.get_rank(group)
        output.copy_(flat[rank * n : (rank + 1) * n].view_as(output))
        return _DoneWork() if async_op else None

    dist.reduce_scatter = reduce_scatter  # type: ignore[assignment]


# --- P3: the model-parallel RNG tracker on the CPU generator ------------------------------------


def _install_rng_tracker() -> None:
    """The Megatron tracker saves and restores CUDA generator states; keep them on the CPU one."""
    from metaseq.modules.megatron.mpu import random as mpu_random

    def set_state(new_state: torch.Tensor, device: Any = -1) -> None:
        torch.set_rng_state(new_state)

    def add(self: Any, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise Exception("seed {} already exists".format(seed))
        self.seeds_.add(seed)
        if name in self.states_:
            raise Exception("cuda rng state {} already exists".format(name))
        orig = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(orig)

    @contextlib.contextmanager
    def fork(self: Any, name: str = mpu_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        if name not in self.states_:
            raise Exception("cuda rng state {} is not added".format(name))
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

    mpu_random._set_cuda_rng_state = set_state
    mpu_random.CudaRNGStatesTracker.add = add  # type: ignore[method-assign]
    mpu_random.CudaRNGStatesTracker.fork = fork  # type: ignore[method-assign]


# --- P4: DDP without device ids for CPU modules -------------------------------------------------


def _install_ddp() -> None:
    """metaseq passes ``device_ids=[device_id]`` to DDP, which torch refuses for CPU modules."""
    from torch.nn.parallel import DistributedDataParallel

    from metaseq.models import distributed_model

    class CpuDistributedDataParallel(DistributedDataParallel):
        def __init__(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
            param = next(module.parameters(), None)
            if param is not None and param.device.type == "cpu":
                kwargs.pop("device_ids", None)
                kwargs.pop("output_device", None)
            super().__init__(module, *args, **kwargs)

    distributed_model.DistributedDataParallel = CpuDistributedDataParallel  # type: ignore[misc]


# --- F2, F3: FSDP's compute device and side streams ---------------------------------------------


def _install_fsdp() -> None:
    """FSDP computes on "cuda" by default and creates its side streams only with CUDA."""
    from fairscale.nn.data_parallel import fully_sharded_data_parallel as fsdp
    from fairscale.utils import reduce_scatter_bucketer

    # F4, second half: no _all_gather_base / _reduce_scatter_base on gloo.
    fsdp.enable_nccl_base_collectives = False  # type: ignore[attr-defined]
    reduce_scatter_bucketer.enable_nccl_base_collectives = False  # type: ignore[attr-defined]

    def default_device(module: torch.nn.Module) -> torch.device:  # F2
        param = next(module.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    fsdp._get_default_cuda_device = default_device

    original = fsdp.FullyShardedDataParallel._setup_streams

    def setup_streams(self: Any) -> None:  # F3
        original(self)
        if self._is_root:
            # Children share this very dict, so filling it fills theirs.
            for key in ("fp32_to_fp16", "all_gather", "post_backward"):
                self._streams.setdefault(key, _CPU_STREAM)

    fsdp.FullyShardedDataParallel._setup_streams = setup_streams  # type: ignore[method-assign]


# --- P5: broadcasting the streaming iterator's token-length cache on resume --------------------


@contextlib.contextmanager
def _cuda_allocations_on_cpu() -> Iterator[None]:
    """Within the block, ``Tensor.cuda()`` is the identity and ``torch.empty(device="cuda")``
    allocates on CPU."""
    to_cuda, empty = torch.Tensor.cuda, torch.empty

    def cpu_empty(*args: Any, **kwargs: Any) -> torch.Tensor:
        if str(kwargs.get("device", "")).startswith("cuda"):
            kwargs["device"] = "cpu"
        return empty(*args, **kwargs)

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment,method-assign]
    torch.empty = cpu_empty  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.empty = to_cuda, empty  # type: ignore[method-assign]


def _install_streaming_resume() -> None:
    """With several ranks, ``StreamingEpochBatchIterator.load_state_dict`` broadcasts rank 0's
    token-length cache through a CUDA tensor (only on resume, not in the README's list)."""
    from metaseq.data import iterators

    original = iterators.StreamingEpochBatchIterator.load_state_dict

    def load_state_dict(self: Any, state_dict: Any) -> Any:
        with _cuda_allocations_on_cpu():
            return original(self, state_dict)

    iterators.StreamingEpochBatchIterator.load_state_dict = load_state_dict  # type: ignore


# --- X1: xformers' memory-efficient attention kernel, in plain torch ----------------------------


def xformers_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_bias: Any = None,
                       p: float = 0.0, scale: Optional[float] = None, *, op: Any = None) -> torch.Tensor:
    """``xformers.ops.memory_efficient_attention`` without its CUDA kernels: the bias object it is given
    materialized (``AttentionBias.materialize``) and added to the scaled scores, then plain softmax
    attention. Inputs [B, M, K] (metaseq's own call) or [B, M, H, K] (block-diagonal masks)."""
    if p:
        raise NotImplementedError("the CPU stand-in of memory_efficient_attention has no dropout")
    three = query.dim() == 3
    q, k, v = (x.unsqueeze(2) if three else x for x in (query, key, value))
    dt = _compute_dtype(q)
    scores = torch.einsum("bmhk,bnhk->bhmn", q.to(dt), k.to(dt)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if attn_bias is not None:
        if not isinstance(attn_bias, torch.Tensor):
            attn_bias = attn_bias.materialize((q.shape[1], k.shape[1]), dtype=dt, device=q.device)
        scores = scores + attn_bias.to(dt)
    out = torch.einsum("bhmn,bnhk->bmhk", scores.softmax(-1), v.to(dt)).to(query.dtype)
    return out.squeeze(2) if three else out


def _install_xformers() -> None:
    """Where xformers is installed (its attention-bias classes are plain Python) but there is no CUDA,
    its kernels cannot run: metaseq and the plugin call ``xformers.ops.memory_efficient_attention``."""
    if importlib.util.find_spec("xformers") is None:
        return
    import xformers.ops

    xformers.ops.memory_efficient_attention = xformers_attention  # type: ignore[assignment]


# --- P2 and entry point -------------------------------------------------------------------------


def install() -> None:
    """Install all stand-ins (idempotent). Without CUDA only; with CUDA only P1 is missing-safe."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    _install_kernels()
    if torch.cuda.is_available():
        return
    os.environ["ENABLE_NCCL_BASE_COLLECTIVES"] = "0"
    # P2: metaseq allocates with device=torch.cuda.current_device().
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment,return-value]
    _install_streams()
    _install_reduce_scatter()
    _install_rng_tracker()
    _install_ddp()
    _install_fsdp()
    _install_streaming_resume()
    _install_xformers()
