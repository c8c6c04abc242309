"""PromptSource / P3-style rows: `inputs`, `targets`, optional `answer_choices`, JSONL or Parquet.

Why: P3 holds instance-level instructions (the template already wrote the instruction into the
prompt), so the prompt becomes `input` and `instruction` stays empty. P3 exports keep token ids in
`inputs`/`targets` and the text in `inputs_pretokenized`/`targets_pretokenized`; either works.
`answer_choices` become candidates for rank classification; the prompt stays the template's own text
(no FLAN `OPTIONS:` block: a template that shows its choices words them itself, paper §2.4).

The task is the dataset, not the template (prompt multiplexing, bench/multiplex.py): P3 names each
(dataset, template) export `<dataset>_<subset>_<template>` with every character outside
`[A-Za-z0-9_.]` made `_` (t-zero's `get_task_name`). A row whose task ends with its own
`template_name` loses that suffix; a task without a template column is matched against the dataset
prefixes of P3 (`dataset_prefixes` replaces them; `group_templates: false` keeps one task per
template). Ids keep the per-template name, so instantiations of one example stay distinct; an
integer `idx` (the example's number in its split, which goes into the id with the split) names the
example they share, so every rendering of it is held out together (bench/examples.py;
`example_id` or `example_fields` name it otherwise). ANLI's exports end in their round
(`anli_GPT_3_style_r1`): each round is its own task (`anli_r1`), as the paper reports R1/R2/R3 apart.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

from optiml_plugin.bench.records import Record
from optiml_plugin.bench.sources.base import (RecordGate, SourceSpec, candidates_value, outputs_value,
                                             release_split, row_fields, sources_value, task_name)
from optiml_plugin.bench.sources.tabular import (TABLE_SUFFIXES, Build, TaskOf, inputs_and_targets,
                                                load_rows)
from optiml_plugin.errors import BadRecordPolicy, ConfigError

KEYS = ("task", "dataset_prefixes", "group_templates", "example_fields")
SUFFIXES = TABLE_SUFFIXES
#: bench/reading.py may read each file, and parts of a JSONL file, in its own process
PARTS = "lines"
DEFAULT_BENCHMARK = "promptsource"
TASK_KEYS = ("task", "task_name")
TEMPLATE_KEYS = ("template", "template_name")
_UNSAFE = re.compile(r"[^\w.]+")
#: datasets whose P3 exports end in a round (`anli_GPT_3_style_r1`): each round is its own task, as the
#: paper reports ANLI R1/R2/R3 (Tab 4, 5), multiplexed over the round's templates
ROUND_DATASETS = ("anli",)
_ROUND = re.compile(r"_(r\d+)$")

#: the (dataset, subset) pairs of T0's training and held-out mixtures as PromptSource names them; P3's
#: export names start with their cleaned `dataset_subset`
P3_DATASETS = (
    "adversarial_qa/dbert", "adversarial_qa/dbidaf", "adversarial_qa/droberta", "ag_news",
    "ai2_arc/ARC-Challenge", "ai2_arc/ARC-Easy", "amazon_polarity", "anli", "app_reviews",
    "cnn_dailymail/3.0.0", "common_gen", "cos_e/v1.11", "cosmos_qa", "dbpedia_14", "dream",
    "duorc/ParaphraseRC", "duorc/SelfRC", "gigaword", "glue/mrpc", "glue/qqp", "hellaswag", "imdb",
    "kilt_tasks/hotpotqa", "multi_news", "openbookqa/main", "paws/labeled_final", "piqa", "qasc", "quail",
    "quarel", "quartz", "quoref", "race/high", "race/middle", "ropes", "rotten_tomatoes", "samsum",
    "sciq", "social_i_qa", "squad_v2", "story_cloze/2016", "super_glue/boolq", "super_glue/cb",
    "super_glue/copa", "super_glue/multirc", "super_glue/record", "super_glue/rte", "super_glue/wic",
    "super_glue/wsc.fixed", "trec", "trivia_qa/unfiltered", "web_questions", "wiki_bio",
    "wiki_hop/original", "wiki_qa", "winogrande/winogrande_debiased", "winogrande/winogrande_xl",
    "wiqa", "xsum", "yelp_review_full",
)


def clean_name(name: str) -> str:
    """P3's task-name spelling: every run of characters outside `[A-Za-z0-9_.]` becomes `_`."""
    return _UNSAFE.sub("_", name)


DEFAULT_PREFIXES = tuple(clean_name(d.replace("/", "_")) for d in P3_DATASETS)


def dataset_and_template(task: str, template: str, prefixes: Sequence[str]) -> Tuple[str, str]:
    """(dataset, template) of a P3 task name; the task itself when no rule applies. A name ending in a
    round after its template (`anli_GPT_3_style_r1`) gives the round's dataset (`anli_r1`)."""
    round_ = _ROUND.search(task)
    if template:
        suffix = "_" + clean_name(template)
        if task.endswith(suffix) and len(task) > len(suffix):
            return task[:-len(suffix)], template
        if round_ and task[:round_.start()].endswith(suffix) and round_.start() > len(suffix):
            return f"{task[:round_.start() - len(suffix)]}_{round_.group(1)}", template
        return task, template
    best = max((p for p in prefixes if task.startswith(p + "_")), key=len, default=None)
    if not best:
        return task, ""
    named = task[len(best) + 1:]
    if best in ROUND_DATASETS and round_ and round_.start() > len(best) + 1:
        return f"{best}_{round_.group(1)}", named[:round_.start() - len(best) - 1]
    return best, named


def load(spec: SourceSpec, policy: BadRecordPolicy) -> Iterator[Record]:
    return load_rows(spec, policy, *row_builder(spec))


def row_builder(spec: SourceSpec) -> Tuple[TaskOf, Build]:
    """The task namer and record builder of P3 rows (the `datasets` source reuses them)."""
    group = spec.option("group_templates", True)
    if not isinstance(group, bool):
        raise ConfigError(f"source '{spec.path}': 'group_templates' must be true or false")
    prefixes = spec.option("dataset_prefixes", DEFAULT_PREFIXES)
    if not isinstance(prefixes, (list, tuple)) or not all(isinstance(p, str) and p for p in prefixes):
        raise ConfigError(f"source '{spec.path}': 'dataset_prefixes' must be a list of names")

    known: Dict[Tuple[str, str], Tuple[str, str, str]] = {}  # a file holds few distinct names

    def names(row: Dict[str, Any], path: Path) -> Tuple[Any, Any, str]:
        """(per-template task name, task after grouping, template)."""
        own = task_name(row, spec, path, TASK_KEYS)
        template = next((row[k] for k in TEMPLATE_KEYS if isinstance(row.get(k), str)), "")
        if not group or not isinstance(own, str):
            return own, own, template
        found = known.get((own, template))
        if found is None:
            dataset, named = dataset_and_template(own, template, prefixes)
            # a row that names its dataset: rebuild P3's per-template name for its id
            found = (f"{own}_{clean_name(named)}" if own == dataset and named else own, dataset, named)
            known[(own, template)] = found
        return found

    def task_of(row: Dict[str, Any], _spec: SourceSpec, path: Path) -> Any:
        return names(row, path)[1]

    def build(row: Dict[str, Any], path: Path, line: int, task: Any, gate: RecordGate) -> Optional[Record]:
        if "is_correct" in row:
            gate.bad(path, line, "is_correct", "score_eval_row",
                     "a P3 *_score_eval row repeats its example once per answer choice, wrong ones "
                     "included; leave the *_score_eval exports out of the source")
            return None
        pair = inputs_and_targets(row, path, line, gate)
        if pair is None:
            return None
        inputs, targets = pair
        own, _, template = names(row, path)
        fields = row_fields(row, spec, path, line, own)
        fields.update(sources=sources_value(row, task if isinstance(task, str) else str(task)),
                      template=template)
        idx = row.get("idx")  # the example's number in its dataset split, the same under every template
        meta = {}
        if isinstance(idx, int) and not isinstance(idx, bool) and not isinstance(row.get("id"), str):
            meta["example"] = str(idx)
            split = row.get("split") if isinstance(row.get("split"), str) else release_split(path)
            if split:  # each split counts from 0
                fields["id"] = f"{fields['id'][:-len(str(idx))]}{split}-{idx}"
        return Record(benchmark=spec.benchmark or DEFAULT_BENCHMARK, task=task, instruction="",
                      input=inputs, outputs=outputs_value(targets),
                      candidates=candidates_value(row.get("answer_choices")), options_block=False,
                      meta=meta, **fields)

    return task_of, build
