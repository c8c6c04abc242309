"""`optiml compare RESULTS...`: eval runs side by side (markdown table + chart), like the paper's ablations."""
from __future__ import annotations

import argparse
from pathlib import Path

from optiml_plugin.commands import add_common


def register(sub: "argparse._SubParsersAction") -> None:
    p = sub.add_parser("compare", help="several eval runs side by side per level, category and shots",
                       description="Read `optiml eval` run directories (or their results.json) and write "
                                   "compare.md (levels and categories x shots, one column per run) and "
                                   "compare.png (one bar per run, 95% bootstrap intervals).")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="eval run directories or results.json files")
    p.add_argument("--names", default=None, help="comma-separated column names (default: the directory names)")
    p.add_argument("--reference", default=None, metavar="ABLATION",
                   help="add the paper's column of a §4 ablation preset (eps, proportions, reasoning, pretrain, "
                        "dialogue, metaicl, task_scaling, mixed_prompts, or a preset file): each run is matched to "
                        "the row whose name it carries (`optiml sweep --ablation` names runs `...{ablation}-{row}...`)")
    p.add_argument("--preset-dir", help="where --reference names are looked up (default: the installed presets)")
    add_common(p, out_help="where compare.md and compare.png go (default: compare)",
               seed_default=0, seed_help="seed of the bootstrap intervals", progress=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.eval.compare import compare

    from optiml_plugin.outlock import locked

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    reference = None
    if args.reference:
        from optiml_plugin.ablations import load_ablation
        from optiml_plugin.metaseq.sweep import preset_dir

        reference = load_ablation(args.reference, preset_dir(args.preset_dir))
    out = Path(args.out or "compare")
    with locked(out, "optiml compare"):
        table, chart = compare(args.results, out, names=names, seed=args.seed, reference=reference)
    print(table.read_text(encoding="utf-8"))
    print(f"wrote {table} and {chart}")
    return 0
