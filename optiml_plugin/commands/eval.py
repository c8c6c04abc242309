"""`optiml eval` (evaluate a model on a bench) and `optiml eval convert-metaseq` (checkpoint converter)."""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional, Tuple

from optiml_plugin.commands import add_common
from optiml_plugin.errors import ConfigError


def _ints(text: str) -> Tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _words(text: str) -> Tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _unescape(text: str) -> str:
    """Lets shells pass separators and stop strings such as '\\n\\n' (only \\n and \\t)."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def register(sub: "argparse._SubParsersAction") -> None:
    from optiml_plugin.conventions import LEVELS

    p = sub.add_parser("eval", help="evaluate a model on a bench's held-out levels",
                       usage="optiml eval --model DIR --bench DIR [options]\n"
                             "       optiml eval convert-metaseq CHECKPOINT [CHECKPOINT ...] --out DIR\n"
                             "       optiml eval suite SUITE [SUITE ...] --model DIR --out DIR",
                       description="Evaluate a transformers causal LM on a bench (docs/evaluation.md); "
                                   "--model and --bench are required unless ACTION is given.")
    need = p.add_argument_group("required (unless ACTION)")
    need.add_argument("--model", metavar="DIR", help="transformers model directory (OPT or any AutoModelForCausalLM)")
    need.add_argument("--bench", metavar="DIR", help="bench directory (optiml bench build)")
    add_common(p, out_help="run directory (default: a new eval_runs/<parent>_<model>_<split>_<time>)",
               seed_default=0,
               seed_help="seed of the demonstration draw")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="which held-out files of each level to score")
    p.add_argument("--shots", type=_ints, default=(0, 5), help="comma-separated shot counts (default: 0,5)")
    p.add_argument("--levels", type=_words, default=LEVELS,
                   help=f"comma-separated subset of the levels (default: {','.join(LEVELS)})")
    p.add_argument("--max-per-task", type=int, default=None, help="first N instances of each task (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per generation or scoring batch")
    p.add_argument("--max-batch-tokens", type=int, default=8192, help="padded tokens per scoring batch")
    p.add_argument("--separator", default="\\n\\n",
                   help="between demonstrations; escapes \\n and \\t allowed (default: '\\n\\n')")
    p.add_argument("--prompt-format", choices=("paper", "sni"), default="paper",
                   help="paper: the bench's prompts; sni: Tk-Instruct's rendering for SNI tasks")
    p.add_argument("--sni-negative-examples", type=int, default=0, metavar="N",
                   help="with --prompt-format sni: SNI's first N negative examples after the positive ones "
                        "(k >= 1 shots; Tk-Instruct's num_neg_examples; default: 0)")
    p.add_argument("--sni-explanations", action="store_true",
                   help="with --prompt-format sni: each example with its explanation (Tk-Instruct's "
                        "add_explanation; --shots 2 --sni-negative-examples 2 is its pos_2_neg_2_expl)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation length cap per instance")
    p.add_argument("--stop", action="append", default=[],
                   help="stop string (repeatable; escapes allowed; default: none)")
    p.add_argument("--max-length", type=int, default=None, help="context length (default: the model's)")
    p.add_argument("--scoring", choices=("packed", "separate"), default="packed",
                   help="candidates in one tree-masked row (packed) or one sequence each")
    p.add_argument("--task-groups", default=None, metavar="JSON",
                   help="JSON file: {sub-task: task} merged by mean (default: none)")
    p.add_argument("--task-settings", default=None, metavar="JSON",
                   help='JSON file: {task: {"metric": "accuracy"|"rougeL", "shots": [0, 5]}} '
                        "(default: the paper's metric and shots per task)")
    p.add_argument("--xlingual-bpe", default=None, metavar="DIR",
                   help="dir with OPT/GPT-2 BPE files for non-English Rouge-L (default: --model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None,
                   help="weights and activations: float32 | bfloat16 | float16 (default: float32)")
    p.add_argument("--on-bad-record", choices=("error", "skip"), default="error",
                   help="stop at a malformed bench row, or skip and count it")
    p.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    p.add_argument("--overwrite", action="store_true",
                   help="with --out an earlier eval run of the same bench: replace its results (default: "
                        "write a new subfolder of it)")
    p.set_defaults(func=_eval)

    esub = p.add_subparsers(dest="eval_command", metavar="ACTION", title="optional ACTION",
                            prog="optiml eval")   # not eval's three-line usage before each action's
    conv = esub.add_parser("convert-metaseq", help="metaseq checkpoint(s) -> transformers OPT directory")
    conv.add_argument("checkpoints", nargs="+", help="singleton checkpoint, or every model-parallel part")
    conv.add_argument("--out", required=True, help="output model directory")
    conv.add_argument("--num-heads", type=int, default=None, help="when the checkpoint has no cfg")
    conv.add_argument("--tokenizer-dir", default=None, help="copy OPT BPE files from here into --out")
    conv.add_argument("--activation-fn", default=None,
                      help="metaseq --activation-fn of the run, when the checkpoint's config lacks it "
                           "(default: the config's, else relu)")
    conv.add_argument("--no-scale-embedding", action="store_true", default=None,
                      help="the run used --no-scale-embedding but its config does not say so")
    conv.set_defaults(func=_convert)

    from optiml_plugin.eval.suites import available

    st = esub.add_parser("suite", help="the paper's other evaluations (Tab 9, Tab 14) through lm-eval",
                         description="Run lm-evaluation-harness suites with the paper's settings and "
                                     "fold the scores into a run directory (docs/evaluation.md).")
    st.add_argument("suites", nargs="+", help=f"presets ({', '.join(available())}) or preset YAML paths")
    st.add_argument("--model", help="transformers model directory")
    st.add_argument("--metaseq-checkpoint", nargs="+", default=None,
                    help="metaseq checkpoint(s), converted to OUT/model first (instead of --model)")
    st.add_argument("--num-heads", type=int, default=None, help="with --metaseq-checkpoint, when it has no cfg")
    st.add_argument("--tokenizer-dir", default=None, help="with --metaseq-checkpoint: OPT BPE files")
    st.add_argument("--out", required=True, help="run directory (an `optiml eval` one gains the suites)")
    st.add_argument("--batch-size", type=int, default=8, help="lm-eval's batch size")
    st.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available, else cpu)")
    st.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    st.add_argument("--limit", type=int, default=None, help="first N documents per task (smoke runs)")
    st.add_argument("--seed", type=int, default=1234, help="lm-eval's seeds (demonstration draw)")
    st.add_argument("--no-charts", action="store_true", help="write no PNG charts")
    st.set_defaults(func=_suite)


def _eval(args: argparse.Namespace) -> int:
    from optiml_plugin.eval.config import EvalConfig
    from optiml_plugin.eval.runner import evaluate

    if not args.model or not args.bench:
        raise ConfigError("optiml eval needs --model DIR and --bench DIR")
    check_device(args.device)
    groups = _task_file(args.task_groups, "--task-groups", "groups")
    settings = _task_file(args.task_settings, "--task-settings", "settings")
    from optiml_plugin.benchfiles import Bench
    from optiml_plugin.eval.outdir import choose_out
    from optiml_plugin.outlock import locked

    Bench(args.bench)  # a bad bench is refused before any folder is made
    out = choose_out(args.out, args.model, args.bench, args.split, args.overwrite)
    config = EvalConfig(model=args.model, bench=args.bench, out_dir=str(out), split=args.split,
                        shots=args.shots, levels=args.levels, max_per_task=args.max_per_task,
                        batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens,
                        seed=args.seed, separator=_unescape(args.separator),
                        prompt_format=args.prompt_format, sni_negative_examples=args.sni_negative_examples,
                        sni_explanations=args.sni_explanations,
                        max_new_tokens=args.max_new_tokens,
                        stop_strings=tuple(_unescape(s) for s in args.stop), task_groups=groups,
                        task_settings=settings,
                        scoring=args.scoring, max_length=args.max_length,
                        xlingual_bpe=args.xlingual_bpe, device=args.device,
                        dtype=args.dtype, on_bad_record=args.on_bad_record,
                        progress=not args.no_progress, charts=not args.no_charts)
    with locked(out, "optiml eval"):
        results = evaluate(config)
    print(_summary(results))
    return 0


def check_device(device: Optional[str]) -> None:
    """Refuse a `--device` torch cannot parse or does not have, in one line (torch raises a RuntimeError)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device!r}: not a device torch knows ({e}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index is not None and dev.index >= torch.cuda.device_count())):
        raise ConfigError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"--device {device}: not supported by the evaluator; use cpu, cuda or cuda:N")


def _task_file(path: Optional[str], flag: str, kind: str) -> Dict[str, Any]:
    """A `--task-groups` / `--task-settings` file (JSON, or YAML: JSON is YAML), checked by the eval
    config's schema; errors name the file, the line and the key. {} when no path."""
    from optiml_plugin.eval.config import task_groups, task_settings
    from optiml_plugin.yamlio import read_yaml_mapping_lines

    if not path:
        return {}
    values, lines = read_yaml_mapping_lines(path, f"{flag} file")
    return task_settings(values, path, lines) if kind == "settings" else task_groups(values, path)


def _summary(results: Dict) -> str:
    from optiml_plugin.benchfiles import LEVELS

    agg = results["aggregate"]
    lines: List[str] = [f"model {results['model_id']}: {results['counts']['instances']} instances"]
    order = {lv: i for i, lv in enumerate(LEVELS)}
    for r in sorted(agg["levels"], key=lambda r: (order.get(r["level"], len(order)), r["shots"])):
        lines.append(f"  {r['level']:<20} {r['shots']}-shot  {r['score']:.2f}")
    lines.append(f"  model selection      {agg['model_selection']['overall']:.2f}")
    lines.append(f"wrote {results['out_dir']}")
    return "\n".join(lines)


def _suite(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optiml_plugin.eval.backends.lmeval import require
    from optiml_plugin.eval.suites import load_suite, run_suites

    if bool(args.model) == bool(args.metaseq_checkpoint):
        raise ConfigError("optiml eval suite needs --model DIR or --metaseq-checkpoint CKPT [CKPT ...]")
    check_device(args.device)
    suites = [load_suite(s) for s in args.suites]
    require()  # before a long conversion
    model = args.model
    if args.metaseq_checkpoint:
        from optiml_plugin.metaseq.convert import convert

        model = str(convert(args.metaseq_checkpoint, Path(args.out) / "model", num_heads=args.num_heads,
                            tokenizer_dir=args.tokenizer_dir))
    results = run_suites(model, suites, args.out, batch_size=args.batch_size, device=args.device,
                         dtype=args.dtype, limit=args.limit, seed=args.seed, charts=not args.no_charts)
    failed = 0
    for s in suites:
        entry = results["suites"][s.name]
        print(f"{s.title}: " + ", ".join(f"{a['shots']}-shot {a['score']:.2f}"
                                         + ("" if a["complete"] else f" ({a['tasks']}/{len(s.tasks)} tasks)")
                                         for a in entry["average"]))
        for f in entry["failed"]:
            print(f"  FAILED {f['task']} ({f['lmeval_task']}), {f['shots']}-shot: {f['error']}")
        failed += len(entry["failed"])
    print(f"wrote {results['out_dir']}")
    return 1 if failed else 0


def _convert(args: argparse.Namespace) -> int:
    from optiml_plugin.metaseq.convert import convert

    overrides = {"activation_fn": args.activation_fn, "no_scale_embedding": args.no_scale_embedding}
    out = convert(args.checkpoints, args.out, num_heads=args.num_heads, tokenizer_dir=args.tokenizer_dir,
                  overrides=overrides)
    print(f"wrote {out}")
    return 0
