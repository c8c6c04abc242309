"""The one recipe schema (optiml_plugin/recipe.py): `optiml train`, `optiml sweep` and the metaseq task
read the same names, types and defaults; errors name the file, the line and the key."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from optiml_plugin import recipe
from optiml_plugin.metaseq import sweep
from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: str, optim: str = "  lr: 0.002") -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(f"model:\n  preset: micro\ndata:\n  bench: b\n{data}\noptim:\n{optim}\n")
    return path


def test_lr_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; the train file used to crash on it."""
    assert load_config(write(tmp_path, "  batch_size: 4", "  lr: 1e-4")).optim.lr == 1e-4


@pytest.mark.parametrize("data, optim, line, key, got", [
    ("  tokens_per_sample: 2048.5", "  lr: 0.002", 5, "data.tokens_per_sample", "2048.5"),
    ("  batch_size: 2.5", "  lr: 0.002", 5, "data.batch_size", "2.5"),
    ("  batch_size: 4", '  lr: "0.002x"', 7, "optim.lr", "'0.002x'"),
    ("  batch_size: true", "  lr: 0.002", 5, "data.batch_size", "True"),
    ("  packing_strategy: greedy", "  lr: 0.002", 5, "data.packing_strategy", "'greedy'"),
])
def test_bad_values_are_one_line_errors_naming_file_line_and_key(tmp_path, data, optim, line, key, got):
    path = write(tmp_path, data, optim)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {key}: ") and message.endswith(f"got {got}")
    assert "\n" not in message


def test_unknown_and_renamed_keys_name_the_new_key(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.yaml:7: optim\.warmup_steps: unknown key.*"
                                          r"warmup_steps is now optim\.warmup_updates"):
        load_config(write(tmp_path, "  batch_size: 4", "  warmup_steps: 3"))
    with pytest.raises(ConfigError, match=r"--set optim\.lr=fast"):
        load_config(write(tmp_path, "  batch_size: 4"), ["optim.lr=fast"])


def test_sweep_hyperparameters_are_recipe_keys_with_the_same_types():
    assert {h.key for h in sweep.HPARAMS} <= set(recipe.SECTION_OF) | set(sweep.LaunchConfig.model_fields)
    assert not set(recipe.SECTION_OF) & set(sweep.LaunchConfig.model_fields)     # one name, one meaning
    # the sweep's --grid and a train file refuse the same value with the same words
    with pytest.raises(ConfigError, match="batch_size: Input should be a valid integer, got 2.5"):
        sweep.parse_grid(["bsz=2.5"])
    assert sweep.parse_grid(["lr=1e-4", "fp16_adam_stats=true"]) == {"lr": [1e-4], "fp16_adam_stats": [True]}


def test_the_paper_preset_sets_every_recipe_value_the_defaults_do_not():
    """Defaults are `optiml train`'s; the preset carries the paper's values (docs/local_training.md)."""
    train = sweep.load_model_preset("30b").train
    assert (recipe.default("adam_eps"), train["adam_eps"]) == (1e-8, 1e-6)
    assert (recipe.default("packing_strategy"), train["packing_strategy"]) == ("best_fit", "sequential")
    assert train["warmup_updates"] == 60 and recipe.default("warmup_updates") == 60


def test_preset_dir_setting_wins(tmp_path, capsys):
    for path in sweep.CHECKOUT_PRESETS.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / "30b.yaml").write_text((tmp_path / "30b.yaml").read_text().replace(
        "max_update: 4000", "max_update: 4321"))
    from optiml_plugin.cli import main

    assert main(["sweep", "--preset-dir", str(tmp_path), "--preset", "30b", "--dry-run"]) == 0
    assert "--max-update 4321" in capsys.readouterr().out


@pytest.mark.slow
def test_sweep_dry_run_works_from_a_non_editable_install(tmp_path):
    """Build the wheel from a copy of the sources, unpack it outside the repository and run
    `optiml sweep --preset 30b --dry-run` with that copy imported (no source checkout around); the
    recipe and the sweep import neither metaseq nor transformers."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "optiml_plugin", src / "optiml_plugin", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "projects" / "opt_iml" / "presets", src / "projects" / "opt_iml" / "presets")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys, optiml_plugin; from optiml_plugin.cli import main; "
            f"assert optiml_plugin.__file__.startswith({str(site)!r}), optiml_plugin.__file__; "
            "rc = main(['sweep', '--preset', '30b', '--dry-run']); "
            "assert not {'metaseq', 'transformers'} & set(sys.modules); sys.exit(rc)")
    run = tmp_path / "elsewhere"
    run.mkdir()
    out = subprocess.run([sys.executable, "-c", code], cwd=run, capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin",
                              "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert f"{site}/optiml_plugin/presets/30b.yaml" in out.stdout and "--max-update 4000" in out.stdout
