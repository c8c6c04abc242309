"""Dialogue data (paper §4.7): turns joined by one newline, empty source, the whole dialogue as target,
trained at a share of the mixture; bad rows named by file, line and field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.sources import load_source
from optiml_plugin.benchfiles import Bench
from optiml_plugin.data.tokenizer import OptTokenizer
from optiml_plugin.data.training_data import open_run
from optiml_plugin.errors import BadRecordError, BadRecordPolicy
from optiml_plugin.recipe import DataFields

DIALOGUES = [["Hi there!", "Hello, how are you?", "Fine, thanks."], ["What is up?", "Not much."]]


def write_sources(root: Path) -> Path:
    (root / "chat").mkdir(parents=True)
    (root / "chat" / "bb3.jsonl").write_text(
        "".join(json.dumps({"id": f"d{i}", "turns": t}) + "\n" for i, t in enumerate(DIALOGUES)), encoding="utf-8")
    (root / "chat" / "more.txt").write_text("A: one\nB: two\n\nA: three\nB: four\n", encoding="utf-8")
    return root


def test_turns_join_with_one_newline_and_the_source_is_empty(tmp_path):
    write_sources(tmp_path)
    records = list(load_source({"type": "dialogue", "path": "chat"}, BadRecordPolicy("error"), base_dir=tmp_path))
    assert [r.outputs[0] for r in records] == ["Hi there!\nHello, how are you?\nFine, thanks.",
                                              "What is up?\nNot much.", "A: one\nB: two", "A: three\nB: four"]
    assert all(r.instruction == "" and r.input == "" and r.benchmark == "dialogue"
               and r.category == "Dialogue Data" for r in records)


def test_a_bad_turns_field_names_file_line_and_field(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"turns": ["ok"]}\n{"turns": "not a list"}\n', encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"d\.jsonl:2.*turns.*list of strings"):
        list(load_source({"type": "dialogue", "path": "d.jsonl"}, BadRecordPolicy("error"), base_dir=tmp_path))
    policy = BadRecordPolicy("skip")
    kept = list(load_source({"type": "dialogue", "path": "d.jsonl"}, policy, base_dir=tmp_path))
    assert len(kept) == 1 and policy.skipped == {"wrong_type": 1}


def test_dialogue_trains_at_its_share_with_the_whole_sequence_as_target(tmp_path):
    write_sources(tmp_path)
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(
        {"benchmark": "flan", "task": f"t{k}", "category": "Question Answering", "id": f"t{k}-{i}",
         "instruction": "Answer.", "input": f"question {i}", "outputs": [f"answer {i}"]}) + "\n"
        for k in range(2) for i in range(20)), encoding="utf-8")
    cfg = load_build_config({"seed": 1, "sources": [{"type": "dialogue", "path": "chat"},
                                                    {"type": "generic", "path": "gen.jsonl"}]}, base_dir=tmp_path)
    build_bench(cfg, tmp_path / "bench", progress=False)
    bench = Bench(tmp_path / "bench")
    # dialogue (like pre-training text) is training data only: no held-out instance of it is ever scored
    counts = {t["task"]: t["counts"] for t in bench.manifest["tasks"]}
    assert counts["dialogue"] == {"train": 4}
    assert any(k.endswith("heldout_instances") for k in counts["t0"])
    texts = [r["tgt"] for tf in bench.task_files("train") for r in bench.reader(tf)]
    tok = OptTokenizer.builtin(texts + [r["src"] for tf in bench.task_files("train") for r in bench.reader(tf)],
                               vocab_size=300)
    data = open_run(bench, tok, DataFields(tokens_per_sample=64, benchmark_proportions={"dialogue": 0.25},
                                                valid_splits=["valid_heldout_instances"]), 4, seed=2)
    assert data.mixture.effective_benchmark_probs()[data.benchmarks.index("dialogue")] == pytest.approx(0.25)
    batch = next(iter(data.batches))
    d = data.benchmarks.index("dialogue")
    seen = 0
    for r in range(batch["input_ids"].shape[0]):
        seg, bench_ids = batch["segment_ids"][r], batch["benchmark_ids"][r]
        for s in set(seg[bench_ids == d].tolist()):
            sel = seg == s
            # from the opening </s> on, every position predicts a target token (source empty, the whole
            # dialogue is the target); the closing </s> predicts nothing (the next example's start)
            mask = batch["loss_mask"][r][sel]
            assert bool(mask[:-1].all()) and not bool(mask[-1])
            assert "\n" in tok.decode(batch["target_ids"][r][sel].tolist())
            seen += 1
    assert seen > 0
