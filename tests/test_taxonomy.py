"""Taxonomy: the packaged map, name normalization, aliases, task patterns, strictness, user files."""
from __future__ import annotations

from pathlib import Path

import pytest

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources import load_source
from optiml_plugin.bench.taxonomy import Taxonomy
from optiml_plugin.errors import BadRecordError, BadRecordPolicy, ConfigError


def _rec(category: str, benchmark: str = "crossfit", task: str = "t", **meta) -> Record:
    return Record(benchmark=benchmark, task=task, category=category, sources=(task,), instruction="i",
                  input="x", outputs=("y",), id=f"{task}-1", meta=dict(meta))


@pytest.fixture(scope="module")
def tax() -> Taxonomy:
    return Taxonomy.load()


def test_packaged_taxonomy_has_sni_categories(tax):
    assert len(tax.known) == 76 + 5
    assert {"Textual Entailment", "Coreference Resolution", "Dialogue Act Recognition", "Misc.",
            "Fill in The Blank", "Reasoning", "Pretraining", "Dialogue Data"} <= tax.known


@pytest.mark.parametrize("name, bench, expected", [
    ("hate speech detection", "crossfit", "Toxic Language Detection"),
    ("  Hate   Speech  Detection ", "promptsource", "Toxic Language Detection"),
    ("fill in the blank", "niv2", "Fill in The Blank"),
    ("TEXTUAL_ENTAILMENT", "niv2", "Textual Entailment"),
    ("closed-book QA", "flan", "Question Answering"),
    ("sentiment", "flan", "Sentiment Analysis"),
    ("misc.", "niv2", "Misc."),
])
def test_normalized_names_and_aliases(tax, name, bench, expected):
    assert tax.categorize(_rec(name, bench)).category == expected


def test_benchmark_scoped_alias_and_task_patterns(tax):
    with pytest.raises(BadRecordError):  # `sentiment` is a FLAN/P3 cluster, not a global alias
        tax.categorize(_rec("sentiment", "exmix"))
    assert tax.categorize(_rec("", "promptsource", task="super_glue_copa_best_option")).category == \
        "Cause Effect Classification"
    assert tax.categorize(_rec("commonsense", "flan", task="copa")).category == "Cause Effect Classification"
    assert tax.categorize(_rec("", "reasoning", task="gsm8k")).category == "Reasoning"


def test_real_sni_categories_are_all_known(sni_dir, tax):
    records = load_source({"type": "sni", "path": "tasks"}, BadRecordPolicy(), base_dir=sni_dir)
    out = [tax.categorize(r) for r in records]
    assert len(out) == 1350
    assert all(r.category in tax.known for r in out)


def test_unknown_category_error_and_skip(tax):
    rec = _rec("Underwater Basket Weaving", path="data/x.jsonl", where=7)
    with pytest.raises(BadRecordError) as e:
        tax.categorize(rec)
    assert e.value.reason == "unknown_category" and e.value.field == "category"
    assert str(e.value).startswith("data/x.jsonl:7: field 'category':")


def test_non_strict_keeps_cleaned_name():
    loose = Taxonomy.load(strict=False)
    assert loose.categorize(_rec("  Underwater   Basket Weaving ")).category == "Underwater Basket Weaving"
    with pytest.raises(BadRecordError, match="no category"):
        loose.categorize(_rec(" "))


def test_user_file_extends_default(tmp_path):
    path = tmp_path / "tax.yaml"
    path.write_text("extends: default\nextra_categories: [Basket Weaving]\n"
                    "aliases:\n  crossfit:\n    weaving: basket weaving\n"
                    "tasks:\n  niv2:\n    'task999_*': Misc.\n")
    tax = Taxonomy.load(path)
    assert tax.categorize(_rec("Weaving")).category == "Basket Weaving"
    assert tax.categorize(_rec("Summarization", "niv2", task="task999_x")).category == "Misc."
    assert "Translation" in tax.known


@pytest.mark.parametrize("text, message", [
    ("categories: [A]\naliases:\n  all:\n    b: C\n", "maps to 'C', which is not a category"),
    ("categories: [A]\naliases:\n  all:\n    a: A\n", "'a' is already a category"),
    ("categories: [A]\ncolours: [red]\n", r"t\.yaml:2: colours: unknown key"),
    ("categories: A\n", r"t\.yaml:1: categories: Input should be a valid list"),
    ("categories: [A]\nstrict: maybe\n", r"t\.yaml:2: strict: Input should be a valid boolean"),
    ("extends: other\n", r"t\.yaml:1: extends: must be one of \['default'\]"),
    ("categories: [A\n", "not valid YAML"),
])
def test_bad_taxonomy_files(tmp_path: Path, text, message):
    path = tmp_path / "t.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Taxonomy.load(path)
