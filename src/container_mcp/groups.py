"""Unwrapping anyio task-group exception groups back into the errors callers map."""

from __future__ import annotations

__all__ = ["leaves"]


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every non-group exception inside ``group``, nested groups flattened, in order."""
    found: list[BaseException] = []
    for inner in group.exceptions:
        found.extend(leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return found
