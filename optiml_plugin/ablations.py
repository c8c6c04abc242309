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
from typing import Annotated, Any, Dict, List, Optional, Sequence, Tuple, Union

from pydantic import Field

from optiml_plugin.errors import ConfigError
from optiml_plugin.recipe import Float, NonNegInt, Section, choice, setting, validate
from optiml_plugin.yamlio import read_yaml_mapping_lines

KIND = "ablation"
PREFIX = "ablation_"


class MixtureChange(Section):
    """A row's change of the model preset's mixture."""

    eps: Optional[NonNegInt] = setting(None, "EPS cap per task (0: no cap)")
    proportions: Optional[Dict[str, Float]] = setting(None, "benchmark shares (summing to 1)")


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


class RowFile(Section):
    name: Annotated[str, Field(min_length=1)] = setting(..., "the row's name (it goes into the run names)")
    set: Dict[str, Any] = setting({}, "recipe settings of the row, as `--grid` takes them")
    mixture: MixtureChange = Field(default_factory=lambda: MixtureChange())
    paper: Optional[Union[str, float]] = setting(None, "the paper's figure for the row (e.g. 44.7/56.0)")


class AblationFile(Section):
    """An ablation preset's keys and types, checked by the recipe's schema rules (errors name the file,
    the line and the key)."""

    kind: choice((KIND,)) = setting(..., "ablation")  # type: ignore[valid-type]
    name: str = setting(..., "the ablation's name (ablation_NAME.yaml)")
    table: str = setting(..., "the paper's table it reproduces")
    column: str = setting(..., "what the paper's figures are")
    preset: str = setting(..., "the model preset the paper ran it at")
    train: Dict[str, Any] = setting({}, "settings every row shares (the table's schedule)")
    rows: Annotated[List[RowFile], Field(min_length=1)] = setting(..., "the table's rows")
    note: str = setting("", "what the reader should know (UNVERIFIED choices)")


def load_ablation(name_or_path: Union[str, Path], directory: Path) -> Ablation:
    """An ablation preset by name (`metaicl` -> `ablation_metaicl.yaml` in the preset directory) or path."""
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) or "/" in text else directory / f"{PREFIX}{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown ablation {text!r}; {directory} has {ablation_names(directory)}")
    data, lines = read_yaml_mapping_lines(path, "ablation preset")
    cfg: AblationFile = validate(AblationFile, data, str(path), lines)
    names = [row.name for row in cfg.rows]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{path}: row name(s) {twice} used twice")
    rows = tuple(AblationRow(r.name, dict(r.set), r.mixture.model_dump(exclude_none=True),
                             None if r.paper is None else str(r.paper)) for r in cfg.rows)
    return Ablation(cfg.name, cfg.table, cfg.column, cfg.preset, dict(cfg.train), rows, cfg.note, path)


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
