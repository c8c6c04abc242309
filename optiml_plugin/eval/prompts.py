"""Zero- and k-shot prompts from bench rows, with demonstrations that always fit the context.

Why: the paper (recipe §2.2) puts demonstrations between the task definition and the target example
for task-level-instruction benchmarks (Super-NaturalInstructions), and full demonstrations before the
example for instance-level ones (FLAN, PromptSource). Demonstrations are drawn deterministically from
the task's training pool (seeded by task and instance, never the evaluated instance), and the oldest
ones are dropped when the prompt would not fit.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from optiml_plugin.data.benchfiles import normalize_name
from optiml_plugin.data.tokenizer import join_texts

Row = Dict[str, Any]
# benchmarks whose instruction is a task-level definition (normalized names)
TASK_LEVEL_BENCHMARKS = ("niv2", "sni", "natural_instructions", "super_natural_instructions",
                         "supernatural_instructions", "supernaturalinstructions")


@dataclass(frozen=True)
class Pool:
    """Where demonstrations come from: `size` rows read by `get`; `exclude` is the evaluated row's
    index when the pool is the evaluated file itself (no training instances for the task)."""

    size: int
    get: Callable[[int], Row]
    same_file: bool


@dataclass(frozen=True)
class Prompt:
    """The final prompt text and what went into it (for the predictions file and the counts)."""

    text: str
    demo_ids: Tuple[str, ...]
    dropped: int


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


def demonstration(row: Row, task_level: bool) -> str:
    """A demonstration: the example part of the rendered prompt joined to its target as in training."""
    _, _, body = split_instruction(row, task_level)
    src, tgt = join_texts(body, row["tgt"])
    return src + tgt


def demo_indices(pool: Pool, k: int, seed: int, key: str, instance_id: str,
                 own_index: Optional[int]) -> List[int]:
    """Up to k distinct pool indices, a pure function of (seed, key, instance id).

    Drawn one at a time, so the demonstrations for k shots are a prefix of those for k' > k.
    """
    forbidden = own_index if pool.same_file else None
    available = pool.size - (1 if forbidden is not None else 0)
    k = min(k, max(available, 0))
    digest = hashlib.sha256(f"{seed}\x1f{key}\x1f{instance_id}".encode("utf-8")).digest()
    rng = random.Random(int.from_bytes(digest[:8], "little"))
    chosen: List[int] = []
    taken = set() if forbidden is None else {forbidden}
    while len(chosen) < k:
        j = rng.randrange(pool.size)
        if j not in taken:
            taken.add(j)
            chosen.append(j)
    return chosen


def is_task_level(benchmark: str, task_level_benchmarks: Sequence[str]) -> bool:
    return normalize_name(benchmark) in {normalize_name(b) for b in task_level_benchmarks}


def build_prompt(row: Row, demos: Sequence[Row], task_level: bool, separator: str,
                 fits: Callable[[str], bool]) -> Prompt:
    """The k-shot prompt; demonstrations are dropped from the front until `fits(text)` holds.

    With no demonstrations the prompt is `src` exactly, so zero-shot is the rendered prompt.
    """
    header, gap, body = split_instruction(row, task_level)
    texts = [demonstration(d, task_level) for d in demos]
    ids = [str(d.get("id", "")) for d in demos]
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
            return Prompt(text=text, demo_ids=tuple(ids[dropped:]), dropped=dropped)
        dropped += 1
