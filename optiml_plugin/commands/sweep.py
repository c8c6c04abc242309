"""`optiml sweep`: the paper's presets -> metaseq-train command lines and sbatch scripts.

Thin: parses arguments and calls optiml_plugin.metaseq.sweep; imports no metaseq, so `--dry-run` works on
a laptop, and imports the sweep (recipe, pydantic) only when it runs, so `optiml --help` starts at once.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

from optiml_plugin.conventions import MODEL_PRESETS, PRESET_DIR_ENV
from optiml_plugin.errors import ConfigError, OptimlError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="render (and submit) the paper's metaseq training runs as SLURM jobs",
        description="Turn a model preset (1.3b, 30b, 175b) and a hyperparameter grid into "
                    "metaseq-train command lines and one sbatch script per grid point.")
    p.add_argument("--preset", default=None,
                   help=f"model preset name ({', '.join(MODEL_PRESETS)}) from the preset directory "
                        "(default: 30b, or the ablation's)")
    p.add_argument("--preset-dir", help=f"where --preset names are looked up (default: "
                                        f"${PRESET_DIR_ENV}, else the presets installed with optiml)")
    p.add_argument("--preset-file", help="a model preset YAML file (overrides --preset)")
    p.add_argument("--mixture-file", help="a mixture preset YAML file (default: the preset's)")
    p.add_argument("--max", action="store_true", help="the OPT-IML-Max variant (longer schedule)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep a hyperparameter, e.g. --grid lr=1e-5,5e-5 --grid bsz=4,8 "
                        "(repeatable)")
    p.add_argument("--ablation", metavar="NAME",
                   help="render one of the paper's §4 ablation tables as runs (one per row, on its model "
                        "preset unless --preset/--preset-file is given): eps, proportions, reasoning, pretrain, "
                        "dialogue, metaicl, task_scaling, mixed_prompts, or an ablation preset file")
    p.add_argument("--dry-run", action="store_true",
                   help="print the command lines and sbatch scripts; write and submit nothing")
    p.add_argument("--data", help="bench directory built by `optiml bench build`")
    p.add_argument("--bpe-dir", help="directory with gpt2-vocab.json and gpt2-merges.txt")
    p.add_argument("--opt-checkpoints", default=os.environ.get("OPT_CHECKPOINTS"),
                   help="directory of the OPT checkpoints resharded for model parallelism "
                        "(default: $OPT_CHECKPOINTS)")
    p.add_argument("--checkpoints-dir", help="where run directories are created")
    p.add_argument("--user-dir", help="path of optiml_plugin on the cluster (default: this one)")
    p.add_argument("--launcher", choices=("metaseq-train", "optiml-metaseq-train"),
                   default="metaseq-train",
                   help="metaseq-train --user-dir ..., or optiml's wrapper that needs no --user-dir")
    p.add_argument("--prefix", default="optiml", help="first part of the run-directory names")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--cpus-per-task", type=int, default=12, help="SLURM --cpus-per-task of each job")
    p.add_argument("--no-submit", action="store_true",
                   help="write the sbatch scripts into the run directories but do not submit")
    p.set_defaults(func=run)


def check_data(data: str, submit: bool) -> None:
    """`--data` must be a bench (a raw source folder once got an sbatch file that failed on the cluster);
    a path absent here is let through only when nothing is submitted from here (--dry-run, --no-submit
    render scripts for another machine)."""
    from optiml_plugin.bench.outdir import is_bench
    from optiml_plugin.benchfiles import MANIFEST

    path = Path(data)
    if path.exists() and not is_bench(path):
        raise ConfigError(f"--data {data} is not an optiml bench ({MANIFEST} missing or not a bench's); "
                          f"build one with `optiml bench build CONFIG --out DIR` and pass DIR")
    if not path.exists() and submit:
        raise ConfigError(f"--data {data} does not exist here; pass the bench directory built by "
                          f"`optiml bench build` (or --no-submit to write scripts for another machine)")


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.metaseq import sweep as core

    if args.data:
        check_data(args.data, submit=not (args.dry_run or args.no_submit))
    ablation = None
    if args.ablation:
        from optiml_plugin.ablations import load_ablation, row_runs

        if args.grid or args.max:
            raise OptimlError("--ablation renders the table's rows; give no --grid or --max with it")
        ablation = load_ablation(args.ablation, core.preset_dir(args.preset_dir))
    preset = core.load_model_preset(args.preset_file or args.preset or (ablation.preset if ablation else "30b"),
                                    args.mixture_file, args.preset_dir)
    if ablation is not None:
        rows = row_runs(ablation, preset, prefix=args.prefix)
        print(f"# ablation {ablation.name}: {ablation.table}; paper's figures: {ablation.column}")
        for row, _, r in rows:
            print(f"#   {r.name}: row {row.name}" + (f" (paper {row.paper})" if row.paper else ""))
        jobs = [(row_preset, r) for _, row_preset, r in rows]
    else:
        jobs = [(preset, r) for r in core.expand(preset, core.parse_grid(args.grid), max_variant=args.max,
                                                 prefix=args.prefix)]
    runs = [r for _, r in jobs]
    paths = core.Paths(data=args.data, bpe_dir=args.bpe_dir, opt_checkpoints=args.opt_checkpoints,
                       checkpoints_dir=args.checkpoints_dir, user_dir=args.user_dir)
    sbatch_kw = dict(partition=args.partition, account=args.account, cpus_per_task=args.cpus_per_task)
    print(f"# preset {preset.name}{' (Max)' if args.max else ''} from {preset.path}; "
          f"mixture {preset.mixture.name} ({preset.mixture.path}); {len(runs)} run(s)")
    for i, (preset, r) in enumerate(jobs):
        if args.dry_run:
            print(f"\n# run {i + 1}/{len(runs)}: {r.name}")
            print(core.shell_join(core.train_command(preset, r, paths, args.launcher, dry_run=True)))
            print(f"\n# sbatch script ({preset.nodes} nodes x {preset.gpus_per_node} GPUs)")
            print(core.render_sbatch(preset, r, paths, args.launcher, dry_run=True, **sbatch_kw))
            continue
        script = core.render_sbatch(preset, r, paths, args.launcher, **sbatch_kw)
        run_dir = Path(core.save_dir(r, paths, dry_run=False))
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "train.sbatch"
        path.write_text(script, encoding="utf-8")
        if args.no_submit:
            print(f"wrote {path}")
            continue
        if shutil.which("sbatch") is None:
            raise OptimlError(f"wrote {path}, but `sbatch` is not on PATH: submit it on the cluster "
                              f"or use --no-submit")
        out = subprocess.run(["sbatch", str(path)], capture_output=True, text=True)
        if out.returncode != 0:
            raise OptimlError(f"sbatch {path} failed: {out.stderr.strip()}")
        print(f"{r.name}: {out.stdout.strip()}")
    return 0
