"""A synthetic bench that exercises every step of the builder, and the digests of what it builds.

Why: the builder was rewritten to run in bounded memory on two processes (bench/build.py); its bench
must stay byte for byte what the in-memory builder wrote. `GOLDEN_FILE` holds the sha256 of every
file the in-memory builder (commit fc86fa2, bench format 1) wrote for these configs, made with
`python tests/golden_build.py --write` at that commit; tests/test_build_golden.py rebuilds, turns the
bench back into format 1 (`as_format1`: format 2 only leaves out rows' instructions equal to their
task's) and compares. Re-written once where the bench's rules changed (issue 22): the FLAN eval
tasks' files (no training-split rows in test), test tasks' valid files (gone: dev tasks apart from
test tasks), task05's training file in `official` (its exact-input matches follow task04's test
set), the review file (both sides of each pair) and the manifests; every other file is still the
in-memory builder's.
The records hit: held-out tasks and a held-out category, SNI-style tasks with positive examples and
an output language, templates (multiplexing), candidates, release splits (official held-out rows),
a source shared with an eval task, exact-input and 13-gram overlap, duplicate ids (within and across
tasks), an empty and an inconsistent category, and invalid records (skipped under `skip`).
"""
from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from optiml_plugin.bench.records import Record  # noqa: E402

GOLDEN_FILE = Path(__file__).parent / "data" / "build_golden.json"
WORDS = [f"w{i}" for i in range(300)]
CATS = ["Question Answering", "Summarization", "Sentiment Analysis", "Textual Entailment"]
LONG = "the quick brown fox jumps over the lazy dog near the river bank today again and again"


def golden_records(seed: int = 7) -> List[Record]:
    rng = random.Random(seed)
    out: List[Record] = []
    for t in range(24):
        name, bench = f"task{t:02d}", ("sni", "flan", "gen")[t % 3]
        cat = CATS[t % len(CATS)]
        n = 30 + 7 * t
        for i in range(n):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
            if t == 5 and i % 4 == 0:
                words = f"{LONG} {i}"  # 13-gram overlap with task04's eval instances
            if t == 7 and i < 3:
                words = f"shared input {i}"  # exact-input overlap with task01
            meta: Dict[str, Any] = {}
            if bench == "sni":
                meta = {"positive_examples": [{"input": "ex in", "output": "ex out"}],
                        "output_language": "de" if t == 9 else "en"}
            if bench == "flan":
                meta["split"] = ("train", "train", "validation", "test")[i % 4]
            candidates = tuple(rng.sample(WORDS[:20], 3)) if t % 4 == 1 else None
            outputs = (candidates[0],) if candidates else (rng.choice(WORDS), rng.choice(WORDS))
            out.append(Record(
                benchmark=bench, task=name, category=cat,
                sources=(f"src{t}",) if t != 6 else ("src1", "src6"),  # task06 shares eval task01's source
                instruction=f"Instruction of {name}." if bench != "flan" else "",
                input=words, outputs=outputs, id=f"{name}-{i}", candidates=candidates,
                language="en", template=f"tpl{i % 3}" if bench == "flan" else "", meta=meta))
    task04 = [r for r in out if r.task == "task04"]
    for j, r in enumerate(task04[:10]):
        out[out.index(r)] = Record(**{**r.to_dict(), "input": f"{LONG} {j}", "sources": tuple(r.sources),
                                      "outputs": tuple(r.outputs), "meta": r.meta})
    task01 = [r for r in out if r.task == "task01"]
    for j, r in enumerate(task01[:3]):
        out[out.index(r)] = Record(**{**r.to_dict(), "input": f"Shared   INPUT {j}!", "sources": tuple(r.sources),
                                      "outputs": tuple(r.outputs), "candidates": r.candidates, "meta": r.meta})
    extra = [
        Record(benchmark="gen", task="task02", category=CATS[2], sources=("src2",), instruction="x",
               input="dup", outputs=("o",), id="task02-3"),  # duplicate id within a task
        Record(benchmark="gen", task="task08", category=CATS[0], sources=("src8",), instruction="x",
               input="dup", outputs=("o",), id="task03-1"),  # duplicate id across tasks
        Record(benchmark="gen", task="task08", category="", sources=("src8",), instruction="x",
               input="no cat", outputs=("o",), id="nocat-1"),  # empty category
        Record(benchmark="gen", task="task08", category="Other", sources=("src8",), instruction="x",
               input="other cat", outputs=("o",), id="othercat-1"),  # inconsistent category
        Record(benchmark="gen", task="task08", category=CATS[0], sources=("src8",), instruction="x",
               input="empty", outputs=("",), id="empty-1"),  # invalid: every output empty
    ]
    for k, r in enumerate(extra):
        out.insert(40 + 25 * k, r)
    return out


def golden_configs() -> Dict[str, Dict[str, Any]]:
    base = {"sources": [{"type": "builtin"}], "seed": 11, "on_bad_record": "skip"}
    return {
        "random": dict(base, split={"heldout_tasks": ["task04", "task01", "task10"],
                                    "heldout_categories": ["Textual Entailment"],
                                    "heldout_valid": 4, "heldout_test": 3, "eval_valid": 9, "eval_test": 6},
                       caps={"default": 60, "flan": 25},
                       decontamination={"drop_flagged": True, "threshold": 0.05}),
        "official": dict(base, heldout_instances="official", prompt_format="sni",
                         split={"heldout_tasks": ["task04", "task01"], "valid_tasks": ["task10"],
                                "heldout_valid": 3, "heldout_test": 3, "eval_valid": 8, "eval_test": 5,
                                "eval_test_all": ["flan"]},
                         decontamination={"source_overlap": "move", "threshold": 0.05,
                                          "allowed_pairs": ["task05/task04"]}),
    }


def write_jsonl_sources(folder: Path) -> None:
    """The records as generic JSONL rows, one file per benchmark (the loaders' path, several files)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {b: (folder / f"{b}.jsonl").open("w", encoding="utf-8") for b in ("flan", "gen", "sni")}
    for r in golden_records():
        row = {"benchmark": r.benchmark, "task": r.task, "category": r.category, "sources": list(r.sources),
               "instruction": r.instruction, "input": r.input, "outputs": list(r.outputs), "id": r.id,
               "template": r.template, "candidates": None if r.candidates is None else list(r.candidates)}
        if "split" in r.meta:
            row["split"] = r.meta["split"]
        files[r.benchmark].write(json.dumps(row) + "\n")
    files["gen"].write("{not json\n")
    for f in files.values():
        f.close()


def bench_digests(root: Path, tmp: Path) -> Dict[str, str]:
    """sha256 of every file under `root`; the manifest's `optiml_version` is blanked (a release bump
    is not a change of the bench); the temporary folder's path is written `<tmp>`, the repository's
    (the taxonomy's, in messages) `<repo>`."""
    out = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes().replace(str(tmp).encode(), b"<tmp>").replace(str(ROOT).encode(), b"<repo>")
        if p.name == "manifest.json":
            m = json.loads(data)
            m["optiml_version"] = ""
            data = json.dumps(m, ensure_ascii=False, indent=1).encode("utf-8")
        out[p.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def as_format1(root: Path) -> Path:
    """Rewrite a format-2 bench as format 1 in place: every row's instruction back before its input
    (indexes rewritten), the manifest without the tasks' `instruction` and with version 1."""
    import numpy as np

    from optiml_plugin.benchfiles import dumps_line, with_instruction

    manifest = json.loads((root / "manifest.json").read_text())
    for entry in manifest["tasks"]:
        instruction = entry.pop("instruction", None)
        for rel in entry["files"].values():
            lines = [json.loads(x) for x in (root / rel).read_bytes().splitlines()]
            if instruction is not None:
                lines = [row if "instruction" in row else with_instruction(row, instruction) for row in lines]
            chunks = [dumps_line(row) for row in lines]
            (root / rel).write_bytes(b"".join(chunks))
            offsets = np.zeros(len(chunks) + 1, dtype="<u8")
            np.cumsum([len(c) for c in chunks], out=offsets[1:])
            (root / f"{rel}.idx").write_bytes(offsets.tobytes())
    manifest["version"] = 1
    (root / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return root


def build_all(tmp: Path, **kwargs: Any) -> Dict[str, Dict[str, str]]:
    from optiml_plugin.bench.build import build_bench, load_build_config

    out = {}
    for name, raw in golden_configs().items():
        build_bench(load_build_config(raw), tmp / name, records=golden_records(), progress=False, **kwargs)
        out[name] = bench_digests(as_format1(tmp / name), tmp)
    write_jsonl_sources(tmp / "data")
    raw = dict(golden_configs()["random"], sources=[{"type": "generic", "path": "data"}])
    build_bench(load_build_config(raw, base_dir=tmp), tmp / "jsonl", progress=False, **kwargs)
    out["jsonl"] = bench_digests(as_format1(tmp / "jsonl"), tmp)
    return out


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:  # digests of the format-1 bench (as_format1)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        digests = build_all(Path(d))
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    GOLDEN_FILE.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN_FILE}: {sum(len(v) for v in digests.values())} files")
