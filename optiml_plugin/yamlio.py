"""Reading YAML config files with errors that name the file and the line.

Why: build configs, taxonomies, mixtures, train configs and presets are all YAML written by hand;
one reader gives every one of them the same readable failure instead of a parser traceback.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple, Union

import yaml

from optiml_plugin.errors import ConfigError


KeyPath = Tuple[Any, ...]


def read_yaml(path: Union[str, Path], what: str = "config") -> Any:
    """Parse `path`; a missing file, bad UTF-8 or bad YAML is a ConfigError saying `what` it is."""
    return _parse(path, what, lines=False)[0]


def key_lines(node: Any, prefix: KeyPath = ()) -> Dict[KeyPath, int]:
    """1-based line of every mapping key and sequence item under a composed YAML node, by key path
    (`("optim", "lr")`, `("sources", 0)`), so schema errors can point at the line of the bad key."""
    out: Dict[KeyPath, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            out[path] = key.start_mark.line + 1
            out.update(key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            out.update(key_lines(item, prefix + (i,)))
    return out


def _parse(path: Union[str, Path], what: str, lines: bool) -> Tuple[Any, Dict[KeyPath, int]]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        return data, (key_lines(yaml.compose(text, Loader=yaml.SafeLoader)) if lines else {})
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: {what} is not valid YAML: {getattr(e, 'problem', None) or e}") from None


def read_yaml_mapping(path: Union[str, Path], what: str = "config") -> dict:
    """`read_yaml`, requiring a mapping at the top (an empty file is an empty mapping)."""
    return read_yaml_mapping_lines(path, what, lines=False)[0]


def read_yaml_mapping_lines(path: Union[str, Path], what: str = "config",
                            lines: bool = True) -> Tuple[dict, Dict[KeyPath, int]]:
    """`read_yaml_mapping` plus the line of every key (`key_lines`)."""
    data, where = _parse(path, what, lines)
    if data is None:
        return {}, where
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} must be a YAML mapping, got {type(data).__name__}")
    return data, where
