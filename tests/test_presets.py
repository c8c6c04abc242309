"""The paper presets in projects/opt_iml/presets load, validate, and say the paper's numbers."""
from __future__ import annotations

import math

import pytest
import yaml

from optiml_plugin.metaseq import sweep
from optiml_plugin.bench.build import load_build_config
from optiml_plugin.bench.sources import DEFAULT_BENCHMARKS
from optiml_plugin.errors import ConfigError

PRESETS = sweep.CHECKOUT_PRESETS


def copy_presets(tmp_path, **edits):
    """The preset folder in tmp_path, with `name -> (old, new)` text replacements."""
    for path in PRESETS.glob("*.yaml"):
        text = path.read_text()
        if path.name in edits:
            old, new = edits[path.name]
            assert old in text
            text = text.replace(old, new)
        (tmp_path / path.name).write_text(text)
    return tmp_path


def test_every_preset_file_loads_and_validates():
    kinds = {}
    for path in sorted(PRESETS.glob("*.yaml")):
        kind = yaml.safe_load(path.read_text()).get("kind", "build")
        kinds[path.name] = kind
        if kind == "build":
            load_build_config(path)
        elif kind == "model":
            sweep.load_model_preset(str(path))
        elif kind == "mixture":
            sweep.load_mixture_preset(path)
        elif kind == "recipe":
            sweep.load_recipe(path)
    assert {"1.3b.yaml", "30b.yaml", "175b.yaml"} <= {n for n, k in kinds.items() if k == "model"}
    assert {"mixture", "recipe", "build"} <= set(kinds.values())


def test_bench_preset_is_the_papers_split_plan_and_feeds_the_mixture():
    cfg = load_build_config(PRESETS / "bench.yaml")
    assert set(cfg.split.heldout_categories) == {
        "Textual Entailment", "Coreference Resolution", "Dialogue Act Recognition",
        "Cause Effect Classification", "Grammar Error Correction", "Stereotype Detection", "Word Analogy"}
    valid = set(cfg.split.valid_tasks)
    assert sum(1 for t in valid if "_mmmlu_answer_generation_" in t) == 57
    assert {"task1664_winobias_text_generation", "task1557_jfleg_answer_generation", "newsroom",
            "strategyqa", "gsm8k", "task309_race_answer_generation"} <= valid
    assert any("civil_comments" in t for t in valid)
    assert not valid & set(cfg.split.heldout_tasks)
    assert (cfg.cap_for("flan"), cfg.cap_for("niv2"), cfg.split.eval_valid) == (30000, 100000, 250)
    dc = cfg.decontamination  # the paper's rule: 13-gram pairs above 1% lose their training task
    assert (dc.ngram, dc.threshold, dc.drop_flagged, cfg.multiplex) == (13, 0.01, True, True)
    # held-out instances of training tasks from the releases' dev/test splits; dev tasks apart from test tasks
    assert cfg.heldout_instances == "official" and not cfg.split.test_tasks_give_valid
    # every benchmark the bench produces has a share in the mixture, and nothing else does
    names = {s.get("benchmark") or DEFAULT_BENCHMARKS[s["type"]] for s in cfg.sources}
    mixture = sweep.load_mixture_preset(PRESETS / "mixture.yaml")
    assert names == set(mixture.proportions)


def test_bench_preset_sni_names_are_real_sni_tasks(sni_dir):
    lists = set()
    for path in (sni_dir / "splits" / "default").glob("*.txt"):
        lists.update(path.read_text().split())
    cfg = load_build_config(PRESETS / "bench.yaml")
    sni_names = [t for t in cfg.split.valid_tasks if t.startswith("task")]
    assert len(sni_names) > 70 and set(sni_names) <= lists


@pytest.mark.parametrize("name, arch, mp, gpus, global_batch, steps, max_steps", [
    ("1.3b", (24, 2048, 32), 2, 32, 256, 4000, 6000),
    ("30b", (48, 7168, 56), 2, 64, 256, 4000, 6000),
    ("175b", (96, 12288, 96), 8, 128, 128, 8000, 12000),
])
def test_model_presets(name, arch, mp, gpus, global_batch, steps, max_steps):
    p = sweep.load_model_preset(name)
    assert (p.layers, p.embed_dim, p.attention_heads) == arch
    assert p.ffn_embed_dim == 4 * p.embed_dim
    assert (p.model_parallel, p.gpus) == (mp, gpus)
    assert p.sequences_per_step(p.train) == global_batch
    assert p.train["max_update"] == steps and p.max_train["max_update"] == max_steps
    t = p.train
    assert (t["tokens_per_sample"], t["lr"], t["warmup_updates"]) == (2048, 5e-5, 60)
    assert "self_attn_doc_sep" not in t
    assert (t["adam_betas"], t["fp16_adam_stats"], t["clip_norm"], t["dropout"], t["seed"]) == (
        [0.9, 0.95], False, 1.0, 0.1, 1234)
    assert (t["lr_scheduler"], t["power"], t["end_learning_rate"]) == ("polynomial_decay", 1.0, 0.0)


def test_mixture_preset_is_the_papers():
    m = sweep.load_mixture_preset(PRESETS / "mixture.yaml")
    assert m.eps == 4096
    assert math.isclose(sum(m.proportions.values()), 1.0)
    p = m.proportions
    assert (p["pretrain"], p["reasoning"]) == (0.05, 0.01)
    # the seven benchmarks keep 4/2/20/25/45/2/2 except the largest, which gives up the 6%
    assert [p[b] for b in ("crossfit", "exmix", "flan", "niv2", "t5", "unifiedskg")] == [
        0.04, 0.02, 0.20, 0.25, 0.02, 0.02]
    assert math.isclose(p["promptsource"], 0.45 - 0.06)


def test_mixture_not_summing_to_one_fails_clearly(tmp_path):
    copy_presets(tmp_path, **{"mixture.yaml": ("promptsource: 0.39", "promptsource: 0.45")})
    with pytest.raises(ConfigError, match=r"mixture\.yaml:\d+: proportions: .*sum to 1\.06"):
        sweep.load_mixture_preset(tmp_path / "mixture.yaml")
    copy_presets(tmp_path, **{"mixture.yaml": ("promptsource: 0.39", "promptsource: 0.30")})
    with pytest.raises(ConfigError, match=r"sum to 0\.91.*not 1"):
        sweep.load_model_preset(str(tmp_path / "30b.yaml"))


@pytest.mark.parametrize("file, old, new, message", [
    ("30b.yaml", "global_batch: 256", "global_batch: 512", "'global_batch' is 512 but batch_size 8"),
    ("30b.yaml", "model_parallel: 2", "model_parallel: 3", "not a multiple of model.model_parallel 3"),
    ("30b.yaml", "  gpus: 64", "  gpus: 60", "cluster.gpus 60 is not a multiple"),
    ("30b.yaml", "  layers: 48", "  layer: 48", r"30b\.yaml:\d+: model\.layer: unknown key; known: \['att"),
    ("recipe.yaml", "lr: 5.0e-5", "lr: fast", r"recipe\.yaml:\d+: train\.lr: expected a number, got 'fast'"),
    ("recipe.yaml", "  seed: 1234 ", "  # seed: 1234 ", r"leave \['seed'\] unset"),
    ("30b.yaml", "kind: model", "kind: mixture", r"30b\.yaml:\d+: kind: must be 'model'"),
    ("30b.yaml", "  gpus: 64", "  gpus: 6.4e1", r"30b\.yaml:\d+: cluster\.gpus: Input should be a valid integer"),
])
def test_bad_presets_fail_clearly(tmp_path, file, old, new, message):
    copy_presets(tmp_path, **{file: (old, new)})
    with pytest.raises(ConfigError, match=message):
        sweep.load_model_preset(str(tmp_path / "30b.yaml"))


def test_mixture_numbers_and_no_cap_read_as_in_every_file(tmp_path):
    """`{flan: 2e-1}` was "not a number" in a mixture preset while a train file read 0.2; eps 0 is no cap."""
    copy_presets(tmp_path, **{"mixture.yaml": ("flan: 0.20", "flan: 2e-1")})
    assert sweep.load_mixture_preset(tmp_path / "mixture.yaml").proportions["flan"] == 0.2
    copy_presets(tmp_path, **{"mixture.yaml": ("eps: 4096", "eps: 0")})
    preset = sweep.load_model_preset(str(tmp_path / "30b.yaml"))
    (run,) = sweep.expand(preset)
    cmd = sweep.train_command(preset, run, sweep.Paths(), dry_run=True)
    assert cmd[cmd.index("--eps") + 1] == "0"


def test_lr_written_without_a_dot_still_parses(tmp_path):
    copy_presets(tmp_path, **{"recipe.yaml": ("lr: 5.0e-5", "lr: 5e-5")})   # YAML reads a string
    assert sweep.load_model_preset(str(tmp_path / "30b.yaml")).train["lr"] == 5e-5


def test_unknown_preset_and_missing_preset_dir(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown preset '7b'.*'30b'"):
        sweep.load_model_preset("7b")
    monkeypatch.setattr(sweep, "CHECKOUT_PRESETS", tmp_path / "absent")
    monkeypatch.setattr(sweep, "installed_presets", lambda: None)
    with pytest.raises(ConfigError, match="no preset directory.*OPTIML_PRESET_DIR.*--preset-file"):
        sweep.load_model_preset("30b")
    monkeypatch.setenv("OPTIML_PRESET_DIR", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"preset directory .*absent not found \(from \$OPTIML_PRESET_DIR\)"):
        sweep.load_model_preset("30b")
