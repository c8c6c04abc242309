"""The single-machine (or torchrun) training loop on transformers' OPT.

Why these choices:
- Loss: the core target-only loss as sums; with gradient accumulation and data parallelism the update's
  loss is (sum of target NLL over every micro-batch of every rank) / (its total target tokens), exactly,
  because micro-batches are fetched before the first backward and their token counts all-reduced.
- Schedule: AdamW (0.9, 0.95), linear warmup then linear decay to 0, clip 1.0 (the paper's recipe).
- Exact resume: a checkpoint holds model, optimizer, scheduler, the pipeline's state (stream cursor plus
  examples held in the packer) and all RNG states, taken between updates; on CPU a resumed run sees the
  same batches and produces the same loss curve as an uninterrupted one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
import yaml

from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.training_data import BITS_PER_NAT, benchmark_sums, training_data
from optiml_plugin.errors import ConfigError, CorruptFileError, WriteError, first_line
from optiml_plugin.fsio import atomic_write_bytes, follow_umask, replace_dir
from optiml_plugin.local import checkpoint as ckpt
from optiml_plugin.local.attention_backends import DocumentAttention
from optiml_plugin.recipe import OptimConfig, TrainConfig
from optiml_plugin.local.data import load_tokenizer
from optiml_plugin.local.distributed import (Dist, clip_grad_norm, full_state_dict, init_distributed,
                                             load_full_state_dict, load_optimizer_state, optimizer_state,
                                             wrap_model)
from optiml_plugin.local.model import TargetLM, build_model, count_parameters
from optiml_plugin.local.runlog import read_log, trim_log  # noqa: F401  (read_log: the log's reader)
from optiml_plugin.loss import LossSums, example_groups, loss_sums, token_coefficients

BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "position_ids", "benchmark_ids")


def lr_lambda(warmup: int, total: int):
    """Factor on the peak lr after `step` updates: (s+1)/warmup while warming up, then linear to 0 at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))
    return f


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("run.device: cuda requested but torch sees no GPU")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None = fp32. 'auto' is bf16 on GPUs that support it and fp32 elsewhere (CPU autocast gains only on
    CPUs with bf16 matrix units, and fp32 keeps CPU runs bit-exact); bf16/fp16 are honoured on any device."""
    if precision == "auto":
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if ok else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def adamw(param_groups: List[Dict[str, Any]], o: OptimConfig) -> torch.optim.AdamW:
    """AdamW with the config's lr/betas/eps; the fused kernel where this torch has it for the parameters'
    device (CUDA since 2.0, CPU since 2.4): one pass over each tensor instead of a dozen, and no temporaries
    the size of the 50k-row embedding (measured 6x faster steps on CPU for opt-125m's embedding)."""
    kwargs = dict(lr=o.lr, betas=tuple(o.adam_betas), eps=o.adam_eps)
    try:
        return torch.optim.AdamW(param_groups, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device/dtype/torch
        return torch.optim.AdamW(param_groups, **kwargs)


AUTO_ONE_THREAD_BELOW = 20_000_000  # parameters


def cpu_threads(setting: Union[int, str], device: torch.device, n_params: int) -> int:
    """torch CPU threads for `run.threads` (0: leave torch's default). Why `auto` is 1 for small models on
    CPU: their matrices are too small to split, so extra threads mostly wait, and on a shared machine they
    spin (configs/train_tiny.yaml, 40 steps on 2 shared cores at load ~12: ~200 tokens/s at torch's default,
    ~1700 with 1 thread)."""
    if setting != "auto":
        return int(setting)
    return 1 if device.type == "cpu" and n_params < AUTO_ONE_THREAD_BELOW else 0


class Trainer:
    """Builds everything from a `TrainConfig`; `train()` runs to `optim.max_update` and saves the final model."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.cfg = config
        run = config.run
        self.out = Path(run.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.device = pick_device(run.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: Dist = init_distributed(run.distributed, self.device)
        self.dtype = autocast_dtype(run.precision, self.device)
        torch.manual_seed(run.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt.latest_checkpoint(self.ckpt_root) is not None:
            raise ConfigError(f"{self.ckpt_root} already holds checkpoints: pass --resume to continue, "
                              f"or choose another run.out_dir")

        self.bench = Bench(config.data.bench)
        self.tokenizer = load_tokenizer(config.data, self.bench, self.out / "tokenizer" if resume else None)
        if self.dist.is_main:  # atomic: on resume the other ranks read tokenizer.json while rank 0 rewrites it
            self.tokenizer.save(self.out / "tokenizer")
            atomic_write_bytes(self.out / "train_config.yaml",
                               yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))
        self.data = training_data(self.bench, self.tokenizer, config.data, config.data.batch_size, run.seed,
                                  rank=self.dist.rank, world_size=self.dist.world_size)
        self.batches = self.data.batches
        if self.dist.is_main:  # what the per-task cap used and left out, per task
            atomic_write_bytes(self.out / "validation_sets.json", (json.dumps(
                [vset.counts() for subset in self.data.validation.values() for vset in subset.sets],
                indent=1) + "\n").encode("utf-8"))

        model = build_model(preset=config.model.preset if config.model.checkpoint is None else None,
                            checkpoint=config.model.checkpoint, vocab_size=self.tokenizer.vocab_size,
                            max_positions=max(2048, config.data.tokens_per_sample),
                            dropout=config.model.dropout, overrides=config.model.overrides, seed=run.seed)
        self.attention = DocumentAttention(run.attention, self.device)
        self.attention.configure(model)
        self.n_params = count_parameters(model)
        threads = cpu_threads(run.threads, self.device, self.n_params)
        if threads:
            torch.set_num_threads(threads)
        self.lm = model
        target_lm = TargetLM(model).to(self.device)
        # decided before wrapping: FSDP (use_orig_params) keeps the parameter objects but shows 1-D shards
        unshaped = {id(p) for p in target_lm.parameters() if p.ndim < 2}
        self.model = wrap_model(target_lm, self.dist, self.device)
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if id(p) in unshaped else decay).append(p)
        o = config.optim
        self.optimizer = adamw([{"params": decay, "weight_decay": o.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}], o)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o.warmup_updates, o.max_update))
        self.scaler = _grad_scaler(self.device) if self.dtype == torch.float16 else None
        self.step = 0
        self.log_path = self.out / "log.jsonl"
        self._writer = None
        if resume:
            self.resume()
        elif self.dist.is_main and self.log_path.exists():
            self.log_path.unlink()

    # ---- one update ----

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def _forward(self, batch: Dict[str, torch.Tensor], scale: float
                 ) -> Tuple[torch.Tensor, LossSums, torch.Tensor]:
        """(`scale` x the loss numerator, to backward; the micro-batch's loss sums, detached, to log;
        its per-benchmark [NLL sum, target count], to log)."""
        batch = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        normalize = self.cfg.data.loss_normalization
        groups = example_groups(batch["segment_ids"], batch["loss_mask"])
        with self._autocast():
            loss, nll = self.model(batch["loss_mask"], batch["target_ids"],
                                   token_coefficients(groups, normalize) * scale,
                                   **self.attention.model_inputs(batch))
        by_bench = benchmark_sums(nll, batch["benchmark_ids"][batch["loss_mask"].bool()],
                                  len(self.data.benchmarks))
        return loss, loss_sums(nll, groups, normalize), torch.stack(by_bench)

    def train_step(self, micro: List[Dict[str, Any]]) -> Dict[str, float]:
        """Forward/backward every micro-batch with the update's global normalizer, clip, step."""
        self.model.train()
        o = self.cfg.optim
        if self.cfg.data.loss_normalization == "token":
            local = sum(int(b["loss_mask"].sum()) for b in micro)
        else:  # examples with at least one target token
            local = sum(int(example_groups(b["segment_ids"], b["loss_mask"]).unique().numel()) for b in micro)
        denom = self.dist.all_reduce_sum(torch.tensor([float(local)], device=self.device)).item()
        denom = max(denom, 1.0)
        total, by_bench = None, None
        for i, b in enumerate(micro):
            sync = i == len(micro) - 1 or self.dist.mode == "none"
            ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else nullcontext()
            with ctx:
                # DDP/FSDP average gradients over ranks: world_size / denom makes it the global mean
                loss, sums, bench = self._forward(b, self.dist.world_size / denom)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total = sums if total is None else total + sums
            by_bench = bench if by_bench is None else by_bench + bench
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        grad_norm = clip_grad_norm(self.model, o.clip_norm, self.dist)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        num = total.nll_sum if self.cfg.data.loss_normalization == "token" else total.example_nll_sum
        red = self.dist.all_reduce_sum(torch.cat([torch.stack([num.detach().double(),
                                                               total.target_tokens.double()]),
                                                  by_bench.reshape(-1)]))
        nll, count = red[2:].reshape(2, -1)
        return {"loss": float(red[0]) / denom * BITS_PER_NAT, "target_tokens": float(red[1]), "lr": lr,
                "grad_norm": float(grad_norm),
                "loss_by_benchmark": {name: float(nll[b] / count[b]) * BITS_PER_NAT
                                      for b, name in enumerate(self.data.benchmarks) if count[b] > 0}}

    # ---- validation ----

    @torch.no_grad()
    def validate(self) -> Dict[str, float]:
        """Token-normalized target loss (bits) of every validation subset (same tokens each time)."""
        return {split: r["valid_loss"] for split, r in self.validate_detailed().items()}

    @torch.no_grad()
    def validate_detailed(self) -> Dict[str, Dict[str, Any]]:
        """Per subset (one split each): its loss in bits per target token, and the loss per benchmark and per
        category of its tasks (each rank scores its own fixed batches, sums all-reduced).

        Why per group: one split mixes benchmarks and categories whose losses differ a lot; the split mean
        hides which of them learning helps. Grouping costs one index_add per batch (per-token NLL is
        summed by task id, then tasks by their benchmark/category)."""
        self.model.eval()
        out: Dict[str, Dict[str, Any]] = {}
        for name, subset in self.data.validation.items():
            tasks = subset.tasks
            sums = torch.zeros(len(tasks), dtype=torch.float64)
            counts = torch.zeros(len(tasks), dtype=torch.float64)
            for batch in subset.batches:  # the same count on every rank (FSDP gathers collectively)
                nll, task_ids = self._token_nll(batch)
                sums.index_add_(0, task_ids, nll.double())
                counts.index_add_(0, task_ids, torch.ones_like(nll, dtype=torch.float64))
            both = self.dist.all_reduce_sum(torch.stack([sums, counts]).to(self.device)).cpu()
            sums, counts = both[0] * BITS_PER_NAT, both[1]
            record: Dict[str, Any] = {"valid_loss": float(sums.sum() / counts.sum().clamp(min=1)),
                                      "valid_target_tokens": int(counts.sum())}
            for key in ("benchmark", "category"):
                names = sorted({getattr(t, key) for t in tasks})
                of_task = torch.tensor([names.index(getattr(t, key)) for t in tasks])
                g_sum = torch.zeros(len(names), dtype=torch.float64).index_add_(0, of_task, sums)
                g_cnt = torch.zeros(len(names), dtype=torch.float64).index_add_(0, of_task, counts)
                record[f"valid_loss_by_{key}"] = {n: float(g_sum[i] / g_cnt[i]) for i, n in enumerate(names)
                                                  if g_cnt[i] > 0}
            out[name] = record
        return out

    def _token_nll(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """NLL of every target token of `batch` (fp32) and the task id it belongs to, both on the CPU."""
        moved = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        with self._autocast():
            _, nll = self.model(moved["loss_mask"], moved["target_ids"], **self.attention.model_inputs(moved))
        return nll.cpu(), batch["task_ids"][batch["loss_mask"].bool()].long()

    def _validate_and_log(self) -> None:
        for split, record in self.validate_detailed().items():
            self._log({"step": self.step, "split": split, **record,
                       "valid_ppl": 2.0 ** min(record["valid_loss"], 64.0)})

    # ---- loop ----

    def _micro_batches(self, it: Iterator[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return [next(it) for _ in range(self.cfg.optim.update_freq)]

    def train(self, until: Optional[int] = None) -> Optional[Path]:
        """Run to max_update (from the resumed step), validating/saving on schedule; returns the final dir.

        `until` stops after that step with a checkpoint and no final model (time-limited jobs, tests)."""
        run, o = self.cfg.run, self.cfg.optim
        stop = o.max_update if until is None else min(until, o.max_update)
        bar = None
        if run.progress and self.dist.is_main:
            from tqdm import tqdm

            bar = tqdm(total=o.max_update, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        if self.step == 0 and run.valid_every:  # the starting point of every validation curve
            self._validate_and_log()
        it = iter(self.batches)
        t0, window_tokens, window_targets, window_slots = time.perf_counter(), 0, 0, 0
        while self.step < stop:
            micro = self._micro_batches(it)
            stats = self.train_step(micro)
            window_tokens += sum(int((b["segment_ids"] > 0).sum()) for b in micro)
            window_slots += sum(int(b["segment_ids"].numel()) for b in micro)
            window_targets += stats["target_tokens"]
            last = self.step == o.max_update
            if self.step % run.log_every == 0 or last:
                dt = max(time.perf_counter() - t0, 1e-9)
                record = {"step": self.step, "loss": stats["loss"], "lr": stats["lr"],
                          "grad_norm": stats["grad_norm"], "loss_by_benchmark": stats["loss_by_benchmark"],
                          "realized_share": self._realized_shares(),
                          "target_tokens_per_s": window_targets / dt,
                          "tokens_per_s": window_tokens * self.dist.world_size / dt,
                          "packing_efficiency": window_tokens / max(window_slots, 1),
                          **self._cut_counts()}
                self._log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                    pack=f"{record['packing_efficiency']:.2f}",
                                    cut=f"{record['cut_left_examples']}L/{record['cut_right_examples']}R")
                t0, window_tokens, window_targets, window_slots = time.perf_counter(), 0, 0, 0
            if (run.valid_every and self.step % run.valid_every == 0) or last:
                self._validate_and_log()
            if (run.save_every and self.step % run.save_every == 0) or last or self.step == stop:
                self.save_checkpoint()
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        cut = self._cut_counts()
        self._say(f"step {self.step}: the packer cut {cut['cut_left_examples']} examples on the left (source, "
                  f"{cut['cut_left_tokens']} tokens) and {cut['cut_right_examples']} on the right (target, "
                  f"{cut['cut_right_tokens']} tokens) to fit data.tokens_per_sample"
                  + (f"; {cut['long_records']} rows longer than {self.batches.max_chars} characters were "
                     f"clipped before tokenizing (data.max_record_chars)" if cut["long_records"] else ""))
        return self.save_final() if self.step >= o.max_update else None

    # ---- logs ----

    def _cut_counts(self) -> Dict[str, int]:
        """Examples (and tokens) the packer truncated so far, over all ranks: left = source cut, right =
        target cut; and rows clipped to `data.max_record_chars` before tokenizing (`long_records`).
        Cumulative and checkpointed, so a resumed run continues the counts."""
        st = self.batches.stats
        values = [st.cut_left_examples, st.cut_left_tokens, st.cut_right_examples, st.cut_right_tokens,
                  self.batches.long_records]
        total = self.dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64, device=self.device))
        names = ("cut_left_examples", "cut_left_tokens", "cut_right_examples", "cut_right_tokens",
                 "long_records")
        return {k: int(v) for k, v in zip(names, total.tolist())}

    def _realized_shares(self) -> Dict[str, float]:
        """Share of the examples read so far, per benchmark, over all ranks (requested: the mixture's)."""
        counts = self.dist.all_reduce_sum(torch.as_tensor(self.data.shares.counts, dtype=torch.float64,
                                                          device=self.device)).cpu().numpy()
        return self.data.shares.shares(counts)["examples"]

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            prefix = f"valid/{record['split']}/" if "split" in record else "train/"
            for k, v in record.items():
                if k not in ("step", "split") and isinstance(v, (int, float)):
                    writer.add_scalar(prefix + k, v, record["step"])
                elif isinstance(v, dict):  # valid_loss_by_benchmark / _by_category
                    for name, value in v.items():
                        writer.add_scalar(f"{prefix}{k}/{name}", value, record["step"])
            writer.flush()

    def _tensorboard(self) -> Any:
        if self._writer is None and self.cfg.run.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.cfg.run.tensorboard = False
                return None
            self._writer = SummaryWriter(str(self.out / "tensorboard"))
        return self._writer

    # ---- checkpoints ----

    def save_checkpoint(self) -> Optional[Path]:
        """All ranks write into one temp dir; rank 0 renames it into place once every rank is done."""
        final = ckpt.step_dir(self.ckpt_root, self.step)
        tmp = self.ckpt_root / f".tmp_step_{self.step:08d}"
        if self.dist.is_main:
            tmp = ckpt.temp_dir(self.ckpt_root, self.step)
        self.dist.barrier()
        model_state = full_state_dict(self.model, self.dist)
        optim_state = optimizer_state(self.model, self.optimizer, self.dist)
        rank_state = {"pipeline": self.batches.state_dict(), "rng": ckpt.rng_state()}
        ckpt.save_rank_files(tmp, self.dist.rank, {f"rank{self.dist.rank}.pt": rank_state})
        if self.dist.is_main:
            ckpt.save_rank_files(tmp, 0, {
                "model.pt": model_state, "optimizer.pt": optim_state,
                ckpt.TRAINER_STATE: {"step": self.step, "scheduler": self.scheduler.state_dict(),
                                     "scaler": self.scaler.state_dict() if self.scaler else None,
                                     "world_size": self.dist.world_size, "config": self.cfg.to_dict()}})
        self.dist.barrier()
        if self.dist.is_main:
            ckpt.write_sizes(tmp)
            ckpt.commit(tmp, final, self.cfg.run.keep_last)
        self.dist.barrier()
        return final

    def _say(self, message: str) -> None:
        if self.dist.is_main:
            print(f"optiml train: {message}", flush=True)

    def resume(self, directory: Optional[Path] = None) -> bool:
        """Load the newest loadable (or the given) checkpoint, falling back past damaged ones and saying
        so; with none, start from scratch and say so."""
        if directory is not None:
            loaded: Optional[Dict[str, Any]] = dict(ckpt.load_checkpoint(directory, self.dist.rank),
                                                    directory=directory)
        else:
            loaded = ckpt.load_newest(self.ckpt_root, self.dist.rank, self._say)
        self._agree_on_checkpoint(-1 if loaded is None else int(loaded["trainer"]["step"]))
        if loaded is None:
            self._say(f"no checkpoint under {self.ckpt_root}; starting from step 0")
            if self.dist.is_main and self.log_path.exists():
                self.log_path.unlink()
            return False
        directory, state = loaded["directory"], loaded["trainer"]
        if state["world_size"] != self.dist.world_size:
            raise ConfigError(f"{directory}: saved with world size {state['world_size']}, now "
                              f"{self.dist.world_size}: the stream partitions differ, resume needs the same")
        load_full_state_dict(self.model, loaded["model"], self.dist)
        load_optimizer_state(self.model, self.optimizer, loaded["optimizer"], self.dist)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.batches.load_state_dict(loaded["rank"]["pipeline"])
        ckpt.set_rng_state(loaded["rank"]["rng"])
        self.step = int(state["step"])
        if self.dist.is_main and self.log_path.exists():  # drop records written after this checkpoint
            dropped, partial = trim_log(self.log_path, self.step)
            if partial:
                self._say(f"{self.log_path}: dropped a half-written last line (the run was killed mid-write)")
        self._say(f"resumed from step {self.step} ({directory})")
        return True

    def _agree_on_checkpoint(self, step: int) -> None:
        """Ranks fall back independently (each reads its own rank file): refuse, rather than hang in a
        collective later, when they chose different checkpoints."""
        if self.dist.world_size == 1:
            return
        steps = torch.zeros(self.dist.world_size, dtype=torch.float64, device=self.device)
        steps[self.dist.rank] = step
        found = [int(s) for s in self.dist.all_reduce_sum(steps).tolist()]
        if len(set(found)) > 1:
            raise CorruptFileError(f"{self.ckpt_root}: the ranks found different newest complete checkpoints "
                                   f"(steps by rank: {found}); remove the damaged checkpoint named above")

    def save_final(self) -> Path:
        return self.save_model(self.out / "final")

    def save_model(self, final: Path) -> Path:
        """transformers format + tokenizer, so `from_pretrained` and the evaluator load the directory
        (the demo also saves the untrained model this way, as the evaluation's baseline)."""
        state = full_state_dict(self.model, self.dist)
        if self.dist.is_main:  # written aside and renamed: a failed save never looks like a model
            state = {k[len("lm."):]: v for k, v in state.items()}
            tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                self.lm.save_pretrained(str(tmp), state_dict=state)
                self.tokenizer.save(tmp)
                follow_umask(tmp)  # safetensors writes 0600; a model is shared like the bench it came from
                replace_dir(tmp, final)
            except Exception as e:  # OSError, or safetensors'/torch's own error types for a full disk
                shutil.rmtree(tmp, ignore_errors=True)
                raise WriteError(f"{final}: cannot write the model ({first_line(e)}); free disk space and "
                                 f"rerun with --resume (the last checkpoint is intact)") from None
        self.dist.barrier()
        return final


def _grad_scaler(device: torch.device) -> Any:
    """fp16's loss scaler for `device` (torch >= 2.3 has one per device type; older ones only for CUDA)."""
    amp = getattr(torch, "amp", None)
    if amp is not None and hasattr(amp, "GradScaler"):
        return amp.GradScaler(device.type)
    if device.type != "cuda":
        raise ConfigError(f"run.precision: fp16 on {device.type} needs torch >= 2.3 (torch {torch.__version__})")
    return torch.cuda.amp.GradScaler()
