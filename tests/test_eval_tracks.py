"""SNI Rouge-L tracks as the official scorer picks them (by split list), and its per-track numbers."""
from __future__ import annotations

import pytest

from optiml_plugin.eval import metrics as M
from optiml_plugin.eval.aggregate import aggregate

FARSTAIL = "task534_farstail_entailment"  # English answers (E/C/N), on splits/xlingual/test_tasks.txt


@pytest.fixture(scope="module")
def xlingual(opt_bpe_dir):
    from optiml_plugin.data.tokenizer import OptTokenizer

    return M.XlingualTokenizer(OptTokenizer.from_dir(opt_bpe_dir).pieces)


def test_the_official_lists_ship_with_the_package_and_pick_the_track():
    tracks = M.official_tracks()
    assert sum(t == "xlingual" for t in tracks.values()) == 35
    assert sum(t == "default" for t in tracks.values()) == 119
    assert M.task_track(FARSTAIL, "en") == ("xlingual", "splits/xlingual/test_tasks.txt")
    assert M.task_track("task190_snli_classification", "en") == ("default", "splits/default/test_tasks.txt")
    # on neither list: the output language decides
    assert M.task_track("task117_spl_translation_en_de", "de") == ("xlingual", "output_language")
    assert M.task_track("task260_spl_translation_zh_en", "en") == ("default", "output_language")


# (prediction, references, official Rouge-L, official EM) of the official scorer
# (allenai/natural-instructions eval/automatic/evaluation.py, commit 8540acd) for task534 on the track
# its reference file gives it (xlingual), run in a scratch directory with rouge-score 0.1.2 and
# transformers' GPT2TokenizerFast on OPT's gpt2-vocab.json/gpt2-merges.txt.
FARSTAIL_OFFICIAL = [
    ("E.", ["E"], 66.6667, 100.0),
    ("e", ["E"], 0.0, 100.0),
    ("E", ["E"], 100.0, 100.0),
    ("N.", ["N"], 66.6667, 100.0),
    ("The answer is E", ["E"], 40.0, 0.0),
]


@pytest.mark.parametrize("pred,refs,rouge,em", FARSTAIL_OFFICIAL)
def test_english_output_task_on_the_xlingual_list_scores_as_the_official_script(xlingual, pred, refs,
                                                                                rouge, em):
    track, _ = M.task_track(FARSTAIL, "en")
    assert M.rouge_l(pred, refs, track, xlingual) == pytest.approx(rouge, abs=5e-5)
    assert M.exact_match(pred, refs) == em


def test_by_output_language_the_farstail_answers_would_score_100():
    """What the old rule (track from the output language) gave for the measured case."""
    assert M.rouge_l("E.", ["E"], M.track("en")) == M.rouge_l("e", ["E"], M.track("en")) == 100.0


EN = "the old man reads a long book near the quiet river".split()
DE = "der alte Mann liest ein langes Buch am ruhigen Fluss".split()
ZH = list("我爱北京天安门广场")


def _predict(words, i: int, sep: str = " ") -> str:
    """A deterministic prediction: exact for every seventh, else one word dropped, every third one
    cut short."""
    if i % 7 == 5:
        return sep.join(words)
    keep = [w for j, w in enumerate(words) if j != i % len(words)]
    if i % 3 == 0:
        keep = keep[: len(keep) // 2 + i % 4]
    return sep.join(keep) + ("." if i % 2 else "")


def translation_case():
    """(level, task, category, output language, prediction, references) in the measured structure:
    Translation on both tracks (English output n=40; German and Chinese output n=81), SNI test tasks
    in two levels, and task534 (English answers, xlingual list) in a second category."""
    rows = []
    for i in range(40):
        ref = " ".join(EN[: 6 + i % 5]) + f" {i}"
        rows.append(("heldout_tasks", "task260_spl_translation_zh_en", "Translation", "en",
                     _predict(ref.split(), i), [ref]))
    for i in range(41):
        ref = " ".join(DE[: 5 + i % 6]) + f" {i}"
        rows.append(("heldout_tasks", "task117_spl_translation_en_de", "Translation", "de",
                     _predict(ref.split(), i), [ref, ref.lower()]))
    for i in range(40):
        ref = "".join(ZH[: 4 + i % 6])
        rows.append(("heldout_categories", "task9001_translation_en_zh", "Translation", "zh",
                     _predict(list(ref), i, sep=""), [ref]))
    answers = ["E.", "e", "E", "C", "N."]
    for i in range(15):
        rows.append(("heldout_categories", FARSTAIL, "Textual Entailment", "en", answers[i % 5],
                     ["E" if i % 5 < 4 else "N"]))
    return rows


# What the official scorer prints for `translation_case()` (reference file built as
# eval/leaderboard/create_reference_file.py builds it: the track of each task from the split list it
# is on, by output language for the two tasks on none), same scratch set-up as above.
OFFICIAL_RESULTS = {
    "rougeL_default_track": 88.9459,
    "exact_match_default_track": 12.5,
    "rougeL_xlingual_track": 81.3521,
    "exact_match_xlingual_track": 23.9583,
    "rougeL_for_translation_default_track": 88.9459,
    "rougeL_for_translation_xlingual_track": 87.7753,
    "rougeL_for_textual_entailment_xlingual_track": 46.6667,
}


def _records(xlingual):
    records = []
    for n, (level, task, cat, lang, pred, refs) in enumerate(translation_case()):
        track, _ = M.task_track(task, lang)
        m = {"rougeL": M.rouge_l(pred, refs, track, xlingual), "exact_match": M.exact_match(pred, refs)}
        records.append({"id": f"{task}-{n}", "shots": 0, "level": level, "benchmark": "niv2", "category": cat,
                        "task": task, "kind": "generate", "track": track, "score": m["rougeL"], "metrics": m})
    return records


def test_official_numbers_per_track_equal_the_official_script(xlingual):
    agg = aggregate(_records(xlingual))
    official = {(r["track"]): r for r in agg["official"]["overall"]}
    assert {t: r["n"] for t, r in official.items()} == {"default": 40, "xlingual": 96}
    assert official["xlingual"]["levels"] == {"heldout_categories": 55, "heldout_tasks": 41}
    for track, row in official.items():
        assert row["score"] == pytest.approx(OFFICIAL_RESULTS[f"rougeL_{track}_track"], abs=5e-5)
        assert row["metrics"]["exact_match"] == pytest.approx(OFFICIAL_RESULTS[f"exact_match_{track}_track"],
                                                              abs=5e-5)
    cats = {(r["track"], r["category"]): r for r in agg["official"]["categories"]}
    assert set(cats) == {("default", "Translation"), ("xlingual", "Translation"),
                         ("xlingual", "Textual Entailment")}
    assert cats[("default", "Translation")]["n"] == 40 and cats[("xlingual", "Translation")]["n"] == 81
    for (track, cat), row in cats.items():
        key = f"rougeL_for_{'_'.join(cat.lower().split())}_{track}_track"
        assert row["score"] == pytest.approx(OFFICIAL_RESULTS[key], abs=5e-5)


def test_per_level_track_means_weighted_by_n_are_the_official_overall(xlingual):
    agg = aggregate(_records(xlingual))
    per_level = agg["instance_means"]["tracks"]
    assert {(r["level"], r["track"]) for r in per_level} == {
        ("heldout_tasks", "default"), ("heldout_tasks", "xlingual"), ("heldout_categories", "xlingual")}
    for row in agg["official"]["overall"]:
        parts = [r for r in per_level if r["track"] == row["track"]]
        weighted = sum(r["n"] * r["score"] for r in parts) / sum(r["n"] for r in parts)
        assert weighted == pytest.approx(row["score"], rel=1e-12)
        assert sum(r["n"] for r in parts) == row["n"]


def test_category_instance_means_never_mix_tracks(xlingual):
    agg = aggregate(_records(xlingual))
    translation = [r for r in agg["instance_means"]["categories"] if r["category"] == "Translation"]
    assert {(r["level"], r["track"], r["n"]) for r in translation} == {
        ("heldout_tasks", "default", 40), ("heldout_tasks", "xlingual", 41), ("heldout_categories", "xlingual", 40)}
    tasks = {t["task"]: t["track"] for t in agg["benchmark_tasks"]}
    assert tasks[FARSTAIL] == "xlingual" and tasks["task260_spl_translation_zh_en"] == "default"


def test_eval_records_the_track_and_its_rule_per_task(tmp_path, opt_bpe_dir):
    import eval_support as S
    from bench_factory import write_bench
    from optiml_plugin.eval.config import EvalConfig
    from optiml_plugin.eval.runner import evaluate

    def rows(task, cat, refs, lang=None):
        out = [S.row("niv2", cat, task, "test_heldout_categories", i, "Answer.", f"premise {i}", [refs[i % 3]])
               for i in range(3)]
        for r in out:
            r["output_language"] = lang
        return out

    bench = write_bench(tmp_path / "bench", [
        ("niv2", "Textual Entailment", FARSTAIL, "heldout_categories", "test_heldout_categories",
         rows(FARSTAIL, "Textual Entailment", ["E", "C", "N"], "en")),
        ("niv2", "Translation", "task117_spl_translation_en_de", "heldout_categories", "test_heldout_categories",
         rows("task117_spl_translation_en_de", "Translation", ["Ja", "Nein", "Haus"], "de")),
        ("niv2", "Question Answering", "task001_color", "heldout_categories", "test_heldout_categories",
         rows("task001_color", "Question Answering", ["red", "blue", "green"])),
    ])
    res = evaluate(EvalConfig(model=S.backend(), bench=str(bench), out_dir=str(tmp_path / "run"), shots=(0,),
                              levels=("heldout_categories",), max_new_tokens=3, xlingual_bpe=str(opt_bpe_dir),
                              progress=False, charts=False))
    assert res["scoring"]["task_tracks"] == {
        f"niv2/{FARSTAIL}": {"track": "xlingual", "rule": "splits/xlingual/test_tasks.txt"},
        "niv2/task117_spl_translation_en_de": {"track": "xlingual", "rule": "output_language"},
        "niv2/task001_color": {"track": "default", "rule": "output_language"}}
    official = {r["track"]: r["n"] for r in res["aggregate"]["official"]["overall"]}
    assert official == {"default": 3, "xlingual": 6}
    table = (tmp_path / "run" / "results.md").read_text()
    assert "Per Rouge-L track" in table and "| niv2 | xlingual | 0 | 6 |" in table
