"""`optiml generate --model DIR "prompt"`: greedy answers of a trained model to prompts, as the evaluator
generates them (the same backend, prefix and stops)."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="a trained model's greedy answer to a prompt",
                       description="Greedy generation from a model directory (`optiml train`'s final/, a "
                                   "converted metaseq checkpoint, any transformers causal LM), with the "
                                   "evaluator's backend: the same prompt prefix, end of text and stop strings. "
                                   "Prompts from the arguments, else one per line of standard input.")
    p.add_argument("prompts", nargs="*", help="prompt text; '\\n' in it is a newline")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--input", default=None,
                   help="render each prompt as an instruction with this input, as the bench renders examples "
                        "(instruction, blank line, input, --delimiter)")
    p.add_argument("--delimiter", default="\\nAnswer:",
                   help="the answer cue after the input with --input (one of the paper's eight)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="most tokens generated per prompt")
    p.add_argument("--stop", action="append", default=None,
                   help="stop string (repeatable; escapes allowed; default: a blank line, '\\n\\n')")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from optiml_plugin.commands.eval import _unescape
    from optiml_plugin.errors import ConfigError
    from optiml_plugin.eval.backends.hf import HFBackend
    from optiml_plugin.eval.scoring import cut_at_stops

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    prompts = [_unescape(p) for p in args.prompts] or [line.rstrip("\n").replace("\\n", "\n")
                                                      for line in sys.stdin if line.strip()]
    if not prompts:
        raise ConfigError("no prompt: pass one as an argument or on standard input")
    if args.input is not None:
        from optiml_plugin.bench.templates import render_prompt

        prompts = [render_prompt(p, _unescape(args.input), None, _unescape(args.delimiter)) for p in prompts]
    stops = tuple(_unescape(s) for s in (args.stop if args.stop is not None else ["\\n\\n"]))
    backend = HFBackend.from_dir(args.model, device=args.device)
    for prompt in prompts:
        ids = list(backend.prefix_ids) + backend.encode(prompt.rstrip(" "))
        out, = backend.generate([ids], args.max_new_tokens, stops)
        print(cut_at_stops(backend.decode(out), stops))
    return 0
