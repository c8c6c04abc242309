"""`optiml demo` end to end in a reduced size: bench, training, evaluation, report files."""
from __future__ import annotations

import json

import pytest

from optiml_plugin.cli import main as cli_main


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli_main(["demo", "--quick", "--steps", "12", "--out", str(out), "--no-progress"]) == 0
    screen = capsys.readouterr().out
    assert str(out / "report.md") in screen and "| level | n | chance | untrained 0-shot | trained 0-shot |" in screen
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 12 and len(report["train"]) >= 2
    assert report["train"][-1]["loss"] < report["train"][0]["loss"]
    valid_splits = {r["split"] for r in report["valid"]}
    assert valid_splits == {"valid_heldout_instances", "valid_heldout_tasks", "valid_heldout_categories"}
    levels = {r["level"] for r in report["evaluation"]["levels"]}
    assert levels == {"heldout_instances", "heldout_tasks", "heldout_categories"}
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert (out / "train" / "final" / "config.json").is_file()
    assert (out / "eval" / "results.json").is_file()
    base = report["untrained"]                                  # the step-0 model, same instances, 0-shot
    assert {(r["level"], r["shots"]) for r in base["levels"]} == {(lv, 0) for lv in levels}
    assert (out / "train" / "untrained" / "config.json").is_file()
    assert {r["task"] for r in base["tasks"]} == {r["task"] for r in report["evaluation"]["tasks"]}
    md = (out / "report.md").read_text()
    assert "![train and validation loss](loss_curve.png)" in md and "](levels.png)" in md
    assert (out / "levels.png").read_bytes()[:4] == b"\x89PNG"
    assert "`micro` preset" in md and f"{report['parameters']:,} parameters" in md
    rows = report["intervals"]                                  # one row per level and shot count
    assert {(r["level"], r["shots"]) for r in rows} == {(lv, 0) for lv in levels}
    for r in rows:
        assert r["ci"][0] <= r["score"] <= r["ci"][1] and "baseline" in r and 0 <= r["chance"] <= 100
        line = next(x for x in md.splitlines() if x.startswith(f"- **{r['level']}, 0-shot**"))
        assert "shown: " in line and "chance" in line and "untrained" in line
        assert line in screen                                   # the same verdicts on screen
    task = report["evaluation"]["tasks"][0]["task"]
    assert any(line.startswith("| ") and f"| {task} |" in line for line in md.splitlines())


def test_demo_rejects_bad_steps(capsys):
    assert cli_main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
