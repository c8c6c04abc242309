"""Reading YAML config files with errors that name the file and the line.

Why: build configs, taxonomies, mixtures, train configs and presets are all YAML written by hand;
one reader gives every one of them the same readable failure instead of a parser traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import yaml

from optiml_plugin.errors import ConfigError


def read_yaml(path: Union[str, Path], what: str = "config") -> Any:
    """Parse `path`; a missing file, bad UTF-8 or bad YAML is a ConfigError saying `what` it is."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: {what} is not valid YAML: {getattr(e, 'problem', None) or e}") from None


def read_yaml_mapping(path: Union[str, Path], what: str = "config") -> dict:
    """`read_yaml`, requiring a mapping at the top (an empty file is an empty mapping)."""
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data
