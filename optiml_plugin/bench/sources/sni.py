"""Super-NaturalInstructions task files (`tasks/taskNNN_*.json`) and the `splits/<name>/` task lists.

Why: SNI is the primary benchmark and its categories the primary taxonomy. One task file becomes one
Record per instance: instruction = Definition[0], outputs = the instance's reference list (scored
with Rouge-L, so no candidates), sources = `Source`, category = `Categories[0]`. The positive and
negative examples (input, output and explanation) are kept in `meta["positive_examples"]` and
`meta["negative_examples"]` for few-shot evaluation (Tk-Instruct's prompts), and `Output_language` in
`meta["output_language"]` (it picks the SNI scorer's track). The real files contain a
bare `NaN` in `URL`, which Python's json accepts; that field is not used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from optiml_plugin.bench.records import Record, as_str_tuple
from optiml_plugin.bench.sources.base import RecordGate, SourceSpec, outputs_value
from optiml_plugin.bench.sources.languages import language_code
from optiml_plugin.errors import BadRecordPolicy, ConfigError

KEYS: Tuple[str, ...] = ()
SUFFIXES = (".json",)
#: bench/reading.py may read each task file in its own process
PARTS = "files"
DEFAULT_BENCHMARK = "niv2"
SPLIT_FILES = {"train": "train_tasks.txt", "test": "test_tasks.txt", "excluded": "excluded_tasks.txt"}
_REQUIRED = ("Definition", "Instances", "Source", "Categories")


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    gate = RecordGate(spec, policy)
    for path in spec.files:
        task = path.stem
        if gate.wanted(task):
            yield from _load_task(path, task, spec, gate)
    gate.finish()


def _load_task(path: Path, task: str, spec: SourceSpec, gate: RecordGate) -> Iterator[Record]:
    header = _read_header(path, gate)
    if header is None:
        return
    doc, instruction, sources, category, language = header
    benchmark = spec.benchmark or DEFAULT_BENCHMARK
    positives = _examples(doc.get("Positive Examples"))
    negatives = _examples(doc.get("Negative Examples"))
    outputs = as_str_tuple(doc.get("Output_language") or []) or ()
    # the official scorer's track follows the output language (English->German is xlingual)
    output_language = language_code(outputs[0]) if outputs else language
    for i, inst in enumerate(doc["Instances"]):
        gate.policy.count_read()
        where: str = f"Instances[{i}]"
        if not isinstance(inst, dict):
            gate.bad(path, where, None, "wrong_type", "an instance must be a JSON object")
            continue
        missing = [k for k in ("id", "input", "output") if k not in inst]
        if isinstance(inst.get("id"), str) and inst["id"].strip():
            where = inst["id"]
        if missing:
            gate.bad(path, where, missing[0], "missing_field", f"instance has no '{missing[0]}'")
            continue
        if not isinstance(inst["id"], str):
            gate.bad(path, where, "id", "wrong_type", "'id' must be a string")
            continue
        if not isinstance(inst["input"], str):
            gate.bad(path, where, "input", "wrong_type", "'input' must be a string")
            continue
        if not inst["input"].strip():
            gate.bad(path, where, "input", "empty_field", "'input' is empty")
            continue
        if not isinstance(inst["output"], list):
            gate.bad(path, where, "output", "outputs_not_list",
                     f"'output' must be a list of strings, got {type(inst['output']).__name__}")
            continue
        record = Record(
            benchmark=benchmark, task=task, category=category, sources=sources,
            instruction=instruction, input=inst["input"], outputs=outputs_value(inst["output"]),
            id=inst["id"], candidates=None,
            language=language, meta={"positive_examples": positives, "negative_examples": negatives,
                  "output_language": output_language})
        kept = gate.admit(record, path, where)
        if kept is not None:
            yield kept


def _read_header(path: Path, gate: RecordGate
                 ) -> Optional[Tuple[Dict[str, Any], str, Tuple[str, ...], str, str]]:
    """Parse the file and its task-level fields; on failure report one bad record and return None.

    A file with a bad task-level field counts every instance it lists as read and skipped; one that
    cannot be parsed counts as one record (its instances cannot be counted). Either way the accounting
    balances.
    """
    doc: Any = None

    def fail(fld: Optional[str], reason: str, detail: str, where: Union[int, str, None] = None) -> None:
        listed = doc.get("Instances") if isinstance(doc, dict) else None
        n = len(listed) if isinstance(listed, list) and listed else 1
        gate.policy.count_read(n)
        gate.bad(path, where, fld, reason, detail, records=n)

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(None, "invalid_utf8", f"invalid UTF-8 at byte {e.start}", raw.count(b"\n", 0, e.start) + 1)
        return None
    if not text.strip():
        fail(None, "empty_task_file", "the task file is empty")
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        fail(None, "malformed_json", f"malformed JSON at column {e.colno}: {e.msg}", e.lineno)
        return None
    if not isinstance(doc, dict):
        fail(None, "wrong_type", "a task file must hold a JSON object")
        return None
    for key in _REQUIRED:
        if key not in doc:
            fail(key, "missing_field", f"task file has no '{key}'")
            return None
    definition = doc["Definition"]
    if isinstance(definition, list):  # the real schema; older commits had a plain string
        definition = definition[0] if definition else ""
    if not isinstance(definition, str):
        fail("Definition", "wrong_type", "'Definition' must be a list of strings")
        return None
    if not definition.strip():
        fail("Definition", "empty_field", "'Definition' is empty")
        return None
    if not isinstance(doc["Instances"], list):
        fail("Instances", "wrong_type", "'Instances' must be a list")
        return None
    if not doc["Instances"]:
        fail("Instances", "empty_task_file", "the task has no instances")
        return None
    sources = as_str_tuple(doc["Source"])
    if sources is None:
        fail("Source", "wrong_type", "'Source' must be a list of strings")
        return None
    categories = as_str_tuple(doc["Categories"])
    if categories is None:
        fail("Categories", "wrong_type", "'Categories' must be a list of strings")
        return None
    category = categories[0] if categories and categories[0].strip() else gate.spec.category
    if not category:
        fail("Categories", "empty_field", "'Categories' is empty and the source sets no 'category'")
        return None
    languages = as_str_tuple(doc.get("Input_language") or [])
    language = gate.spec.language or (language_code(languages[0]) if languages else "en")
    return doc, definition, sources, category, language


def _examples(value: Any) -> List[Dict[str, str]]:
    """Input, output and (when it is a string) explanation of each of the task's positive or negative
    examples; malformed entries are not demos."""
    out = []
    for ex in value if isinstance(value, list) else []:
        if isinstance(ex, dict) and isinstance(ex.get("input"), str) and isinstance(ex.get("output"), str):
            kept = {"input": ex["input"], "output": ex["output"]}
            if isinstance(ex.get("explanation"), str):
                kept["explanation"] = ex["explanation"]
            out.append(kept)
    return out


def _read_list(path: Path) -> List[Tuple[int, str]]:
    """(line number, task name) for each non-blank line; `.json` suffixes are dropped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: split list is not valid UTF-8 ({e})") from e
    out = []
    for lineno, line in enumerate(lines, start=1):
        name = line.strip()
        if name:
            out.append((lineno, name[:-5] if name.endswith(".json") else name))
    return out


def _split_entries(split_dir: Union[str, Path]) -> Dict[str, List[Tuple[Path, int, str]]]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise ConfigError(f"SNI split directory '{split_dir}' does not exist")
    found: Dict[str, List[Tuple[Path, int, str]]] = {}
    first_seen: Dict[str, str] = {}
    for split, fname in SPLIT_FILES.items():
        path = split_dir / fname
        if not path.is_file():
            if split == "excluded":
                found[split] = []
                continue
            raise ConfigError(f"SNI split directory '{split_dir}' has no {fname}")
        entries = []
        for lineno, task in _read_list(path):
            here = f"{path}:{lineno}"
            if task in first_seen:
                raise ConfigError(f"{here}: task '{task}' is already listed at {first_seen[task]}")
            first_seen[task] = here
            entries.append((path, lineno, task))
        found[split] = entries
    return found


def read_split_lists(split_dir: Union[str, Path]) -> Dict[str, List[str]]:
    """{"train": [...], "test": [...], "excluded": [...]} from SNI's `splits/<name>/*_tasks.txt`.

    A task listed twice (in one file or in two) is a ConfigError naming both places;
    `excluded_tasks.txt` may be absent (a user's own split), the other two are required.
    """
    return {split: [task for _, _, task in entries] for split, entries in _split_entries(split_dir).items()}


def absent_split_tasks(split_dir: Union[str, Path], loaded_tasks: Iterable[str],
                       splits: Iterable[str] = ("train", "test")) -> List[Tuple[str, int, str]]:
    """(split file, line, task) for each task listed in `splits` but not among `loaded_tasks`."""
    loaded = set(loaded_tasks)
    entries = _split_entries(split_dir)
    return [(str(path), lineno, task) for split in splits for path, lineno, task in entries.get(split, [])
            if task not in loaded]

