"""Render a `Record` into the (src, tgt) pair training reads, the way OPT-IML did.

Why: the paper (§2.2, §2.4) puts the instruction before the input, appends FLAN's `OPTIONS:` block
for tasks with candidates where the source format has one (records with `options_block`; a
PromptSource prompt is the template's own text, which words its choices itself), and adds an
output delimiter drawn at random per example unless the prompt already ends with ':'. The draw is a
pure function of (seed, task, id), so a bench is byte-identical for a seed whatever order records
arrive in.
"""
from __future__ import annotations

import string
import zlib
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from optiml_plugin.benchfiles import normalize_name
from optiml_plugin.bench.records import Record

# The paper's eight delimiters (P §2.4). The PDF prints the last one as "\output:", which is almost
# certainly "\noutput:" with the "n" lost; we use "\noutput:" (documented in docs/bench.md).
DELIMITERS: Tuple[str, ...] = ("\nAnswer:", " Answer:", "\nA:", " A:", "\nOutput:", " Output:",
                               "\nanswer:", "\noutput:")


@dataclass(frozen=True)
class Rendered:
    """A rendered example; `delimiter` is "" when the prompt already ended with ':' (or is text)."""

    src: str
    tgt: str
    delimiter: str


OPTIONS_HEADER = "OPTIONS:"
# how a prompt is rendered: `paper` (instruction, input, options, a delimiter: OPT-IML's) or `sni`
# (Tk-Instruct's collator: "Definition: ...", "Now complete the following example - Input: ... Output: ")
PROMPT_FORMATS = ("paper", "sni")
# benchmarks whose instruction is a task-level definition (normalized names): the `sni` format applies
TASK_LEVEL_BENCHMARKS = ("niv2", "sni", "natural_instructions", "super_natural_instructions",
                         "supernatural_instructions", "supernaturalinstructions")
_PUNCT = frozenset(string.punctuation)


def is_task_level(benchmark: str, task_level_benchmarks: Sequence[str] = TASK_LEVEL_BENCHMARKS) -> bool:
    """Whether `benchmark`'s instructions are task-level definitions (SNI's), by normalized name."""
    return normalize_name(benchmark) in {normalize_name(b) for b in task_level_benchmarks}


def sni_period(text: str) -> str:
    """Tk-Instruct's rule: a period when the text does not already end in ASCII punctuation."""
    return text if text[-1] in _PUNCT else text + "."


def sni_definition(instruction: str) -> str:
    """The opening of a Tk-Instruct prompt: `Definition: <definition>.` and a blank line."""
    return sni_period("Definition: " + (instruction or "").strip()) + "\n\n"


def sni_target(input: str) -> str:
    """The closing of a Tk-Instruct prompt: the example to complete, ending with `Output: `."""
    return "Now complete the following example -\n" + sni_period(f"Input: {(input or '').strip()}") + "\nOutput: "


def format_options(candidates: Sequence[str]) -> str:
    """FLAN's `format_options`: 'OPTIONS:\\n- a\\n- b'."""
    return OPTIONS_HEADER + "\n- " + "\n- ".join(candidates)


def draw_delimiter(seed: int, task: str, instance_id: str) -> str:
    """One of `DELIMITERS`, a deterministic function of (seed, task, instance id)."""
    key = f"{seed}\x1f{task}\x1f{instance_id}".encode("utf-8")
    return DELIMITERS[zlib.crc32(key) % len(DELIMITERS)]


def render_prompt(instruction: str, input: str, candidates: Optional[Sequence[str]],
                  delimiter: str) -> str:
    """Instruction, blank line, input, blank line, OPTIONS block; `delimiter` unless it ends with ':'."""
    prompt = _body(instruction, input, candidates)
    return prompt if prompt.endswith(":") else prompt + delimiter


def _body(instruction: str, input: str, candidates: Optional[Sequence[str]]) -> str:
    parts = [p for p in (instruction.strip(), input.strip()) if p]
    if candidates:
        parts.append(format_options(candidates))
    return "\n\n".join(parts)


def render(record: Record, seed: int, prompt_format: str = "paper") -> Rendered:
    """The (src, tgt) of one record: tgt is outputs[0]; pretraining text has an empty src.

    With `prompt_format="sni"`, records of task-level benchmarks (SNI) render as Tk-Instruct's 0-shot
    prompt. The candidates stay on the record either way (rank classification scores them)."""
    if record.is_text:
        return Rendered(src="", tgt=record.outputs[0], delimiter="")
    if prompt_format == "sni" and is_task_level(record.benchmark):
        return Rendered(src=sni_definition(record.instruction) + sni_target(record.input),
                        tgt=record.outputs[0], delimiter="")
    body = _body(record.instruction, record.input, record.candidates if record.options_block else None)
    delimiter = "" if body.endswith(":") else draw_delimiter(seed, record.task, record.id)
    return Rendered(src=body + delimiter, tgt=record.outputs[0], delimiter=delimiter)
