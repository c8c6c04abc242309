"""What `optiml runs` reads: run folders found by the files each kind writes, and one line describing each.

Why a file-only reader: listing runs must be instant and work where torch is absent (a laptop looking at a
cluster's output), so it reads the YAML/JSON every run leaves behind and never loads a model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

KINDS = (("demo", "report.json"), ("eval", "results.json"), ("train", "train_config.yaml"))
SKIP = {"checkpoints", "tensorboard", "tokenizer", "final", "untrained", "bench"}


def find_runs(root: Path, depth: int = 4) -> List[Tuple[Path, str]]:
    """(folder, kind) of every run under `root` (itself included), in path order; a demo's own seeds and a
    training run's checkpoints are not listed apart."""
    out: List[Tuple[Path, str]] = []

    def walk(folder: Path, left: int) -> None:
        kind = next((k for k, marker in KINDS if (folder / marker).is_file()), None)
        if kind is not None:
            out.append((folder, kind))
            if kind in ("demo", "train"):
                return
        if left <= 0:
            return
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name not in SKIP
                          and not p.name.startswith(".")):
            walk(sub, left - 1)

    walk(root, depth)
    return out


def _json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _last_log(run: Path) -> Tuple[Dict[str, Any], Dict[str, float]]:
    """The last training record and the last validation loss per split of a run's log.jsonl."""
    last: Dict[str, Any] = {}
    valid: Dict[str, float] = {}
    try:
        lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return last, valid
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "split" in rec:
            valid[rec["split"]] = rec["valid_loss"]
        else:
            last = rec
    return last, valid


def describe(run: Path, kind: str, root: Path) -> str:
    """One line: the folder, its kind, its settings, its results."""
    name = str(run.relative_to(root)) if run != root else str(run)
    if kind == "train":
        try:
            cfg = yaml.safe_load((run / "train_config.yaml").read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            cfg = {}
        model, data, optim = cfg.get("model", {}), cfg.get("data", {}), cfg.get("optim", {})
        last, valid = _last_log(run)
        state = "final" if (run / "final").is_dir() else "no final model"
        res = (f"step {last.get('step', 0)}/{optim.get('max_update')}, loss {last['loss']:.3f}" if last
               else "no steps logged")
        res += "".join(f", {k.replace('valid_', '')} {v:.3f}" for k, v in valid.items())
        return (f"{name}  train  model={model.get('preset') or model.get('checkpoint')} bench={data.get('bench')} "
                f"lr={optim.get('lr')} batch={data.get('batch_size')}x{data.get('tokens_per_sample')} "
                f"seed={cfg.get('run', {}).get('seed')}  |  {res} (bits/token); {state}")
    if kind == "eval":
        r = _json(run / "results.json")
        c = r.get("config", {})
        levels = ", ".join(f"{x['level']} {x['shots']}-shot {x['score']:.1f}"
                           for x in r.get("aggregate", {}).get("levels", []) if x.get("score") is not None)
        return (f"{name}  eval  model={c.get('model')} bench={c.get('bench')} split={c.get('split')} "
                f"shots={c.get('shots')} instances={r.get('counts', {}).get('instances')}  |  {levels}")
    r = _json(run / "report.json")
    rows = ", ".join(f"{x['level']} {x['shots']}-shot {x['score']:.1f} "
                     f"({'shown' if x.get('shown') else 'not shown'} {x.get('seeds_shown')}/{x.get('seeds')})"
                     for x in r.get("across_seeds", []))
    return (f"{name}  demo  preset={r.get('preset')} steps={r.get('steps')} seeds={r.get('seeds')}  |  "
            f"{rows or 'no results'}")
