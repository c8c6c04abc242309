"""SNI loader on the real sample (../shared/data/sni) and on small broken task files."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from optiml_plugin.bench.sources import load_source
from optiml_plugin.bench.sources.sni import absent_split_tasks, read_split_lists
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError


def _index_rows(sni_dir: Path):
    """(file, category, split, instances) rows of INDEX.md's table."""
    rows = []
    for line in (sni_dir / "INDEX.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| (task\S+\.json) \| ([^|]+) \| (\w+) \| (\d+) \|", line)
        if m:
            rows.append((m.group(1), m.group(2).strip(), m.group(3), int(m.group(4))))
    return rows


def test_real_sni_tasks_all_load_with_index_counts(sni_dir):
    policy = BadRecordPolicy("error")
    records = list(load_source({"type": "sni", "path": "tasks"}, policy, base_dir=sni_dir))
    index = _index_rows(sni_dir)
    assert len(index) == 30
    per_task = Counter(r.task for r in records)
    assert per_task == {name[:-5]: n for name, _, _, n in index}
    assert policy.read == len(records) == sum(n for *_, n in index)
    category = {r.task: r.category for r in records}
    assert category == {name[:-5]: cat for name, cat, _, _ in index}
    assert all(r.benchmark == "niv2" and r.candidates is None and r.outputs for r in records)
    assert len({r.id for r in records}) == len(records)


def test_real_sni_fields(sni_dir):
    records = list(load_source({"type": "sni", "path": "tasks/task036_*.json"}, BadRecordPolicy(),
                               base_dir=sni_dir))
    doc = json.loads((sni_dir / "tasks/task036_qasc_topic_word_to_generate_related_fact.json").read_text())
    first = records[0]
    assert first.instruction == doc["Definition"][0]
    assert first.input == doc["Instances"][0]["input"]
    assert list(first.outputs) == doc["Instances"][0]["output"]
    assert first.id == doc["Instances"][0]["id"]
    assert first.sources == tuple(doc["Source"])
    assert any(len(r.outputs) > 1 for r in records)  # multi-reference task
    fields = ("input", "output", "explanation")  # Tk-Instruct's prompts can show the explanations
    assert first.meta["positive_examples"] == [{k: e[k] for k in fields} for e in doc["Positive Examples"]]
    assert first.meta["negative_examples"] == [{k: e[k] for k in fields} for e in doc["Negative Examples"]]


def test_real_sni_nan_url_and_languages(sni_dir):
    policy = BadRecordPolicy()
    spec = {"type": "sni", "path": "tasks", "tasks": ["task047_miscellaneous_answering_science_questions",
                                                      "task260_spl_translation_zh_en"]}
    records = list(load_source(spec, policy, base_dir=sni_dir))
    langs = {r.task: r.language for r in records}
    assert langs == {"task047_miscellaneous_answering_science_questions": "en",
                     "task260_spl_translation_zh_en": "zh"}
    assert policy.read == len(records) == 32 + 40


def test_real_split_lists(sni_dir):
    lists = read_split_lists(sni_dir / "splits" / "default")
    assert {k: len(v) for k, v in lists.items()} == {"train": 756, "test": 119, "excluded": 738}
    for name, _, split, _ in _index_rows(sni_dir):
        assert name[:-5] in lists[split]
    loaded = [name[:-5] for name, *_ in _index_rows(sni_dir)]
    absent = absent_split_tasks(sni_dir / "splits" / "default", loaded)
    assert len(absent) == 756 + 119 - 28
    assert absent[0][0].endswith("train_tasks.txt") and absent[0][1] == 1


def test_split_check_names_file_and_line(tmp_path):
    (tmp_path / "train_tasks.txt").write_text("task1_a\ntask2_b\n\ntask3_c\n")
    (tmp_path / "test_tasks.txt").write_text("task9_z\n")
    assert absent_split_tasks(tmp_path, ["task1_a", "task2_b", "task3_c", "task9_z"]) == []
    assert absent_split_tasks(tmp_path, ["task1_a", "task2_b", "task9_z"]) == \
        [(str(tmp_path / "train_tasks.txt"), 4, "task3_c")]
    assert read_split_lists(tmp_path)["excluded"] == []
    (tmp_path / "test_tasks.txt").write_text("task9_z\ntask2_b\n")
    with pytest.raises(ConfigError,
                       match=r"test_tasks\.txt:2: task 'task2_b' is already listed at .*train_tasks\.txt:2"):
        read_split_lists(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no train_tasks.txt"):
        read_split_lists(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        read_split_lists(tmp_path / "nowhere")


def _task(instances, **over):
    doc = {"Source": ["src"], "URL": [float("nan")], "Categories": ["Question Answering"],
           "Definition": ["Answer it."], "Input_language": ["English"],
           "Positive Examples": [{"input": "a", "output": "b", "explanation": "c"}],
           "Instances": instances}
    doc.update(over)
    return doc


GOOD = [{"id": "t-1", "input": "q1", "output": ["a1"]}, {"id": "t-2", "input": "q2", "output": ["a2", "b2"]}]


def _write(path: Path, doc) -> Path:
    path.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return path


# (file content, reason, field, location substring, records attempted); a task file skipped whole for a
# bad task-level field counts each of its instances
WHOLE_FILE = ("missing_definition", "empty_definition", "source_not_list")
BAD = {
    "malformed": (b'{"Definition": ["x"],\n "Instances": [}', "malformed_json", None, ".json:2", 1),
    "invalid_utf8": (b'{"Definition": ["x"],\n "Source": ["\xff"]}', "invalid_utf8", None, ".json:2", 1),
    "empty_file": (b"  \n", "empty_task_file", None, ".json:", 1),
    "no_instances": (_task([]), "empty_task_file", "Instances", ".json:", 1),
    "missing_definition": ({k: v for k, v in _task(GOOD).items() if k != "Definition"},
                           "missing_field", "Definition", ".json:", 2),
    "empty_definition": (_task(GOOD, Definition=["  "]), "empty_field", "Definition", ".json:", 2),
    "source_not_list": (_task(GOOD, Source="src"), "wrong_type", "Source", ".json:", 2),
    "output_not_list": (_task([GOOD[0], {"id": "t-9", "input": "q", "output": "a"}]),
                        "outputs_not_list", "output", "(instance t-9)", 2),
    "output_list_of_int": (_task([GOOD[0], {"id": "t-9", "input": "q", "output": [1]}]),
                           "outputs_not_list", "outputs", "(instance t-9)", 2),
    "empty_output": (_task([GOOD[0], {"id": "t-9", "input": "q", "output": [" "]}]),
                     "empty_field", "outputs", "(instance t-9)", 2),
    "missing_input": (_task([GOOD[0], {"id": "t-9", "output": ["a"]}]),
                      "missing_field", "input", "(instance t-9)", 2),
    "missing_id": (_task([GOOD[0], {"input": "q", "output": ["a"]}]),
                   "missing_field", "id", "(instance Instances[1])", 2),
    "empty_input": (_task([GOOD[0], {"id": "t-9", "input": "", "output": ["a"]}]),
                    "empty_field", "input", "(instance t-9)", 2),
    "duplicate_id": (_task([GOOD[0], {"id": "t-1", "input": "q", "output": ["a"]}]),
                     "duplicate_id", "id", "(instance t-1)", 2),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_file_error_mode_names_file_where_field(tmp_path, case):
    content, reason, fld, where, _ = BAD[case]
    path = _write(tmp_path / "task1_bad.json", content)
    with pytest.raises(BadRecordError) as e:
        list(load_source({"type": "sni", "path": str(path)}, BadRecordPolicy("error")))
    assert e.value.reason == reason
    assert e.value.field == fld
    assert str(path) in str(e.value) and where in str(e.value)
    if fld:
        assert f"field '{fld}'" in str(e.value)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_task_file_skip_mode_counts(tmp_path, case):
    content, reason, _, _, attempted = BAD[case]
    _write(tmp_path / "task1_bad.json", content)
    _write(tmp_path / "task2_good.json", _task([{"id": "g-1", "input": "q", "output": ["a"]}]))
    policy = BadRecordPolicy("skip")
    kept = list(load_source({"type": "sni", "path": "."}, policy, base_dir=tmp_path))
    assert policy.skipped == {reason: attempted if case in WHOLE_FILE else 1}
    assert [r.id for r in kept if r.task == "task2_good"] == ["g-1"]
    assert policy.read == attempted + 1 == len(kept) + sum(policy.skipped.values())


def test_duplicate_id_across_task_files(tmp_path):
    _write(tmp_path / "task1_a.json", _task(GOOD))
    _write(tmp_path / "task2_b.json", _task([{"id": "t-2", "input": "other", "output": ["x"]}]))
    with pytest.raises(BadRecordError, match=r"task2_b\.json \(instance t-2\).*task1_a\.json"):
        list(load_source({"type": "sni", "path": str(tmp_path)}, BadRecordPolicy()))


def test_spec_options(tmp_path):
    _write(tmp_path / "task1_a.json", _task(GOOD, Categories=[]))
    _write(tmp_path / "task2_b.json", _task([{"id": "b-1", "input": "q", "output": ["x"]}]))
    spec = {"type": "sni", "path": ".", "tasks": ["task1_a"], "benchmark": "mine", "category": "Misc.",
            "language": "fr"}
    records = list(load_source(spec, BadRecordPolicy(), base_dir=tmp_path))
    assert [(r.task, r.benchmark, r.category, r.language) for r in records] == [
        ("task1_a", "mine", "Misc.", "fr")] * 2
    with pytest.raises(ConfigError, match="tasks not found: task7_x"):
        list(load_source({"type": "sni", "path": ".", "tasks": ["task7_x"]}, BadRecordPolicy(),
                         base_dir=tmp_path))
    with pytest.raises(BadRecordError, match="Categories"):
        list(load_source({"type": "sni", "path": "task1_a.json"}, BadRecordPolicy(), base_dir=tmp_path))
