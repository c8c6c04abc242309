"""`optiml demo`: the whole job on a fresh machine with no downloads and no data.

Why: one command shows the recipe end to end (built-in benchmark -> packed, document-masked training of a
tiny OPT with the paper's schedule -> evaluation on the three generalization levels -> a report), in a few
minutes on two CPU cores. Everything lands in one run directory.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from optiml_plugin.data.benchfiles import atomic_write_bytes
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import config_from_dict
from optiml_plugin.local.trainer import Trainer, read_log


@dataclass
class DemoSize:
    preset: str
    overrides: Dict[str, Any]   # OPTConfig fields over the preset
    dropout: float
    tokens_per_sample: int
    batch_size: int
    steps: int
    lr: float
    warmup: int
    eval_per_task: int
    shots: tuple
    max_new_tokens: int


# Tuned for learning within ~3 minutes on 2 busy CPU cores (docs/local_training.md has the measurements).
# No dropout: the run sees each training example about once, so there is nothing to regularize yet.
FULL = DemoSize("tiny", {}, 0.0, 256, 8, 1000, 3e-3, 30, 20, (0, 2), 12)
QUICK = DemoSize("micro", {}, 0.1, 128, 4, 30, 5e-3, 5, 2, (0,), 6)


def run_demo(out: Optional[Path] = None, steps: Optional[int] = None, quick: bool = False, seed: int = 1,
             progress: bool = True, threads: int = 1) -> Path:
    """Build, train, evaluate (the untrained model too, as the baseline), report; returns the run directory."""
    size = QUICK if quick else FULL
    out = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    timings: Dict[str, float] = {}

    t = time.perf_counter()
    bench = out / "bench"
    if not (bench / "manifest.json").is_file():
        from optiml_plugin.data.build import build_bench, load_build_config
        from optiml_plugin.data.builtin import builtin_config

        build_bench(load_build_config(builtin_config(seed)), bench, overwrite=True, progress=progress)
    timings["build_s"] = time.perf_counter() - t

    n_steps = steps or size.steps
    config = config_from_dict({
        "model": {"preset": size.preset, "dropout": size.dropout, "overrides": dict(size.overrides)},
        "data": {"bench": str(bench), "tokenizer": "builtin", "builtin_vocab_size": 1024,
                 "tokens_per_sample": size.tokens_per_sample, "batch_size": size.batch_size,
                 "max_valid_examples_per_task": 16},
        "optim": {"lr": size.lr, "warmup_updates": min(size.warmup, max(1, n_steps // 10)), "max_update": n_steps},
        "run": {"out_dir": str(out / "train"), "seed": seed, "log_every": max(1, n_steps // 30),
                "valid_every": max(1, n_steps // 3), "save_every": n_steps, "keep_last": 1, "progress": progress,
                "threads": threads}})
    t = time.perf_counter()
    if (out / "train").exists():  # the demo's own previous output in this run directory
        if not (out / "train" / "train_config.yaml").is_file():
            raise ConfigError(f"{out / 'train'} exists and is not a training run; the demo replaces only its own "
                              f"output: choose another --out")
        shutil.rmtree(out / "train")
    trainer = Trainer(config)
    untrained = trainer.save_model(out / "train" / "untrained")
    final = trainer.train()
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation = _evaluate(final, bench, out / "eval", size, size.shots, progress)
    baseline = _evaluate(untrained, bench, out / "eval_untrained", size, (0,), progress)
    timings["eval_s"] = time.perf_counter() - t

    log = read_log(trainer.log_path)
    summary = {"run_dir": str(out), "bench": str(bench), "model_dir": str(final),
               "attention": trainer.attention.backend,
               "parameters": trainer.n_params, "steps": n_steps, "config": config.to_dict(), "timings": timings,
               "train": [r for r in log if "split" not in r], "valid": [r for r in log if "split" in r],
               "evaluation": evaluation, "untrained": baseline}
    _plot(log, out / "loss_curve.png")
    atomic_write_bytes(out / "report.json", (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out / "report.md", _markdown(summary).encode())
    return out


def _evaluate(model_dir: Path, bench: Path, out: Path, size: DemoSize, shots: tuple,
              progress: bool) -> Dict[str, Any]:
    """The evaluator on the test splits of the three levels: per-level and per-task scores, and its files."""
    from optiml_plugin.eval.config import EvalConfig
    from optiml_plugin.eval.runner import evaluate

    results = evaluate(EvalConfig(model=str(model_dir), bench=str(bench), out_dir=str(out), split="test",
                                  shots=shots, max_per_task=size.eval_per_task,
                                  max_new_tokens=size.max_new_tokens, stop_strings=("\n",), progress=progress,
                                  device="cpu" if size is QUICK else None))
    agg = results["aggregate"]
    tasks = [{k: r[k] for k in ("shots", "level", "category", "task", "metric", "score")}
             for r in agg["benchmark_tasks"]]
    return {"out_dir": str(out), "levels": agg["levels"], "model_selection": agg["model_selection"],
            "tasks": tasks, "instances": results["counts"]["instances"], "table": str(out / "results.md")}


def _plot(log: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in log if "split" not in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train (target tokens)")
    for split in sorted({r["split"] for r in log if "split" in r}):
        pts = [r for r in log if r.get("split") == split]
        ax.plot([r["step"] for r in pts], [r["valid_loss"] for r in pts], marker="o", label=split)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / target token)")
    ax.set_title("optiml demo: tiny OPT on the built-in benchmark")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _score(value: Optional[float]) -> str:
    return "–" if value is None else f"{value:.2f}"


def _markdown(s: Dict[str, Any]) -> str:
    train, valid, ev, base = s["train"], s["valid"], s["evaluation"], s["untrained"]
    last = train[-1]
    lines = ["# optiml demo", "",
             f"Tiny OPT ({s['parameters']:,} parameters, attention backend `{s['attention']}`) trained "
             f"{s['steps']} steps on the built-in benchmark; timings (s): "
             + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in s["timings"].items()) + ".", "",
             f"- train loss: {train[0]['loss']:.3f} (step {train[0]['step']}) -> {last['loss']:.3f} "
             f"(step {last['step']}); {last['tokens_per_s']:.0f} tokens/s, packing efficiency "
             f"{last['packing_efficiency']:.2f}", "", "## Validation loss per generalization level", "",
             "| split | first | last |", "|---|---|---|"]
    for split in sorted({r["split"] for r in valid}):
        pts = [r for r in valid if r["split"] == split]
        lines.append(f"| {split} | {pts[0]['valid_loss']:.3f} | {pts[-1]['valid_loss']:.3f} |")
    before = {r["level"]: r["score"] for r in base["levels"] if r["shots"] == 0}
    lines += ["", f"## Evaluation (test split, {ev['instances']} instances)", "",
              "The untrained model (the same initialization, before step 1) is evaluated 0-shot on the same instances, "
              "so the gain from training is visible.", "",
              "| level | shots | untrained | trained |", "|---|---|---|---|"]
    for r in ev["levels"]:
        was = before.get(r["level"]) if r["shots"] == 0 else None
        lines.append(f"| {r['level']} | {r['shots']} | {_score(was)} | {_score(r['score'])} |")
    sel = ev["model_selection"]["overall"]
    lines += ["", f"Model-selection average: {sel:.2f}" if sel is not None else "", "",
              "### Per task, 0-shot (accuracy for candidate tasks, Rouge-L for generation tasks)", "",
              "| level | category | task | metric | untrained | trained |", "|---|---|---|---|---|---|"]
    was_task = {(r["level"], r["task"]): r["score"] for r in base["tasks"] if r["shots"] == 0}
    for r in ev["tasks"]:
        if r["shots"] == 0:
            lines.append(f"| {r['level']} | {r['category']} | {r['task']} | {r['metric']} | "
                         f"{_score(was_task.get((r['level'], r['task'])))} | {_score(r['score'])} |")
    lines += ["", f"Full evaluation tables: `{ev['table']}` (untrained: `{base['table']}`); loss curve: "
              f"`loss_curve.png`; model + tokenizer: `{s['model_dir']}`.", ""]
    return "\n".join(lines)
