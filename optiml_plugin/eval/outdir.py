"""Where `optiml eval --out DIR` may write: an empty (or new) folder, or an earlier eval run of the same bench.

Why: `--out` once accepted any folder (`/`, a bench, a model's `final/`, a training run) and, over an
earlier eval run, replaced its results. An evaluation now never writes among files it did not write:
into an earlier run of the same bench it writes a new subfolder (or, with `--overwrite`, replaces that
run's own report files, never a file the user added), and any other non-empty folder is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from optiml_plugin.errors import ConfigError
from optiml_plugin.eval.report import RESULTS, default_run_dir


def earlier_run(folder: Path) -> Optional[Dict[str, Any]]:
    """The results of the optiml eval run in `folder`, or None if it is not one."""
    try:
        results = json.loads((folder / RESULTS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(results, dict) and isinstance(results.get("config"), dict) and "model_id" in results:
        return results
    return None


def _same_path(a: Any, b: Union[str, Path]) -> bool:
    try:
        return Path(str(a)).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError):
        return False


def choose_out(out: Optional[Union[str, Path]], model: Union[str, Path], bench: Union[str, Path], split: str,
               overwrite: bool) -> Path:
    """The folder this evaluation writes into (created); refuses an `out` it must not write into."""
    if out is None:
        return default_run_dir(model, split)
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"--out {out} exists and is not a folder; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return out
    results = earlier_run(out)
    if results is None:
        raise ConfigError(f"--out {out} is not empty and holds no optiml eval run ({RESULTS} missing): "
                          f"eval writes only into an empty folder or an earlier eval run of the same bench; "
                          f"choose another --out")
    if not _same_path(results["config"].get("bench"), bench):
        raise ConfigError(f"--out {out} holds an eval run of another bench ({results['config'].get('bench')}); "
                          f"choose another --out")
    if overwrite:
        return out
    return default_run_dir(model, split, out)
