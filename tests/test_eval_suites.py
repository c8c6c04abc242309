"""`optiml eval suite`: lm-eval suites with the paper's presets, folded into the run directory.

Nothing is downloaded: the end-to-end test writes lm-eval task configs over local JSON files and a
preset YAML naming them, and runs them through the same CLI and code path as the shipped presets.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

import eval_support as S
from optiml_plugin.cli import main
from optiml_plugin.errors import ConfigError
from optiml_plugin.eval import suites as SU

HAS_LMEVAL = importlib.util.find_spec("lm_eval") is not None
needs_lmeval = pytest.mark.skipif(not HAS_LMEVAL, reason="lm-eval is not installed (pip install 'optiml[lmeval]')")


def test_presets_ship_the_papers_settings():
    assert {"opt14", "mmlu", "bbh", "raft"} <= set(SU.available())
    opt = SU.load_suite("opt14")
    assert opt.shots == (0, 32) and len(opt.tasks) == 14 and {t.metric for t in opt.tasks} == {"acc"}
    assert [t.name for t in opt.tasks][:3] == ["StoryCloze", "PIQA", "ARC-e"]
    assert SU.load_suite("mmlu").shots == (0, 5)
    bbh = SU.load_suite("bbh")
    assert bbh.shots == (3,) and bbh.tasks[0].metric == "exact_match"
    assert any("shot count" in c for c in bbh.chosen)  # the paper is silent: the preset says so
    raft = SU.load_suite("raft")
    assert raft.include is not None and (raft.include / "raft_utils.py").is_file()
    for name in SU.available():
        suite = SU.load_suite(name)
        assert suite.chosen, f"{name}: a preset must say what it chose where the paper is silent"


@needs_lmeval
def test_preset_task_names_exist_in_lm_eval():
    import lm_eval

    names = set()
    for root in (Path(lm_eval.__file__).parent / "tasks", SU.PRESETS / "lmeval_tasks"):
        for f in root.rglob("*yaml"):
            names.update(m.group(2) for m in re.finditer(r'^(task|group): *"?([\w.-]+)"?\s*$',
                                                          f.read_text(encoding="utf-8"), re.M))
    missing = [(s, t.lmeval) for s in SU.available() for t in SU.load_suite(s).tasks if t.lmeval not in names]
    assert not missing


def test_bad_preset_names_the_file_and_field(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmetric: acc\nshots: [0, -1]\ntasks: [{name: A, lmeval: a}]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:3: shots\.1: Input should be greater than or equal to 0"):
        SU.load_suite(str(p))
    with pytest.raises(ConfigError, match="unknown suite 'nope'"):
        SU.load_suite("nope")


def _raw(scale=1.0):
    """lm-eval's result layout: a group of a sub-group and a task, plus a plain task."""
    res = {"g": {"alias": "g", "acc,none": 0.9 * scale}, "sub": {"alias": "sub"},
           "a": {"acc,none": 0.5 * scale, "acc_stderr,none": 0.1, "sample_len": 4},
           "b": {"acc,none": 0.25 * scale, "acc_norm,none": 0.75, "sample_len": 2},
           "c": {"acc,none": 1.0 * scale, "sample_len": 3}, "t": {"acc,none": 0.2 * scale, "sample_len": 5}}
    return {"results": res, "versions": {"a": 1.0, "b": 2.0, "c": 1.0, "t": 3.0},
            "n-samples": {k: {"original": 9, "effective": res[k]["sample_len"]} for k in "abct"},
            "group_subtasks": {"g": ["sub", "c"], "sub": ["a", "b"]}, "n-shot": {"g": 0, "t": 0}}


def _suite(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: s\nmetric: acc\nshots: [0]\nchosen: [x]\n"
                 "tasks: [{name: G, lmeval: g}, {name: T, lmeval: t}]\n")
    return SU.load_suite(str(p))


def test_fold_macro_averages_subtasks_and_records_versions(tmp_path):
    suite = _suite(tmp_path)
    rows = SU.fold(suite, 0, _raw())
    g, t = rows
    assert g["task"] == "G" and g["subtasks"] == ["a", "b", "c"] and g["n"] == 9
    assert math.isclose(g["score"], 100 * (0.5 + 0.25 + 1.0) / 3)  # macro over leaves (recipe §4.2)
    assert g["lmeval_group_score"] == pytest.approx(90.0)  # lm-eval's own number kept beside it
    assert g["task_versions"] == {"a": 1.0, "b": 2.0, "c": 1.0} and t["task_versions"] == {"t": 3.0}
    assert math.isclose(t["score"], 20.0) and t["n"] == 5
    assert SU.averages(rows + SU.fold(suite, 5, _raw(0.5), suite.tasks[1:]), 2) == [
        {"shots": 0, "tasks": 2, "complete": True, "score": pytest.approx((g["score"] + 20.0) / 2)},
        {"shots": 5, "tasks": 1, "complete": False, "score": pytest.approx(10.0)}]


def test_fold_missing_metric_names_task_and_preset(tmp_path):
    raw = _raw()
    raw["results"]["t"] = {"exact_match,none": 0.1}
    with pytest.raises(ConfigError, match=r"no 'acc' for task t .*s\.yaml"):
        SU.fold(_suite(tmp_path), 0, raw)


def test_suites_only_run_directory(tmp_path):
    from optiml_plugin.eval.report import write_summary

    suite = _suite(tmp_path)
    rows = SU.fold(suite, 0, _raw(), suite.tasks[:1])  # task T failed
    results = {"model_id": "m", "suites": {"s": {
        "lm_eval_version": "x", "limit": None, "preset": suite.to_dict(), "tasks": rows,
        "failed": [{"task": "T", "lmeval_task": "t", "shots": 0, "error": "OSError: gone"}],
        "average": SU.averages(rows, 2)}}}
    files = write_summary(results, tmp_path / "run")
    md = (tmp_path / "run" / "results.md").read_text()
    assert md.startswith("# Evaluation of `m`") and "Generalization levels" not in md
    assert "| G | g | acc | 9 | 58.33 |" in md and "**58.33** (1/2 tasks)" in md and "T (t), 0-shot: OSError" in md
    assert files["charts"] == "chart_suite_s.png" and "predictions" not in files
    assert json.loads((tmp_path / "run" / "results.json").read_text())["suites"]["s"]["tasks"][0]["n"] == 9


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tok = S.tokenizer()
    S.tiny_opt(tok.vocab_size, seed=7).save_pretrained(str(d))
    tok.save(d)  # only tokenizer.json, as optiml's trainer writes
    return d


def test_without_lm_eval_the_verb_says_how_to_install(tmp_path, model_dir, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "lm_eval", None)  # import lm_eval -> ImportError
    assert main(["eval", "suite", "opt14", "--model", str(model_dir), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pip install 'optiml[lmeval]'" in err and "lm-eval" in err
    assert not (tmp_path / "r").exists()


@needs_lmeval
def test_tokenizer_for_lm_eval_starts_with_eos(model_dir):
    from optiml_plugin.eval.backends.lmeval import transformers_tokenizer

    tok = transformers_tokenizer(model_dir)
    assert tok("the cat is red")["input_ids"] == [2] + S.tokenizer().encode("the cat is red")
    assert tok.eos_token_id == 2 and tok.bos_token_id == 2 and tok.pad_token_id == 1


MC_ROWS = [{"q": f"what color is the {w} {i}", "choices": ["red", "blue", "green cat", "the dog"],
            "label": i % 4} for i, w in enumerate(S.WORDS[:8])]


def _write_tasks(root: Path) -> Path:
    """Local-JSON lm-eval tasks (ranked, generated), a group holding a copy of the ranked one, a task
    whose data file is missing, and a preset naming them."""
    data = root / "data"
    data.mkdir(parents=True)
    for split in ("train", "test"):
        (data / f"{split}.json").write_text("\n".join(json.dumps(r) for r in MC_ROWS), encoding="utf-8")
    files = f"  data_files:\n    train: {data / 'train.json'}\n    test: {data / 'test.json'}\n"
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "mc.yaml").write_text(
        "task: toy_mc\ndataset_path: json\ndataset_kwargs:\n" + files
        + "output_type: multiple_choice\ntraining_split: train\ntest_split: test\n"
        "doc_to_text: \"Question: {{q}}\\nAnswer:\"\ndoc_to_target: label\ndoc_to_choice: \"{{choices}}\"\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "metadata: {version: 1.0}\n", encoding="utf-8")
    (tasks / "gen.yaml").write_text(
        "task: toy_gen\ndataset_path: json\ndataset_kwargs:\n" + files
        + "output_type: generate_until\ntraining_split: train\ntest_split: test\n"
        "doc_to_text: \"Q: {{q}}\\nA:\"\ndoc_to_target: \"{{choices[label]}}\"\n"
        "generation_kwargs: {until: [\"\\n\\n\"], do_sample: false, max_gen_toks: 4}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true}\n"
        "metadata: {version: 2.0}\n", encoding="utf-8")
    (tasks / "group.yaml").write_text("group: toy_group\ntask: [toy_mc_copy]\n"
                                      "metadata: {version: 1.0}\n", encoding="utf-8")
    # lm-eval refuses one task twice in a run: the group holds a copy
    (tasks / "mc_copy.yaml").write_text("include: mc.yaml\ntask: toy_mc_copy\n", encoding="utf-8")
    (tasks / "gone.yaml").write_text((tasks / "mc.yaml").read_text().replace("task: toy_mc", "task: toy_gone")
                                     .replace(str(data / "test.json"), str(data / "missing.json")))
    preset = root / "toy.yaml"
    preset.write_text("name: toy\ntitle: Toy suite\npaper: none\nshots: [0, 1]\nmetric: acc\n"
                      "include: tasks\nbuiltin_tasks: false\n"
                      "tasks:\n  - {name: MC, lmeval: toy_mc}\n  - {name: Group, lmeval: toy_group}\n"
                      "  - {name: Gen, lmeval: toy_gen, metric: exact_match}\n"
                      "  - {name: Gone, lmeval: toy_gone}\n"
                      "chosen: [\"toy choice\"]\ndifferences: [\"toy difference\"]\n", encoding="utf-8")
    return preset


def _direct_accuracy(model_dir: Path) -> float:
    """0-shot accuracy of toy_mc computed here: sum log p(' choice' | '</s>Question: ...\\nAnswer:')."""
    from transformers import OPTForCausalLM

    tok, model = S.tokenizer(), OPTForCausalLM.from_pretrained(str(model_dir)).eval()
    correct = 0
    for r in MC_ROWS:
        ctx = f"Question: {r['q']}\nAnswer:"
        scores = []
        for c in r["choices"]:
            ids = [2] + tok.encode(ctx + " " + c)
            n_ctx = 1 + len(tok.encode(ctx))
            with torch.no_grad():
                logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
            scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids))))
        correct += max(range(4), key=scores.__getitem__) == r["label"]
    return 100.0 * correct / len(MC_ROWS)


@needs_lmeval
@pytest.mark.slow
def test_suite_folds_into_the_bench_run(tmp_path, model_dir, monkeypatch, capsys):
    import lm_eval

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    bench = S.write_bench(tmp_path / "bench", n=2)
    assert main(["eval", "--model", str(model_dir), "--bench", str(bench), "--out", str(run), "--shots", "0",
                 "--max-new-tokens", "2", "--no-progress"]) == 0
    preds = (run / "predictions.jsonl").read_text()
    preset = _write_tasks(tmp_path / "suite")
    assert main(["eval", "suite", str(preset), "--model", str(model_dir), "--out", str(run),
                 "--device", "cpu", "--batch-size", "4"]) == 1  # one task cannot load its data
    out = capsys.readouterr().out
    assert "Toy suite: 0-shot" in out and "(3/4 tasks)" in out and "FAILED Gone (toy_gone), 0-shot" in out
    res = json.loads((run / "results.json").read_text())
    assert res["aggregate"]["levels"] and (run / "predictions.jsonl").read_text() == preds  # bench kept
    s = res["suites"]["toy"]
    assert s["lm_eval_version"] == lm_eval.__version__ and s["preset"]["chosen"] == ["toy choice"]
    rows = {(r["task"], r["shots"]): r for r in s["tasks"]}
    assert set(rows) == {(t, k) for t in ("MC", "Group", "Gen") for k in (0, 1)}
    assert rows[("MC", 0)]["task_versions"] == {"toy_mc": 1.0} and rows[("Gen", 1)]["task_versions"] == {
        "toy_gen": 2.0}
    assert rows[("MC", 0)]["n"] == len(MC_ROWS) and rows[("Group", 0)]["subtasks"] == ["toy_mc_copy"]
    assert rows[("Group", 1)]["task_versions"] == {"toy_mc_copy": 1.0}
    assert rows[("MC", 0)]["score"] == pytest.approx(_direct_accuracy(model_dir))  # lm-eval saw OPT's tokens
    assert rows[("Group", 0)]["score"] == pytest.approx(rows[("MC", 0)]["score"])  # same task twice
    assert rows[("Gen", 0)]["metric"] == "exact_match" and 0.0 <= rows[("Gen", 0)]["score"] <= 100.0
    assert [(f["task"], f["shots"]) for f in s["failed"]] == [("Gone", 0), ("Gone", 1)]
    assert "missing.json" in s["failed"][0]["error"]
    for a in s["average"]:
        assert a["tasks"] == 3 and not a["complete"]
        assert a["score"] == pytest.approx(sum(rows[(t, a["shots"])]["score"] for t in ("MC", "Group", "Gen")) / 3)
    md = (run / "results.md").read_text()
    assert "## Generalization levels" in md and "### Toy suite" in md and "toy difference" in md
    assert f"model `{model_dir}`, preset `toy`" in md and "| MC | toy_mc | acc | 8 |" in md
    assert "Gone (toy_gone), 1-shot:" in md and "(3/4 tasks)" in md
    assert (run / "chart_suite_toy.png").stat().st_size > 0 and "chart_suite_toy.png" in res["files"]["charts"]


@needs_lmeval
def test_raft_configs_index_in_lm_eval():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(SU.load_suite("raft").include), include_defaults=False)
    assert tm.all_groups == ["optiml_raft"] and len(tm.all_subtasks) == 11


@needs_lmeval
def test_raft_configs_build_helm_prompts():
    from datasets import ClassLabel, Dataset, Features, Value

    spec = importlib.util.spec_from_file_location("raft_utils", SU.PRESETS / "lmeval_tasks/raft/raft_utils.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ds = Dataset.from_dict({"Sentence": ["a", "b", "c"], "ID": [0, 1, 2], "Label": [1, 2, 0]},
                           features=Features({"Sentence": Value("string"), "ID": Value("int32"),
                                              "Label": ClassLabel(names=["Unlabeled", "ADE-related",
                                                                         "not ADE-related"])}))
    out = mod.process_docs(ds)
    assert out["prompt"] == ["Sentence: a\nLabel:", "Sentence: b\nLabel:"]  # the unlabeled row is dropped
    assert out["gold"] == [0, 1] and out["choices"][0] == ["ADE-related", "not ADE-related"]


@needs_lmeval
def test_metaseq_checkpoint_is_converted_then_evaluated(tmp_path, monkeypatch):
    from test_eval_convert import _save, to_metaseq_shards

    from optiml_plugin.eval.backends.hf import HFBackend

    ref = S.tiny_opt(vocab_size=S.tokenizer().vocab_size, seed=5, max_positions=32)
    tok_dir = tmp_path / "tok"
    S.tokenizer().save(tok_dir)
    ckpts = _save(to_metaseq_shards(ref, 2), tmp_path)
    seen = {}
    done = {"suites": {"mmlu": {"average": [], "failed": []}}}
    monkeypatch.setattr(SU, "run_suites", lambda model, suites, out, **kw: seen.update(
        model=model, suites=[s.name for s in suites]) or dict(done, out_dir=out))
    assert main(["eval", "suite", "mmlu", "--metaseq-checkpoint", *map(str, ckpts),
                 "--tokenizer-dir", str(tok_dir), "--out", str(tmp_path / "run")]) == 0
    assert seen == {"model": str(tmp_path / "run" / "model"), "suites": ["mmlu"]}
    ids = torch.tensor([[2, 40, 41, 42]])
    with torch.no_grad():  # the directory handed to lm-eval is the checkpoint's model
        got = HFBackend.from_dir(seen["model"], device="cpu").model(input_ids=ids).logits
        assert torch.allclose(got, ref(input_ids=ids).logits, atol=1e-5)
