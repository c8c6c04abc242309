"""The paper's §4 ablations as presets: one YAML file per table, rendered as runs by `optiml sweep
--ablation NAME` and read back by `optiml compare --reference NAME` as the paper's column.

Why a file per table: a lab reruns a table as a unit (the same model preset, schedule and bench, one
setting changed per row) and reads its results against the paper's row by row. Each file says which
table it reproduces, what the paper's numbers are (`paper`: 0-shot/5-shot of the table's Avg column or
the column it names), and per row the recipe settings (`set`, any `--grid` key) and mixture changes
(`mixture`: `eps`, `proportions`) that make the row. Nothing here imports torch or metaseq.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from optiml_plugin.errors import ConfigError

KIND = "ablation"
PREFIX = "ablation_"


@dataclass(frozen=True)
class AblationRow:
    name: str
    settings: Dict[str, Any]      # recipe keys, as `--grid` takes them
    mixture: Dict[str, Any]       # eps and/or proportions over the model preset's mixture
    paper: Optional[str]          # the paper's figure for this row ("44.7/56.0"), None if it reports none


@dataclass(frozen=True)
class Ablation:
    name: str
    table: str                    # "Tab 8 (§4.8)"
    column: str                   # what the paper's figures are
    preset: str                   # the model preset the paper ran it at
    train: Dict[str, Any]         # settings every row shares (the table's schedule)
    rows: Tuple[AblationRow, ...]
    note: str
    path: Path


def ablation_names(directory: Path) -> List[str]:
    return sorted(p.stem[len(PREFIX):] for p in directory.glob(f"{PREFIX}*.yaml"))


def load_ablation(name_or_path: Union[str, Path], directory: Path) -> Ablation:
    """An ablation preset by name (`metaicl` -> `ablation_metaicl.yaml` in the preset directory) or path."""
    from optiml_plugin.yamlio import read_yaml_mapping_lines

    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) or "/" in text else directory / f"{PREFIX}{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown ablation {text!r}; {directory} has {ablation_names(directory)}")
    data, _ = read_yaml_mapping_lines(path, "ablation preset")
    if data.get("kind") != KIND:
        raise ConfigError(f"{path}: field 'kind' must be {KIND!r}, got {data.get('kind')!r}")
    allowed = {"kind", "name", "table", "column", "preset", "train", "rows", "note"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; known: {sorted(allowed)}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: 'rows' must be a non-empty list")
    out, seen = [], set()
    for i, row in enumerate(rows):
        where = f"{path}: rows[{i}]"
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ConfigError(f"{where}: each row is a mapping with a 'name'")
        extra = sorted(set(row) - {"name", "set", "mixture", "paper"})
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {extra}; known: name, set, mixture, paper")
        if row["name"] in seen:
            raise ConfigError(f"{where}: row name {row['name']!r} is used twice")
        seen.add(row["name"])
        mixture = row.get("mixture") or {}
        if not isinstance(mixture, dict) or set(mixture) - {"eps", "proportions"}:
            raise ConfigError(f"{where}: 'mixture' may set eps and proportions only, got {mixture!r}")
        paper = row.get("paper")
        out.append(AblationRow(row["name"], dict(row.get("set") or {}), dict(mixture),
                               None if paper is None else str(paper)))
    for key in ("name", "table", "column", "preset"):
        if not isinstance(data.get(key), str):
            raise ConfigError(f"{path}: field {key!r} must be a string")
    return Ablation(data["name"], data["table"], data["column"], data["preset"], dict(data.get("train") or {}),
                    tuple(out), str(data.get("note", "")), path)


def row_runs(ablation: Ablation, preset: Any, prefix: str = "optiml") -> List[Tuple[AblationRow, Any, Any]]:
    """(row, model preset with the row's mixture, sweep Run) per row: the table's and the row's
    settings, named `{prefix}.{ablation}-{row}...` so `optiml compare --reference` finds the row again."""
    from optiml_plugin.metaseq import sweep
    from optiml_plugin.data.mixture import validate_proportions

    out = []
    for row in ablation.rows:
        mix = preset.mixture
        if row.mixture:
            props = row.mixture.get("proportions", mix.proportions)
            try:
                validate_proportions(props, benchmarks=list(props))
            except ConfigError as e:
                raise ConfigError(f"{ablation.path}: row {row.name!r}: mixture proportions: {e}") from None
            mix = dataclasses.replace(mix, eps=int(row.mixture.get("eps", mix.eps)),
                                      proportions={str(k): float(v) for k, v in props.items()})
        train = dict(preset.train, eps=mix.eps)
        grid = {key: [sweep.coerce(key, value, f"{ablation.path}: row {row.name!r}")]
                for key, value in {**ablation.train, **row.settings}.items()}
        row_preset = dataclasses.replace(preset, mixture=mix, train=train)
        (run,) = sweep.expand(row_preset, grid, prefix=f"{prefix}.{ablation.name}-{row.name}")
        out.append((row, row_preset, run))
    return out


def match_row(ablation: Ablation, run_name: str) -> Optional[AblationRow]:
    """The row an eval run belongs to: its name is the row's, or holds `{ablation}-{row}.` (sweep names)."""
    for row in ablation.rows:
        if run_name == row.name or f"{ablation.name}-{row.name}." in f"{run_name}.":
            return row
    return None


def reference_table(ablation: Ablation, runs: Sequence[Tuple[str, Dict[int, Optional[float]]]]) -> List[str]:
    """Markdown lines: per run, the paper's figure for its row beside ours (mean of the level scores at
    0 and 5 shots, or the shots the run has)."""
    lines = [f"## Beside the paper: {ablation.table}", "",
             f"Paper: {ablation.column}. Ours: the mean of this run's generalization-level scores per shot "
             f"count (the paper's column averages its own task groups; compare trends, not digits).", "",
             "| run | ablation row | paper | ours (by shots) |", "|---|---|---|---|"]
    for name, by_shots in runs:
        row = match_row(ablation, name)
        ours = " / ".join(f"{k}-shot {v:.1f}" if v is not None else f"{k}-shot –" for k, v in sorted(by_shots.items()))
        lines.append(f"| {name} | {row.name if row else '–'} | {(row.paper or '–') if row else '–'} | {ours or '–'} |")
    if ablation.note:
        lines += ["", ablation.note]
    return lines
