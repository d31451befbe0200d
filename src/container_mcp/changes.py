"""Change events: which container's files changed, for whoever shows files live (MCP resources).

``ContainerService`` publishes a ``FilesChanged`` on its ``changes`` feed after every operation
that changes files, whichever surface called it (MCP tools, the REST API), and after a provider
reports an expiry (``ExpiryReporting``: the local provider's sweep). Publishing never fails the
operation: a listener that raises is logged and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["ChangeFeed", "ChangeListener", "ExpiryReporting", "FilesChanged"]

log = logging.getLogger("container_mcp.changes")


@dataclass(frozen=True)
class FilesChanged:
    """The files of ``container_id`` changed.

    ``owner``: the session key of the caller that changed them, or None when no caller did (an
    expiry). ``file_ids``: files created, replaced or deleted, where known. ``whole_container``:
    any file of the container may have changed or gone (deleted, expired, or a command deleted
    files, which it names by path only).
    """

    container_id: str
    owner: str | None
    file_ids: tuple[str, ...] = ()
    whole_container: bool = False


ChangeListener = Callable[[FilesChanged], Awaitable[None]]


class ChangeFeed:
    """In-process fan-out of ``FilesChanged`` to listeners, in subscription order."""

    def __init__(self) -> None:
        self._listeners: dict[object, ChangeListener] = {}

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Add ``listener``; returns the call that removes it (idempotent)."""
        token = object()
        self._listeners[token] = listener
        return lambda: self._listeners.pop(token, None) and None

    async def publish(self, change: FilesChanged) -> None:
        for listener in list(self._listeners.values()):
            try:
                await listener(change)
            except Exception:  # a listener's failure is not the operation's
                log.exception("change listener failed for container %s", change.container_id)


@runtime_checkable
class ExpiryReporting(Protocol):
    """A provider that expires containers on its own and says so (the local provider's sweep)."""

    on_expired: Callable[[str], Awaitable[None]] | None

    async def sweep(self) -> list[str]:
        """Expire now every container whose time is up, telling ``on_expired`` of each; returns their
        ids. Reads no container as activity: the views call it instead of asking about rows."""
        ...
