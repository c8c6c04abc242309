"""metaseq criterion `target_only_cross_entropy`: the OPT-IML loss, normalized by target tokens.

Why: metaseq's `cross_entropy` uses `sample_size = ntokens` (all input tokens), which under-weights
short targets; the loss here covers target tokens (and `</s>`) only and `sample_size` is their
count, summed over workers by metaseq before dividing. With model parallel size > 1 the task builds
the decoder so that it returns this rank's vocabulary slice of the logits (no gather of B x T x V on
every rank), and `lossmath.target_nll` computes the exact full-vocabulary NLL of the target positions
over the model-parallel group. The arithmetic lives in `lossmath` and `loss`, the metrics in
`telemetry` (no metaseq import); `reduce_metrics` is the metaseq sink of the telemetry's scalars.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from metaseq import metrics, utils
from metaseq.criterions import BaseCriterion, register_criterion
from metaseq.distributed import utils as distributed_utils

from optiml_plugin.metaseq.lossmath import loss_and_logging, reduced_scalars, target_nll
from optiml_plugin.data.training_data import run_telemetry
from optiml_plugin.telemetry import Telemetry

CRITERION_NAME = "target_only_cross_entropy"


@register_criterion(CRITERION_NAME)
class TargetOnlyCrossEntropyCriterion(BaseCriterion):
    def __init__(self, task: Any) -> None:
        super().__init__(task)
        settings = getattr(task, "settings", None)
        benchmarks = list(getattr(task, "benchmarks", []))
        self.telemetry = run_telemetry(settings.fields, benchmarks) if settings is not None else Telemetry(benchmarks)

    def forward(self, model: Any, sample: Dict[str, Any], reduce: bool = True) -> Tuple[Any, Any, Dict[str, Any]]:
        logits = model(**sample["net_input"])[0]
        target = sample["target"]
        mask = target.ne(self.padding_idx)
        rank, group = 0, None
        if distributed_utils.get_model_parallel_world_size() > 1:
            rank, group = distributed_utils.get_model_parallel_rank(), distributed_utils.get_model_parallel_group()
        nll = target_nll(logits, target, mask, rank, group)
        return loss_and_logging(nll, sample, self.telemetry, self.padding_idx)

    @staticmethod
    def reduce_metrics(logging_outputs: List[Dict[str, Any]]) -> None:
        """The telemetry's metrics (`telemetry.scalars`: loss in bits, per benchmark, realized shares,
        packing; validation per benchmark and category), each weighted by its denominator; ppl = 2 ** nll_loss."""
        for key, value, weight in reduced_scalars(logging_outputs):
            metrics.log_scalar(key, value, weight, round=4)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(
            meters["nll_loss"].avg if "nll_loss" in meters else None))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
