"""The paper's §4 ablations as presets (projects/opt_iml/presets/ablation_*.yaml): `optiml sweep
--ablation` renders one run per table row with the row's settings as the metaseq task reads them, and
`optiml compare --reference` sets the paper's column beside the runs."""
from __future__ import annotations

import dataclasses
import json
import shlex
import typing
from argparse import Namespace
from pathlib import Path

import pytest

from optiml_plugin.metaseq import sweep
from optiml_plugin.ablations import ablation_names, load_ablation, match_row, row_runs
from optiml_plugin.cli import main
from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.aggregate import aggregate
from optiml_plugin.metaseq import options

PRESETS = Path(__file__).resolve().parents[1] / "projects" / "opt_iml" / "presets"
ALL = ["dialogue", "eps", "metaicl", "mixed_prompts", "pretrain", "proportions", "reasoning", "task_scaling"]


def rendered(name: str):
    ablation = load_ablation(name, PRESETS)
    preset = sweep.load_model_preset(ablation.preset, directory=PRESETS)
    return ablation, [(row, sweep.train_command(p, run, sweep.Paths(), dry_run=True)) for row, p, run in
                      row_runs(ablation, preset)]


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


def task_fields_of(argv):
    """The metaseq task's data settings as its option parser would read the rendered flags."""
    types = typing.get_type_hints(options.TaskOptions)
    got = {}
    for f in dataclasses.fields(options.TaskOptions):
        flag_ = "--" + f.name.replace("_", "-")
        kind = types[f.name]
        if flag_ not in argv:
            got[f.name] = f.default
        elif kind is bool:
            got[f.name] = True
        else:
            text = argv[argv.index(flag_) + 1]
            base = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            got[f.name] = base[0](text)
    return options.fields_from_cfg(Namespace(**got))


def test_every_section_4_table_has_a_preset():
    assert ablation_names(PRESETS) == ALL


@pytest.mark.parametrize("name", ALL)
def test_each_row_renders_with_a_distinct_name(name):
    ablation, runs = rendered(name)
    names = [flag(argv, "--save-dir") for _, argv in runs]
    assert len(set(names)) == len(ablation.rows)
    for row, argv in runs:
        assert match_row(ablation, flag(argv, "--save-dir").rsplit("/", 1)[-1]) == row


def test_metaicl_rows_carry_their_settings_to_the_task():
    _, runs = rendered("metaicl")
    got = {row.name: task_fields_of(argv) for row, argv in runs}
    assert got["baseline"].metaicl_zipf_a is None
    assert (got["zipf4"].metaicl_zipf_a, got["zipf4"].metaicl_suffix_loss) == (4.0, False)
    assert (got["zipf2-suffix"].metaicl_zipf_a, got["zipf2-suffix"].metaicl_suffix_loss) == (2.0, True)
    assert all(flag(argv, "--max-update") == "2000" for _, argv in runs)


def test_mixture_rows_change_eps_and_proportions():
    _, runs = rendered("eps")
    assert [flag(argv, "--eps") for _, argv in runs][:2] == ["128", "256"]
    _, runs = rendered("dialogue")
    props = {row.name: json.loads(flag(argv, "--benchmark-proportions")) for row, argv in runs}
    assert "dialogue" not in props["baseline"] and props["bb3"]["dialogue"] == 0.005
    assert sum(props["bb3"].values()) == pytest.approx(1.0)
    _, runs = rendered("task_scaling")
    assert [task_fields_of(argv).max_train_tasks for _, argv in runs] == [16, 64, 256, 1024, None]
    _, runs = rendered("mixed_prompts")
    assert task_fields_of(runs[1][1]).fewshot_share["niv2"] == 0.5


def test_sweep_cli_renders_an_ablation(capsys):
    assert main(["sweep", "--ablation", "metaicl", "--dry-run", "--preset-dir", str(PRESETS)]) == 0
    out = capsys.readouterr().out
    assert "Tab 8" in out and out.count("# run ") == 5 and "--metaicl-zipf-a 2.0" in out
    assert all(shlex.split(line) for line in out.splitlines() if line.startswith("metaseq-train"))


def test_a_bad_ablation_file_is_named(tmp_path):
    bad = tmp_path / "ablation_x.yaml"
    bad.write_text("kind: ablation\nname: x\ntable: t\ncolumn: c\npreset: 30b\nrows:\n  - {name: a, sett: {}}\n")
    with pytest.raises(ConfigError, match=r"ablation_x\.yaml:7: rows\.0\.sett: unknown key"):
        load_ablation(bad, tmp_path)
    with pytest.raises(ConfigError, match="unknown ablation 'nope'"):
        load_ablation("nope", PRESETS)


def _eval_run(path: Path, score: float) -> Path:
    recs = [{"id": f"t-{i}", "benchmark": "b", "task": "t", "category": "A", "level": level, "shots": shots,
             "kind": "rank", "score": score, "references": ["yes"], "candidates": ["yes", "no"],
             "metrics": {"accuracy": score}} for level in ("heldout_tasks", "heldout_categories")
            for shots in (0, 5) for i in range(4)]
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"model_id": path.name, "aggregate": aggregate(recs)}))
    return path


def test_compare_sets_the_papers_column_beside_the_runs(tmp_path, capsys):
    a = _eval_run(tmp_path / "optiml.metaicl-zipf2.prop_iml.30b.mu2000", 40.0)
    b = _eval_run(tmp_path / "optiml.metaicl-baseline.prop_iml.30b.mu2000", 60.0)
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--reference", "metaicl", "--preset-dir", str(PRESETS),
                 "--out", str(out)]) == 0
    md = (out / "compare.md").read_text()
    assert "## Beside the paper: Tab 8 (§4.8)" in md
    assert "| zipf2 | 43.8/53.8 | 0-shot 40.0 / 5-shot 40.0 |" in md
    assert "| baseline | 44.7/56.0 | 0-shot 60.0 / 5-shot 60.0 |" in md
    capsys.readouterr()
