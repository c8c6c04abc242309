"""`optiml runs`, `optiml train --dry-run`, `optiml generate`, and help/output glitches of the CLI."""
from __future__ import annotations

import json

import pytest
import yaml

import eval_support as S
from bench_factory import make_bench
from optiml_plugin.cli import main


def _train_yaml(tmp_path, bench, out):
    cfg = {"model": {"preset": "micro"},
           "data": {"bench": str(bench), "tokens_per_sample": 64, "batch_size": 2, "builtin_vocab_size": 300},
           "optim": {"lr": 3e-3, "warmup_updates": 1, "max_update": 2},
           "run": {"out_dir": str(out), "log_every": 1, "valid_every": 0, "save_every": 2, "progress": False,
                   "tensorboard": False, "threads": 1}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_dry_run_prints_the_recipe_and_first_batch_and_writes_nothing(tmp_path, capsys):
    bench = make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=30),
                                            dict(benchmark="b1", category="c2", task="t2", n=30)])
    out = tmp_path / "run"
    assert main(["train", str(_train_yaml(tmp_path, bench, out)), "--dry-run", "--set", "optim.lr=0.01"]) == 0
    text = capsys.readouterr().out
    assert "lr: 0.01" in text and "tokens_per_sample: 64" in text and "adam_eps" in text   # defaults filled in
    assert "first batch: (2, 64) (rows x tokens)" in text and "mixture of split 'train': 2 tasks" in text
    assert "first batch's tasks (tokens): " in text and "nothing was trained or written" in text
    assert not out.exists()
    bad = _train_yaml(tmp_path, tmp_path / "nowhere", out)
    assert main(["train", str(bad), "--dry-run"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_runs_lists_train_eval_and_demo_runs_with_settings_and_results(tmp_path, capsys):
    train = tmp_path / "runs" / "t1"
    train.mkdir(parents=True)
    (train / "train_config.yaml").write_text(yaml.safe_dump(
        {"model": {"preset": "tiny"}, "data": {"bench": "b", "batch_size": 8, "tokens_per_sample": 256},
         "optim": {"lr": 0.002, "max_update": 300}, "run": {"seed": 1}}))
    (train / "log.jsonl").write_text(json.dumps({"step": 300, "loss": 1.25}) + "\n"
                                     + json.dumps({"step": 300, "split": "valid_heldout_tasks", "valid_loss": 2.5})
                                     + "\n")
    (train / "checkpoints" / "step_1").mkdir(parents=True)
    (train / "checkpoints" / "step_1" / "train_config.yaml").write_text("{}")   # not a run of its own
    ev = tmp_path / "runs" / "evals" / "e1"
    ev.mkdir(parents=True)
    (ev / "results.json").write_text(json.dumps({
        "config": {"model": "runs/t1/final", "bench": "b", "split": "test", "shots": [0, 2]},
        "counts": {"instances": 40}, "aggregate": {"levels": [{"level": "heldout_tasks", "shots": 0, "score": 41.5}]}}))
    demo = tmp_path / "runs" / "d1"
    (demo / "seed_1" / "train").mkdir(parents=True)
    (demo / "seed_1" / "train" / "train_config.yaml").write_text("{}")
    (demo / "report.json").write_text(json.dumps({"preset": "tiny", "steps": 1000, "seeds": [1, 2, 3], "across_seeds": [
        {"level": "heldout_tasks", "shots": 0, "score": 44.0, "shown": True, "seeds_shown": 2, "seeds": 3}]}))
    assert main(["runs", str(tmp_path / "runs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"optiml runs: 3 runs under {tmp_path / 'runs'}"
    by_name = {line.split()[0]: line for line in lines[:-1]}
    assert set(by_name) == {"t1", "evals/e1", "d1"}
    assert "model=tiny" in by_name["t1"] and "lr=0.002" in by_name["t1"] and "step 300/300, loss 1.250" in by_name["t1"]
    assert "heldout_tasks 2.500" in by_name["t1"] and "no final model" in by_name["t1"]
    assert "shots=[0, 2]" in by_name["evals/e1"] and "heldout_tasks 0-shot 41.5" in by_name["evals/e1"]
    assert "seeds=[1, 2, 3]" in by_name["d1"] and "heldout_tasks 0-shot 44.0 (shown 2/3)" in by_name["d1"]
    assert main(["runs", str(tmp_path / "none")]) == 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return S.saved_model(tmp_path_factory.mktemp("model"))


def test_generate_answers_each_prompt_as_the_evaluator_would(model_dir, capsys):
    from optiml_plugin.eval.backends.hf import HFBackend
    from optiml_plugin.eval.scoring import cut_at_stops

    assert main(["generate", "--model", str(model_dir), "what color is the cat", "the dog is",
                 "--max-new-tokens", "5", "--stop", "\\n\\n"]) == 0
    got = capsys.readouterr().out.splitlines()
    be = HFBackend.from_dir(model_dir, device="cpu")
    want = [cut_at_stops(be.decode(be.generate([be.prefix_ids + be.encode(p)], 5, ("\n\n",))[0]), ("\n\n",))
            for p in ("what color is the cat", "the dog is")]
    assert got == want
    assert main(["generate", "--model", str(model_dir), "cat", "--input", "the dog", "--max-new-tokens", "0"]) == 2


def test_help_and_counts_read_right(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "suite", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.startswith("usage: optiml eval suite") and "optiml eval --model" not in usage
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "build the built-in benchmark" in " ".join(capsys.readouterr().out.split())
    bench = make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=5)])
    assert main(["bench", "stats", str(bench), "--png", str(tmp_path / "chart")]) == 0
    text = capsys.readouterr().out
    assert "(1 task)" in text and "(1 tasks)" not in text
    assert (tmp_path / "chart.png").is_file() and f"wrote {tmp_path / 'chart.png'}" in text
