"""`optiml demo`: the whole job on a fresh machine with no downloads and no data.

Why: one command shows the recipe end to end (built-in benchmark -> packed, document-masked training of a
tiny OPT with the paper's schedule -> evaluation on the three generalization levels -> a report), in a few
minutes on two CPU cores. One seed is one draw: the demo trains several (3 by default, side by side on
the machine's cores) on the same bench and calls a gain "shown" only when the task-level interval of the
gain excludes 0 on most of them. Everything lands in one run directory.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List, Optional, Tuple

from optiml_plugin.benchfiles import atomic_write_bytes
from optiml_plugin.bench.builtin import HELDOUT_CATEGORY, HELDOUT_NOTES, HELDOUT_TASKS
from optiml_plugin.errors import ConfigError

LOSS_PNG = "loss_curve.png"
LEVELS_PNG = "levels.png"
BIG_SHOT_GAP = 15.0   # points between 0-shot and k-shot scores that the report comments on


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


# Tuned for 3 seeds within the demo's budget on 2 CPU cores (docs/local_training.md has the
# measurements). No dropout: the run is short, there is nothing to regularize yet.
FULL = DemoSize("tiny", {}, 0.0, 128, 8, 1000, 3e-3, 30, 40, (0, 2), 16)
QUICK = DemoSize("micro", {}, 0.1, 128, 4, 30, 5e-3, 5, 2, (0,), 6)


def run_demo(out: Optional[Path] = None, steps: Optional[int] = None, quick: bool = False, seed: int = 1,
             progress: bool = True, threads: int = 1, seeds: int = 3, jobs: Optional[int] = None) -> Path:
    """Build, then per seed train and evaluate (the untrained model too, as the baseline); report across
    seeds; returns the run directory."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    size = QUICK if quick else FULL
    out = Path(out) if out else Path("runs") / time.strftime("demo-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bench = out / "bench"
    if not (bench / "manifest.json").is_file():
        from optiml_plugin.bench.build import build_bench, load_build_config
        from optiml_plugin.bench.builtin import builtin_config

        build_bench(load_build_config(builtin_config(seed)), bench, overwrite=True, progress=progress)
    build_s = time.perf_counter() - started
    n_steps = steps or size.steps
    seed_list = [seed + i for i in range(seeds)]
    jobs = max(1, min(len(seed_list), jobs or len(seed_list)))   # 3 one-thread seeds share 2 cores well
    for s in seed_list:
        _check_own(out / f"seed_{s}" / "train")
    args = [(out / f"seed_{s}", bench, size, s, n_steps, progress and jobs == 1, threads) for s in seed_list]
    if jobs == 1:
        runs = [_one_seed(*a) for a in args]
    else:   # one process per seed: the tiny model uses one core well, not two
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(_one_seed, *zip(*args)))
    first = runs[0]
    summary = {"run_dir": str(out), "bench": str(bench), "preset": size.preset, "parameters": first["parameters"],
               "attention": first["attention"], "steps": n_steps, "seeds": seed_list, "jobs": jobs,
               "timings": {"build_s": build_s, "total_s": time.perf_counter() - started},
               "across_seeds": across_seeds([r["intervals"] for r in runs]),
               "tasks": task_table(runs), "runs": runs}
    from optiml_plugin.loss import LOSS_UNIT

    summary["loss_unit"] = LOSS_UNIT
    _plot([(r["seed"], r["log"]) for r in runs], out / LOSS_PNG)
    _level_chart(summary["across_seeds"], runs, out / LEVELS_PNG,
                 f"OPT `{size.preset}` ({first['parameters'] / 1e6:.2f}M parameters, {n_steps} steps)")
    atomic_write_bytes(out / "report.json", (json.dumps(summary, indent=1) + "\n").encode())
    atomic_write_bytes(out / "report.md", _markdown(summary).encode())
    return out


def _check_own(train: Path) -> None:
    """The demo replaces only its own previous output: a `train` folder without a training run stops it."""
    if train.exists() and not (train / "train_config.yaml").is_file():
        raise ConfigError(f"{train} exists and is not a training run; the demo replaces only its own output: "
                          f"choose another --out")


def _one_seed(out: Path, bench: Path, size: DemoSize, seed: int, n_steps: int, progress: bool,
              threads: int) -> Dict[str, Any]:
    """Train one seed and evaluate it and its untrained initialization; its files under `out`."""
    from optiml_plugin.local.trainer import Trainer, read_log
    from optiml_plugin.recipe import config_from_dict

    config = config_from_dict({
        "model": {"preset": size.preset, "dropout": size.dropout, "overrides": dict(size.overrides)},
        "data": {"bench": str(bench), "tokenizer": "builtin", "builtin_vocab_size": 1024,
                 "tokens_per_sample": size.tokens_per_sample, "batch_size": size.batch_size,
                 "max_valid_examples_per_task": 16},
        "optim": {"lr": size.lr, "warmup_updates": min(size.warmup, max(1, n_steps // 10)), "max_update": n_steps},
        "run": {"out_dir": str(out / "train"), "seed": seed, "log_every": max(1, n_steps // 30),
                "valid_every": max(1, n_steps // 5), "save_every": n_steps, "keep_last": 1, "progress": progress,
                "threads": threads}})
    timings: Dict[str, float] = {}
    t = time.perf_counter()
    if (out / "train").exists():  # the demo's own previous output (`_check_own` let it through)
        shutil.rmtree(out / "train")
    trainer = Trainer(config)
    untrained = trainer.save_model(out / "train" / "untrained")
    final = trainer.train()
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evaluation = _evaluate(final, bench, out / "eval", size, size.shots, progress)
    baseline = _evaluate(untrained, bench, out / "eval_untrained", size, (0,), progress)
    timings["eval_s"] = time.perf_counter() - t
    from optiml_plugin.eval.intervals import chance_scores, level_intervals
    from optiml_plugin.eval.report import read_predictions

    trained_recs = read_predictions(Path(evaluation["out_dir"]))
    chance: Dict[str, List[float]] = {}
    for (_, task, _), v in chance_scores(trained_recs).items():
        chance.setdefault(task, []).append(v)
    return {"seed": seed, "run_dir": str(out), "model_dir": str(final), "parameters": trainer.n_params,
            "attention": trainer.attention.backend, "timings": timings, "log": read_log(trainer.log_path),
            "evaluation": evaluation, "untrained": baseline,
            "task_chance": {t: mean(v) for t, v in chance.items()},
            "intervals": level_intervals(trained_recs, baseline=read_predictions(Path(baseline["out_dir"])),
                                         seed=seed)}


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
    return {"out_dir": str(out), "levels": agg["levels"], "tasks": tasks,
            "instances": results["counts"]["instances"], "generation": results["generation"]["stopped"],
            "elapsed_s": results["elapsed_s"], "table": str(out / "results.md")}


def _shown(row: Dict[str, Any]) -> bool:
    """Both paired task-level gains (over chance, over the untrained model) exclude 0."""
    return row["gain_over_chance_ci"][0] > 0 and row.get("gain_over_baseline_ci", [0])[0] > 0


def across_seeds(per_seed: List[List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """Per (level, shots): each seed's score, task-level interval and gains; their mean and range; the
    verdict: "shown" when the gain is shown (over chance and over untrained) on most seeds."""
    at: Dict[Tuple[str, int], List[Dict[str, Any]]] = {}
    for rows in per_seed:
        for r in rows:
            at.setdefault((r["level"], r["shots"]), []).append(r)
    out = []
    for (level, shots), rows in at.items():
        scores = [r["score"] for r in rows]
        shown = sum(_shown(r) for r in rows)
        out.append({"level": level, "shots": shots, "n": rows[0]["n"], "tasks": rows[0]["tasks"],
                    "chance": rows[0]["chance"], "untrained": mean(r.get("baseline", float("nan")) for r in rows),
                    "score": mean(scores), "score_min": min(scores), "score_max": max(scores),
                    "per_seed": [{k: r.get(k) for k in ("score", "ci", "baseline", "gain_over_chance_ci",
                                                        "gain_over_baseline_ci")} for r in rows],
                    "seeds_shown": shown, "seeds": len(rows), "shown": shown * 2 > len(rows)})
    from optiml_plugin.eval.report import _levels

    order = {lv: i for i, lv in enumerate(_levels(out))}
    return sorted(out, key=lambda r: (order[r["level"]], r["shots"]))


def task_table(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per task: chance, untrained (mean over seeds) and trained scores per shot count (each seed's)."""
    rows: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for run in runs:
        for r in run["evaluation"]["tasks"]:
            row = rows.setdefault((r["level"], r["task"]), {
                "level": r["level"], "category": r["category"], "task": r["task"], "metric": r["metric"],
                "chance": run["task_chance"].get(r["task"]), "untrained": [], "trained": {}})
            row["trained"].setdefault(str(r["shots"]), []).append(r["score"])
        for r in run["untrained"]["tasks"]:
            if (r["level"], r["task"]) in rows and r["shots"] == 0:
                rows[(r["level"], r["task"])]["untrained"].append(r["score"])
    from optiml_plugin.eval.report import _levels

    order = {lv: i for i, lv in enumerate(_levels(list(rows.values())))}
    return sorted(rows.values(), key=lambda r: (-order[r["level"]], r["category"], r["task"]))


def _splits(log: List[Dict[str, Any]]) -> List[str]:
    """Validation splits in the paper's level order."""
    from optiml_plugin.eval.report import _levels

    return ["valid_" + lv for lv in _levels([{"level": r["split"][len("valid_"):]} for r in log if "split" in r])]


def loss_axis_label() -> str:
    """The loss chart's y label: the unit the trainer logs (bits per target token)."""
    from optiml_plugin.loss import LOSS_UNIT

    return f"loss ({LOSS_UNIT})"


def _plot(logs: List[Tuple[int, List[Dict[str, Any]]]], path: Path) -> None:
    """Every seed's train loss and validation losses in one figure (one line style per seed)."""
    from optiml_plugin.eval.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (_, log) in enumerate(logs):
        ls = styles[k % len(styles)]
        train = [r for r in log if "split" not in r]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], ls, color="0.55",
                label="train" if k == 0 else None, linewidth=1)
        for j, split in enumerate(_splits(log)):
            pts = [r for r in log if r.get("split") == split]
            ax.plot([r["step"] for r in pts], [r["valid_loss"] for r in pts], ls, marker="o", markersize=3,
                    color=colors[j % len(colors)], label=split.replace("valid_", "valid: ") if k == 0 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(loss_axis_label())
    ax.set_ylim(bottom=0)
    seeds = ", ".join(str(s) for s, _ in logs)
    ax.set_title(f"optiml demo: training and validation loss (seeds {seeds}; one line style per seed)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _level_chart(rows: List[Dict[str, Any]], runs: List[Dict[str, Any]], path: Path, model: str) -> None:
    from optiml_plugin.eval.report import _levels, interval_chart

    levels = _levels(rows)
    zero = {r["level"]: r for r in rows if r["shots"] == 0}
    series = [("untrained, 0-shot (mean)", [zero[lv]["untrained"] for lv in levels], [None] * len(levels))]
    for run in runs:
        at = {r["level"]: r for r in run["intervals"] if r["shots"] == 0}
        series.append((f"trained, seed {run['seed']}", [at[lv]["score"] for lv in levels],
                       [at[lv]["ci"] for lv in levels]))
    interval_chart(path, levels, series, chance=[zero[lv]["chance"] for lv in levels],
                   title=f"{model.replace('`', '')}: test split, 0-shot, 95% task-level bootstrap intervals")


def _score(value: Optional[float], ci: Optional[List[float]] = None) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def summary_table(rows: List[Dict[str, Any]]) -> List[str]:
    """The per-level table across seeds, also printed at the end of the demo: chance, untrained, the trained
    mean and range, each seed's score with its task-level interval, and in how many seeds the gain is shown."""
    lines = ["| level | shots | tasks | chance | untrained | trained: mean (min-max) | per seed [task-level 95% CI] "
             "| gain shown |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per = "; ".join(_score(s["score"], s["ci"]) for s in r["per_seed"])
        lines.append(f"| {r['level']} | {r['shots']} | {r['tasks']} | {r['chance']:.1f} | {_score(r['untrained'])} | "
                     f"{r['score']:.1f} ({r['score_min']:.1f}-{r['score_max']:.1f}) | {per} | "
                     f"{r['seeds_shown']}/{r['seeds']} seeds |")
    return lines


def verdicts(rows: List[Dict[str, Any]]) -> List[str]:
    """One line per level and shot count: shown only when the task-level gain over chance and over the
    untrained model excludes 0 on most seeds."""
    out = []
    for r in rows:
        gains = "; ".join(f"[{s['gain_over_baseline_ci'][0]:.1f}, {s['gain_over_baseline_ci'][1]:.1f}]"
                          for s in r["per_seed"] if s.get("gain_over_baseline_ci"))
        out.append(f"- **{r['level']}, {r['shots']}-shot**: {'shown' if r['shown'] else 'not shown'} "
                   f"(the task-level gain excludes 0 on {r['seeds_shown']} of {r['seeds']} seeds; gain over "
                   f"untrained per seed {gains})")
    return out


def _task_lines(tasks: List[Dict[str, Any]], shots: List[str]) -> List[str]:
    head = "| level | task | nearest training task: how it differs | metric | chance | untrained | " + \
        " | ".join(f"trained {k}-shot (per seed)" for k in shots) + " |"
    lines = [head, "|---" * (6 + len(shots)) + "|"]
    for r in tasks:
        near = HELDOUT_NOTES.get(r["task"])
        note = f"`{near[0]}`: {near[1]}" if near and r["level"] != "heldout_instances" else ""
        cells = []
        for k in shots:
            got = r["trained"].get(k)
            cells.append(f"{mean(got):.1f} ({', '.join(f'{x:.0f}' for x in got)})" if got else "–")
        lines.append(f"| {r['level']} | {r['task']} | {note} | {r['metric']} | {_score(r['chance'])} | "
                     f"{_score(mean(r['untrained']) if r['untrained'] else None)} | " + " | ".join(cells) + " |")
    return lines


def shot_notes(tasks: List[Dict[str, Any]]) -> List[str]:
    """Where a k-shot score differs from the 0-shot one by BIG_SHOT_GAP points or more (means over seeds)."""
    notes = []
    for r in tasks:
        zero = r["trained"].get("0")
        for k, got in r["trained"].items():
            if k != "0" and zero and abs(mean(got) - mean(zero)) >= BIG_SHOT_GAP:
                notes.append(f"`{r['task']}` ({r['level']}): {k}-shot {mean(got):.1f} vs 0-shot {mean(zero):.1f}")
    return notes


def _loss_notes(logs: List[Tuple[int, List[Dict[str, Any]]]]) -> List[str]:
    """Per seed and split: first, lowest and last validation loss, and whether it rose after its lowest."""
    lines = ["| seed | split | first | lowest (step) | last |", "|---|---|---|---|---|"]
    notes = []
    for seed, log in logs:
        for split in _splits(log):
            pts = [r for r in log if r.get("split") == split]
            best = min(pts, key=lambda r: r["valid_loss"])
            lines.append(f"| {seed} | {split} | {pts[0]['valid_loss']:.3f} | {best['valid_loss']:.3f} ({best['step']}) "
                         f"| {pts[-1]['valid_loss']:.3f} |")
            if pts[-1]["valid_loss"] > best["valid_loss"] * 1.05:
                notes.append(f"seed {seed}: {split} rose after step {best['step']} ({best['valid_loss']:.3f} -> "
                             f"{pts[-1]['valid_loss']:.3f}): the run overfits that split.")
    return lines + ([""] + [f"Note: {n}" for n in notes] if notes else [])


def _markdown(s: Dict[str, Any]) -> str:
    runs = s["runs"]
    ev = runs[0]["evaluation"]
    lines = ["# optiml demo", "",
             f"OPT of the `{s['preset']}` preset ({s['parameters']:,} parameters, attention backend "
             f"`{s['attention']}`) trained {s['steps']} steps on the built-in benchmark (questions and operations "
             f"on word lists, `optiml_plugin/bench/builtin.py`; held-out tasks: {', '.join(HELDOUT_TASKS)}; "
             f"held-out category: {HELDOUT_CATEGORY}), seeds {', '.join(map(str, s['seeds']))} "
             f"({s['jobs']} at a time). Timings (s): build {s['timings']['build_s']:.0f}, total "
             f"{s['timings']['total_s']:.0f}; per seed train / eval: "
             + ", ".join(f"{r['timings']['train_s']:.0f} / {r['timings']['eval_s']:.0f}" for r in runs) + ".",
             "", "## Does instruction tuning transfer?", "",
             "![trained vs untrained vs chance per level, 95% intervals](" + LEVELS_PNG + ")", "",
             f"Test split, {ev['instances']} instances per seed. Scores: accuracy for option tasks, Rouge-L for "
             "generation, averaged task -> category -> level. Intervals: 95%, two-level bootstrap (1000 draws; "
             "each draw resamples the level's tasks, then the instances within each task), so they hold "
             "task-to-task variance; the spread over seeds shows the run-to-run variance. Untrained: each "
             "seed's initialization before step 1, 0-shot. Chance: a uniform pick among the options; for "
             "generation, the reference of another instance of the same task.", ""]
    lines += summary_table(s["across_seeds"]) + ["", "Verdicts (\"shown\": on most seeds the paired task-level "
                                                 "intervals of the gain over chance and over the untrained model "
                                                 "both exclude 0):", ""]
    lines += verdicts(s["across_seeds"])
    shots = sorted({k for r in s["tasks"] for k in r["trained"]}, key=int)
    lines += ["", "## Per task (test split; trained scores: mean over seeds, each seed in brackets)", "",
              "Held-out tasks are new tasks: none shares its operation or instruction with a training task "
              "(tests/test_builtin.py checks that every training operation gives another answer on most of a "
              "held-out task's inputs); the table names the nearest training task and how it differs.", ""]
    lines += _task_lines(s["tasks"], shots)
    notes = shot_notes(s["tasks"])
    if notes:
        lines += ["", f"0-shot and k-shot differ by {BIG_SHOT_GAP:.0f} points or more on: " + "; ".join(notes) + ". "
                  "Training packs examples into rows with document masking, so the model never attends from one "
                  "example to another: demonstrations before the question are a context it was not trained on, "
                  "and can pull its answer towards theirs."]
    gens = [r["evaluation"]["generation"] for r in runs] + [r["untrained"]["generation"] for r in runs]
    lines += ["", "Generation ended (all seeds, trained and untrained): " + ", ".join(
        f"{k} {sum(g.get(k, 0) for g in gens)}" for k in ("eos", "stop", "cap")) + " (cap: per task, twice its "
        "longest training reference in tokens)."]
    lines += ["", "## Loss curves", "", "![train and validation loss](" + LOSS_PNG + ")", "",
              f"Losses in {s['loss_unit']} (the trainer's unit; perplexity = 2^loss)."]
    for r in runs:
        train = [x for x in r["log"] if "split" not in x]
        last = train[-1]
        lines.append(f"Seed {r['seed']}: train loss {train[0]['loss']:.3f} (step {train[0]['step']}) -> "
                     f"{last['loss']:.3f} (step {last['step']}); {last['tokens_per_s']:.0f} tokens/s, packing "
                     f"efficiency {last['packing_efficiency']:.2f}.")
    lines += [""] + _loss_notes([(r["seed"], r["log"]) for r in runs])
    lines += ["", "Per seed: the evaluation tables in `seed_<s>/eval/results.md` (untrained: "
              "`seed_<s>/eval_untrained/`), the model and tokenizer in `seed_<s>/train/final/`.", ""]
    return "\n".join(lines)
