"""The `datasets` source: Hugging Face datasets built in code, saved to disk, read by column mapping."""
from __future__ import annotations

import json

import pytest

from optiml_plugin.bench.sources import load_source
from optiml_plugin.bench.templates import render
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError

try:
    import datasets
except ImportError:  # skipped per test, not at collection: `pytest -m metaseq` runs without the hf extra
    datasets = None
pytestmark = pytest.mark.skipif(datasets is None, reason="could not import 'datasets' (pip install optiml[hf])")

# the published columns (bigscience/P3, the FLAN collection exports, Muennighoff/natural-instructions)
P3 = {"inputs": [[1, 2], [3]],
      "inputs_pretokenized": ["Pick the cause:\n- rain\n- sun", "Pick the effect:\n- wet\n- dry"],
      "targets": [[4], [5]], "targets_pretokenized": ["rain", "wet"],
      "answer_choices": [["rain", "sun"], ["wet", "dry"]]}
FLAN = {"inputs": ["Is it red?\n\nOPTIONS:\n- yes\n- no", "Translate: hallo"], "targets": ["yes", "hello"],
        "task_source": ["Flan2021", "Flan2021"], "task_name": ["boolq:1.0.0", "wmt16_translate_de-en:1.0.0"],
        "template_type": ["zsopt", "zsnoopt"]}
SNI = {"task_name": ["task001_quoref_question_generation"] * 2, "id": ["task001-a", "task001-b"],
       "definition": ["Write a question."] * 2, "inputs": ["Passage one.", "Passage two."],
       "targets": ["Who?", "What?"]}


def _load(spec, mode="error"):
    policy = BadRecordPolicy(mode)
    return list(load_source(spec, policy)), policy


def test_p3_save_to_disk_dataset_dict_groups_templates_and_keeps_splits(tmp_path):
    for template in ("super_glue_copa_best_option", "super_glue_copa_cause_effect"):
        datasets.DatasetDict({"train": datasets.Dataset.from_dict(P3),
                              "validation": datasets.Dataset.from_dict(P3)}).save_to_disk(str(tmp_path / template))
    records, policy = _load({"type": "datasets", "format": "p3", "path": str(tmp_path)})
    assert policy.read == 8 == len(records)
    assert {r.task for r in records} == {"super_glue_copa"} and records[0].benchmark == "promptsource"
    assert {r.template for r in records} == {"best_option", "cause_effect"}
    assert sorted({r.meta["split"] for r in records}) == ["train", "validation"]
    assert records[0].candidates == ("rain", "sun") and "OPTIONS" not in render(records[0], 0).src
    assert records[0].meta["path"].endswith("super_glue_copa_best_option/train")
    train_only, _ = _load({"type": "datasets", "format": "p3", "path": str(tmp_path / "super_glue_*"),
                           "splits": "train"})
    assert len(train_only) == 4 and {r.task for r in train_only} == {"super_glue_copa"}
    with pytest.raises(ConfigError, match=r"super_glue_copa_best_option: splits nope not found \(splits: train, "):
        _load({"type": "datasets", "format": "p3", "path": str(tmp_path), "splits": ["nope"]})


@pytest.mark.parametrize("columns,message", [
    # measured: "row has no 'targets' [missing_field]"
    ({"inputs_pretokenized": ["q"], "targets_pretokenized": [7]},
     r"x/train:1: field 'targets_pretokenized': column 'targets_pretokenized' must be a string, got int "
     r"\[wrong_type\]"),
    # measured: the message named the internal field 'outputs'
    ({"inputs_pretokenized": ["q"], "targets": [7]},
     r"x/train:1: field 'targets': column 'targets' must be a string or a list of strings, got int "
     r"\[wrong_type\]"),
    ({"inputs": [[1, 2]], "targets_pretokenized": ["a"]},
     r"x/train:1: field 'inputs': column 'inputs' must be a string, got list of int \[wrong_type\]"),
])
def test_wrong_typed_columns_name_the_column_the_type_and_the_file(tmp_path, columns, message):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "x"))
    with pytest.raises(BadRecordError, match=message):
        _load({"type": "datasets", "format": "p3", "path": str(tmp_path / "x")})


def test_a_mapped_column_of_the_wrong_type_is_named_as_the_data_names_it(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(dict(SNI, targets=[1, 2]))}).save_to_disk(
        str(tmp_path / "sni"))
    with pytest.raises(BadRecordError, match=r"sni/train:1: field 'targets': 'output' must be a string, got int "
                                             r"\(column 'targets', read as 'output'\) \[wrong_type\]"):
        _load({"type": "datasets", "format": "sni", "path": str(tmp_path / "sni"), "category": "QG"})


def test_flan_and_sni_exports_by_their_published_columns(tmp_path):
    datasets.Dataset.from_dict(FLAN).save_to_disk(str(tmp_path / "flan"))
    records, _ = _load({"type": "datasets", "format": "flan", "path": str(tmp_path / "flan")})
    assert [r.task for r in records] == ["boolq", "wmt16_translate_de-en"]
    assert render(records[0], 0).src.count("OPTIONS:") == 1 and records[0].benchmark == "flan"
    datasets.Dataset.from_dict(SNI).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    records, _ = _load({"type": "datasets", "format": "sni", "path": str(tmp_path / "train-00000-of-00001.parquet"),
                        "category": "Question Generation"})
    r = records[0]
    assert (r.benchmark, r.task, r.instruction, r.input, r.outputs, r.id, r.meta["split"]) == (
        "niv2", "task001_quoref_question_generation", "Write a question.", "Passage one.", ("Who?",),
        "task001-a", "train")


def test_arrow_file_and_column_mapping(tmp_path):
    ds = datasets.Dataset.from_dict({"question": ["2+2?", "3+3?"], "answer": ["4", "6"]})
    ds.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    spec = {"type": "datasets", "format": "generic", "path": str(arrow), "benchmark": "reasoning",
            "task": "arith", "instruction": "Answer the question.",
            "columns": {"input": "question", "output": "answer"}}
    records, _ = _load(spec)
    assert [(r.task, r.input, r.outputs) for r in records] == [("arith", "2+2?", ("4",)), ("arith", "3+3?", ("6",))]
    with pytest.raises(ConfigError, match="column.*inputs.*not found.*question, answer"):
        _load(dict(spec, format="sni", columns={}))


def test_bad_rows_name_the_location_and_are_counted_when_skipping(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        dict(SNI, targets=["Who?", " "]))}).save_to_disk(str(tmp_path / "sni"))
    spec = {"type": "datasets", "format": "sni", "path": str(tmp_path / "sni"), "category": "QG"}
    with pytest.raises(BadRecordError, match=r"sni/train:2: field 'targets'.*column 'targets'"):
        _load(spec)
    records, policy = _load(spec, mode="skip")
    assert len(records) == 1 and policy.read == 2 and policy.skipped == {"empty_field": 1}


def test_hub_dataset_by_name_loads_offline_from_the_cache(tmp_path):
    """A cache entry in the layout `load_dataset` writes (`<cache>/<user>___<name>/default/...`,
    `<name>-<split>.arrow`), made here by loading a local folder and renaming its entry to a hub id;
    nothing is downloaded."""
    data = tmp_path / "my_flan"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(
        {k: FLAN[k][i] for k in FLAN}) + "\n" for i in range(2)), encoding="utf-8")
    cache = tmp_path / "cache"
    datasets.load_dataset(str(data), cache_dir=str(cache))
    (cache / "my_flan").rename(cache / "someone___flan_export")
    for arrow in (cache / "someone___flan_export").rglob("my_flan-*.arrow"):
        arrow.rename(arrow.with_name(arrow.name.replace("my_flan", "flan_export")))
    records, _ = _load({"type": "datasets", "format": "flan", "name": "someone/flan_export",
                        "cache_dir": str(cache)})
    assert [r.meta["split"] for r in records] == ["train", "train"] and records[1].task == "wmt16_translate_de-en"
    with pytest.raises(Exception, match="could not be loaded offline"):
        _load({"type": "datasets", "format": "flan", "name": "no-such-user/no-such-dataset",
               "cache_dir": str(cache)})


@pytest.mark.parametrize("entry,needle", [
    ({"format": "nope", "path": "x"}, "'format' must be one of"),
    ({"format": "p3"}, "either 'path'"),
    ({"format": "p3", "path": "x", "name": "y"}, "either 'path'"),
    ({"format": "p3", "name": "y", "columns": {"input": 3}}, "'columns' must map"),
    ({"format": "p3", "name": "y", "bogus": 1}, "unknown key 'bogus'"),
    ({"format": "p3", "name": "y", "cache_dir": "/no/such/dir"}, "is not a folder"),
    ({"format": "p3", "path": ".", "cache_dir": "."}, "goes with 'name'"),
])
def test_entry_errors(entry, needle):
    with pytest.raises(ConfigError, match=needle):
        _load(dict(entry, type="datasets"))
