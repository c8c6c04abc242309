"""Prompt multiplexing (paper §4.1): the task is the dataset and draws N of its pooled instantiations."""
from __future__ import annotations

import json
from collections import Counter

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.multiplex import multiplex_train
from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources import load_source
from optiml_plugin.bench.sources.p3 import dataset_and_template
from optiml_plugin.errors import BadRecordPolicy


def instantiations(task: str, sizes, benchmark: str = "promptsource"):
    """`sizes[t]` instantiations of template t (template t covers examples 0..sizes[t]-1)."""
    return [Record(benchmark=benchmark, task=task, category="Cat", sources=(task,), instruction="",
                   input=f"template {t} asks about example {i} of {task}", outputs=(f"answer {i}",),
                   id=f"{task}-t{t}-{i}", template=f"t{t}")
            for t, n in enumerate(sizes) for i in range(n)]


def test_pool_draws_as_many_as_one_template_has():
    recs = instantiations("copa", [40, 40, 25])
    templates = [r.template for r in recs]
    kept, mux = multiplex_train(templates, list(range(len(recs))), seed=1, key=("promptsource", "copa"))
    assert (mux.templates, mux.instantiations, mux.drawn) == (3, 105, 40)
    assert len(kept) == 40 and kept == sorted(kept) and len(set(kept)) == 40
    assert len(Counter(recs[i].template for i in kept)) == 3  # drawn from every template's pool
    again, _ = multiplex_train(templates, list(range(len(recs))), seed=1, key=("promptsource", "copa"))
    other, _ = multiplex_train(templates, list(range(len(recs))), seed=2, key=("promptsource", "copa"))
    assert again == kept and other != kept
    single = instantiations("sst2", [30])
    assert multiplex_train([r.template for r in single], list(range(30)), 1, ("b", "sst2")) == (list(range(30)), None)


def test_p3_exports_one_task_per_template_group_by_dataset(tmp_path):
    assert dataset_and_template("super_glue_copa__As_a_result_C1_or_C2_", "", ["super_glue_copa", "super_glue"]
                                ) == ("super_glue_copa", "_As_a_result_C1_or_C2_")
    assert dataset_and_template("cos_e_v1.11_explain_why_human", "", ["cos_e_v1.11"]) == (
        "cos_e_v1.11", "explain_why_human")
    assert dataset_and_template("my_task", "", ["super_glue_copa"]) == ("my_task", "")
    for name in ("super_glue_copa_best_option", "super_glue_copa_cause_effect"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(
            {"inputs_pretokenized": f"{name} prompt {i}", "targets_pretokenized": "a", "idx": i}) + "\n"
            for i in range(3)), encoding="utf-8")
    recs = list(load_source({"type": "p3", "path": str(tmp_path)}, BadRecordPolicy("error")))
    assert {r.task for r in recs} == {"super_glue_copa"} and len({r.id for r in recs}) == 6
    assert {r.template for r in recs} == {"best_option", "cause_effect"}
    assert {r.sources for r in recs} == {("super_glue_copa",)}
    # a template column next to the dataset name groups as well; group_templates: false keeps templates apart
    rows = [{"inputs": "p", "targets": "a", "task": "super_glue_copa_best_option", "template_name": "best_option"},
            {"inputs": "q", "targets": "a", "task": "super_glue_copa", "template_name": "cause_effect", "idx": 0}]
    (tmp_path / "cols.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recs = list(load_source({"type": "p3", "path": str(tmp_path / "cols.jsonl")}, BadRecordPolicy("error")))
    assert [r.task for r in recs] == ["super_glue_copa", "super_glue_copa"]
    assert recs[1].id == "super_glue_copa_cause_effect-0"
    recs = list(load_source({"type": "p3", "path": str(tmp_path / "cols.jsonl"), "group_templates": False},
                            BadRecordPolicy("error")))
    assert [r.task for r in recs] == ["super_glue_copa_best_option", "super_glue_copa"]


def test_build_multiplexes_training_tasks_and_reports_it(tmp_path):
    recs = instantiations("copa", [100, 100, 100, 60]) + instantiations("eval_x", [10, 10])
    raw = {"sources": [{"type": "builtin"}], "seed": 3,
           "split": {"heldout_tasks": ["eval_x"], "heldout_valid": 0, "heldout_test": 0}}
    m = build_bench(load_build_config(raw), tmp_path / "on", records=recs, progress=False)
    assert m["multiplexing"] == {"enabled": True, "tasks": [
        {"benchmark": "promptsource", "task": "copa", "templates": 4, "instantiations": 360, "drawn": 100}]}
    counts = {t["task"]: t["counts"] for t in m["tasks"]}
    assert counts["copa"] == {"train": 100}
    assert sum(counts["eval_x"].values()) == 20  # evaluation tasks keep every variant
    assert m["accounting"]["removed"] == {"multiplex": 260} and m["accounting"]["balanced"]
    off = build_bench(load_build_config(dict(raw, multiplex=False)), tmp_path / "off", records=recs,
                      progress=False)
    assert off["multiplexing"]["tasks"] == [] and {t["task"]: t["counts"] for t in off["tasks"]}[
        "copa"]["train"] == 360
    assert "multiplex" not in off["accounting"]["removed"]


def test_multiplex_config_must_be_a_bool():
    import pytest

    from optiml_plugin.errors import ConfigError
    with pytest.raises(ConfigError, match="multiplex: Input should be a valid boolean"):
        load_build_config({"sources": [{"type": "builtin"}], "multiplex": "yes"})
    assert load_build_config({"sources": [{"type": "builtin"}]}).multiplex is True


def test_p3_hub_snapshot_layout_names_tasks_by_folder(tmp_path):
    pa = __import__("pytest").importorskip("pyarrow")
    import pyarrow.parquet as pq
    for name in ("super_glue_copa_best_option", "super_glue_copa_cause_effect"):
        (tmp_path / name).mkdir()
        for split in ("train", "validation"):
            table = pa.Table.from_pylist([{"inputs_pretokenized": f"{name} {split} {i}", "targets_pretokenized": "a",
                                           "inputs": [1], "targets": [2]} for i in range(2)])
            pq.write_table(table, str(tmp_path / name / f"{split}-00000-of-00001.parquet"))
    recs = list(load_source({"type": "p3", "path": str(tmp_path)}, BadRecordPolicy("error")))
    assert {r.task for r in recs} == {"super_glue_copa"} and len({r.id for r in recs}) == 8
    assert sorted(r.meta["split"] for r in recs) == ["train"] * 4 + ["validation"] * 4


def test_p3_score_eval_rows_are_refused(tmp_path):
    import pytest

    from optiml_plugin.errors import BadRecordError
    rows = [{"inputs_pretokenized": "q", "targets_pretokenized": t, "is_correct": t == "a", "idx": [0, i]}
            for i, t in enumerate("ab")]
    path = tmp_path / "super_glue_copa_best_option_score_eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(BadRecordError, match=r"score_eval\.jsonl:1: field 'is_correct'.*score_eval_row"):
        list(load_source({"type": "p3", "path": str(path)}, BadRecordPolicy("error")))
    policy = BadRecordPolicy("skip")
    assert list(load_source({"type": "p3", "path": str(path)}, policy)) == []
    assert policy.skipped == {"score_eval_row": 2}
