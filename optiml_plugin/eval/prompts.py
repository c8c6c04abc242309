"""Zero- and k-shot prompts in two formats, with demonstrations that always fit the context.

Why two formats: numbers are only comparable with published ones when the prompt is the one they
were measured with.

- `paper` (OPT-IML, recipe §2.2): the bench's rendered prompt. For task-level-instruction benchmarks
  (Super-NaturalInstructions) demonstrations go between the task definition and the target example;
  for instance-level ones (FLAN, PromptSource) full demonstrations go before the example. Every
  demonstration is rendered with the evaluated row's own template (OPTIONS block or not, output
  delimiter), so a prompt has one delimiter.
- `sni` (Tk-Instruct's `src/ni_collator.py`, the format of published SNI numbers): `Definition: ...`,
  k ` Positive Example i -` blocks and `Now complete the following example -\\nInput: ...\\nOutput: `.
  Two options of Tk-Instruct go with it: negative examples (` Negative Example i -` blocks after the
  positive ones, `num_neg_examples`) and explanations (an ` Explanation: ...` line in every example
  block, `add_explanation`); Tk-Instruct's `pos_2_neg_2_expl` is 2 shots, 2 negatives, explanations.
  It applies to task-level benchmarks; other rows keep the `paper` format.

Demonstrations come from SNI's Positive Examples for SNI tasks (the first k, in file order, as
Tk-Instruct takes them) and from the task's training pool elsewhere (a deterministic draw), never
from evaluated instances. Demonstrations that do not fit are dropped (`paper`: oldest first; `sni`:
the examples after the first that does not fit, positive and negative lists each, as Tk-Instruct
does).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from optiml_plugin.bench.templates import render_prompt, sni_definition, sni_period, sni_target
from optiml_plugin.data.tokenizer import join_texts

Row = Dict[str, Any]


@dataclass(frozen=True)
class Pool:
    """A task's training rows: `size` rows read by `get` (never the evaluated file)."""

    size: int
    get: Callable[[int], Row]


@dataclass(frozen=True)
class Demo:
    """One demonstration from its raw fields, so it can be rendered with the target's template.

    `src` is the demonstration's own rendering, used only when the target's template is unknown.
    """

    id: str
    instruction: str
    input: str
    output: str
    candidates: Optional[Tuple[str, ...]] = None
    src: Optional[str] = None
    explanation: Optional[str] = None  # SNI's examples: why the output is (or is not) right

    @classmethod
    def from_row(cls, row: Row) -> "Demo":
        cands = row.get("candidates")
        return cls(id=str(row.get("id", "")), instruction=row.get("instruction") or "",
                   input=row.get("input") or "", output=row["tgt"],
                   candidates=None if cands is None else tuple(cands), src=row.get("src"))


def sni_demos(examples: Sequence[Dict[str, str]], k: int, kind: str = "positive") -> List[Demo]:
    """The first k of SNI's Positive (or Negative) Examples (Tk-Instruct's `[:num_pos_examples]`)."""
    return [Demo(id=f"{kind}_example_{i + 1}", instruction="", input=ex["input"], output=ex["output"],
                 explanation=ex.get("explanation")) for i, ex in enumerate(examples[:k])]


@dataclass(frozen=True)
class Prompt:
    """The final prompt text and what went into it (for the predictions file and the counts)."""

    text: str
    demo_ids: Tuple[str, ...]
    dropped: int
    format: str


def split_instruction(row: Row, task_level: bool) -> Tuple[str, str, str]:
    """(header, gap, body) of the rendered `src`: header + gap + body == src.

    For task-level benchmarks the header is the instruction when `src` starts with it; otherwise
    (and for instance-level benchmarks) the whole prompt is the body.
    """
    src = row["src"]
    instruction = (row.get("instruction") or "").strip()
    if task_level and instruction and src.startswith(instruction):
        rest = src[len(instruction):]
        body = rest.lstrip()
        return instruction, rest[:len(rest) - len(body)], body
    return "", "", src


def row_template(row: Row) -> Optional[Tuple[bool, str]]:
    """(OPTIONS block shown, output delimiter) of the bench's rendering of `row`, or None when `src`
    is not that rendering of the row's fields (then demonstrations keep their own rendering)."""
    src, cands = row["src"], row.get("candidates")
    for options in ((True, False) if cands else (False,)):
        body = render_prompt(row.get("instruction") or "", row.get("input") or "",
                             cands if options else None, "")
        if src.startswith(body):
            return options, src[len(body):]
    return None


def demonstration(demo: Demo, task_level: bool, template: Optional[Tuple[bool, str]]) -> str:
    """A `paper` demonstration: the target's template filled with the demo's fields, then its answer
    joined as in training (task-level: without the definition, which the prompt holds once)."""
    if template is None and demo.src is not None:
        row = {"src": demo.src, "instruction": demo.instruction}
        src = split_instruction(row, task_level)[2]
    else:
        options, delimiter = template or (True, "")
        src = render_prompt("" if task_level else demo.instruction, demo.input,
                            demo.candidates if options else None, delimiter)
    return "".join(join_texts(src, demo.output))


def demo_indices(pool: Pool, k: int, seed: int, key: str, instance_id: str) -> List[int]:
    """Up to k distinct pool indices, a pure function of (seed, key, instance id).

    Drawn one at a time, so the demonstrations for k shots are a prefix of those for k' > k.
    """
    k = min(k, pool.size)
    digest = hashlib.sha256(f"{seed}\x1f{key}\x1f{instance_id}".encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    chosen: List[int] = []
    taken = set()
    while len(chosen) < k:
        j = rng.randrange(pool.size)
        if j not in taken:
            taken.add(j)
            chosen.append(j)
    return chosen


def paper_prompt(row: Row, demos: Sequence[Demo], task_level: bool, separator: str,
                 fits: Callable[[str], bool]) -> Prompt:
    """The `paper` k-shot prompt; demonstrations are dropped from the front until `fits(text)`.

    With no demonstrations the prompt is `src` exactly, so zero-shot is the rendered prompt.
    """
    header, gap, body = split_instruction(row, task_level)
    template = row_template(row)
    texts = [demonstration(d, task_level, template) for d in demos]
    ids = [d.id for d in demos]
    dropped = 0
    while True:
        shown = texts[dropped:]
        if not shown:
            text = row["src"]
        elif header:
            text = header + gap + separator.join(shown + [body])
        else:
            text = separator.join(shown + [body])
        if not shown or fits(text):
            return Prompt(text=text, demo_ids=tuple(ids[dropped:]), dropped=dropped, format="paper")
        dropped += 1


def sni_block(kind: str, number: int, demo: Demo, explanation: bool) -> str:
    """One Tk-Instruct example block: ` Positive Example 1 -`, its input, output and (with
    `explanation`, when the example has one) explanation, each closed by a period if needed."""
    block = (sni_period(f" {kind} Example {number} -\nInput: {demo.input.strip()}") + "\n"
             + sni_period(f" Output: {demo.output.strip()}") + "\n")
    if explanation and demo.explanation is not None:
        block += sni_period(f" Explanation: {demo.explanation.strip()}") + "\n"
    return block + "\n"


def sni_prompt(row: Row, demos: Sequence[Demo], fits: Callable[[str], bool],
               negatives: Sequence[Demo] = (), explanations: bool = False) -> Prompt:
    """Tk-Instruct's rendering: definition, positive then negative examples while they fit, the target.

    Each list ends at its first example that does not fit; the fit is checked on the text Tk-Instruct
    checks (the examples kept so far joined by a space), so the same examples are kept.
    """
    definition, target = sni_definition(row.get("instruction") or ""), sni_target(row.get("input") or "")
    shown: List[str] = []
    for i, d in enumerate(demos):
        block = sni_block("Positive", i + 1, d, explanations)
        if not fits(definition + " ".join(shown) + block + target):
            break
        shown.append(block)
    wrong: List[str] = []
    for i, d in enumerate(negatives):
        block = sni_block("Negative", i + 1, d, explanations)
        if not fits(definition + " ".join(shown) + " ".join(wrong) + block + target):
            break
        wrong.append(block)
    return Prompt(text=definition + "".join(shown) + "".join(wrong) + target,
                  demo_ids=tuple(d.id for d in demos[:len(shown)]) + tuple(d.id for d in negatives[:len(wrong)]),
                  dropped=len(demos) - len(shown) + len(negatives) - len(wrong), format="sni")


def build_prompt(row: Row, demos: Sequence[Demo], task_level: bool, prompt_format: str,
                 separator: str, fits: Callable[[str], bool], negatives: Sequence[Demo] = (),
                 explanations: bool = False) -> Prompt:
    """The prompt of `row` in `prompt_format` (`sni`, with its negative examples and explanations,
    applies to task-level benchmarks only)."""
    if prompt_format == "sni" and task_level:
        return sni_prompt(row, demos, fits, negatives, explanations)
    return paper_prompt(row, demos, task_level, separator, fits)
