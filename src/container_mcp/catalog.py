"""The cross-container views: the container list, usage, the file index, file-id resolution.

They read status, files and bytes from the ``Ledger``, as the operations and the provider's
expiry reports last left them, never by asking the provider about every row: on a backend whose
reads count as activity (OpenAI's), a view that asked would keep every container it shows alive,
and cost one request per row. What keeps the ledger fresh:

* every operation records what it saw (``seen``: the container; the service indexes the files
  it made, replaced or deleted, and a whole ``file_list`` refreshes a container's index) and
  what the provider's errors said (``note_failure``);
* a provider that expires containers itself reports each expiry (``changes.ExpiryReporting``),
  and ``reconcile`` has it sweep now instead of reading any container;
* for any other provider, ``reconcile`` reads only containers whose recorded activity says they
  may have expired (``_may_have_expired``): none while every container is in its time, and at
  most once per expiry period per container, so polling keeps no container alive.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .changes import ExpiryReporting
from .clock import Clock
from .errors import ContainerExpired, ContainerNotFound, FileNotFound, Hint, InvalidRequest, StateUnavailable
from .gate import check_id
from .ledger.base import FileCursor, Ledger, OwnedContainer, Usage
from .models import Container, ContainerFile, ContainerStatus, ListParams, Page
from .providers.base import Provider

__all__ = ["Catalog", "FileCursor"]

log = logging.getLogger(__name__)


class Catalog:
    """The views over one provider and one ledger. See the module docstring."""

    def __init__(self, provider: Provider, ledger: Ledger, clock: Clock) -> None:
        self._provider = provider
        self._ledger = ledger
        self._clock = clock
        self._stale: set[str] = set()
        """Containers whose index an operation could not update (the ledger failed after it)."""

    async def note_failure(self, container_id: str, exc: BaseException) -> None:
        """Write what a provider's error says about ``container_id`` into the ledger."""
        if isinstance(exc, ContainerExpired):
            await self._ledger.mark_expired(container_id)
        elif isinstance(exc, ContainerNotFound):
            # Gone from the backend behind our back (deleted upstream, or purged).
            await self._ledger.forget(container_id)

    async def seen(self, container: Container, recorded: OwnedContainer | None = None) -> Container:
        """Note what an operation just saw, so the views need not ask the provider again.

        ``recorded`` is the ledger's row as the operation found it: when it already holds exactly
        this view (times are whole seconds: most calls within a second), nothing is written.
        """
        if container.status == "expired":
            await self._ledger.mark_expired(container.id)
        meta = container.model_dump_json()
        if recorded is None or recorded.meta != meta or container.status == "expired":
            await self._ledger.record(container.id, meta)
        return container

    async def used(self, row: OwnedContainer, now: float) -> None:
        """An operation on ``row``'s container just succeeded, so the backend counts it as active
        now: the recorded ``last_active_at`` moves on to ``now`` (whole seconds: within the same
        second nothing is written). ``_may_have_expired`` then never asks about a container still
        in its time, which on a backend whose reads count as activity would stretch its life."""
        if row.meta is None:
            return
        seen = Container.model_validate_json(row.meta)
        at = int(now)
        if seen.last_active_at is not None and seen.last_active_at >= at:
            return
        await self._ledger.record(row.container_id, seen.model_copy(update={"last_active_at": at}).model_dump_json())

    @staticmethod
    def view(row: OwnedContainer) -> Container:
        """The container as the ledger last saw it; an expiry the provider reported wins."""
        status: ContainerStatus = "expired" if row.state == "expired" else "running"
        if row.meta is None:  # a row written before the ledger kept the container
            return Container(id=row.container_id, name=row.name, created_at=row.created_at, status=status)
        return Container.model_validate_json(row.meta).model_copy(update={"status": status})

    def _may_have_expired(self, row: OwnedContainer) -> bool:
        """Whether ``row``'s container may have expired by now.

        The recorded ``last_active_at`` is the real one (every successful operation records it,
        ``used``) or, when the backend moved it without us (another server's call on an upstream
        not shared through this ledger), earlier: an estimate from it is never later than the real
        expiry, so a container it calls unexpired is live, and only the others need asking. Asking
        one that was not used since it was recorded finds it expired (a backend expires it once
        ``expires_at`` is past), so even a backend whose reads count as activity is never kept
        alive by this.
        """
        if row.meta is None:
            return True
        seen = Container.model_validate_json(row.meta)
        last = seen.last_active_at if seen.last_active_at is not None else seen.created_at
        return last + seen.expires_after.minutes * 60 < self._clock()

    async def reconcile(self, owner: str, skip: str | None = None) -> None:
        """Learn which of the owner's containers (but ``skip``) expired or went (module docstring)."""
        if isinstance(self._provider, ExpiryReporting):
            await self._provider.sweep()
            return
        for owned in await self._ledger.live(owner):
            if owned.container_id == skip or not self._may_have_expired(owned):
                continue
            try:
                await self.seen(await self._provider.get_container(owned.container_id))
            except ContainerNotFound:
                await self._ledger.forget(owned.container_id)

    async def page(self, owner: str, params: ListParams) -> Page[Container]:
        """One page of the owner's containers: O(page) ledger work, no provider request."""
        rows, has_more = await self._ledger.page(
            owner, limit=params.limit, order=params.order, after=params.after, name=params.name
        )
        return Page[Container].of([self.view(row) for row in rows], has_more)

    async def usage(self, owner: str) -> Usage:
        await self.reconcile(owner)
        return await self._ledger.usage(owner, self._clock())

    async def live_ids(self, owner: str) -> list[str]:
        return [c.container_id for c in await self._ledger.live(owner)]

    async def locate(self, owner: str, container_ids: list[str], file_id: str) -> str | None:
        """Which of ``container_ids`` (the owner's) holds ``file_id`` (None when none does).

        The file index answers first; only a file it does not know (one the backend made on its
        own) is looked for at the provider, container by container.
        """
        indexed = await self._ledger.locate(owner, file_id)
        if indexed is not None and indexed in container_ids:
            return indexed
        for container_id in container_ids:
            try:
                await self._provider.get_file(container_id, file_id)
            except (FileNotFound, ContainerExpired, ContainerNotFound):
                continue
            return container_id
        return None

    async def resolve_file_ids(self, owner: str, file_ids: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
        """``file_ids`` of a create, split into (source container, file) copies and upstream ids."""
        copies: list[tuple[str, str]] = []
        upstream: list[str] = []
        caps = self._provider.capabilities
        live = await self.live_ids(owner) if file_ids else []
        for file_id in dict.fromkeys(file_ids):
            if file_id.startswith("cfile_"):
                check_id(file_id, "file")
                source = await self.locate(owner, live, file_id)
                if source is None:
                    raise InvalidRequest(
                        f"file_ids: {file_id} is not a file in any of your live containers.",
                        hint=Hint(
                            mcp="Pass ids from file_list of one of your containers.",
                            rest="Pass ids listed by GET /v1/containers/{container_id}/files of one of your "
                            "containers.",
                        ),
                        param="file_ids",
                    )
                copies.append((source, file_id))
            elif caps.upstream_file_ids:
                upstream.append(file_id)
            else:
                raise InvalidRequest(
                    f"file_ids: {file_id[:80]!r} is not a container file id. On the "
                    f"{caps.provider} provider, file_ids are 'cfile_...' ids of files in "
                    "your other containers.",
                    param="file_ids",
                )
        return copies, upstream

    async def index(self, container_id: str) -> list[ContainerFile]:
        """Make the provider's whole listing of the container its file index; returns the files."""
        files: list[ContainerFile] = []
        after: str | None = None
        while True:
            page = await self._provider.list_files(container_id, ListParams(limit=100, order="asc", after=after))
            files += page.data
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
        await self._ledger.set_files(container_id, files)
        return files

    async def resync(self, container_id: str) -> None:
        """Overwrite the container's file index and counters with what the provider lists."""
        files = await self.index(container_id)
        await self._ledger.set_usage(container_id, len(files), sum(f.bytes or 0 for f in files))

    async def listed(self, container_id: str, params: ListParams, page: Page[ContainerFile]) -> None:
        """An operation listed the container's files: a whole, unfiltered listing refreshes its index
        (files the backend made on its own, or a crash recovery adopted, become visible to the
        views); a listing filtered by path prefix is only part of the container."""
        if params.after is None and params.path_prefix is None and not page.has_more:
            with self._indexing(container_id):
                await self._ledger.set_files(container_id, page.data)
                self._stale.discard(container_id)

    async def changed(
        self,
        container_id: str,
        *,
        put: Sequence[ContainerFile] = (),
        file_ids: Sequence[str] = (),
        paths: Sequence[str] = (),
    ) -> None:
        """Index what an operation did to the container's files: ``put`` made or replaced, the
        files ``file_ids`` or at ``paths`` deleted.

        The operation has happened, so a ledger that fails now does not fail it: the container's
        index is rebuilt from the provider by this process's next ``file_index``.
        """
        with self._indexing(container_id):
            await self._ledger.put_files(container_id, put)
            await self._ledger.drop_files(container_id, file_ids=file_ids, paths=paths)

    @contextmanager
    def _indexing(self, container_id: str) -> Iterator[None]:
        try:
            yield
        except StateUnavailable:
            log.warning("file index of %s not updated (ledger unavailable): rebuilt by the next view", container_id)
            self._stale.add(container_id)

    async def file_index(
        self, owner: str, *, after: FileCursor | None, limit: int
    ) -> tuple[list[ContainerFile], FileCursor | None]:
        """Files across the owner's live containers, oldest container first, paged, from the
        ledger's file index: O(page) work and no provider request.

        ``after`` is the cursor returned by the previous page; the returned cursor is None on the
        last page. The cursor is a position in that order, not a reference: when its container is
        gone by the next page, paging goes on with the next container. A container whose index was
        never built (a ledger row an older version wrote) is listed from the provider once.
        """
        stale = [c for c in sorted(self._stale) if await self._ledger.owns(owner, c)]
        for container_id in [*await self._ledger.unindexed(owner), *stale]:
            try:
                await self.index(container_id)
            except (ContainerExpired, ContainerNotFound) as exc:
                await self.note_failure(container_id, exc)
            self._stale.discard(container_id)
        page, more = await self._ledger.file_page(owner, after, limit)
        if not more or not page:
            return [f for _, f in page], None
        created_at, last = page[-1]
        return [f for _, f in page], (created_at, last.container_id, last.id)
