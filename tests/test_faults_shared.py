"""Faults of a shared cluster file system (issue 24): two writers meet in one folder, a typo points a verb
at the wrong folder, a bench points outside itself, a source folder holds what cannot be read, a disk fills.

Each test names the numbered item of the issue it covers. Like tests/test_faults.py, every case checks the
one-line message (no traceback), the count where something is skipped, and that no input or earlier
output changed.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench_factory import make_bench, micro_train_config
from optiml_plugin.bench.build import build_bench, load_build_config
from optiml_plugin.benchfiles import MANIFEST, Bench
from optiml_plugin.cli import main as cli_main
from optiml_plugin.errors import BadRecordError, ConfigError, CorruptFileError, OptimlError, WriteError
from test_faults import _dead_pid, _full_disk_on, first_file, records, small_config, snapshot


@pytest.fixture()
def bench(tmp_path) -> Path:
    return make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=30),
                                           dict(benchmark="b2", category="c2", task="t2", n=20)])


def one_error_line(capsys) -> str:
    """The command's stderr: one `optiml: error:` line and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("optiml: error: ")]
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------ 1. one writer per output folder

HOLD = """
import sys
from optiml_plugin.outlock import locked
with locked(sys.argv[1], "a test holder"):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock of a folder: `holder(path)` -> its Popen (ended at teardown)."""
    procs = []

    def hold(out: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.stdin.close()
        proc.wait(timeout=60)


def test_a_second_bench_build_into_a_folder_being_built_fails_at_once_naming_the_holder(tmp_path, holder):
    from optiml_plugin import outlock

    out = tmp_path / "bench"
    proc = holder(out)
    with pytest.raises(outlock.OutputLockedError,
                       match=rf"{out} is being written by pid {proc.pid} on {socket.gethostname()} "
                             rf"\(a test holder"):
        build_bench(small_config(), out, records=records("t", 8), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".bench.building-*"))


def test_a_lock_left_by_a_killed_process_is_taken_over_and_said(tmp_path, capsys):
    from optiml_plugin import outlock

    out = tmp_path / "bench"
    dead = f"pid {_dead_pid()} on {socket.gethostname()} (optiml bench build, since 2026-01-01 00:00:00)"
    outlock.lock_path(out).write_text(dead + "\n")
    build_bench(small_config(), out, records=records("t", 8), progress=False)
    assert f"took over the lock of {out} from {dead}, which is no longer running" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench"]  # the lock file goes with its holder


def test_two_trains_into_one_run_folder(bench, tmp_path, holder, capsys):
    run = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(micro_train_config(bench, run).to_dict()))
    proc = holder(run)
    assert cli_main(["train", str(config)]) == 2
    assert f"{run} is being written by pid {proc.pid}" in one_error_line(capsys)
    assert not run.exists()


@pytest.mark.parametrize("verb", ["eval", "compare", "demo"])
def test_every_other_writing_verb_takes_the_lock(bench, tmp_path, holder, capsys, verb):
    out = tmp_path / "out"
    argv = {"eval": ["eval", "--model", str(tmp_path / "model"), "--bench", str(bench)],
            "compare": ["compare", str(tmp_path / "run1"), str(tmp_path / "run2")],
            "demo": ["demo", "--quick"]}[verb]
    proc = holder(out)
    assert cli_main(argv + ["--out", str(out)]) == 2
    assert f"{out} is being written by pid {proc.pid}" in one_error_line(capsys)


def test_a_file_system_without_locks_says_so(tmp_path, monkeypatch):
    from optiml_plugin import outlock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(outlock.fcntl, "flock", no_locks)
    with pytest.raises(OptimlError, match=r"does not support locks \(No locks available\); set OPTIML_NO_LOCK=1"):
        build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    monkeypatch.setenv(outlock.NO_LOCK_ENV, "1")
    build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    assert (tmp_path / "bench" / MANIFEST).is_file()


# ------------------------------------------------- 2. what one rank writes, another reads only whole

def test_a_resumed_run_rewrites_its_files_by_rename(bench, tmp_path):
    """On resume rank 0 rewrites tokenizer.json (and the run's other files) while the other ranks read
    them: a reader that opened the old file reads all of it, a new open gets the whole new one."""
    from optiml_plugin.local.trainer import Trainer

    run = tmp_path / "run"
    Trainer(micro_train_config(bench, run)).train(until=3)
    names = ("tokenizer/tokenizer.json", "train_config.yaml", "validation_sets.json")
    opened = {n: open(run / n, "rb") for n in names}
    before = {n: (run / n).read_bytes() for n in names}
    try:
        Trainer(micro_train_config(bench, run), resume=True)
        for n, f in opened.items():
            assert os.fstat(f.fileno()).st_ino != (run / n).stat().st_ino, f"{n} was rewritten in place"
            assert f.read() == before[n]
    finally:
        for f in opened.values():
            f.close()
    json.loads((run / "tokenizer" / "tokenizer.json").read_text())


# ------------------------------------------------------------ 3. where `optiml eval --out` may write

def _earlier_eval_run(folder: Path, bench: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"model_id": "m", "config": {"bench": str(bench)},
                                                     "files": {"charts": "chart_heldout_tasks.png"}}))
    (folder / "chart_heldout_tasks.png").write_bytes(b"our chart")
    (folder / "chart_mine.png").write_bytes(b"the user's chart")


@pytest.mark.parametrize("kind", ["bench", "model_final", "training_run", "another_benchs_eval"])
def test_eval_refuses_an_out_that_is_not_its_own(saved_model, tmp_path, capsys, kind):
    bench = Path(shutil.copytree(saved_model.parent.parent / "bench", tmp_path / "bench"))
    out = {"bench": bench, "model_final": tmp_path / "run" / "final", "training_run": tmp_path / "run",
           "another_benchs_eval": tmp_path / "eval"}[kind]
    if kind in ("model_final", "training_run"):
        (tmp_path / "run" / "final").mkdir(parents=True)
        (tmp_path / "run" / "final" / "config.json").write_text("{}")
        (tmp_path / "run" / "log.jsonl").write_text('{"step": 1}\n')
    if kind == "another_benchs_eval":
        _earlier_eval_run(out, tmp_path / "other_bench")
    before = snapshot(tmp_path)
    assert cli_main(["eval", "--model", str(saved_model), "--bench", str(bench), "--out", str(out),
                     "--device", "cpu", "--no-progress", "--shots", "0", "--no-charts"]) == 2
    line = one_error_line(capsys)
    assert f"--out {out}" in line and ("holds no optiml eval run" in line or "another bench" in line)
    assert snapshot(tmp_path) == before


def test_eval_into_an_earlier_run_of_the_same_bench_writes_a_subfolder_or_overwrites_only_its_own(bench, tmp_path):
    from optiml_plugin.eval.outdir import choose_out
    from optiml_plugin.eval.report import write_run

    run = tmp_path / "eval"
    _earlier_eval_run(run, bench)
    new = choose_out(run, tmp_path / "m" / "final", bench, "test", overwrite=False)
    assert new.parent == run and new.name.startswith("m_final_test_") and not any(new.iterdir())
    assert choose_out(run, tmp_path / "m" / "final", bench, "test", overwrite=True) == run
    assert choose_out(tmp_path / "fresh", "m", bench, "test", overwrite=False) == tmp_path / "fresh"
    write_run({"model_id": "m", "config": {"bench": str(bench)}}, [], run, with_charts=False)
    assert not (run / "chart_heldout_tasks.png").exists()
    assert (run / "chart_mine.png").read_bytes() == b"the user's chart"


# ------------------------------------------------------------------- 4. a bench stays inside itself

def _edit_manifest(bench: Path, change) -> None:
    manifest = json.loads((bench / MANIFEST).read_text())
    change(manifest)
    (bench / MANIFEST).write_text(json.dumps(manifest))


def test_a_manifest_path_outside_the_bench_is_refused(bench, tmp_path):
    (tmp_path / "secret.jsonl").write_text('{"src": "x", "tgt": "y"}\n')

    def escape(m):
        m["tasks"][0]["files"]["train"] = "../../../../../../../../../../etc/passwd"
    _edit_manifest(bench, escape)
    with pytest.raises(CorruptFileError, match=r"field 'tasks\[0\].files.train': '\.\./.*/etc/passwd' is "
                                               r"outside the bench"):
        Bench(bench)


def test_an_unknown_format_version_is_refused_naming_the_versions_read(bench, capsys):
    _edit_manifest(bench, lambda m: m.update(version=99))
    with pytest.raises(OptimlError, match=r"field 'version' is 99; this optiml reads bench format versions 1, 2"):
        Bench(bench)
    assert cli_main(["bench", "stats", str(bench)]) == 2
    assert "version" in one_error_line(capsys)


@pytest.mark.parametrize("damage", ["index_shifted", "garbage_row"])
def test_bench_stats_verifies_every_index_entry(bench, capsys, damage):
    path = first_file(bench)
    if damage == "index_shifted":
        idx = Path(f"{path}.idx")
        offsets = bytearray(idx.read_bytes())
        offsets[16:24] = (int.from_bytes(offsets[16:24], "little") + 3).to_bytes(8, "little")
        idx.write_bytes(bytes(offsets))
    else:
        lines = path.read_bytes().splitlines(keepends=True)
        lines[4] = b"x" * (len(lines[4]) - 1) + b"\n"
        path.write_bytes(b"".join(lines))
    before = snapshot(bench)
    assert cli_main(["bench", "stats", str(bench)]) == 1
    err = capsys.readouterr().err
    assert f"{path.name}: row {1 if damage == 'index_shifted' else 4} " in err and "1 damaged file(s)" in err
    assert cli_main(["bench", "stats", str(bench), "--no-verify"]) == 0  # sizes and the last row only
    assert snapshot(bench) == before


# ------------------------------------------------------------------------ 5. one line, no traceback

@pytest.mark.parametrize("tasks", ["not a list", [1, 2], [{"task": "t", "files": [], "counts": {}}]])
def test_manifest_tasks_of_the_wrong_type(bench, tmp_path, capsys, tasks):
    _edit_manifest(bench, lambda m: m.update(tasks=tasks))
    assert cli_main(["bench", "stats", str(bench)]) == 2
    assert "manifest.json: field 'tasks" in one_error_line(capsys)
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(micro_train_config(bench, tmp_path / "run").to_dict()))
    assert cli_main(["train", str(config)]) == 2
    assert "manifest.json: field 'tasks" in one_error_line(capsys)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A micro model saved by the trainer (under umask 022), and its bench."""
    pytest.importorskip("transformers")
    from optiml_plugin.local.trainer import Trainer

    root = tmp_path_factory.mktemp("model")
    bench = make_bench(root / "bench", [dict(benchmark="b1", category="c1", task="t1", n=12),
                                        dict(benchmark="b1", category="c1", task="t1", n=4,
                                             split="test_heldout_instances")])
    old = os.umask(0o022)
    try:
        final = Trainer(micro_train_config(bench, root / "run", optim={"max_update": 1})).save_final()
    finally:
        os.umask(old)
    return final


def test_truncated_model_weights_in_eval(saved_model, tmp_path, capsys):
    model = Path(shutil.copytree(saved_model, tmp_path / "model"))
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    bench = saved_model.parent.parent / "bench"
    assert cli_main(["eval", "--model", str(model), "--bench", str(bench), "--out", str(tmp_path / "e"),
                     "--device", "cpu", "--no-progress", "--shots", "0"]) == 2
    assert f"{model}: cannot load the model weights" in one_error_line(capsys)


@pytest.mark.parametrize("argv,words", [
    (["eval", "--model", "{model}", "--bench", "{bench}", "--device", "tpu9", "--out", "{tmp}/e"],
     "--device 'tpu9': not a device"),
    (["bench", "stats", "{bench}", "--png", "{tmp}/x.txt"], "--png {tmp}/x.txt: the chart is a PNG image"),
])
def test_bad_flags_are_one_line(saved_model, tmp_path, capsys, argv, words):
    bench = saved_model.parent.parent / "bench"
    argv = [a.format(bench=bench, tmp=tmp_path, model=saved_model) for a in argv]
    assert cli_main(argv) == 2
    assert words.format(tmp=tmp_path) in one_error_line(capsys)
    assert not (tmp_path / "x.txt").exists()


# ------------------------------------------------------------------------ 6. no silent input loss

def _source_folder(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"task": "t", "benchmark": "b", "instruction": "Do it.", "input": f"x{i}", "output": "y",
             "category": "Question Answering", "id": f"r{i}"} for i in range(12)]
    (src / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (src / "gone.jsonl").symlink_to(src / "missing.jsonl")
    os.mkfifo(src / "pipe.jsonl")
    return src


def _config(tmp_path: Path, on_bad: str):
    return load_build_config({"sources": [{"type": "generic", "path": "src"}], "on_bad_record": on_bad,
                              "split": {"heldout_valid": 1, "heldout_test": 1}}, base_dir=tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_unreadable_source_entries_are_an_error_or_counted(tmp_path):
    src = _source_folder(tmp_path)
    with pytest.raises(BadRecordError, match=r"gone.jsonl: cannot be read \(dangling symbolic link\)"):
        build_bench(_config(tmp_path, "error"), tmp_path / "bench", progress=False)
    acc = build_bench(_config(tmp_path, "skip"), tmp_path / "bench", progress=False)["accounting"]
    assert acc["skipped"] == {"unreadable_file": 2} and acc["read"] == 14 and acc["balanced"]
    assert any("pipe.jsonl: cannot be read (not a regular file (a FIFO))" in m for m in acc["skipped_examples"])
    assert (src / "pipe.jsonl").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_source_file_is_counted(tmp_path):
    src = _source_folder(tmp_path)
    (src / "pipe.jsonl").unlink()
    (src / "gone.jsonl").unlink()
    (src / "locked.jsonl").write_text((src / "good.jsonl").read_text().replace('"r', '"s'))
    (src / "locked.jsonl").chmod(0)
    acc = build_bench(_config(tmp_path, "skip"), tmp_path / "bench", progress=False)["accounting"]
    assert acc["skipped"] == {"unreadable_file": 1}


def test_out_inside_a_source_folder_is_refused(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text(json.dumps({"task": "t", "benchmark": "b", "instruction": "I.", "input": "x",
                                             "output": "y", "category": "Question Answering"}) + "\n")
    config = load_build_config({"sources": [{"type": "generic", "path": "src"}]}, base_dir=tmp_path)
    before = snapshot(src)
    with pytest.raises(ConfigError, match=rf"--out {src / 'bench'} is inside the build input"):
        build_bench(config, src / "bench", progress=False)
    assert snapshot(src) == before and sorted(p.name for p in src.iterdir()) == ["a.jsonl"]


# ----------------------------------------------------------- 7. a failed or killed build cleans up

def test_full_disk_while_spilling_removes_the_temp_folder(tmp_path, monkeypatch):
    from optiml_plugin.bench import spill

    real_open = open

    class FullFile:
        def __init__(self, f):
            self.f, self.closed = f, False

        def tell(self):
            return 0

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device", self.f.name)

        def flush(self):
            pass

        def close(self):
            self.closed = True
            self.f.close()

    monkeypatch.setattr(spill, "open", lambda p, m, *a: FullFile(real_open(p, m, *a)), raising=False)
    with pytest.raises(WriteError, match=r"rows.spill: no space left on device"):
        build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_killed_builds_folder_goes_with_a_build_into_any_folder_beside_it(tmp_path, capsys):
    dead = tmp_path / f".other.building-{_dead_pid()}"
    (dead / ".spill").mkdir(parents=True)
    (dead / ".spill" / "rows.spill").write_bytes(b"x" * 1000)
    build_bench(small_config(), tmp_path / "bench", records=records("t", 8), progress=False)
    assert not dead.exists() and f"removed {dead}, left by a killed build" in capsys.readouterr().err


def test_bench_clean_removes_killed_builds_only(tmp_path, capsys):
    dead = tmp_path / f".b.building-{_dead_pid()}"
    dead.mkdir()
    live = tmp_path / f".c.building-{os.getppid()}"
    live.mkdir()
    assert cli_main(["bench", "clean", str(tmp_path)]) == 0
    assert not dead.exists() and live.exists()
    assert "removed 1 folder(s)" in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_while_writing_an_eval_chart_names_the_file(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from optiml_plugin.eval.report import charts

    results = {"model_id": "m", "aggregate": {"categories": [
        {"level": "heldout_tasks", "category": "c", "shots": 0, "score": 50.0}]}}
    _full_disk_on(monkeypatch, "chart_")
    with pytest.raises(WriteError, match=r"chart_heldout_tasks.png: no space left on device"):
        charts(results, tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------- 8. outputs follow the umask

def test_the_saved_model_follows_the_umask(saved_model):
    modes = {p.name: p.stat().st_mode & 0o777 for p in saved_model.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


def test_a_converted_model_follows_the_umask(tmp_path):
    pytest.importorskip("transformers")
    from optiml_plugin.metaseq.convert import convert
    from test_eval_convert import _save_singleton, metaseq_state_dict

    ckpt = _save_singleton(metaseq_state_dict(seed=3, tied=True), tmp_path / "checkpoint.pt", no_scale_embedding=True)
    old = os.umask(0o022)
    try:
        out = convert([ckpt], tmp_path / "hf")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}["model.safetensors"] == 0o644


# ----------------------------------------------- 9. huge records, a sweep on a source, the demo's out

def test_a_huge_record_is_clipped_before_tokenizing_and_counted(tmp_path):
    from optiml_plugin.data.training_data import open_run
    from optiml_plugin.local.data import load_tokenizer

    bench = make_bench(tmp_path / "bench", [dict(benchmark="b1", category="c1", task="t1", n=20)])
    path = first_file(bench)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[3]["src"] = "word " * 100_000 + rows[3]["src"]
    from optiml_plugin.benchfiles import write_jsonl_with_index

    write_jsonl_with_index(path, rows)
    config = micro_train_config(bench, tmp_path / "run")
    b = Bench(bench)
    tok = load_tokenizer(config.data, b)
    seen = []
    encode = tok.encode_pairs

    def recording(pairs):
        seen.extend(len(s) + len(t) for s, t in pairs)
        return encode(pairs)

    tok.encode_pairs = recording
    data = open_run(b, tok, config.data, 2, seed=1)
    it = iter(data.batches)
    for _ in range(12):
        next(it)
    assert data.batches.max_chars == 32 * 64 and max(seen) <= 2 * 32 * 64
    assert data.batches.long_records >= 1
    assert data.batches.state_dict()["long_records"] == data.batches.long_records


def test_sweep_refuses_data_that_is_not_a_bench(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text("{}\n")
    assert cli_main(["sweep", "--preset", "1.3b", "--no-submit", "--data", str(src), "--bpe-dir", "/bpe",
                     "--opt-checkpoints", "/opt", "--checkpoints-dir", str(tmp_path / "runs")]) == 2
    assert f"--data {src} is not an optiml bench" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_demo_checks_its_out_before_writing(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "train").mkdir(parents=True)
    (out / "train" / "data.csv").write_text("mine")
    before = snapshot(out)
    assert cli_main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 2
    assert f"--out {out} is not empty and is not an earlier demo run" in one_error_line(capsys)
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["train"]
