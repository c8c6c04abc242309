"""lm-eval helpers for the RAFT configs beside this file (loaded by lm-eval's `!function`).

Why generic: every RAFT subset has its own text fields and label names; HELM's prompt is the
subset's fields as 'Field: value' lines, and the label names come from the dataset's ClassLabel
(index 0 is 'Unlabeled', used only by the hidden test split).
"""
from __future__ import annotations

from typing import Any, Dict

SKIP = ("ID", "Label")


def process_docs(dataset: Any) -> Any:
    """Adds `prompt`, `choices` and `gold` to each labeled row."""
    label = dataset.features["Label"]
    names = getattr(label, "names", None)
    if not names or names[0] != "Unlabeled":
        raise ValueError(f"RAFT: expected a ClassLabel 'Label' whose first name is 'Unlabeled', "
                         f"got {label!r}")
    fields = [c for c in dataset.column_names if c not in SKIP]

    def add(doc: Dict[str, Any]) -> Dict[str, Any]:
        lines = [f"{f}: {doc[f]}" for f in fields]
        return {"prompt": "\n".join(lines) + "\nLabel:", "choices": list(names[1:]),
                "gold": int(doc["Label"]) - 1}

    return dataset.filter(lambda d: int(d["Label"]) > 0).map(add)
