"""Unwrapping anyio task-group exception groups back into the errors callers map."""

from __future__ import annotations

from .errors import ContainerMCPError

__all__ = ["first_error", "leaves"]


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every non-group exception inside ``group``, nested groups flattened, in order."""
    found: list[BaseException] = []
    for inner in group.exceptions:
        found.extend(leaves(inner) if isinstance(inner, BaseExceptionGroup) else [inner])
    return found


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first non-group exception in ``group``, a ``ContainerMCPError`` if there is one: what a
    caller of a call that ran a task group inside expects to see raised."""
    found = leaves(group)
    return next((e for e in found if isinstance(e, ContainerMCPError)), found[0])
