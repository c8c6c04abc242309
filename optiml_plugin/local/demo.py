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

from optiml_plugin.benchfiles import atomic_write_bytes
from optiml_plugin.bench.builtin import HELDOUT_CATEGORY, HELDOUT_TASKS
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import config_from_dict
from optiml_plugin.local.trainer import Trainer, read_log

LOSS_PNG = "loss_curve.png"
LEVELS_PNG = "levels.png"


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
FULL = DemoSize("tiny", {}, 0.0, 256, 8, 1000, 3e-3, 30, 40, (0, 2), 16)
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
        from optiml_plugin.bench.build import build_bench, load_build_config
        from optiml_plugin.bench.builtin import builtin_config

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
                "valid_every": max(1, n_steps // 5), "save_every": n_steps, "keep_last": 1, "progress": progress,
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
    intervals = _intervals(Path(evaluation["out_dir"]), Path(baseline["out_dir"]), seed)
    summary = {"run_dir": str(out), "bench": str(bench), "model_dir": str(final),
               "attention": trainer.attention.backend, "preset": size.preset,
               "parameters": trainer.n_params, "steps": n_steps, "config": config.to_dict(), "timings": timings,
               "train": [r for r in log if "split" not in r], "valid": [r for r in log if "split" in r],
               "evaluation": evaluation, "untrained": baseline, "intervals": intervals}
    _plot(log, out / LOSS_PNG)
    _level_chart(intervals, out / LEVELS_PNG, f"OPT `{size.preset}` ({trainer.n_params / 1e6:.2f}M parameters, "
                 f"{n_steps} steps)")
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


def _intervals(trained_dir: Path, untrained_dir: Path, seed: int) -> List[Dict[str, Any]]:
    """Per level and shot count: the trained model's score, chance and the untrained model's, with 95%
    bootstrap intervals and paired gains (eval/intervals.py)."""
    from optiml_plugin.eval.intervals import level_intervals
    from optiml_plugin.eval.report import read_predictions

    return level_intervals(read_predictions(trained_dir), baseline=read_predictions(untrained_dir), seed=seed)


def _splits(log: List[Dict[str, Any]]) -> List[str]:
    """Validation splits in the paper's level order."""
    from optiml_plugin.eval.report import _levels

    return ["valid_" + lv for lv in _levels([{"level": r["split"][len("valid_"):]} for r in log if "split" in r])]


def _plot(log: List[Dict[str, Any]], path: Path) -> None:
    """Train loss and every validation split's loss in one figure."""
    from optiml_plugin.eval.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [r for r in log if "split" not in r]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", color="0.5")
    for split in _splits(log):
        pts = [r for r in log if r.get("split") == split]
        ax.plot([r["step"] for r in pts], [r["valid_loss"] for r in pts], marker="o",
                label=split.replace("valid_", "valid: "))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / target token)")
    ax.set_ylim(bottom=0)
    ax.set_title("optiml demo: training and validation loss", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _level_chart(rows: List[Dict[str, Any]], path: Path, model: str) -> None:
    from optiml_plugin.eval.report import _levels, interval_chart

    levels = _levels(rows)
    shots = sorted({r["shots"] for r in rows})
    at = {(r["level"], r["shots"]): r for r in rows}
    low = [at[(lv, shots[0])] for lv in levels]
    series = [("untrained, 0-shot", [r.get("baseline") for r in low], [r.get("baseline_ci") for r in low])]
    for k in shots:
        got = [at.get((lv, k)) for lv in levels]
        series.append((f"trained, {k}-shot", [r["score"] if r else None for r in got],
                       [r["ci"] if r else None for r in got]))
    interval_chart(path, levels, series, chance=[r["chance"] for r in low],
              title=f"{model.replace('`', '')}: test split, 95% bootstrap intervals")


def _score(value: Optional[float], ci: Optional[List[float]] = None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def summary_table(rows: List[Dict[str, Any]]) -> List[str]:
    """The per-level table of the report, also printed at the end of the demo."""
    from optiml_plugin.eval.report import _levels

    shots = sorted({r["shots"] for r in rows})
    at = {(r["level"], r["shots"]): r for r in rows}
    lines = ["| level | n | chance | untrained 0-shot | " + " | ".join(f"trained {k}-shot" for k in shots)
             + " |", "|---" * (4 + len(shots)) + "|"]
    for lv in _levels(rows):
        low = at[(lv, shots[0])]
        untrained = _score(low.get("baseline"), low.get("baseline_ci"))
        lines.append(f"| {lv} | {low['n']} | {low['chance']:.1f} | {untrained} | "
                     + " | ".join(_score(at[(lv, k)]["score"], at[(lv, k)]["ci"]) if (lv, k) in at else "–"
                                  for k in shots) + " |")
    return lines


def verdicts(rows: List[Dict[str, Any]]) -> List[str]:
    from optiml_plugin.eval.intervals import verdict
    from optiml_plugin.eval.report import _levels

    order = {lv: i for i, lv in enumerate(_levels(rows))}
    return [f"- **{r['level']}, {r['shots']}-shot**: {verdict(r)}"
            for r in sorted(rows, key=lambda r: (order[r["level"]], r["shots"]))]


def _loss_notes(valid: List[Dict[str, Any]]) -> List[str]:
    """First, lowest and last validation loss per split, and whether it rose after its lowest point."""
    lines = ["| split | first | lowest (step) | last |", "|---|---|---|---|"]
    notes = []
    for split in _splits(valid):
        pts = [r for r in valid if r["split"] == split]
        best = min(pts, key=lambda r: r["valid_loss"])
        lines.append(f"| {split} | {pts[0]['valid_loss']:.3f} | {best['valid_loss']:.3f} ({best['step']}) | "
                     f"{pts[-1]['valid_loss']:.3f} |")
        if pts[-1]["valid_loss"] > best["valid_loss"] * 1.05:
            notes.append(f"{split} rose after step {best['step']} ({best['valid_loss']:.3f} -> "
                         f"{pts[-1]['valid_loss']:.3f}): the run overfits that split.")
    return lines + ([""] + [f"Note: {n}" for n in notes] if notes else [])


def _markdown(s: Dict[str, Any]) -> str:
    train, valid, ev, base = s["train"], s["valid"], s["evaluation"], s["untrained"]
    last = train[-1]
    lines = ["# optiml demo", "",
             f"OPT of the `{s['preset']}` preset ({s['parameters']:,} parameters, attention backend "
             f"`{s['attention']}`) trained "
             f"{s['steps']} steps on the built-in benchmark (questions and operations on word lists, "
             f"`optiml_plugin/bench/builtin.py`; held-out tasks: {', '.join(HELDOUT_TASKS)}; held-out category: "
             f"{HELDOUT_CATEGORY}); timings (s): "
             + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in s["timings"].items()) + ".",
             "", "## Does instruction tuning transfer?", "",
             "![trained vs untrained vs chance per level, 95% intervals](" + LEVELS_PNG + ")", "",
             f"Test split, {ev['instances']} instances. Scores: accuracy for option tasks, Rouge-L for "
             "generation, averaged task -> category -> level. In brackets: 95% bootstrap intervals "
             "(1000 draws of instances within each task). Untrained: the same initialization before step 1, "
             "0-shot. Chance: a uniform pick among the options; for generation, the reference of another "
             "instance of the same task.", ""]
    lines += summary_table(s["intervals"]) + ["", "Verdicts (paired bootstrap of the gain; "
                                               "against the untrained model at 0 shots):", ""]
    lines += verdicts(s["intervals"])
    lines += ["", "## Loss curves", "", "![train and validation loss](" + LOSS_PNG + ")", "",
              f"Train loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> {last['loss']:.3f} "
              f"(step {last['step']}); {last['tokens_per_s']:.0f} tokens/s, packing efficiency "
              f"{last['packing_efficiency']:.2f}.", ""]
    lines += _loss_notes(valid)
    lines += ["", "## Per task, 0-shot (accuracy for option tasks, Rouge-L for generation)", "",
              "| level | category | task | metric | untrained | trained |", "|---|---|---|---|---|---|"]
    was_task = {(r["level"], r["task"]): r["score"] for r in base["tasks"] if r["shots"] == 0}
    for r in ev["tasks"]:
        if r["shots"] == 0:
            lines.append(f"| {r['level']} | {r['category']} | {r['task']} | {r['metric']} | "
                         f"{_score(was_task.get((r['level'], r['task'])))} | {_score(r['score'])} |")
    lines += ["", f"Full evaluation tables: `{ev['table']}` (untrained: `{base['table']}`); "
              f"model + tokenizer: `{s['model_dir']}`.", ""]
    return "\n".join(lines)
