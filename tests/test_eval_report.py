"""`optiml eval` end to end on a saved tiny model: the run directory and readable bad-input errors."""
from __future__ import annotations

import json

import pytest

import eval_support as S
from optiml_plugin.cli import main
from optiml_plugin.benchfiles import write_jsonl_with_index


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return S.saved_model(tmp_path_factory.mktemp("model"))


def _run(model_dir, bench, out, *extra):
    return main(["eval", "--model", str(model_dir), "--bench", str(bench), "--out", str(out),
                 "--shots", "0,1", "--max-per-task", "2", "--max-new-tokens", "4", "--no-progress",
                 *extra])


def test_cli_writes_the_run_directory(tmp_path, model_dir, capsys):
    bench = S.write_bench(tmp_path / "bench", n=3)
    assert _run(model_dir, bench, tmp_path / "run", "--stop", "\\n") == 0
    assert "model selection" in capsys.readouterr().out
    run = tmp_path / "run"
    res = json.loads((run / "results.json").read_text())
    assert res["model_id"] == model_dir.name and res["config"]["shots"] == [0, 1]
    assert res["config"]["stop_strings"] == ["\n"] and res["counts"]["instances"] == 8
    assert {r["level"] for r in res["aggregate"]["levels"]} == {
        "heldout_instances", "heldout_tasks", "heldout_categories"}
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and {p["shots"] for p in preds} == {0, 1}
    one_shot = [p for p in preds if p["shots"] == 1]
    sst = [p for p in one_shot if p["task"] == "sst2"]
    assert sst and all(len(p["demo_ids"]) == 1 and "-train-" in p["demo_ids"][0] for p in sst)
    # held-out tasks without training rows or positive examples: no demonstration, never an
    # evaluated instance, and counted
    assert all(p["demo_ids"] == [] for p in one_shot if p["task"] != "sst2")
    assert res["counts"]["no_demo_pool"] == 6 and res["config"]["prompt_format"] == "paper"
    assert res["bench_prompt_format"] == "paper"  # the bench's own rendering, from its manifest
    assert all("\n" not in p["prediction"] for p in preds if p["kind"] == "generate")
    bleu = [t for t in res["aggregate"]["benchmark_tasks"] if t["category"] == "Translation"]
    assert bleu and all("bleu" in t["metrics"] for t in bleu)
    table = (run / "results.md").read_text()
    assert "| heldout_categories |" in table and "Textual Entailment" in table
    assert "Mean over instances" in table
    for level in ("heldout_instances", "heldout_tasks", "heldout_categories"):
        assert (run / f"chart_{level}.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_rows_name_file_line_and_field(tmp_path, model_dir, capsys):
    bench = S.write_bench(tmp_path / "bench", n=3)
    path = bench / "test_heldout_categories/00/flan__textual_entailment__rte.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[1]["references"] = ["not an option"]
    write_jsonl_with_index(path, rows)
    assert _run(model_dir, bench, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "rte.jsonl:2" in err and "'references'" in err and "no_gold_candidate" in err
    assert _run(model_dir, bench, tmp_path / "run", "--on-bad-record", "skip") == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["counts"]["bad_records"]["skipped"] == {"no_gold_candidate": 1}
    assert res["counts"]["instances"] == 7


def test_cli_refuses_missing_arguments(capsys):
    assert main(["eval", "--bench", "x"]) == 2
    assert "--model" in capsys.readouterr().err


def _set_output_language(bench, task_stem, language):
    for path in bench.glob(f"*/00/{task_stem}.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            r["output_language"] = language
        write_jsonl_with_index(path, rows)


def test_non_english_output_is_scored_on_the_xlingual_track(tmp_path, model_dir, opt_bpe_dir, capsys):
    bench = S.write_bench(tmp_path / "bench", n=3)
    _set_output_language(bench, "niv2__translation__task002_translate", "zh")
    # the tiny model's own 320-token BPE is not GPT-2's: refused with the option to use
    assert _run(model_dir, bench, tmp_path / "run") == 2
    assert "--xlingual-bpe" in capsys.readouterr().err
    assert _run(model_dir, bench, tmp_path / "run", "--xlingual-bpe", str(opt_bpe_dir)) == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["scoring"]["rouge_tracks"] == {"default": 4, "xlingual": 4}
    assert res["scoring"]["bleu_tokenize"] == {"niv2/task002_translate": "zh"}
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    zh = [p for p in preds if p["task"] == "task002_translate"]
    assert zh and all(p["track"] == "xlingual" and p["output_language"] == "zh" for p in zh)
    assert {t["track"] for t in res["aggregate"]["instance_means"]["tracks"]} == {"default", "xlingual"}


def test_sni_tasks_take_positive_examples_and_the_prompt_format_is_recorded(tmp_path, model_dir):
    bench = S.write_bench(tmp_path / "bench", n=3)
    manifest = json.loads((bench / "manifest.json").read_text())
    task = next(t for t in manifest["tasks"] if t["task"] == "task001_color")
    task["positive_examples"] = [{"input": "what color is grass", "output": "green"},
                                 {"input": "what color is snow", "output": "white"}]
    (bench / "manifest.json").write_text(json.dumps(manifest))
    assert _run(model_dir, bench, tmp_path / "run", "--prompt-format", "sni") == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["prompt_format"] == "sni"
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    color = [p for p in preds if p["task"] == "task001_color"]
    assert {p["prompt_format"] for p in color} == {"sni"}
    assert all(p["demo_ids"] == ["positive_example_1"] for p in color if p["shots"] == 1)
    assert {p["prompt_format"] for p in preds if p["benchmark"] == "flan"} == {"paper"}
    assert res["counts"]["prompts_sni"] == 2 * 2 * 2  # 2 niv2 tasks x 2 instances x 2 shot counts


def test_sni_negative_examples_and_explanations_are_options_recorded_in_results(tmp_path, model_dir, capsys):
    bench = S.write_bench(tmp_path / "bench", n=3)
    manifest = json.loads((bench / "manifest.json").read_text())
    task = next(t for t in manifest["tasks"] if t["task"] == "task001_color")
    task["positive_examples"] = [{"input": "what color is grass", "output": "green", "explanation": "Grass is green."}]
    task["negative_examples"] = [{"input": "what color is snow", "output": "black", "explanation": "Snow is white."}]
    (bench / "manifest.json").write_text(json.dumps(manifest))
    # the options belong to the sni format
    assert _run(model_dir, bench, tmp_path / "run", "--sni-explanations") == 2
    assert "prompt_format 'sni'" in capsys.readouterr().err
    assert _run(model_dir, bench, tmp_path / "run", "--prompt-format", "sni", "--sni-negative-examples", "1",
                "--sni-explanations") == 0
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["sni_negative_examples"] == 1 and res["config"]["sni_explanations"] is True
    preds = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    color = {p["shots"]: p["demo_ids"] for p in preds if p["task"] == "task001_color"}
    assert color == {0: [], 1: ["positive_example_1", "negative_example_1"]}
