"""One forward/backward of the optiml criterion in real metaseq, per rank: loss and every gradient to a file.

For checks only (never imported by the plugin). Run one process per rank with a `metaseq-train`
command line plus `--distributed-rank R` (see `tests/test_metaseq_ranks.py`); `OPTIML_GRAD_OUT`
names the folder for `rank<R>.pt`. Why: logged losses alone cannot show that model-parallel
gradients are right (Adam hides a uniform scale); comparing every parameter's gradient at model
parallel 2, merged back to full tensors, with model parallel 1 on the same model and batch can.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict

import torch


def _main(cfg: Any) -> None:
    from metaseq import tasks
    from metaseq.distributed import utils as dist_utils

    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=cfg.dataset.batch_size,
                                  num_shards=dist_utils.get_data_parallel_world_size(),
                                  shard_id=dist_utils.get_data_parallel_rank()).next_epoch_itr()
    sample = next(itr)
    model.train()
    loss, size, log = criterion(model, sample)
    (loss / size).backward()
    out: Dict[str, Any] = {
        "alone": _packed_vs_alone(model, sample, criterion.padding_idx),
        "loss": float(loss) / float(size), "sample_size": float(size),
        "benchmarks": {k: float(v) for k, v in log.items()
                       if k.startswith(("nll_sum/benchmark/", "target_tokens/benchmark/"))},
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
        "mp_rank": dist_utils.get_model_parallel_rank(), "mp_size": dist_utils.get_model_parallel_world_size(),
        "attn_variant": _attn_variant(model),
    }
    torch.save(out, os.path.join(os.environ["OPTIML_GRAD_OUT"], f"rank{dist_utils.get_global_rank()}.pt"))


def _attn_variant(model: Any) -> str:
    """The attention the model runs: metaseq's xformers kernel or its dense path."""
    xformers = [getattr(m, "xf_eff_attn", False) for m in model.modules() if hasattr(m, "xf_eff_attn")]
    assert xformers and len(set(xformers)) == 1, xformers
    return "xformers_default" if xformers[0] else "default"


def _target_nll(model: Any, net_input: Dict[str, Any], target: torch.Tensor, pad: int) -> torch.Tensor:
    from metaseq.distributed import utils as dist_utils

    from optiml_plugin.metaseq.lossmath import target_nll

    rank, group = 0, None
    if dist_utils.get_model_parallel_world_size() > 1:
        rank, group = dist_utils.get_model_parallel_rank(), dist_utils.get_model_parallel_group()
    return target_nll(model(**net_input)[0], target, target.ne(pad), rank, group)


@torch.no_grad()
def _packed_vs_alone(model: Any, sample: Dict[str, Any], pad: int) -> Dict[str, Any]:
    """Each example alone in a row of its own (position 0 on, padding after): its rows, targets and
    per-target NLL (for comparing a converted model), and the largest |NLL difference| of any target
    token from the packed rows (document masking and positions are exact when it is ~0)."""
    model.eval()
    src, target, seg = sample["net_input"]["src_tokens"], sample["target"], sample["segment_ids"]
    packed = _target_nll(model, sample["net_input"], target, pad)
    rows, width = [], src.shape[1]
    for r in range(src.shape[0]):
        for s in range(1, int(seg[r].max()) + 1):
            keep = seg[r] == s
            n = int(keep.sum())
            row = [torch.full((width,), pad, dtype=src.dtype) for _ in range(2)] + [torch.zeros(width, dtype=seg.dtype)]
            row[0][:n], row[1][:n], row[2][:n] = src[r][keep], target[r][keep], 1
            rows.append(row)
    alone_src, alone_tgt, alone_seg = (torch.stack([row[i] for row in rows]) for i in range(3))
    alone = _target_nll(model, {"src_tokens": alone_src, "segment_ids": alone_seg}, alone_tgt, pad)
    model.train()
    return {"max_diff": float((packed - alone).abs().max()), "src": alone_src, "target": alone_tgt, "nll": alone}


def main(argv: list) -> None:
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # the repository (optiml_plugin) and tests/ (metaseq_cpu, by its own name: metaseq's editable
    # install puts metaseq's repository on sys.path, and its `tests` package would shadow ours)
    sys.path[:0] = [os.path.dirname(tests_dir), tests_dir]
    from metaseq_cpu import standins

    standins.install()
    from metaseq import options
    from metaseq.dataclass.utils import convert_namespace_to_omegaconf
    from metaseq.distributed import utils as dist_utils

    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, argv))
    torch.manual_seed(cfg.common.seed)
    dist_utils.call_main(cfg, _main)


if __name__ == "__main__":
    main(sys.argv[1:])
