"""The single-machine (or torchrun) training loop on a transformers decoder (OPT, Llama, Mistral, Qwen2, Gemma,
GPT-NeoX; local/model.py).

Why these choices:
- Loss: the core target-only loss as sums; with gradient accumulation and data parallelism the update's
  loss is (sum of target NLL over every micro-batch of every rank) / (its total target tokens), exactly,
  because micro-batches are fetched before the first backward and their token counts all-reduced.
- Schedule: AdamW (0.9, 0.95), linear warmup then linear decay to 0, clip 1.0 (the paper's recipe).
- Exact resume: a checkpoint holds model, optimizer, scheduler, the pipeline's state (stream cursor plus
  examples held in the packer) and all RNG states, taken between updates; on CPU a resumed run sees the
  same batches and produces the same loss curve as an uninterrupted one.
- Metrics: `telemetry.py`, as in metaseq: a log line holds the metrics of the counters summed over the
  updates since the previous line (a resume starts a new window: with `save_every` a multiple of
  `log_every`, the lines of a resumed run equal an uninterrupted run's).
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
from optiml_plugin.data.training_data import open_run
from optiml_plugin.errors import ConfigError, CorruptFileError, WriteError, first_line
from optiml_plugin.fsio import atomic_write_bytes, follow_umask, replace_dir
from optiml_plugin.local import checkpoint as ckpt
from optiml_plugin.local.attention_backends import DocumentAttention
from optiml_plugin.recipe import OptimConfig, TrainConfig
from optiml_plugin.local.data import load_tokenizer
from optiml_plugin.local.distributed import (Dist, clip_grad_norm, full_state_dict, init_distributed,
                                             load_full_state_dict, load_optimizer_state, optimizer_state,
                                             wrap_model)
from optiml_plugin.local.model import TargetLM, build_model, count_parameters, dropout_fields
from optiml_plugin.local.runlog import read_log, trim_log  # noqa: F401  (read_log: the log's reader)
from optiml_plugin.loss import example_groups, token_coefficients
from optiml_plugin.telemetry import Counters, add, flat, from_vector, nested, scalars, to_vector

BATCH_KEYS = ("input_ids", "target_ids", "loss_mask", "segment_ids", "position_ids", "benchmark_ids")
OPTIONAL_KEYS = ("demo_k",)   # MetaICL / mixed prompts: the telemetry counts each example's demonstrations


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
    """One local training run, in three explicit phases: `setup` (run by the constructor: output folder,
    data through `open_run`, model, optimizer, then resume or a fresh start), `train()` (to
    `optim.max_update`, validating and checkpointing on schedule) and `save_final()` (the
    transformers-format model with its tokenizer)."""

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        self.cfg = config
        self.out = Path(config.run.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.log_path = self.out / "log.jsonl"
        self.step = 0
        self._writer = None
        self.setup(resume)

    # ---- setup ----

    def setup(self, resume: bool) -> None:
        """Everything with side effects, in order; each phase reads what the previous ones built."""
        self._setup_runtime(resume)
        self._setup_data(resume)
        self._setup_model()
        self._setup_optimizer()
        if resume:
            self.resume()
        elif self.dist.is_main and self.log_path.exists():
            self.log_path.unlink()

    def _setup_runtime(self, resume: bool) -> None:
        """Device, process group, precision, seed; the output folder (refused when it holds checkpoints
        and this is not a resume)."""
        run = self.cfg.run
        self.device = pick_device(run.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist: Dist = init_distributed(run.distributed, self.device)
        self.dtype = autocast_dtype(run.precision, self.device)
        torch.manual_seed(run.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume and ckpt.latest_checkpoint(self.ckpt_root) is not None:
            raise ConfigError(f"{self.ckpt_root} already holds checkpoints: pass --resume to continue, "
                              f"or choose another run.out_dir")

    def _setup_data(self, resume: bool) -> None:
        """The tokenizer (saved beside the run), the config as run, and `open_run`'s batches,
        validation subsets and telemetry."""
        config, run = self.cfg, self.cfg.run
        self.bench = Bench(config.data.bench)
        self.tokenizer = load_tokenizer(config.data, self.bench, self.out / "tokenizer" if resume else None,
                                        checkpoint=config.model.checkpoint)
        if self.dist.is_main:  # atomic: on resume the other ranks read tokenizer.json while rank 0 rewrites it
            self.tokenizer.save(self.out / "tokenizer")
            atomic_write_bytes(self.out / "train_config.yaml",
                               yaml.safe_dump(config.to_dict(), sort_keys=False).encode("utf-8"))
        self.data = open_run(self.bench, self.tokenizer, config.data, config.data.batch_size, run.seed,
                             rank=self.dist.rank, world_size=self.dist.world_size)
        self.batches = self.data.batches
        self.telemetry = self.data.telemetry
        if self.dist.is_main:  # the mixture trained on (tasks, shares, tasks left out by task scaling)
            atomic_write_bytes(self.out / "mixture.json",
                               (json.dumps(self.data.mixture.to_dict(), indent=1) + "\n").encode("utf-8"))
        if self.dist.is_main:  # what the per-task cap used and left out, per task
            atomic_write_bytes(self.out / "validation_sets.json", (json.dumps(
                [vset.counts() for subset in self.data.validation.values() for vset in subset.sets],
                indent=1) + "\n").encode("utf-8"))

    def _setup_model(self) -> None:
        """The model (a preset of any family, a config or a checkpoint), its attention backend, CPU threads,
        the wrapped model."""
        config, run = self.cfg, self.cfg.run
        m = config.model
        tok = self.tokenizer
        model = build_model(preset=m.preset if m.checkpoint is None and m.config is None else None,
                            checkpoint=m.checkpoint, config=m.config, family=m.family,
                            vocab_size=tok.vocab_size, max_positions=max(2048, config.data.tokens_per_sample),
                            dropout=m.dropout, attention_dropout=m.attention_dropout, overrides=m.overrides,
                            seed=run.seed, special_ids={"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                                        "pad_token_id": tok.pad_id})
        if m.dropout > 0 and not dropout_fields(model.config.model_type, m.dropout):
            self._say(f"{model.config.model_type} has no hidden dropout: model.dropout {m.dropout} does not apply "
                      f"(model.attention_dropout does)")
        self.attention = DocumentAttention(run.attention, self.device)
        self.attention.configure(model, config.data.tokens_per_sample + 1)
        self.n_params = count_parameters(model)
        threads = cpu_threads(run.threads, self.device, self.n_params)
        if threads:
            torch.set_num_threads(threads)
        self.lm = model
        target_lm = TargetLM(model).to(self.device)
        # decided before wrapping: FSDP (use_orig_params) keeps the parameter objects but shows 1-D shards
        self._unshaped = {id(p) for p in target_lm.parameters() if p.ndim < 2}
        self.model = wrap_model(target_lm, self.dist, self.device)

    def _setup_optimizer(self) -> None:
        """AdamW (no decay on biases and norms), the warmup-then-linear schedule, fp16's loss scaler."""
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if id(p) in self._unshaped else decay).append(p)
        o = self.cfg.optim
        self.optimizer = adamw([{"params": decay, "weight_decay": o.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}], o)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o.warmup_updates, o.max_update))
        self.scaler = _grad_scaler(self.device) if self.dtype == torch.float16 else None

    # ---- one update ----

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext()

    def _forward(self, batch: Dict[str, torch.Tensor], scale: float) -> Tuple[torch.Tensor, Counters]:
        """(`scale` x the loss numerator, to backward; the micro-batch's telemetry counters)."""
        batch = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS + OPTIONAL_KEYS if k in batch}
        groups = example_groups(batch["segment_ids"], batch["loss_mask"])
        with self._autocast():
            loss, nll = self.model(batch["loss_mask"], batch["target_ids"],
                                   token_coefficients(groups, self.cfg.data.loss_normalization) * scale,
                                   **self.attention.model_inputs(batch))
        return loss, self.telemetry.train_counters(nll, batch["loss_mask"], batch["segment_ids"],
                                                   batch["benchmark_ids"], batch.get("demo_k"))

    def train_step(self, micro: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Forward/backward every micro-batch with the update's global normalizer, clip, step; returns the
        update's telemetry counters summed over micro-batches and ranks, their metrics, lr and gradient norm."""
        self.model.train()
        o = self.cfg.optim
        if self.cfg.data.loss_normalization == "token":
            local = sum(int(b["loss_mask"].sum()) for b in micro)
        else:  # examples with at least one target token
            local = sum(int(example_groups(b["segment_ids"], b["loss_mask"]).unique().numel()) for b in micro)
        denom = self.dist.all_reduce_sum(torch.tensor([float(local)], device=self.device)).item()
        denom = max(denom, 1.0)
        counters: Counters = {}
        for i, b in enumerate(micro):
            sync = i == len(micro) - 1 or self.dist.mode == "none"
            ctx = self.model.no_sync() if (not sync and hasattr(self.model, "no_sync")) else nullcontext()
            with ctx:
                # DDP/FSDP average gradients over ranks: world_size / denom makes it the global mean
                loss, batch_counters = self._forward(b, self.dist.world_size / denom)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            counters = add(counters, batch_counters)
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
        keys, vector = to_vector(counters)
        summed = from_vector(keys, self.dist.all_reduce_sum(vector).cpu())
        return {"counters": summed, "metrics": nested(scalars(summed)), "lr": lr, "grad_norm": float(grad_norm)}

    # ---- validation ----

    @torch.no_grad()
    def validate(self) -> Dict[str, Dict[str, Any]]:
        """Per validation subset, the telemetry's validation metrics (`telemetry.scalars`, nested): loss
        in bits per target token, per benchmark and per category of its tasks (each rank scores its own
        fixed batches, counters all-reduced)."""
        self.model.eval()
        out: Dict[str, Dict[str, Any]] = {}
        for name, subset in self.data.validation.items():
            counters: Counters = {}
            for batch in subset.batches:  # the same count on every rank (FSDP gathers collectively)
                nll, task_ids = self._token_nll(batch)
                counters = add(counters, self.telemetry.valid_counters(nll, task_ids, subset.groups))
            keys, vector = to_vector(counters)
            summed = from_vector(keys, self.dist.all_reduce_sum(vector.to(self.device)).cpu())
            out[name] = {**nested(scalars(summed)), "target_tokens": int(summed["target_tokens"])}
        return out

    def _token_nll(self, batch: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """NLL of every target token of `batch` (fp32) and the task id it belongs to, both on the CPU."""
        moved = {k: batch[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        with self._autocast():
            _, nll = self.model(moved["loss_mask"], moved["target_ids"], **self.attention.model_inputs(moved))
        return nll.cpu(), batch["task_ids"][batch["loss_mask"].bool()].long()

    def _validate_and_log(self) -> None:
        """One log line per subset: the metrics under `valid_` names, and the perplexity 2 ** loss."""
        for split, metrics in self.validate().items():
            record = {f"valid_{k}": v for k, v in metrics.items()}
            self._log({"step": self.step, "split": split, **record,
                       "valid_ppl": 2.0 ** min(record.get("valid_loss", 0.0), 64.0)})

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
        t0, window = time.perf_counter(), {}
        while self.step < stop:
            stats = self.train_step(self._micro_batches(it))
            window = add(window, stats["counters"])
            last = self.step == o.max_update
            if self.step % run.log_every == 0 or last:
                record = self._train_record(window, stats, time.perf_counter() - t0)
                self._log(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}",
                                    pack=f"{record['packing_efficiency']:.2f}",
                                    cut=f"{record['cut_left_examples']}L/{record['cut_right_examples']}R")
                t0, window = time.perf_counter(), {}
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

    def _train_record(self, window: Counters, stats: Dict[str, Any], seconds: float) -> Dict[str, Any]:
        """The log line of the updates since the last one: the telemetry's metrics of their summed
        counters (metaseq logs the same over its log interval), plus this trainer's own: lr, gradient
        norm, throughput and the packer's cumulative cuts."""
        dt = max(seconds, 1e-9)
        return {"step": self.step, **nested(scalars(window)), "lr": stats["lr"],
                "grad_norm": stats["grad_norm"], "target_tokens": int(window["target_tokens"]),
                "target_tokens_per_s": float(window["target_tokens"]) / dt,
                "tokens_per_s": float(window["tokens"]) / dt, **self._cut_counts()}

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        writer = self._tensorboard()
        if writer is not None:
            prefix = f"valid/{record['split']}/" if "split" in record else "train/"
            values = {k: v for k, v in record.items() if k not in ("step", "split")}
            for key, value in flat(values).items():
                if isinstance(value, (int, float)):
                    writer.add_scalar(prefix + key, value, record["step"])
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

    def resume(self) -> bool:
        """Load the newest loadable checkpoint, falling back past damaged ones and saying so; with none,
        start from scratch and say so."""
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
