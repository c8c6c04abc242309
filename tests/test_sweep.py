"""`optiml sweep`: grid -> metaseq-train command lines, run names, sbatch scripts (no metaseq needed)."""
from __future__ import annotations

import json
import shlex

import pytest

from optiml_plugin.metaseq import sweep
from optiml_plugin.cli import main
from optiml_plugin.errors import ConfigError

# The released OPT-IML 30B checkpoint directory (metaseq projects/OPT-IML/README.md).
RELEASED_30B = ("aws.v7.prop10.30b.eps_4096.docsep_2.mu4000.wu60.bsz8.clip1.0.fp32adam.rs1234."
                "lr5e-05.pat_8000.ngpu64")


def flag_values(argv, flag):
    """Every value given to `flag` in an argv list."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def one(argv, flag):
    values = flag_values(argv, flag)
    assert len(values) == 1, f"{flag} appears {len(values)} times"
    return values[0]


def dry_run(capsys, *args):
    assert main(["sweep", "--dry-run", *args]) == 0
    return capsys.readouterr().out


def commands_of(out):
    return [shlex.split(line) for line in out.splitlines()
            if line.startswith(("metaseq-train", "optiml-metaseq-train"))]


def test_30b_run_name_follows_released_key_order():
    preset = sweep.load_model_preset("30b")
    (run,) = sweep.expand(preset)
    ours = run.name.split(".")
    released = RELEASED_30B.split(".")
    # after the size key, the released keys we emit appear in the same order with the same values; the
    # released `docsep_2` is not among them: documents are masked by segment ids, no --self-attn-doc-sep
    tail = released[released.index("30b") + 1:]
    assert [k for k in tail if k in ours] == ours[ours.index("30b") + 1:]
    assert run.name.endswith(".30b.eps_4096.mu4000.wu60.bsz8.clip1.0.fp32adam.rs1234.lr5e-05.ngpu64")


def test_dry_run_30b_has_the_papers_settings(capsys):
    out = dry_run(capsys, "--preset", "30b")
    (cmd,) = commands_of(out)
    assert cmd[0] == "metaseq-train"
    expected = {
        "--task": "instruction_meta_learning", "--criterion": "target_only_cross_entropy",
        "--model-parallel-size": "2", "--distributed-world-size": "64", "--batch-size": "8",
        "--max-update": "4000", "--total-num-update": "4000", "--warmup-updates": "60",
        "--lr": "5e-05", "--lr-scheduler": "polynomial_decay", "--power": "1.0",
        "--end-learning-rate": "0.0", "--clip-norm": "1.0", "--dropout": "0.1",
        "--seed": "1234", "--optimizer": "adam", "--adam-betas": "(0.9, 0.95)",
        "--tokens-per-sample": "2048", "--eps": "4096",
        "--save-interval-updates": "1000", "--validate-interval-updates": "1000",
        "--packing-strategy": "sequential", "--max-valid-examples-per-task": "250",
        "--decoder-layers": "48", "--decoder-embed-dim": "7168", "--decoder-attention-heads": "56",
    }
    for flag, value in expected.items():
        assert one(cmd, flag) == value, flag
    assert "--fp16-adam-stats" not in cmd          # fp32 Adam state
    assert "--self-attn-doc-sep" not in cmd        # the segment-id mask replaces metaseq's doc-sep mask
    assert json.loads(one(cmd, "--benchmark-proportions")) == sweep.load_mixture_preset(
        sweep.CHECKOUT_PRESETS / "mixture.yaml").proportions
    assert one(cmd, "--restore-file").endswith("/30b/reshard.pt")
    for flag in ("--reset-optimizer", "--reset-dataloader", "--reset-meters"):
        assert cmd.count(flag) == 1
    assert one(cmd, "--save-dir").endswith(
        "eps_4096.mu4000.wu60.bsz8.clip1.0.fp32adam.rs1234.lr5e-05.ngpu64")


def test_dry_run_max_and_grid(capsys):
    out = dry_run(capsys, "--preset", "30b", "--max", "--grid", "lr=1e-5,5e-5", "--grid", "bsz=4,8")
    cmds = commands_of(out)
    assert len(cmds) == 4
    assert {(one(c, "--lr"), one(c, "--batch-size")) for c in cmds} == {
        ("1e-05", "4"), ("1e-05", "8"), ("5e-05", "4"), ("5e-05", "8")}
    assert {one(c, "--max-update") for c in cmds} == {"6000"}
    assert {one(c, "--total-num-update") for c in cmds} == {"6000"}
    names = {one(c, "--save-dir").rsplit("/", 1)[1] for c in cmds}
    assert len(names) == 4 and all(".max." in n and ".mu6000." in n for n in names)


def test_175b_settings_and_sbatch(capsys):
    preset = sweep.load_model_preset("175b")
    assert (preset.model_parallel, preset.gpus, preset.sequences_per_step(preset.train)) == (8, 128, 128)
    (run,) = sweep.expand(preset, max_variant=True)
    assert run.config["max_update"] == 12000
    script = sweep.render_sbatch(preset, run, sweep.Paths(), dry_run=True, partition="a100")
    lines = script.splitlines()
    assert "#SBATCH --nodes=16" in lines
    assert "#SBATCH --ntasks-per-node=8" in lines and "#SBATCH --gpus-per-node=8" in lines
    assert "#SBATCH --partition=a100" in lines
    srun = next(line for line in lines if line.startswith("srun "))
    argv = shlex.split(srun)
    assert one(argv, "--model-parallel-size") == "8"
    assert one(argv, "--distributed-world-size") == "128"
    # the OPT checkpoint and resets only on first launch; a requeued job resumes its own run
    assert "--restore-file" not in argv and '"${RESTORE[@]}"' in srun
    assert any(line.strip().startswith("RESTORE=(--restore-file") for line in lines)


def test_sbatch_node_count_follows_cluster_shape(tmp_path):
    text = (sweep.CHECKOUT_PRESETS / "30b.yaml").read_text().replace("gpus_per_node: 8", "gpus_per_node: 4")
    path = tmp_path / "30b.yaml"
    path.write_text(text)
    for name in ("recipe.yaml", "mixture.yaml"):
        (tmp_path / name).write_text((sweep.CHECKOUT_PRESETS / name).read_text())
    preset = sweep.load_model_preset(str(path))
    (run,) = sweep.expand(preset)
    script = sweep.render_sbatch(preset, run, sweep.Paths(), dry_run=True)
    assert "#SBATCH --nodes=16" in script and "#SBATCH --gpus-per-node=4" in script


def test_launch_writes_scripts_without_submitting(tmp_path, capsys):
    argv = ["sweep", "--preset", "1.3b", "--no-submit", "--data", str(tmp_path / "bench"),
            "--bpe-dir", "/bpe", "--opt-checkpoints", "/opt", "--checkpoints-dir", str(tmp_path / "runs"),
            "--launcher", "optiml-metaseq-train"]
    assert main(argv) == 0
    (script,) = list((tmp_path / "runs").glob("*/train.sbatch"))
    text = script.read_text()
    assert "--user-dir" not in text and "srun --label optiml-metaseq-train " in text
    assert "RESTORE=(--restore-file /opt/1.3b/reshard.pt" in text
    assert f"#SBATCH --output={script.parent}/train.log" in text


def test_launch_without_paths_is_a_clear_error(capsys):
    assert main(["sweep", "--preset", "30b", "--no-submit"]) == 2
    assert "--checkpoints-dir is required to launch" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("lr", "expected KEY=V1,V2"),
    ("nope=1", "nope: unknown hyperparameter"),
    ("tensorboard=true", "run.tensorboard is a setting of the local trainer"),
    ("save_interval_updates=5", "now run.save_every"),
    ("benchmark_caps=3", "cannot be swept from the command line"),
    ("lr=fast", r"lr: expected a number, got 'fast'"),
    ("bsz=2.5", "batch_size: Input should be a valid integer, got 2.5"),
    ("eps=128,4096", "eps belongs to the mixture preset"),
    ("pack=greedy", "packing_strategy: must be one of"),
])
def test_bad_grid_is_a_clear_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        sweep.parse_grid([spec])


def test_update_freq_above_one_is_refused():
    preset = sweep.load_model_preset("30b")
    with pytest.raises(ConfigError, match="supports only update_freq 1"):
        sweep.expand(preset, sweep.parse_grid(["uf=1,2"]))


def test_grid_aliases_and_number_parsing():
    assert sweep.parse_grid(["lr=1e-5,6e-5", "mu=100", "--warmup-updates=10"]) == {
        "lr": [1e-05, 6e-05], "max_update": [100], "warmup_updates": [10]}


def test_swept_key_without_default_name_key_enters_the_name():
    preset = sweep.load_model_preset("30b")
    runs = sweep.expand(preset, sweep.parse_grid(["dropout=0.0,0.1"]))
    assert [r.name.endswith(f".lr5e-05.dr{d}.ngpu64") for r, d in zip(runs, ("0.0", "0.1"))] == [True, True]


def test_every_recipe_key_with_a_metaseq_flag_is_accepted_and_rendered(capsys):
    """The sweep accepted 25 of the recipe's 50 keys; the task's own flags (truncation, packing_window,
    benchmark_caps, shuffle_buffer, loss_normalization, valid_splits) were "unknown hyperparameter"."""
    from optiml_plugin.recipe import DataFields, SECTION_OF

    local_only = {"bench", "tokenizer", "builtin_vocab_size", "preset", "family", "config", "checkpoint",
                  "overrides", "out_dir",
                  "device", "precision", "attention", "distributed", "threads", "log_every", "keep_last",
                  "tensorboard", "progress"}
    rendered = set(sweep.HPARAM_BY_KEY) - set(sweep.LaunchConfig.model_fields)
    assert set(SECTION_OF) - local_only == rendered | {"benchmark_proportions"}   # that one: --mixture-file
    assert set(DataFields.model_fields) <= rendered | {"benchmark_proportions"}
    grid = sweep.parse_grid(["truncation=right", "packing_window=8,16", "shuffle_buffer=0",
                             "loss_normalization=example", "save_every=50", "valid_every=25"])
    runs = sweep.expand(sweep.load_model_preset("30b"), grid)
    cmd = sweep.train_command(sweep.load_model_preset("30b"), runs[0], sweep.Paths(), dry_run=True)
    for flag, value in {"--truncation": "right", "--packing-window": "8", "--shuffle-buffer": "0",
                        "--loss-normalization": "example", "--save-interval-updates": "50",
                        "--validate-interval-updates": "25"}.items():
        assert one(cmd, flag) == value, flag
    assert ".pw8." in runs[0].name and ".pw16." in runs[1].name


def test_preset_train_keys_are_checked_by_the_schema(tmp_path):
    """Presets accept the recipe's keys with the recipe's number rules (`1e-1` is a number)."""
    for path in sweep.CHECKOUT_PRESETS.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    recipe_file = tmp_path / "recipe.yaml"
    text = recipe_file.read_text()
    extra = "  warmup_updates: 60\n  benchmark_caps: {flan: 16}\n  valid_splits: [valid_heldout_tasks]"
    recipe_file.write_text(text.replace("  dropout: 0.1 ", "  dropout: 1e-1 ").replace("  warmup_updates: 60", extra))
    preset = sweep.load_model_preset(tmp_path / "30b.yaml")
    assert preset.train["dropout"] == 0.1 and preset.train["benchmark_caps"] == {"flan": 16}
    (run,) = sweep.expand(preset)
    cmd = sweep.train_command(preset, run, sweep.Paths(), dry_run=True)
    assert json.loads(one(cmd, "--benchmark-caps")) == {"flan": 16}
    assert one(cmd, "--valid-subset") == "valid_heldout_tasks" and one(cmd, "--valid-splits") == "valid_heldout_tasks"
    recipe_file.write_text(text.replace("  seed: 1234", "  seed: 1234\n  threads: 4"))
    with pytest.raises(ConfigError, match=r"recipe.yaml:\d+: train.threads: run.threads is a setting of the local"):
        sweep.load_model_preset(tmp_path / "30b.yaml")
