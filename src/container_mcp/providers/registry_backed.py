"""What every provider whose containers and files are rows of this host's ``Registry`` shares.

The local and docker providers both keep their containers and files in a ``local_registry``
SQLite registry under the data dir and serialise writes across processes with
``local_lock.ContainerLocks``. Reading rows, expiring a container whose time is up, holding a
container (repairing it first when the previous holder crashed), paging containers and files,
and the reaper loop are the same for both; what differs is how a container is expired on its
backend (``_expire``), how it is repaired after a crash (``_repair``), what one reaper round
does (``_reap``), and whether something running keeps it from expiring (``_keep_for_processes``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio

from ..clock import Clock
from ..errors import ContainerExpired, ContainerNotFound, FileNotFound, InvalidRequest
from ..ids import check_container_id, check_file_id
from ..models import Container, ContainerFile, ListParams, Page
from ..paths import MOUNT
from .local_lock import ContainerLocks, LockBusy
from .local_registry import ContainerRow, FileRow, Registry

__all__ = ["RegistryBacked"]

log = logging.getLogger(__name__)


class RegistryBacked:
    """The registry-backed half of a provider (see the module docstring); subclasses set the
    attributes below in ``__init__`` and implement ``_expire``, ``_repair`` and ``_reap``."""

    registry: Registry
    _locks: ContainerLocks
    _clock: Clock
    _sleep: Callable[[float], Awaitable[None]]
    _reaper_interval_s: float

    async def _expire(self, container_id: str) -> None:
        """Expire the container on its backend and in the registry; the caller holds its lock."""
        raise NotImplementedError

    async def _repair(self, container_id: str) -> None:
        """Bring a container a crashed holder left half-done in line with what is stored."""
        raise NotImplementedError

    async def _reap(self) -> None:
        """One round of the reaper (at least: expire what is due)."""
        raise NotImplementedError

    def _keep_for_processes(self, container_id: str) -> bool:
        """Whether something running in the container keeps it from expiring (none here)."""
        return False

    async def _reap_forever(self) -> None:
        while True:
            await self._sleep(self._reaper_interval_s)
            try:
                await self._reap()
            except Exception:  # the reaper must outlive one bad sweep
                log.exception("expiry sweep failed")

    @asynccontextmanager
    async def _hold(self, container_id: str, *, wait: bool = True) -> AsyncIterator[None]:
        """Hold the container across processes; first repair it if the previous holder crashed.

        Raises ``ContainerNotFound`` for an id that names no container (no lock file is made for it).
        """
        check_container_id(container_id)
        if self.registry.container(container_id) is None:
            raise ContainerNotFound(container_id)
        async with self._locks.hold(container_id, wait=wait) as crashed:
            if crashed:
                with anyio.CancelScope(shield=True):
                    await self._repair(container_id)
            yield

    async def _expire_due(self, container_id: str, *, locked: bool) -> ContainerRow | None:
        """Expire the container if its time is up; returns its row (None once deleted).

        ``locked``: the caller holds its lock. Otherwise the lock is taken for the expiry, without
        waiting: a container another task or process holds is in use, so not idle, and stays.
        """
        if self._keep_for_processes(container_id):
            pass
        elif locked:
            await self._expire(container_id)
        else:
            with contextlib.suppress(LockBusy, ContainerNotFound):
                async with self._hold(container_id, wait=False):
                    row = self.registry.container(container_id)
                    if row is not None and row.status == "running" and row.expires_at < self._clock():
                        await self._expire(container_id)
        return self.registry.container(container_id)

    async def _row(self, container_id: str, *, touch: bool, locked: bool = False) -> ContainerRow:
        check_container_id(container_id)
        row = self.registry.container(container_id)
        if row is None:
            raise ContainerNotFound(container_id)
        now = self._clock()
        if row.status == "running" and row.expires_at < now:
            fresh = await self._expire_due(container_id, locked=locked)
            if fresh is None:
                raise ContainerNotFound(container_id)
            row = fresh
        if touch and row.status == "running":
            # Not running any more (another process expired it meanwhile): as it is now.
            touched = self.registry.touch(container_id, now) or self.registry.container(container_id)
            assert touched is not None
            row = touched
        return row

    async def _running(self, container_id: str, *, locked: bool = False) -> ContainerRow:
        row = await self._row(container_id, touch=True, locked=locked)
        if row.status != "running":
            raise ContainerExpired(container_id)
        return row

    async def _file_row(self, container_id: str, file_id: str, *, locked: bool = False) -> FileRow:
        await self._running(container_id, locked=locked)
        check_file_id(file_id)
        row = self.registry.file(container_id, file_id)
        if row is None:
            raise FileNotFound(container_id, file_id)
        return row

    async def get_container(self, container_id: str, *, touch: bool = True) -> Container:
        return (await self._row(container_id, touch=touch)).model()

    async def list_containers(self, params: ListParams) -> Page[Container]:
        """Every container on this data dir, cursor-paged (not part of the ``Provider`` protocol: the
        service's views read the ledger)."""
        rows, has_more, found = self.registry.page_containers(
            limit=params.limit, order=params.order, after=params.after, name=params.name
        )
        if not found:
            raise InvalidRequest(
                f"'after' is {str(params.after)[:80]!r}, which is not a container id. Pass the last_id of the "
                "previous page, or omit 'after' to start from the first page.",
                param="after",
            )
        now = self._clock()
        data: list[Container] = []
        for row in rows:
            if row.status == "running" and row.expires_at < now:
                fresh = await self._expire_due(row.id, locked=False)
                if fresh is None:
                    continue  # deleted meanwhile by another process
                row = fresh
            data.append(row.model())
        return Page[Container].of(data, has_more)

    async def list_files(self, container_id: str, params: ListParams) -> Page[ContainerFile]:
        await self._running(container_id)
        prefix = params.path_prefix
        rows, has_more, found = self.registry.page_files(
            container_id,
            limit=params.limit,
            order=params.order,
            after=params.after,
            prefix=None if prefix is None else prefix.removeprefix(MOUNT).lstrip("/"),
        )
        if not found:
            raise InvalidRequest(
                f"'after' is {str(params.after)[:80]!r}, which is not a file of this container. Pass the last_id "
                "of the previous page, or omit 'after' to start from the first page.",
                param="after",
            )
        return Page[ContainerFile].of([r.model() for r in rows], has_more)

    async def get_file(self, container_id: str, file_id: str) -> ContainerFile:
        return (await self._file_row(container_id, file_id)).model()
