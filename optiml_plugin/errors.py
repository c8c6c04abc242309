"""User-facing errors and the bad-record policy shared by every reader.

Why: the house rule is that bad input either stops the run with an error naming the file, the line
(or instance id) and the field, or is skipped and counted by reason when the user asked to skip.
Every loader funnels its problems through `BadRecordPolicy` so that rule holds in one place.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union


class OptimlError(Exception):
    """An error the CLI prints as one readable line (no traceback)."""


class ConfigError(OptimlError):
    """A configuration value is invalid; the message says which and what to change."""


class CorruptFileError(OptimlError):
    """A file optiml wrote earlier (bench file, index, checkpoint, log) is damaged or was changed by hand;
    the message names the file (and the row or field) and how to recover."""


class WriteError(OptimlError):
    """Writing an output failed (full disk, no permission); nothing half-written was left behind."""


class BadRecordError(OptimlError):
    """One input record is unusable.

    `where` is a 1-based line number for line-oriented files or an instance id for JSON task files;
    `reason` is a short slug used as the counter key when records are skipped.
    """

    def __init__(self, path: str, where: Union[int, str, None], field: Optional[str], reason: str,
                 detail: str) -> None:
        self.path = str(path)
        self.where = where
        self.field = field
        self.reason = reason
        self.detail = detail
        loc = self.path
        if isinstance(where, int):
            loc += f":{where}"
        elif where:
            loc += f" (instance {where})"
        fld = f" field '{field}':" if field else ""
        super().__init__(f"{loc}:{fld} {detail} [{reason}]")

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        """Pickle by the constructor's arguments (a worker process reports bad records to its parent)."""
        return BadRecordError, (self.path, self.where, self.field, self.reason, self.detail)


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (library errors can span pages), or its type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def mismatch_error(what: str, diff: Mapping[str, Tuple[Any, Any]], words: Mapping[str, str]) -> ConfigError:
    """A resume refused because settings differ: each differing key in words, with both values when short.

    `diff` maps a key to (saved, current); `words` maps a key to what the user set (e.g. 'run.seed')."""
    parts = []
    for key, (saved, current) in diff.items():
        text = words.get(key, key)
        if len(repr(saved)) + len(repr(current)) <= 60:
            text += f" (saved {saved!r}, now {current!r})"
        parts.append(text)
    return ConfigError(f"the checkpoint's {what} was saved with other settings; changed: {'; '.join(parts)}. "
                       f"Resume with the run's original settings, or start a new run.out_dir")


ON_BAD_CHOICES = ("error", "skip")


class BadRecordPolicy:
    """Raise on the first bad record (`error`), or count it by reason and go on (`skip`).

    Loaders call `count_read()` once per record they attempt (good or bad), so the builder can
    check that read = kept + skipped + removed.
    """

    #: True where the policy serves one part of a source (a worker of bench/reading.py): the process
    #: that merges the parts in order then refuses duplicate ids and checks the `tasks` filter
    partial_source = False

    def __init__(self, mode: str = "error", keep_messages: int = 20) -> None:
        if mode not in ON_BAD_CHOICES:
            raise ConfigError(f"on_bad_record must be one of {ON_BAD_CHOICES}, got {mode!r}")
        self.mode = mode
        self.read = 0
        self.skipped: Counter = Counter()
        self.messages: List[str] = []
        self._keep = keep_messages

    def count_read(self, n: int = 1) -> None:
        self.read += n

    def handle(self, err: BadRecordError, records: int = 1) -> None:
        """`records` > 1 when one problem skips several records (a task file whose header is bad)."""
        if self.mode == "error":
            raise err
        self.skipped[err.reason] += records
        if len(self.messages) < self._keep:
            self.messages.append(str(err))

    def to_dict(self) -> Dict[str, object]:
        return {"mode": self.mode, "read": self.read, "skipped": dict(sorted(self.skipped.items())),
                "examples": list(self.messages)}
