"""Held-out sets the paper's way (issue 22): the example is the unit of holding out in every mode, eval
tasks test only on their release's evaluation splits, dev tasks are apart from test tasks, ANLI's
rounds are tasks. The rows are PromptSource-shaped, built here: P3's one file per (dataset, template)
with `inputs_pretokenized`/`targets_pretokenized` and, for SuperGLUE, the example's `idx`."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

import pytest

from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.sources import load_source
from optiml_plugin.errors import BadRecordPolicy

COPA_TEMPLATES = ("C1 or C2? premise, so/because…", "best_option", "cause_effect", "choose", "exercise",
                  "i_am_hesitating", "more likely", "plausible_alternatives", "\u2026As a result, C1 or C2?",
                  "\u2026What could happen next, C1 or C2?", "\u2026which may be caused by", "\u2026why? C1 or C2")
AG_NEWS_TEMPLATES = ("classify", "classify_question_first", "classify_with_choices",
                     "classify_with_choices_question_first", "recommend", "which_section",
                     "which_section_choices")
AG_LABELS = ("World politics", "Sports", "Business", "Science and technology")


def clean(name):
    from optiml_plugin.bench.sources.p3 import clean_name

    return clean_name(name)


def write_copa(folder, splits):
    """P3's COPA exports: a file per (template, split), every row with the example's `idx`."""
    for template in COPA_TEMPLATES:
        task = f"super_glue_copa_{clean(template)}"
        for split, n in splits.items():
            rows = [{"inputs_pretokenized": f"[{template}] The premise of copa {split} example {i}. "
                                            f"Option one {i} or option two {i}?",
                     "targets_pretokenized": f"option one {i}",
                     "answer_choices": [f"option one {i}", f"option two {i}"],
                     "idx": i, "split": split} for i in range(n)]
            path = folder / f"{task}__{split}.jsonl"
            path.write_text("".join(json.dumps(dict(r, task=task)) + "\n" for r in rows), encoding="utf-8")


def write_ag_news(folder, splits):
    """ag_news has no example id: the rows keep the example's own `text` field (`example_fields`)."""
    for template in AG_NEWS_TEMPLATES:
        task = f"ag_news_{template}"
        rows = []
        for split, n in splits.items():
            for i in range(n):
                text = f"News story number {i} of the {split} split, about topic {i % 4}."
                rows.append({"task": task, "inputs_pretokenized": f"{template.replace('_', ' ')}: {text}",
                             "targets_pretokenized": AG_LABELS[i % 4], "text": text, "split": split})
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def example_of(row):
    """The underlying example of a bench row (its template's words cut from the prompt)."""
    if row["task"] == "super_glue_copa":
        return "-".join(row["id"].rsplit("-", 2)[1:])  # split-idx
    return row["input"].split(": ", 1)[1]


def sides(root, manifest, task):
    """split -> {example: renderings} of one task's bench files."""
    [entry] = [t for t in manifest["tasks"] if t["task"] == task]
    out = {}
    for split, rel in entry["files"].items():
        rows = [json.loads(line) for line in (root / rel).read_text(encoding="utf-8").splitlines()]
        out[split] = Counter(example_of(r) for r in rows)
    return out


@pytest.fixture
def promptsource(tmp_path):
    data = tmp_path / "p3"
    data.mkdir()
    write_copa(data, {"train": 40, "validation": 12})
    write_ag_news(data, {"train": 60, "test": 16})
    return tmp_path


def build(root, name, **raw):
    config = dict({"sources": [{"type": "p3", "path": "p3/ag_news_*.jsonl", "example_fields": ["text"],
                                "category": "Text Categorization"},
                               {"type": "p3", "path": "p3/super_glue_copa_*.jsonl", "category": "Cause Effect"}],
                   "seed": 3, "split": {"heldout_valid": 4, "heldout_test": 6}}, **raw)
    return build_bench(load_build_config(config, root), root / name, progress=False)


@pytest.mark.parametrize("mode", ["random", "official"])
def test_no_example_is_on_both_sides_of_a_training_task(promptsource, mode):
    """Measured: with `random`, 6 of 12 held-out COPA/ag_news renderings had their example in train
    under another template. Now every rendering of a held-out example is held out with it."""
    m = build(promptsource, mode, heldout_instances=mode)
    # official: COPA holds out from its validation split (it has no test), ag_news from its test split
    held_out = {"random": {"super_glue_copa": {"valid": 4, "test": 6}, "ag_news": {"valid": 4, "test": 6}},
                "official": {"super_glue_copa": {"valid": 4}, "ag_news": {"test": 6}}}[mode]
    for task, templates in (("super_glue_copa", 12), ("ag_news", 7)):
        got = sides(promptsource / mode, m, task)
        [entry] = [t for t in m["tasks"] if t["task"] == task]
        train = set(got.pop("train"))
        assert {s.split("_")[0]: len(e) for s, e in got.items()} == held_out[task]
        for split, held in got.items():
            assert not train & set(held), (task, split)
            assert set(held.values()) == {templates}  # all renderings of each held-out example
            assert entry["example_counts"][split] == len(held) and entry["counts"][split] == len(held) * templates
        assert len(got) == 1 or not set(got["valid_heldout_instances"]) & set(got["test_heldout_instances"])
    units = m["split_plan"]["holdout_unit"]
    assert units["splits"]["test_heldout_instances"] == (
        {"examples": 12, "renderings": 6 * 12 + 6 * 7} if mode == "random" else {"examples": 6, "renderings": 42})
    assert units["templated_tasks_keyed_by_input"] == []
    plan = m["split_plan"]["heldout_instances"]
    if mode == "official":  # held out from the release's own dev/test, trained on its train split
        assert plan["official_split_tasks"] == ["ag_news", "super_glue_copa"]
        copa = sides(promptsource / mode, m, "super_glue_copa")
        assert all(e.startswith("train-") for e in copa["train"])
        assert all(e.startswith("validation-") for e in copa["valid_heldout_instances"])
        assert plan["random_fallback_tasks"] == [] and plan["sources_without_dev_test"] == []
    assert m["accounting"]["balanced"]


def test_templated_rows_without_an_example_id_are_named_in_the_manifest(promptsource, capsys):
    """Without `idx`, `example_id` or `example_fields`, renderings whose prompts differ cannot be
    grouped: the manifest says which tasks, so the user can name the example or use `official`."""
    m = build(promptsource, "b",
              sources=[{"type": "p3", "path": "p3/ag_news_*.jsonl", "category": "Text Categorization"}])
    assert m["split_plan"]["holdout_unit"]["templated_tasks_keyed_by_input"] == ["ag_news"]
    assert "1 training task(s) render examples with several templates but name no example (ag_news)" in (
        capsys.readouterr().err)


def test_one_record_per_example_keeps_the_draws_it_had(tmp_path):
    """A source without templates holds out the same rows as before issue 22 (each record its own
    example), so benches of such sources do not change."""
    from optiml_plugin.bench.splits import SplitConfig, split_train_instances, task_rng

    cfg = SplitConfig(heldout_valid=7, heldout_test=5)
    train, valid, test = split_train_instances(list(range(60)), cfg, 9, ("b", "t"))
    perm = task_rng(9, ("b", "t"), "heldout_instances").permutation(60)
    assert test == sorted(int(i) for i in perm[:5]) and valid == sorted(int(i) for i in perm[5:12])


def test_eval_task_tests_only_on_its_releases_evaluation_split(promptsource):
    """Measured: a COPA eval task with train and validation splits had all 200 + 100 rows in test."""
    m = build(promptsource, "b", split={"heldout_tasks": ["super_glue_copa"], "heldout_valid": 4,
                                        "heldout_test": 6})
    got = sides(promptsource / "b", m, "super_glue_copa")
    [entry] = [t for t in m["tasks"] if t["task"] == "super_glue_copa"]
    assert list(entry["files"]) == ["test_heldout_categories"]
    rows = (promptsource / "b" / entry["files"]["test_heldout_categories"]).read_text().splitlines()
    assert len(rows) == 12 * 12 and all("copa validation example" in json.loads(r)["input"] for r in rows)
    assert set(got["test_heldout_categories"]) == {f"validation-{i}" for i in range(12)}
    assert m["accounting"]["removed"]["eval_task_train_split"] == 40 * 12
    assert m["split_plan"]["eval_splits"]["train_split_rows_dropped"] == {"super_glue_copa": 480}
    assert m["accounting"]["balanced"]


def test_first_n_test_examples_of_an_eval_task_keep_every_rendering(promptsource):
    m = build(promptsource, "b", split={"heldout_tasks": ["ag_news"], "eval_test": 5, "eval_test_all": []})
    got = sides(promptsource / "b", m, "ag_news")
    [split] = got
    assert len(got[split]) == 5 and set(got[split].values()) == {7}
    assert all("test split" in e for e in got[split])  # only the release's test rows


def test_dev_tasks_are_apart_from_test_tasks(promptsource):
    """Measured: every eval task not in valid_tasks also gave rows to valid. Now a task is valid OR
    test; `test_tasks_give_valid: true` is the old behaviour."""
    split = {"heldout_tasks": ["ag_news"], "valid_tasks": ["super_glue_copa"], "eval_valid": 20,
             "eval_test_all": [], "eval_test": 8}
    m = build(promptsource, "new", split=split)
    files = {t["task"]: sorted(t["files"]) for t in m["tasks"]}
    assert files == {"ag_news": ["test_heldout_categories"], "super_glue_copa": ["valid_heldout_categories"]}
    m = build(promptsource, "old", split=dict(split, test_tasks_give_valid=True))
    files = {t["task"]: sorted(t["files"]) for t in m["tasks"]}
    assert files["ag_news"] == ["test_heldout_categories", "valid_heldout_categories"]
    got = sides(promptsource / "old", m, "ag_news")
    assert not set(got["valid_heldout_categories"]) & set(got["test_heldout_categories"])


def test_sni_sample_test_tasks_have_no_valid_rows(sni_dir, tmp_path):
    """Measured: on the SNI sample all 13 eval tasks had valid and test files."""
    from pathlib import Path

    from optiml_plugin.yamlio import read_yaml

    raw = read_yaml(Path(__file__).resolve().parents[1] / "examples" / "bench_sni.yaml", "config")
    raw["sources"] = [{"type": "sni", "path": str(sni_dir / "tasks")}]
    raw["split"]["sni_split_dir"] = str(sni_dir / "splits" / "default")
    m = build_bench(load_build_config(raw), tmp_path / "b", progress=False)
    evals = [t for t in m["tasks"] if t["level"] != "train"]
    assert evals and all(not any(s.startswith("valid_") for s in t["files"]) for t in evals)
    assert all(any(s.startswith("test_") for s in t["files"]) for t in evals)


def anli_rows(folder, template_column):
    for r, n in (("r1", 30), ("r2", 20), ("r3", 10)):
        for template in ("GPT-3 style", "can we infer"):
            task = f"anli_{clean(template)}_{r}"
            rows = [dict({"task": task, "inputs_pretokenized": f"{template} {r} premise {i}",
                          "targets_pretokenized": "Yes", "idx": i},
                         **({"template_name": template} if template_column else {})) for i in range(n)]
            (folder / f"{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")


@pytest.mark.parametrize("template_column", [False, True])
def test_anli_rounds_are_separate_tasks_multiplexed_over_their_templates(tmp_path, template_column):
    """Measured: hub-style names merged the rounds into one `anli` (N from the largest round); with a
    template column ANLI became one task per template."""
    src = tmp_path / "p3"
    src.mkdir()
    anli_rows(src, template_column)
    records = list(load_source({"type": "p3", "path": str(src)}, BadRecordPolicy("error")))
    by_task = defaultdict(set)
    for r in records:
        by_task[r.task].add(r.template)
    assert dict(by_task) == {f"anli_{r}": {"GPT_3_style" if not template_column else "GPT-3 style",
                                           "can_we_infer" if not template_column else "can we infer"}
                             for r in ("r1", "r2", "r3")}
    m = build_bench(load_build_config({"sources": [{"type": "p3", "path": "p3", "category": "NLI"}], "seed": 1,
                                       "split": {"heldout_valid": 0, "heldout_test": 0}}, tmp_path),
                    tmp_path / "bench", progress=False)
    drawn = {t["task"]: (t["templates"], t["instantiations"], t["drawn"]) for t in m["multiplexing"]["tasks"]}
    assert drawn == {"anli_r1": (2, 60, 30), "anli_r2": (2, 40, 20), "anli_r3": (2, 20, 10)}


def promptsource_templates():
    """PromptSource's templates folder: $OPTIML_PROMPTSOURCE, else an installed `promptsource`
    (`pip download --no-deps promptsource==0.2.3` ships it in the sdist); skipped when neither."""
    import importlib.util
    import os
    from pathlib import Path

    found = os.environ.get("OPTIML_PROMPTSOURCE")
    if not found:
        spec = importlib.util.find_spec("promptsource")
        found = str(Path(spec.origin).parent / "templates") if spec and spec.origin else None
    if not found or not (Path(found) / "super_glue" / "copa" / "templates.yaml").is_file():
        pytest.skip("PromptSource templates not found (set OPTIML_PROMPTSOURCE to promptsource/templates of the "
                    "promptsource 0.2.3 sdist)")
    return Path(found)


def render_with_promptsource(folder, dataset, templates_file, examples):
    """P3-shaped rows of `examples` (split -> rows) under every template of a templates.yaml, rendered
    as PromptSource renders them: the jinja text split at '|||' into prompt and target."""
    import jinja2
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    for tag in ("!Template", "!TemplateMetadata"):
        Loader.add_constructor(tag, lambda loader, node: loader.construct_mapping(node, deep=True))
    env = jinja2.Environment(loader=jinja2.BaseLoader())
    spec = yaml.load(templates_file.read_text(encoding="utf-8"), Loader=Loader)
    for t in spec["templates"].values():
        lines = []
        for split, rows in examples.items():
            for ex in rows:
                choices = None
                if t.get("answer_choices"):
                    choices = [c.strip() for c in env.from_string(t["answer_choices"]).render(**ex).split("|||")]
                parts = [p.strip() for p in env.from_string(t["jinja"]).render(**ex, answer_choices=choices)
                         .split("|||")]
                if len(parts) == 2 and all(parts):  # a template that does not apply gives no row, as in P3
                    lines.append(json.dumps(dict(ex, task=f"{dataset}_{clean(t['name'])}", split=split,
                                                 inputs_pretokenized=parts[0], targets_pretokenized=parts[1])))
        (folder / f"{dataset}_{clean(t['name'])}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(spec["templates"])


def test_real_promptsource_templates_hold_out_whole_examples(tmp_path):
    templates = promptsource_templates()
    copa = {split: [{"premise": f"The man did thing {i} in {split}.", "choice1": f"One for {split} {i}.",
                     "choice2": f"Two for {split} {i}.", "question": ("cause", "effect")[i % 2], "label": i % 2,
                     "idx": i} for i in range(n)] for split, n in (("train", 40), ("validation", 20))}
    ag = {split: [{"text": f"Story {i} of {split}: markets, teams and politics.", "label": i % 4} for i in range(n)]
          for split, n in (("train", 40), ("test", 20))}
    (tmp_path / "p3").mkdir()
    assert render_with_promptsource(tmp_path / "p3", "super_glue_copa", templates / "super_glue/copa/templates.yaml",
                                    copa) == 12
    assert render_with_promptsource(tmp_path / "p3", "ag_news", templates / "ag_news/templates.yaml", ag) == 7
    for mode in ("random", "official"):
        m = build(tmp_path, mode, heldout_instances=mode)
        for task in ("super_glue_copa", "ag_news"):
            [entry] = [t for t in m["tasks"] if t["task"] == task]
            truth = {}
            for split, rel in entry["files"].items():
                rows = [json.loads(line) for line in (tmp_path / mode / rel).read_text().splitlines()]
                truth[split] = {re.search(r"(thing \d+ in \w+|Story \d+ of \w+)", r["input"]).group(1) for r in rows}
            train = truth.pop("train")
            assert truth and all(not train & held for held in truth.values()), (mode, task)


def test_eval_rows_of_other_splits_are_counted_and_a_task_without_eval_rows_is_dropped(tmp_path):
    from optiml_plugin.bench.records import Record

    def rows(task, splits):
        return [Record(benchmark="b", task=task, category=task.upper(), sources=(task,), instruction="Do it.",
                       input=f"{task} {split} {i}", outputs=("o",), id=f"{task}-{split}-{i}", meta={"split": split})
                for split, n in splits.items() for i in range(n)]

    records = (rows("ev", {"train": 5, "dev_r1": 3, "test_matched": 2, "unlabeled": 4})
               + rows("only_train", {"train": 6}) + rows("tr", {"train": 20}))
    raw = {"sources": [{"type": "builtin"}], "split": {"heldout_tasks": ["ev", "only_train"]}}
    m = build_bench(load_build_config(raw), tmp_path / "b", records=records, progress=False)
    [ev] = [t for t in m["tasks"] if t["task"] == "ev"]
    assert ev["counts"] == {"test_heldout_categories": 5}  # dev_r1 and test_matched rows
    assert {"benchmark": "b", "task": "only_train", "reason": "no_eval_rows"} in m["split_plan"]["dropped_tasks"]
    removed = m["accounting"]["removed"]
    assert (removed["eval_task_train_split"], removed["eval_task_other_split"]) == (11, 4)
    assert m["split_plan"]["eval_splits"]["other_split_rows_dropped"] == {"ev": 4}
    assert m["accounting"]["balanced"]
