from __future__ import annotations

import pytest

from optiml_plugin.cli import main
from optiml_plugin.benchfiles import Bench


def test_build_builtin_then_stats_with_png(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "build", "--builtin", "--out", str(out), "--seed", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert Bench(out).manifest["seed"] == 4
    png = tmp_path / "c.png"
    assert main(["bench", "stats", str(out), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "heldout_categories" in text and "Two Steps" in text and "balanced=True" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["bench", "build", "--builtin", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_build_from_yaml_with_skip(tmp_path, capsys, sni_dir):
    (tmp_path / "held.txt").write_text("task1331_reverse_array\nghost_task\n")
    (tmp_path / "c.yaml").write_text(f"""
sources:
  - {{type: sni, path: {sni_dir / 'tasks'}}}
split:
  sni_split_dir: {sni_dir / 'splits' / 'default'}
  heldout_tasks: held.txt
""")
    out = tmp_path / "b"
    assert main(["bench", "build", str(tmp_path / "c.yaml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "held.txt" in err and "ghost_task" in err and "heldout_tasks" in err
    assert not out.exists()
    assert main(["bench", "build", str(tmp_path / "c.yaml"), "--out", str(out),
                 "--on-bad-record", "skip"]) == 0
    m = Bench(out).manifest
    assert m["split_plan"]["problems"]["skipped"] == {"listed_task_absent": 1}
    assert m["accounting"]["balanced"]


def test_usage_errors(tmp_path, capsys):
    assert main(["bench", "build", "--out", str(tmp_path / "x")]) == 2
    assert "--builtin" in capsys.readouterr().err
    assert main(["bench", "stats", str(tmp_path)]) == 2
    assert "not a bench directory" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("sources: [{type: builtin}]\nsplitt: {}\n")
    assert main(["bench", "build", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "y")]) == 2
    assert "c.yaml:2: splitt: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "build", "--builtin", "--out", str(tmp_path / "z"), "--on-bad-record", "maybe"])


def test_bench_build_workers_flag_does_not_change_the_bench(tmp_path, capsys):
    from golden_build import bench_digests

    for n in ("1", "2"):
        assert main(["bench", "build", "--builtin", "--out", str(tmp_path / n), "--workers", n, "--no-progress"]) == 0
    assert bench_digests(tmp_path / "1", tmp_path) == bench_digests(tmp_path / "2", tmp_path)
    assert main(["bench", "build", "--builtin", "--out", str(tmp_path / "0"), "--workers", "0"]) == 2
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
