"""OpenAI's recorded traffic (``shared/fixtures/openai-recordings``), to compare shapes against."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDINGS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "openai-recordings"


def recorded(name: str, method: str, index: int = 0) -> dict[str, Any]:
    """The ``index``-th entry of recording ``name`` with HTTP ``method``."""
    entries = json.loads((RECORDINGS_DIR / f"{name}.json").read_text())["Entries"]
    matching = [e for e in entries if e["RequestMethod"] == method]
    entry: dict[str, Any] = matching[index]
    return entry


def header(entry: dict[str, Any], name: str) -> str:
    for key, value in entry["ResponseHeaders"].items():
        if key.lower() == name.lower():
            return str(value)
    raise KeyError(name)


def same_shape(ours: Any, theirs: Any) -> bool:
    """True when both are JSON values of one shape: same keys in the same order, recursively
    (lists compare their first items)."""
    if isinstance(theirs, dict):
        return (
            isinstance(ours, dict)
            and list(ours) == list(theirs)
            and all(same_shape(ours[k], theirs[k]) for k in theirs if theirs[k] is not None and ours[k] is not None)
        )
    if isinstance(theirs, list):
        return isinstance(ours, list) and (not theirs or not ours or same_shape(ours[0], theirs[0]))
    return type(ours) is type(theirs)
