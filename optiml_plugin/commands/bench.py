"""`optiml bench build|stats|clean`: thin wrapper over `bench.build`, `bench.stats` and `bench.outdir`."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from optiml_plugin.commands import add_common
from optiml_plugin.errors import ON_BAD_CHOICES, ConfigError


def register(sub: "argparse._SubParsersAction") -> None:
    bench = sub.add_parser("bench", help="build or inspect an instruction benchmark directory")
    bsub = bench.add_subparsers(dest="bench_command", metavar="ACTION")
    bsub.required = True

    build = bsub.add_parser("build", help="build a bench from a YAML config (or the built-in one)")
    build.add_argument("config", nargs="?", help="build config YAML (see docs/bench.md)")
    build.add_argument("--builtin", action="store_true", help="build the built-in synthetic benchmark")
    add_common(build, out_help="bench directory to write", out_required=True, seed_default=None,
               seed_help="seed of the split and templates (default: the config's seed, 0 for --builtin)")
    build.add_argument("--on-bad-record", choices=ON_BAD_CHOICES, default=None,
                       help="error (default) or skip and count bad records")
    build.add_argument("--overwrite", action="store_true", help="replace an existing bench at --out")
    build.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes reading sources and writing tasks (default: every core, at most 8; "
                            "the bench does not depend on it)")
    build.set_defaults(func=_build)

    stats = bsub.add_parser("stats", help="print a bench's composition; optionally plot it")
    stats.add_argument("bench", help="bench directory")
    stats.add_argument("--png", default=None, help="write a composition chart to this PNG file")
    stats.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                       help="check every index entry against its row (one read of the bench); "
                            "--no-verify checks sizes and the last row only")
    stats.set_defaults(func=_stats)

    clean = bsub.add_parser("clean", help="remove what killed builds left in a folder",
                            description="Remove the temporary `.NAME.building-PID` (and `.NAME.old-PID`) "
                                        "folders of builds whose process is gone; running builds' are kept.")
    clean.add_argument("folder", help="the folder holding the bench(es): the parent of their --out")
    clean.set_defaults(func=_clean)


def _build(args: argparse.Namespace) -> int:
    from optiml_plugin.bench.build import build_bench, load_build_config
    from optiml_plugin.bench.builtin import builtin_config

    if args.builtin == bool(args.config):
        raise ConfigError("give either a build CONFIG or --builtin")
    config = load_build_config(builtin_config() if args.builtin else args.config)
    if args.seed is not None:
        if args.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {args.seed}")
        config = dataclasses.replace(config, seed=args.seed)
    if args.on_bad_record is not None:
        config = dataclasses.replace(config, on_bad_record=args.on_bad_record)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    manifest = build_bench(config, args.out, overwrite=args.overwrite, progress=False if args.no_progress else None,
                           workers=args.workers)
    acc = manifest["accounting"]
    splits = ", ".join(f"{s}={v['examples']}" for s, v in manifest["splits"].items() if v["examples"])
    print(f"wrote {args.out}: {len(manifest['tasks'])} tasks; {splits}")
    print(f"read={acc['read']} kept={acc['kept']} skipped={acc['skipped']} removed={acc['removed']}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from optiml_plugin.benchfiles import Bench
    from optiml_plugin.bench.stats import check_files, format_stats, plot_composition

    if args.png and Path(args.png).suffix and not args.png.lower().endswith(".png"):
        raise ConfigError(f"--png {args.png}: the chart is a PNG image; give a file name ending in .png "
                          f"(or none: .png is added; or a folder: composition.png goes into it)")
    bench = Bench(args.bench)
    print(format_stats(bench))
    if args.png:
        print(f"wrote {plot_composition(bench, args.png)}")
    problems = check_files(bench, verify=args.verify)
    for line in problems:
        print(f"optiml: damaged bench file: {line}", file=sys.stderr)
    if problems:
        print(f"optiml: error: {len(problems)} damaged file(s) in {args.bench}: rebuild the bench",
              file=sys.stderr)
    return 1 if problems else 0


def _clean(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optiml_plugin.bench.outdir import remove_stale_builds

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    removed = remove_stale_builds(folder)
    print(f"removed {len(removed)} folder(s) left by killed builds in {folder}")
    return 0
