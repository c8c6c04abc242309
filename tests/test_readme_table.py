"""benchmarks/readme_table.py prints the README's figures table, and the README's table is its output.

Why: a figure typed by hand drifts from the code. The script's quick mode runs cheap rows end to end
(processes, alternation, parsing of each script's output); the README block must carry the script's
header and one line per default row, so a hand-edited or stale table shows up here.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "readme_table.py"
sys.path.insert(0, str(REPO / "benchmarks"))

import readme_table  # noqa: E402


def _block(text: str) -> str:
    return text.split(readme_table.BEGIN, 1)[1].split(readme_table.END, 1)[0]


def test_quick_rows_run_alternated_and_fill_the_readme_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.BEGIN}\nold table\n{readme_table.END}\noutro\n", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--rows", "cli,stream_resume", "--readme",
                          str(readme)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("Measured ") and "--quick --rows cli,stream_resume" in lines[0]
    assert "QUICK MODE" in lines[0] and "cores" in lines[0]
    rows = [ln for ln in lines if ln.startswith("| ") and not ln.startswith("| figure")]
    assert len(rows) == 2
    cli, resume = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    assert re.search(r"bare Python [\d,]+ \[[\d,]+–[\d,]+\] ms, `optiml --help` [\d,]+ ", cli[1]), cli
    assert cli[3] == "3" and re.fullmatch(r"[\d.]+–[\d.]+", cli[4])
    assert re.match(r"[\d.]+ ms vs [\d.]+ ms \(far / near [\d.]+x\)", resume[1]), resume
    # the alternation: A B, then B A
    order = [ln.split("] ", 1)[1].split(":")[0] for ln in out.stderr.splitlines() if ln.startswith("[cli] ")
             and "/3 " in ln]
    assert order == ["1/3 bare", "1/3 help", "2/3 help", "2/3 bare", "3/3 bare", "3/3 help"]
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old table" not in text
    assert _block(text).strip() == out.stdout.strip()


def test_a_format_change_in_a_script_is_an_error_naming_the_row():
    row = next(r for r in readme_table.ROWS if r.key == "rank")
    try:
        readme_table.extract(row, "run", "speedup: 2.1x and nothing else")
    except RuntimeError as e:
        assert "row rank, run: no match for diff" in str(e)
    else:
        raise AssertionError("a missing figure must not pass silently")


def test_readme_table_is_the_scripts_output():
    block = _block((REPO / "README.md").read_text(encoding="utf-8")).strip().splitlines()
    assert block[0].startswith("Measured ") and "by `python benchmarks/readme_table.py" in block[0]
    figures = [ln.split("|")[1].strip() for ln in block if ln.startswith("| ") and not ln.startswith("| figure")]
    header = block[0].split("`")[1]
    keys = header.split("--rows ")[1].split()[0].split(",") if "--rows " in header else readme_table.DEFAULTS
    by_key = {r.key: r for r in readme_table.ROWS}
    assert figures == [by_key[k].figure for k in keys]
