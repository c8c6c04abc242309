"""`optiml demo` end to end in a reduced size: bench, training on two seeds, evaluation, report files."""
from __future__ import annotations

import json
import math

import pytest

from optiml_plugin.cli import main as cli_main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--quick", "--steps", "12", "--seeds", "2", "--out", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    screen = captured.out
    assert "Loading weights" not in captured.err and "Writing model shards" not in captured.err
    assert str(out / "report.md") in screen and "| level | shots | tasks | chance | untrained |" in screen
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 12 and report["seeds"] == [1, 2] and len(report["runs"]) == 2
    for run in report["runs"]:
        train = [r for r in run["log"] if "split" not in r]
        assert len(train) >= 2 and train[-1]["loss"] < train[0]["loss"]
        valid_splits = {r["split"] for r in run["log"] if "split" in r}
        assert valid_splits == {"valid_heldout_instances", "valid_heldout_tasks", "valid_heldout_categories"}
        seed_dir = out / f"seed_{run['seed']}"
        assert (seed_dir / "train" / "final" / "config.json").is_file()
        assert (seed_dir / "train" / "untrained" / "config.json").is_file()
        assert (seed_dir / "eval" / "results.json").is_file()
        # the logged loss is in bits: at step 1 a fresh model is near uniform, log2(vocab), not ln(vocab)
        vocab = json.loads((seed_dir / "train" / "final" / "config.json").read_text())["vocab_size"]
        assert abs(train[0]["loss"] - math.log2(vocab)) < abs(train[0]["loss"] - math.log(vocab))
        base = run["untrained"]                                   # the step-0 model, same instances, 0-shot
        assert {r["task"] for r in base["tasks"]} == {r["task"] for r in run["evaluation"]["tasks"]}
    levels = {"heldout_instances", "heldout_tasks", "heldout_categories"}
    assert (out / "loss_curve.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "![train and validation loss](loss_curve.png)" in md and "](levels.png)" in md
    assert "bits / target token" in md and "nats" not in md
    assert (out / "levels.png").read_bytes()[:4] == b"\x89PNG"
    assert "`micro` preset" in md and f"{report['parameters']:,} parameters" in md
    rows = report["across_seeds"]                               # one row per level and shot count
    assert {(r["level"], r["shots"]) for r in rows} == {(lv, 0) for lv in levels}
    for r in rows:
        assert r["seeds"] == 2 and len(r["per_seed"]) == 2 and 0 <= r["chance"] <= 100
        assert r["score_min"] <= r["score"] <= r["score_max"]
        assert all(s["ci"][0] <= s["score"] <= s["ci"][1] for s in r["per_seed"])
        line = next(x for x in md.splitlines() if x.startswith(f"- **{r['level']}, 0-shot**"))
        assert ("not shown" in line) == (r["seeds_shown"] < 2) and f"on {r['seeds_shown']} of 2 seeds" in line
        assert line in screen                                   # the same verdicts on screen
    for task in report["tasks"]:                                # per task, each seed's score
        assert len(task["trained"]["0"]) == 2
        assert any(line.startswith("| ") and f"| {task['task']} |" in line for line in md.splitlines())
    held = next(line for line in md.splitlines() if "| kind_of_last |" in line)
    assert "`kind_of_first`: asks about the last word" in held


def test_demo_verdict_needs_the_task_level_gain_on_most_seeds():
    from optiml_plugin.demo import across_seeds

    def row(lo_chance, lo_base):
        return {"level": "heldout_tasks", "shots": 0, "n": 40, "tasks": 3, "chance": 25.0, "baseline": 25.0,
                "score": 50.0, "ci": [30.0, 70.0], "gain_over_chance_ci": [lo_chance, 40.0],
                "gain_over_baseline_ci": [lo_base, 40.0]}
    two_of_three = across_seeds([[row(5, 5)], [row(1, 2)], [row(5, -3)]])[0]
    assert two_of_three["seeds_shown"] == 2 and two_of_three["shown"]
    one_of_three = across_seeds([[row(5, 5)], [row(-1, 2)], [row(5, -3)]])[0]
    assert one_of_three["seeds_shown"] == 1 and not one_of_three["shown"]
    assert not across_seeds([[row(5, 5)], [row(-1, 2)]])[0]["shown"]   # a tie is not "most"


def test_loss_chart_names_the_unit_the_trainer_logs(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from optiml_plugin.loss import BITS_PER_NAT, LOSS_UNIT
    from optiml_plugin.demo import _plot

    labels = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        labels.append(fig.axes[0].get_ylabel())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    log = [{"step": 1, "loss": 9.9}, {"step": 2, "loss": 9.0},
           {"step": 2, "split": "valid_heldout_tasks", "valid_loss": 9.5}]
    _plot([(1, log)], tmp_path / "loss.png")
    assert labels == [f"loss ({LOSS_UNIT})"] and LOSS_UNIT.startswith("bits") and BITS_PER_NAT > 1


def test_demo_rejects_bad_steps(capsys):
    assert cli_main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert cli_main(["demo", "--seeds", "0", "--quick"]) == 2
    assert "--seeds" in capsys.readouterr().err
