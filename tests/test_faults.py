"""Fault injection: bad input, damaged files, a full disk, killed runs, destructive options.

Every case checks three things: the message names the file (and the row, line or field), or the skip is
counted; nothing of the input changed; no earlier output was changed or left half-written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

from bench_factory import make_bench, micro_train_config
from optiml_plugin.cli import main as cli_main
from optiml_plugin.benchfiles import MANIFEST, Bench, atomic_write_bytes
from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.bench.records import Record
from optiml_plugin.errors import (ConfigError, CorruptFileError, OptimlError, WriteError)
from optiml_plugin.local import checkpoint as ckpt
from optiml_plugin.local.trainer import Trainer, read_log


def snapshot(root: Path) -> Dict[str, Tuple[str, int]]:
    """Every file under `root` (or `root` itself): content hash and mode."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root.parent)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in files}


def records(task: str, n: int, benchmark: str = "b") -> list:
    return [Record(benchmark=benchmark, task=task, category="Cat", sources=(task,), instruction=f"Do {task}.",
                   input=f"{task} input number {i}", outputs=(f"out {i}",), id=f"{task}-{i}") for i in range(n)]


def small_config():
    return load_build_config({"sources": [{"type": "builtin"}], "split": {"heldout_valid": 2, "heldout_test": 2},
                              "seed": 3})


@pytest.fixture()
def bench(tmp_path) -> Path:
    return make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=30),
                                           dict(benchmark="b2", category="c2", task="t2", n=20)])


def first_file(bench: Path) -> Path:
    return bench / Bench(bench).task_files("train")[0].path.relative_to(bench)


def read_all(bench: Path) -> None:
    b = Bench(bench)
    for tf in b.task_files("train"):
        list(b.reader(tf))


# ------------------------------------------------------------------------- damaged bench files

def test_corrupted_index_names_file_and_row(bench):
    path = first_file(bench)
    idx = Path(f"{path}.idx")
    offsets = bytearray(idx.read_bytes())
    offsets[8:16] = (int.from_bytes(offsets[8:16], "little") + 3).to_bytes(8, "little")  # row 0 ends mid-row 1
    idx.write_bytes(bytes(offsets))
    before = snapshot(bench)
    with pytest.raises(CorruptFileError, match=rf"{path.name}: row 0 .*not one JSON line.*rebuild"):
        read_all(bench)
    assert snapshot(bench) == before


def test_index_of_odd_size_names_the_index(bench):
    idx = Path(f"{first_file(bench)}.idx")
    idx.write_bytes(idx.read_bytes()[:-3])
    with pytest.raises(CorruptFileError, match=rf"{idx.name}: size is not a whole number"):
        read_all(bench)


def test_rows_removed_from_file_and_index_name_the_manifest_field(bench):
    path = first_file(bench)
    lines = path.read_bytes().splitlines(keepends=True)[:-5]
    path.write_bytes(b"".join(lines))
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    Path(f"{path}.idx").write_bytes(b"".join(o.to_bytes(8, "little") for o in offsets))
    with pytest.raises(CorruptFileError, match=rf"{path.name}: has 25 rows but manifest.json field "
                                               r"'counts.train' of task 't1' says 30"):
        read_all(bench)


def test_truncated_bench_file_names_the_index(bench):
    path = first_file(bench)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CorruptFileError, match=r"index does not match .*truncated or edited"):
        read_all(bench)


@pytest.mark.parametrize("which", ["jsonl", "idx"])
def test_missing_bench_file_or_index_is_named(bench, which):
    path = first_file(bench)
    gone = path if which == "jsonl" else Path(f"{path}.idx")
    gone.unlink()
    with pytest.raises(CorruptFileError, match=rf"{gone.name}: .*missing"):
        read_all(bench)


def test_manifest_with_invalid_json_names_line(bench):
    (bench / MANIFEST).write_text('{"format": "optiml-bench",\n "tasks": [}')
    with pytest.raises(OptimlError, match=r"manifest.json:2: invalid JSON"):
        Bench(bench)


def test_bench_stats_reports_a_truncated_file(bench, capsys):
    path = first_file(bench)
    path.write_bytes(path.read_bytes()[:-10])
    before = snapshot(bench)
    assert cli_main(["bench", "stats", str(bench)]) == 1
    err = capsys.readouterr().err
    assert f"{path.name}.idx: index does not match" in err and "1 damaged file(s)" in err
    assert snapshot(bench) == before


# ------------------------------------------------------------------------------ bench build

def test_overwrite_refuses_the_source_folder(tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    rows = [{"task": "t", "benchmark": "b", "instruction": "Do it.", "input": f"x{i}", "output": "y",
             "category": "c"} for i in range(6)]
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_build_config({"sources": [{"type": "generic", "path": "data"}]}, base_dir=tmp_path)
    before = snapshot(src)
    for out in (src, tmp_path):  # --out is the source folder, or contains it
        with pytest.raises(ConfigError, match=r"is or contains the build input .*data"):
            build_bench(config, out, overwrite=True, progress=False)
    assert snapshot(src) == before


def test_overwrite_refuses_a_directory_that_is_not_a_bench(tmp_path):
    other = tmp_path / "results"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = snapshot(other)
    with pytest.raises(ConfigError, match=r"--overwrite refused: .*results is not an optiml bench"):
        build_bench(small_config(), other, records=records("t", 8), overwrite=True, progress=False)
    assert snapshot(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def _full_disk_on(monkeypatch, name: str) -> None:
    """Make writes of files whose name contains `name` fail with ENOSPC, as a full disk does."""
    real = os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def fileno(self):
            return self.f.fileno()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):
        f = real(fd, *args, **kwargs)
        return Full(f) if name in os.readlink(f"/proc/self/fd/{fd}") else f

    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_during_build_keeps_the_earlier_bench(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    build_bench(small_config(), out, records=records("t", 8), progress=False)
    before = snapshot(out)
    _full_disk_on(monkeypatch, MANIFEST)
    with pytest.raises(WriteError, match=r"manifest.json: no space left on device .*free some space"):
        build_bench(small_config(), out, records=records("t", 12), overwrite=True, progress=False)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # no temp folder or temp file left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_on_an_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")
    _full_disk_on(monkeypatch, "results.json")
    with pytest.raises(WriteError, match=r"results.json: no space left"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "bench").rglob("*") if p.is_file()}
    assert modes == {0o666 & ~mask}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_builds_folder_is_removed_by_the_next_build(tmp_path, capsys):
    dead = tmp_path / f".bench.building-{_dead_pid()}"
    (dead / "train").mkdir(parents=True)
    live = tmp_path / f".bench.building-{os.getppid()}"  # a live process: a concurrent build
    live.mkdir()
    build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    assert not dead.exists() and live.exists()
    assert f"removed {dead}, left by a killed build" in capsys.readouterr().err


def test_sni_file_skipped_whole_counts_its_instances(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    doc = {"Source": ["s"], "Categories": ["Question Answering"], "Definition": ["  "], "Input_language": ["English"],
           "Instances": [{"id": f"a-{i}", "input": f"q{i}", "output": ["x"]} for i in range(7)]}
    (tasks / "task1_bad.json").write_text(json.dumps(doc))
    good = dict(doc, Definition=["Answer."], Instances=[{"id": f"g-{i}", "input": f"q{i}", "output": ["x"]}
                                                        for i in range(12)])
    (tasks / "task2_good.json").write_text(json.dumps(good))
    config = load_build_config({"sources": [{"type": "sni", "path": "tasks"}], "on_bad_record": "skip",
                                "split": {"heldout_valid": 2, "heldout_test": 2}}, base_dir=tmp_path)
    before = snapshot(tasks)
    acc = build_bench(config, tmp_path / "bench", progress=False)["accounting"]
    assert acc["skipped"] == {"empty_field": 7} and acc["read"] == 19 and acc["balanced"]
    assert "task1_bad.json" in acc["skipped_examples"][0] and "field 'Definition'" in acc["skipped_examples"][0]
    assert snapshot(tasks) == before


def test_same_task_from_two_sources_is_warned_and_listed(tmp_path, capsys):
    for name, start in (("a", 0), ("b", 10)):
        rows = [{"task": "t", "benchmark": "b", "instruction": "Do it.", "input": f"x{i}", "output": "y",
                 "category": "Question Answering", "id": f"{name}{i}"} for i in range(start, start + 6)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = load_build_config({"sources": [{"type": "generic", "path": "a.jsonl"},
                                            {"type": "generic", "path": "b.jsonl"}],
                                "split": {"heldout_valid": 1, "heldout_test": 1}}, base_dir=tmp_path)
    manifest = build_bench(config, tmp_path / "bench", progress=False)
    assert manifest["split_plan"]["merged_tasks"] == [{"benchmark": "b", "task": "t",
                                                       "sources": ["a.jsonl", "b.jsonl"], "records": 12}]
    assert "task 't' (b) comes from 2 sources (a.jsonl, b.jsonl)" in capsys.readouterr().err


# --------------------------------------------------------------------------------- training

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Tuple[Path, Path]:
    """A bench and a run killed after its step-6 checkpoint (checkpoints at steps 3 and 6)."""
    root = tmp_path_factory.mktemp("faults")
    bench = make_bench(root / "bench", [dict(benchmark="b1", category="c1", task="t1", n=40),
                                        dict(benchmark="b2", category="c2", task="t2", n=30)])
    trainer = Trainer(micro_train_config(bench, root / "run", optim={"max_update": 9}))
    assert trainer.train(until=6) is None
    return bench, root / "run"


@pytest.fixture()
def run(trained, tmp_path) -> Path:
    return Path(shutil.copytree(trained[1], tmp_path / "run"))


def resume(bench: Path, run_dir: Path, **sections) -> Trainer:
    sections.setdefault("optim", {"max_update": 9})
    return Trainer(micro_train_config(bench, run_dir, **sections), resume=True)


def test_resume_says_from_which_step(trained, run, capsys):
    assert resume(trained[0], run).step == 6
    assert f"resumed from step 6 ({run / 'checkpoints' / 'step_00000006'})" in capsys.readouterr().out


def test_truncated_checkpoint_falls_back_to_the_newest_complete_one(trained, run, capsys):
    model = run / "checkpoints" / "step_00000006" / "model.pt"
    model.write_bytes(model.read_bytes()[:1000])
    good = snapshot(run / "checkpoints" / "step_00000003")
    trainer = resume(trained[0], run)
    out = capsys.readouterr().out
    assert trainer.step == 3
    assert f"{model}: 1000 bytes, sizes.json says" in out and "falling back to step_00000003" in out
    assert snapshot(run / "checkpoints" / "step_00000003") == good
    assert max(r["step"] for r in read_log(run / "log.jsonl")) == 3  # records after step 3 are redone


def test_unreadable_checkpoint_file_names_its_path(trained, run):
    """A checkpoint without sizes.json (older runs) is checked when unpickled."""
    step = run / "checkpoints" / "step_00000006"
    (step / ckpt.SIZES).unlink()
    (step / "optimizer.pt").write_bytes((step / "optimizer.pt").read_bytes()[:500])
    with pytest.raises(CorruptFileError, match=rf"{step / 'optimizer.pt'}: unreadable checkpoint file"):
        ckpt.load_checkpoint(step, 0)


def test_no_loadable_checkpoint_is_one_error(trained, run):
    for step in ("step_00000003", "step_00000006"):
        (run / "checkpoints" / step / "rank0.pt").unlink()
    with pytest.raises(OptimlError, match=r"none of the 2 checkpoints can be loaded"):
        resume(trained[0], run)


def test_half_written_log_line_is_dropped_and_said(trained, run, capsys):
    log = run / "log.jsonl"
    complete = log.read_text()
    log.write_text(complete + '{"step": 7, "loss": 1.2')
    assert resume(trained[0], run).step == 6
    assert "dropped a half-written last line" in capsys.readouterr().out
    assert log.read_text() == complete


def test_damaged_log_line_in_the_middle_names_the_line(trained, run):
    log = run / "log.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = "garbage"
    log.write_text("\n".join(lines) + "\n")
    before = snapshot(log)
    with pytest.raises(CorruptFileError, match=r"log.jsonl:2: field 'step'"):
        resume(trained[0], run)
    assert snapshot(log) == before


def test_a_killed_saves_temp_dir_goes_with_the_next_save(trained, run):
    stale = run / "checkpoints" / ".tmp_step_00000005"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half")
    resume(trained[0], run).train(until=7)
    assert not stale.exists() and (run / "checkpoints" / "step_00000007" / ckpt.SIZES).is_file()


def test_full_disk_during_a_checkpoint_keeps_the_earlier_ones(trained, run, monkeypatch):
    trainer = resume(trained[0], run)
    before = snapshot(run / "checkpoints")

    def full(obj, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:595] . PytorchStreamWriter failed writing "
                           "file data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WriteError, match=r"\.tmp_step_00000007/.*cannot write the checkpoint .*file write failed"):
        trainer.train(until=7)
    assert snapshot(run / "checkpoints") == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_full_disk_while_saving_the_final_model_leaves_no_model_dir(trained, run, monkeypatch):
    trainer = resume(trained[0], run)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.lm, "save_pretrained", full)
    with pytest.raises(WriteError, match=rf"{run / 'final'}: cannot write the model .*No space left"):
        trainer.save_final()
    assert not (run / "final").exists() and not list(run.glob(".final*"))


@pytest.mark.parametrize("change,words", [
    ({"run": {"seed": 5}}, r"the seed \(run.seed\) \(saved 1, now 5\)"),
    ({"data": {"batch_size": 3}}, r"data.batch_size \(saved 2, now 3\)"),
])
def test_resume_with_other_settings_names_them(trained, run, change, words):
    before = snapshot(run)
    with pytest.raises(ConfigError, match=rf"saved with other settings; changed: {words}"):
        resume(trained[0], run, **change)
    assert {k: v for k, v in snapshot(run).items() if "train_config" not in k and "tokenizer" not in k} == \
        {k: v for k, v in before.items() if "train_config" not in k and "tokenizer" not in k}


def test_resume_with_another_bench_names_the_mixture(trained, run, tmp_path):
    other = make_bench(tmp_path / "other", [dict(benchmark="b1", category="c1", task="t1", n=40),
                                            dict(benchmark="b2", category="c2", task="t2", n=31)])
    with pytest.raises(ConfigError, match=r"the bench's training tasks or the mixture \(data.bench"):
        Trainer(micro_train_config(other, run, optim={"max_update": 9}), resume=True)


def test_truncation_is_counted_in_the_log_and_on_screen(trained, run, capsys):
    resume(trained[0], run).train(until=7)
    assert "the packer cut" in capsys.readouterr().out
    train = [r for r in read_log(run / "log.jsonl") if "split" not in r]
    assert train[-1]["cut_left_examples"] > 0 and train[-1]["cut_left_tokens"] >= train[-1]["cut_left_examples"]
    counts = [r["cut_left_examples"] for r in train]
    assert counts == sorted(counts)  # cumulative


# ----------------------------------------------------------------------------- evaluation

def test_model_dir_without_weights_or_tokenizer_is_named(trained, tmp_path):
    pytest.importorskip("transformers")
    from optiml_plugin.eval.backends.hf import HFBackend

    model = Trainer(micro_train_config(trained[0], tmp_path / "m", optim={"max_update": 1})).save_final()
    no_tok = Path(shutil.copytree(model, tmp_path / "no_tok"))
    for p in no_tok.glob("tokenizer*"):
        p.unlink()
    no_weights = Path(shutil.copytree(model, tmp_path / "no_weights"))
    for p in no_weights.glob("*.safetensors"):
        p.unlink()
    with pytest.raises(ConfigError, match=rf"{no_tok}: no tokenizer"):
        HFBackend.from_dir(no_tok)
    with pytest.raises(ConfigError, match=rf"{no_weights}: no model weights"):
        HFBackend.from_dir(no_weights)


def test_converter_refuses_a_non_empty_out(tmp_path):
    pytest.importorskip("transformers")
    from optiml_plugin.metaseq.convert import convert

    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    before = snapshot(out)
    with pytest.raises(ConfigError, match=rf"--out {out} already exists and is not empty"):
        convert([tmp_path / "checkpoint.pt"], out)
    assert snapshot(out) == before


def test_demo_refuses_to_replace_a_train_folder_it_did_not_write(tmp_path):
    from optiml_plugin.demo import run_demo

    (tmp_path / "bench").mkdir()
    make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=4)])
    (tmp_path / "seed_2" / "train").mkdir(parents=True)
    (tmp_path / "seed_2" / "train" / "data.csv").write_text("mine")
    before = snapshot(tmp_path / "seed_2" / "train")
    with pytest.raises(ConfigError, match=r"train exists and is not a training run"):
        run_demo(tmp_path, quick=True, progress=False, seed=1, seeds=2)
    assert snapshot(tmp_path / "seed_2" / "train") == before and not (tmp_path / "seed_1").exists()


def test_default_eval_dirs_never_collide_and_only_our_old_charts_go(tmp_path):
    """An earlier run's charts (listed in its results.json) go; a chart the user put there stays."""
    from optiml_plugin.eval.report import default_run_dir, write_run

    model = tmp_path / "run1" / "final"
    first, second = (default_run_dir(model, "test", tmp_path / "eval_runs") for _ in range(2))
    assert first != second and first.name.startswith("run1_final_test_")
    (second / "chart_heldout_tasks.png").write_bytes(b"old chart")
    (second / "chart_mine.png").write_bytes(b"the user's own chart")
    (second / "results.json").write_text(json.dumps({"model_id": "m", "config": {"bench": "b"},
                                                     "files": {"charts": "chart_heldout_tasks.png"}}))
    results = {"model_id": "m", "config": {"bench": "b", "split": "test"}, "counts": {"instances": 0},
               "aggregate": {"levels": [], "categories": [], "tasks": [], "benchmark_tasks": [],
                             "model_selection": {"overall": None}}}
    write_run(results, [], second, with_charts=False)
    assert (second / "results.json").is_file()
    assert not (second / "chart_heldout_tasks.png").exists()
    assert (second / "chart_mine.png").read_bytes() == b"the user's own chart"


def test_cli_reports_an_os_error_in_one_line(bench, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    before = snapshot(bench)
    assert cli_main(["bench", "stats", str(bench), "--png", str(tmp_path / "file" / "chart.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("optiml: error: ") and str(tmp_path / "file") in err and "Traceback" not in err
    assert snapshot(bench) == before
