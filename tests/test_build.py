from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import List

import pytest

from optiml_plugin.benchfiles import Bench, SPLITS
from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.decontam import normalize_text
from optiml_plugin.bench.records import Record
from optiml_plugin.errors import BadRecordError, ConfigError, OptimlError


def records(task: str, n: int, category: str = "Cat", sources=None, benchmark: str = "b",
            inputs=None) -> List[Record]:
    return [Record(benchmark=benchmark, task=task, category=category, sources=tuple(sources or (task,)),
                   instruction=f"Do {task}.", input=inputs[i] if inputs else f"{task} input number {i}",
                   outputs=(f"out {i}",), id=f"{task}-{i}") for i in range(n)]


def cfg(**split):
    split.setdefault("heldout_valid", 2)
    split.setdefault("heldout_test", 2)
    return load_build_config({"sources": [{"type": "builtin"}], "split": split, "seed": 3})


def all_files(root: Path):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------- the real SNI sample (done-when)

def sni_config(sni_dir: Path, seed: int = 1):
    return load_build_config({
        "sources": [{"type": "sni", "path": str(sni_dir / "tasks")}],
        "split": {"sni_split_dir": str(sni_dir / "splits" / "default"),
                  "heldout_tasks": ["task751_svamp_subtraction_question_answering",
                                    "task1331_reverse_array"],
                  "eval_test": 20, "eval_valid": 20, "heldout_valid": 5, "heldout_test": 5},
        "seed": seed})


def test_sni_bench_levels_decontamination_and_accounting(sni_dir, tmp_path):
    m = build_bench(sni_config(sni_dir), tmp_path / "bench", progress=False)
    bench = Bench(tmp_path / "bench")
    lists = {w: set((sni_dir / "splits" / "default" / f"{w}_tasks.txt").read_text().split())
             for w in ("train", "test", "excluded")}
    tasks = {t["task"]: t for t in m["tasks"]}
    train_cats = {t["category"] for t in m["tasks"] if t["level"] == "train"}
    assert not set(tasks) & lists["excluded"]
    for name, t in tasks.items():
        if name in lists["test"] or name in ("task751_svamp_subtraction_question_answering",
                                             "task1331_reverse_array"):
            want = "heldout_tasks" if t["category"] in train_cats else "heldout_categories"
            assert t["level"] == want, name
        else:
            assert t["level"] == "train", name
    assert tasks["task751_svamp_subtraction_question_answering"]["level"] == "heldout_tasks"
    assert tasks["task190_snli_classification"]["level"] == "heldout_categories"
    assert tasks["task1331_reverse_array"]["level"] == "heldout_categories"  # its peer task063 is gone
    # no training task shares a Source with an evaluation task (task063 shared "synthetic" with 1331)
    eval_sources = {s for t in m["tasks"] if t["level"] != "train" for s in t["sources"]}
    assert not eval_sources & {s for t in m["tasks"] if t["level"] == "train" for s in t["sources"]}
    assert {d["task"]: d["reason"] for d in m["split_plan"]["dropped_tasks"]}[
        "task063_first_i_elements"] == "source_overlap"
    # no training instance equals an evaluation instance (normalized input)
    eval_inputs = {normalize_text(r["input"]) for s in SPLITS[1:] for tf in bench.task_files(s)
                   for r in bench.reader(tf)}
    train_rows = [r for tf in bench.task_files("train") for r in bench.reader(tf)]
    assert train_rows and not any(normalize_text(r["input"]) in eval_inputs for r in train_rows)
    # counts balance and match the files
    acc = m["accounting"]
    assert acc["balanced"] and acc["read"] == 1350
    assert acc["read"] == acc["kept"] + sum(acc["skipped"].values()) + sum(acc["removed"].values())
    assert acc["removed"]["sni_excluded"] == 81
    assert acc["kept"] == sum(len(bench.reader(tf)) for s in SPLITS for tf in bench.task_files(s))
    row = bench.read(bench.task_files("test_heldout_categories")[0], 0)
    assert list(row) == ["id", "benchmark", "category", "task", "split", "src", "tgt", "references",
                         "candidates", "instruction", "input", "template", "language", "output_language"]
    assert row["tgt"] == row["references"][0] and row["src"].startswith(row["instruction"].strip()[:20])
    # what eval needs to reproduce published SNI numbers: the draw, positive examples, output language
    assert "first 20" in m["split_plan"]["eval_draw"]["test"]
    snli = tasks["task190_snli_classification"]
    assert len(snli["positive_examples"]) >= 2
    assert set(snli["positive_examples"][0]) == {"input", "output", "explanation"}
    assert len(snli["negative_examples"]) == 2  # Tk-Instruct's pos_2_neg_2 prompts (eval/prompts.py)
    assert row["output_language"] == "en"


def test_sni_same_seed_identical_other_seed_changes_instance_holdout(sni_dir, tmp_path):
    build_bench(sni_config(sni_dir, 1), tmp_path / "a", progress=False)
    build_bench(sni_config(sni_dir, 1), tmp_path / "b", progress=False)
    build_bench(sni_config(sni_dir, 2), tmp_path / "c", progress=False)
    a, b, c = (all_files(tmp_path / x) for x in "abc")
    assert a == b
    ids = lambda files, split: sorted(json.loads(line)["id"] for k, v in files.items()  # noqa: E731
                                      if k.startswith(split + "/") and k.endswith(".jsonl")
                                      for line in v.splitlines())
    assert ids(a, "test_heldout_instances") != ids(c, "test_heldout_instances")
    assert ids(a, "test_heldout_categories") == ids(c, "test_heldout_categories")


def test_prompt_format_is_a_build_setting_recorded_in_the_manifest(sni_dir, tmp_path):
    """`prompt_format: sni` renders SNI rows as Tk-Instruct's 0-shot prompt; the manifest says which."""
    raw = dict(sni_config(sni_dir).raw, prompt_format="sni")
    m = build_bench(load_build_config(raw), tmp_path / "sni_format", progress=False)
    assert m["prompt_format"] == "sni"
    bench = Bench(tmp_path / "sni_format")
    row = bench.read(bench.task_files("train")[0], 0)
    assert row["src"].startswith("Definition: ") and row["src"].endswith("\nOutput: ")
    assert "Now complete the following example -\nInput: " in row["src"]
    with pytest.raises(ConfigError, match=r"prompt_format: must be one of \['paper', 'sni'\]"):
        load_build_config(dict(raw, prompt_format="tk"))


def test_sni_listed_but_absent_is_an_error_when_lists_are_complete(sni_dir, tmp_path):
    config = load_build_config({"sources": [{"type": "sni", "path": str(sni_dir / "tasks")}],
                                "split": {"sni_split_dir": str(sni_dir / "splits" / "default"),
                                          "sni_lists_complete": True}})
    with pytest.raises(BadRecordError, match=r"train_tasks.txt:\d+.*listed but no source has it"):
        build_bench(config, tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


# -------------------------------------------------------------------------- constructed records

def test_decontamination_source_overlap_exact_input_and_ngram(tmp_path):
    long = "the quick brown fox jumps over the lazy dog near the river bank today again"
    recs = (records("train_a", 20, "A", ("shared",)) + records("train_b", 20, "B", ("b",))
            + records("train_c", 20, "C", ("c",), inputs=[f"{long} {i}" for i in range(20)])
            + records("eval_x", 10, "X", ("shared", "x"), inputs=["train_b input number 3"] + [
                f"eval {i}" for i in range(1, 10)])
            + records("eval_y", 4, "Y", ("y",), inputs=[long, "a", "b", "c"]))
    m = build_bench(cfg(heldout_tasks=["eval_x", "eval_y"], heldout_valid=0, heldout_test=0),
                    tmp_path / "b", records=recs, progress=False)
    dc = m["decontamination"]
    assert [t["task"] for t in dc["source_overlap"]["tasks"]] == ["train_a"]
    assert dc["exact_input"] == {"removed": 1, "by_task": {"train_b": 1}}
    flagged = {(p["train_task"], p["eval_task"]): p["fraction"] for p in dc["ngram"]["flagged"]}
    assert flagged == {("train_c", "eval_y"): 0.25}
    assert m["accounting"]["removed"] == {"exact_input_match": 1, "source_overlap": 20}
    m2 = build_bench(load_build_config({"sources": [{"type": "builtin"}], "seed": 3, "split": {
        "heldout_tasks": ["eval_x", "eval_y"], "heldout_valid": 0, "heldout_test": 0},
        "decontamination": {"drop_flagged": True, "source_overlap": "move"}}),
        tmp_path / "c", records=recs, progress=False)
    levels = {t["task"]: t["level"] for t in m2["tasks"]}
    assert "train_c" not in levels and levels["train_a"] == "heldout_categories"
    assert m2["accounting"]["removed"]["ngram_overlap"] == 20 and m2["accounting"]["balanced"]


def test_caps_and_eval_caps_are_counted(tmp_path):
    recs = records("big", 50, benchmark="flan") + records("small", 30) + records("ev", 30, "E")
    config = load_build_config({"sources": [{"type": "builtin"}], "caps": {"flan": 10, "default": 20},
                                "split": {"heldout_tasks": ["ev"], "eval_valid": 5, "eval_test": 7,
                                          "heldout_valid": 2, "heldout_test": 3}})
    m = build_bench(config, tmp_path / "b", records=recs, progress=False)
    counts = {t["task"]: t["counts"] for t in m["tasks"]}
    assert counts["big"] == {"train": 10, "valid_heldout_instances": 2, "test_heldout_instances": 3}
    assert counts["small"]["train"] == 20
    assert counts["ev"] == {"test_heldout_categories": 7}  # a test task gives no valid rows (dev apart from test)
    assert m["accounting"]["removed"] == {"eval_cap": 23, "train_cap": 35 + 5}
    raw = dict(config.raw, split=dict(config.raw["split"], test_tasks_give_valid=True))
    m = build_bench(load_build_config(raw), tmp_path / "old", records=recs, progress=False)
    assert {t["task"]: t["counts"] for t in m["tasks"]}["ev"] == {"valid_heldout_categories": 5,
                                                                  "test_heldout_categories": 7}
    assert m["accounting"]["removed"]["eval_cap"] == 18


@pytest.mark.parametrize("make,reason", [
    (lambda: records("t", 5) + [dataclasses.replace(records("u", 1)[0], id="t-0")], "duplicate_id"),
    (lambda: records("t", 5) + records("u", 3, category=""), "unknown_category"),
    (lambda: records("t", 5) + [Record(benchmark="b", task="t", category="Cat", sources=("s",),
                                       instruction="i", input="x", outputs=(), id="bad")],
     "outputs_not_list"),
])
def test_bad_records_error_by_default_and_counted_with_skip(tmp_path, make, reason):
    with pytest.raises(BadRecordError) as e:
        build_bench(cfg(), tmp_path / "e", records=make(), progress=False)
    assert e.value.reason == reason and e.value.field
    config = load_build_config({"sources": [{"type": "builtin"}], "on_bad_record": "skip",
                                "split": {"heldout_valid": 1, "heldout_test": 1}})
    m = build_bench(config, tmp_path / "s", records=make(), progress=False)
    acc = m["accounting"]
    assert acc["skipped"][reason] >= 1 and acc["balanced"] and acc["skipped_examples"]


@pytest.mark.parametrize("split,reason", [({"heldout_tasks": ["missing"]}, "listed_task_absent"),
                                          ({"heldout_categories": ["Nope"]}, "unknown_category")])
def test_bad_split_plan_error_or_counted(tmp_path, split, reason):
    with pytest.raises(BadRecordError, match=reason):
        build_bench(cfg(**split), tmp_path / "e", records=records("t", 8), progress=False)
    config = load_build_config({"sources": [{"type": "builtin"}], "on_bad_record": "skip", "split": split})
    m = build_bench(config, tmp_path / "s", records=records("t", 8), progress=False)
    assert m["split_plan"]["problems"]["skipped"] == {reason: 1} and m["accounting"]["balanced"]


def test_split_file_task_absent_names_the_file(tmp_path):
    (tmp_path / "held.txt").write_text("# held-out tasks\nt\nghost\n")
    (tmp_path / "c.yaml").write_text("sources: [{type: builtin}]\nsplit: {heldout_tasks: held.txt}\n")
    with pytest.raises(BadRecordError, match=r"held.txt.*ghost"):
        build_bench(load_build_config(tmp_path / "c.yaml"), tmp_path / "e", records=records("t", 8),
                    progress=False)


@pytest.mark.parametrize("raw,needle", [
    ({"sources": [{"type": "builtin"}], "bogus": 1}, "bogus: unknown key"),
    ({"sources": [{"type": "builtin"}], "split": {"eval_tests": 3}}, "split.eval_tests: unknown key"),
    ({"sources": [{"type": "builtin"}], "decontamination": {"ngrams": 3}}, "decontamination.ngrams: unknown key"),
    ({"sources": [{"type": "builtin"}], "decontamination": {"threshold": 2}}, "decontamination.threshold:"),
    ({"sources": [{"type": "builtin"}], "seed": -1}, "seed: Input should be greater than or equal to 0"),
    ({"sources": [{"type": "builtin"}], "on_bad_record": "ignore"}, "on_bad_record: must be one of"),
    ({"sources": []}, "sources:"),
    ({"sources": [{"type": "builtin"}], "caps": {"flan": 0}}, "caps.flan:"),
    ({"sources": [{"type": "builtin"}], "split": {"heldout_valid": 2.5}}, "split.heldout_valid:"),
])
def test_config_errors_name_the_key(raw, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_build_config(raw)


def test_threshold_written_with_an_exponent_is_a_number(tmp_path):
    """`decontamination.threshold: 1e-2` (YAML 1.1 reads a string) was refused; the recipe's number rule."""
    (tmp_path / "c.yaml").write_text("sources: [{type: builtin}]\ndecontamination: {threshold: 1e-2}\n")
    assert load_build_config(tmp_path / "c.yaml").decontamination.threshold == 0.01


def test_existing_output_is_refused_and_failed_build_leaves_nothing(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    with pytest.raises(OptimlError, match="already exists"):
        build_bench(cfg(), tmp_path / "full", records=records("t", 8), progress=False)
    assert (tmp_path / "full" / "x").read_text() == "keep"
    with pytest.raises(BadRecordError):
        build_bench(cfg(heldout_tasks=["ghost"]), tmp_path / "new", records=records("t", 8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    with pytest.raises(OptimlError, match="not an optiml bench"):  # --overwrite replaces only a bench
        build_bench(cfg(), tmp_path / "full", records=records("t", 8), overwrite=True, progress=False)
    assert (tmp_path / "full" / "x").read_text() == "keep"
    build_bench(cfg(), tmp_path / "bench", records=records("t", 4), progress=False)
    build_bench(cfg(), tmp_path / "bench", records=records("t", 8), overwrite=True, progress=False)
    assert Bench(tmp_path / "bench").manifest["accounting"]["kept"] == 8


def test_example_config_validates():
    config = load_build_config(Path(__file__).resolve().parents[1] / "examples" / "bench_sni.yaml")
    assert config.split.sni_split_dir and config.decontamination.allowed_shared_sources == ("synthetic",)
    assert config.cap_for("flan") == 30_000 and config.cap_for("niv2") == 100_000


def test_a_build_file_error_names_file_line_and_key(tmp_path):
    """The build config goes through the recipe's schema rules: the error names the line of the key."""
    (tmp_path / "c.yaml").write_text("sources:\n  - {type: builtin}\nsplit:\n  eval_valid: 10\n"
                                     "  heldout_test: -3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:5: split\.heldout_test: Input should be greater than or equal"):
        load_build_config(tmp_path / "c.yaml")


def test_build_sections_mirror_the_builders_configs():
    """One schema per section, key for key the dataclass the builder reads (nothing checked by hand)."""
    import dataclasses

    from optiml_plugin.bench.build_config import DecontamSection, SplitSection
    from optiml_plugin.bench.decontam import DecontamConfig
    from optiml_plugin.bench.splits import SplitConfig

    assert set(SplitSection.model_fields) == {f.name for f in dataclasses.fields(SplitConfig)} - {"origins"}
    assert set(DecontamSection.model_fields) == {f.name for f in dataclasses.fields(DecontamConfig)}
    assert load_build_config({"sources": [{"type": "builtin"}]}).split == SplitConfig()
    assert load_build_config({"sources": [{"type": "builtin"}]}).decontamination == DecontamConfig()
