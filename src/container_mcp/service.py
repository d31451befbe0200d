"""ContainerService: the one shared, async entry point of every tool and API route.

It is the only place that knows who is calling (an opaque *session key*: an MCP session, the
stdio user, an API key) and what that caller may touch and use. Every public method takes the
key first, then:

1. counts the call against the per-minute budget;
2. checks ownership: an id the caller did not create answers ``ContainerNotFound``, exactly as
   an id that does not exist, so callers learn nothing about each other;
3. checks and charges quotas atomically in the ``SessionStore`` before anything becomes
   visible, and releases them when a provider call fails;
4. calls the provider.

It also notes, for the audit record of the call in progress (``audit.py``), the container and file
ids it checked, the file bytes stored and read, and a command's exit code.

One instance per process, shared by every transport and by the REST API.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

import anyio
from pydantic import BaseModel, ConfigDict, Field

from . import audit
from .changes import ChangeFeed, ExpiryReporting, FilesChanged
from .clock import Clock, system_clock
from .errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    FileNotFound,
    FileTooLarge,
    Hint,
    InvalidId,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    Unsupported,
)
from .groups import leaves
from .models import (
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    ContainerStatus,
    FileDeleted,
    ListParams,
    Page,
)
from .netpolicy import EgressRules, check_network_policy
from .paths import normalize_path
from .providers.base import Capabilities, ExecRequest, ExecResult, FileChanges, ProgressCallback, Provider
from .store import Limits, OwnedContainer, SessionStore
from .uploads import Upload

__all__ = ["ContainerService", "QuotaUsage", "SessionUsage"]

_Approve = Callable[[FileChanges], Awaitable[None]]

_ID_RES = {"container": re.compile(r"cntr_[A-Za-z0-9_\-]{1,59}"), "file": re.compile(r"cfile_[A-Za-z0-9_\-]{1,58}")}


class QuotaUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    used: int
    limit: int
    setting: str = Field(description="The setting that holds the limit.")


class SessionUsage(BaseModel):
    """This session's usage against every quota."""

    model_config = ConfigDict(frozen=True)

    containers: QuotaUsage = Field(description="Live (not expired) containers.")
    stored_bytes: QuotaUsage = Field(description="Bytes stored across live containers.")
    calls_per_minute: QuotaUsage = Field(description="Calls in the last minute.")
    files: int = Field(description="Files across live containers.")
    max_files_per_container: int
    max_file_bytes: int


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first non-group exception in ``group`` (a ContainerMCPError if there is one)."""
    found = leaves(group)
    return next((e for e in found if isinstance(e, ContainerMCPError)), found[0])


def _check_id(value: str, kind: str) -> str:
    if not isinstance(value, str) or not _ID_RES[kind].fullmatch(value):
        prefix = "cntr_" if kind == "container" else "cfile_"
        route = "/v1/containers" if kind == "container" else "/v1/containers/{container_id}/files"
        raise InvalidId(
            f"Invalid {kind} id {str(value)[:80]!r}: {kind} ids look like '{prefix}' followed by hex characters.",
            hint=Hint(
                mcp=f"Copy the id from the {kind}_list or {kind}_create result.",
                rest=f"Copy the id from the response of GET or POST {route}.",
            ),
            param=f"{kind}_id",
        )
    return value


async def _counted(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``chunks``, each one's size noted as bytes read out of the call in progress."""
    async with aclosing(chunks):
        async for chunk in chunks:
            audit.note_bytes_out(len(chunk))
            yield chunk


class ContainerService:
    """Ownership, quotas and activity over one ``Provider``. See the module docstring."""

    def __init__(
        self,
        provider: Provider,
        store: SessionStore,
        limits: Limits,
        *,
        egress: EgressRules | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.provider = provider
        self.store = store
        self.limits = limits
        self.egress = egress or EgressRules()
        """The operator's egress rules: which network_policy entries a caller may list."""
        self._clock = clock
        self.changes = ChangeFeed()
        """Every change of files made through this service, and every expiry the provider reports."""
        if isinstance(provider, ExpiryReporting):
            provider.on_expired = self._expired

    async def _expired(self, container_id: str) -> None:
        self.store.mark_expired(container_id)  # the views read the store: it must know at once
        await self.changes.publish(FilesChanged(container_id, None, whole_container=True))

    @property
    def capabilities(self) -> Capabilities:
        """The provider's capabilities, with the per-file byte limit actually in force."""
        caps = self.provider.capabilities
        limit = self.limits.max_file_bytes
        if caps.max_file_bytes is None or caps.max_file_bytes > limit:
            caps = caps.model_copy(update={"max_file_bytes": limit})
        return caps

    # --- helpers ---------------------------------------------------------------------------

    def _call(self, owner: str) -> None:
        self.store.hit(owner, self._clock(), self.limits)

    def _own(self, owner: str, container_id: str) -> str:
        _check_id(container_id, "container")
        audit.note_container(container_id)
        if not self.store.owns(owner, container_id):
            raise ContainerNotFound(container_id)
        return container_id

    def _seen(self, container: Container) -> Container:
        """Note what an operation just saw, so the views need not ask the provider again."""
        if container.status == "expired":
            self.store.mark_expired(container.id)
        self.store.record(container.id, container.model_dump_json())
        return container

    def _view(self, row: OwnedContainer) -> Container:
        """The container as the store last saw it; an expiry the provider reported wins."""
        status: ContainerStatus = "expired" if row.state == "expired" else "running"
        if row.meta is None:  # a row written before the store kept the container
            return Container(id=row.container_id, name=row.name, created_at=row.created_at, status=status)
        return Container.model_validate_json(row.meta).model_copy(update={"status": status})

    def _may_have_expired(self, row: OwnedContainer) -> bool:
        """Whether ``row``'s container may have expired by now.

        The stored ``last_active_at`` is at most the real one (every later operation only moves it
        on), so an estimate from it is never later than the real expiry: a container it calls
        unexpired is live, and only the others need asking the provider. Asking one that was not
        used since it was recorded finds it expired (a backend expires it once ``expires_at`` is
        past), so even a backend whose reads count as activity is never kept alive by this.
        """
        if row.meta is None:
            return True
        seen = Container.model_validate_json(row.meta)
        last = seen.last_active_at if seen.last_active_at is not None else seen.created_at
        return last + seen.expires_after.minutes * 60 < self._clock()

    def _approver(self, owner: str, container_id: str) -> tuple[list[FileChanges], _Approve]:
        approved: list[FileChanges] = []

        async def approve(changes: FileChanges) -> None:
            if changes.largest_file_bytes > self.limits.max_file_bytes:
                raise FileTooLarge.over(self.limits.max_file_bytes, changes.largest_file_bytes)
            try:
                self.store.apply_delta(owner, container_id, changes.files_delta, changes.bytes_delta, self.limits)
            except QuotaExceeded:
                # Bytes of containers that expired since we last looked still count until reconciled.
                await self.reconcile(owner, skip=container_id)
                self.store.apply_delta(owner, container_id, changes.files_delta, changes.bytes_delta, self.limits)
            approved.append(changes)

        return approved, approve

    def _rollback(self, owner: str, container_id: str, approved: list[FileChanges]) -> None:
        for changes in approved:
            self.store.apply_delta(owner, container_id, -changes.files_delta, -changes.bytes_delta, None)

    def _guard_expiry(self, container_id: str, exc: BaseException) -> None:
        if isinstance(exc, ContainerExpired):
            self.store.mark_expired(container_id)
        elif isinstance(exc, ContainerNotFound):
            # Gone from the backend behind our back (deleted upstream, or purged).
            self.store.forget(container_id)

    async def reconcile(self, owner: str, *, skip: str | None = None) -> None:
        """Refresh which of the owner's containers are still live.

        Only containers whose stored activity says they may have expired are asked about (a
        provider whose reads count as activity then touches only those), so polling this keeps
        no container alive and costs no request per live container.
        """
        for owned in self.store.live(owner):
            if owned.container_id == skip or not self._may_have_expired(owned):
                continue
            try:
                self._seen(await self.provider.get_container(owned.container_id, touch=False))
            except ContainerNotFound:
                self.store.forget(owned.container_id)

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, owner: str, spec: ContainerSpec) -> Container:
        """Create a container owned by ``owner``.

        ``spec.file_ids`` may name ``cfile_`` files in the caller's other live containers (copied,
        paths kept) and, on backends that have them, backend-level file ids. Raises
        ``QuotaExceeded`` at the live-container limit, ``InvalidRequest`` for a file id the caller
        cannot use or a ``network_policy`` this provider cannot enforce or these egress rules refuse
        (``netpolicy.check_network_policy``; checked before anything is reserved or created). On
        any failure no container is left behind.
        """
        self._call(owner)
        caps = self.provider.capabilities
        if spec.memory_limit not in caps.memory_limits:
            raise InvalidRequest(
                f"memory_limit {spec.memory_limit!r} is not available on the {caps.provider} provider; "
                f"choose one of {', '.join(caps.memory_limits)}.",
                param="memory_limit",
            )
        if spec.network_policy.type not in caps.network_policies:
            why = f" ({caps.network_unavailable_reason})" if caps.network_unavailable_reason else ""
            raise InvalidRequest(
                f"network_policy type {spec.network_policy.type!r} is not available on the {caps.provider} "
                f"provider{why}; choose one of {', '.join(caps.network_policies)}. Nothing was created.",
                param="network_policy",
            )
        check_network_policy(spec.network_policy, self.egress)
        if spec.image is not None and spec.image not in caps.images:
            offered = f"choose one of {', '.join(caps.images)}" if caps.images else "omit image"
            raise InvalidRequest(
                f"image {spec.image[:200]!r} is not offered on the {caps.provider} provider; {offered}. "
                "Nothing was created.",
                param="image",
            )
        lo, hi = caps.expiry_minutes_range
        if not lo <= spec.expires_after.minutes <= hi:
            raise InvalidRequest(
                f"expires_after minutes must be between {lo} and {hi} on the {caps.provider} provider.",
                param="expires_after",
            )
        copies, upstream = await self._resolve_file_ids(owner, spec.file_ids)
        try:
            reservation_id = self.store.reserve_container(owner, spec.name, self._clock(), self.limits)
        except QuotaExceeded:
            # Some of the owner's containers may have expired since we last looked.
            await self.reconcile(owner)
            reservation_id = self.store.reserve_container(owner, spec.name, self._clock(), self.limits)
        try:
            container = await self.provider.create_container(spec.model_copy(update={"file_ids": upstream}))
        except BaseException:
            self.store.cancel_reservation(reservation_id)
            raise
        self.store.commit_container(reservation_id, container.id, container.created_at)
        self.store.record(container.id, container.model_dump_json())
        try:
            if upstream:
                await self._resync(container.id)
            for src_container, src_file in copies:
                approved, approve = self._approver(owner, container.id)
                await self.provider.copy_file(src_container, src_file, container.id, approve=approve)
        except BaseException:
            await self._discard(container.id)
            raise
        audit.note_container(container.id)
        if spec.file_ids:
            await self.changes.publish(FilesChanged(container.id, owner))
        return container

    async def _discard(self, container_id: str) -> None:
        with anyio.CancelScope(shield=True):  # a half-made container must not outlive a cancelled create
            try:
                await self.provider.delete_container(container_id)
            except NotFound:
                pass
            finally:
                self.store.forget(container_id)

    async def _resync(self, container_id: str) -> None:
        files = bytes_ = 0
        after: str | None = None
        while True:
            page = await self.provider.list_files(container_id, ListParams(limit=100, order="asc", after=after))
            files += len(page.data)
            bytes_ += sum(f.bytes or 0 for f in page.data)
            if not page.has_more or not page.data:
                break
            after = page.data[-1].id
        self.store.set_usage(container_id, files, bytes_)

    async def _resolve_file_ids(self, owner: str, file_ids: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
        copies: list[tuple[str, str]] = []
        upstream: list[str] = []
        live = [c.container_id for c in self.store.live(owner)] if file_ids else []
        for file_id in dict.fromkeys(file_ids):
            if file_id.startswith("cfile_"):
                _check_id(file_id, "file")
                source = await self._locate(live, file_id)
                if source is not None:
                    copies.append((source, file_id))
                else:
                    raise InvalidRequest(
                        f"file_ids: {file_id} is not a file in any of your live containers.",
                        hint=Hint(
                            mcp="Pass ids from file_list of one of your containers.",
                            rest="Pass ids listed by GET /v1/containers/{container_id}/files of one of your "
                            "containers.",
                        ),
                        param="file_ids",
                    )
            elif self.provider.capabilities.upstream_file_ids:
                upstream.append(file_id)
            else:
                raise InvalidRequest(
                    f"file_ids: {file_id[:80]!r} is not a container file id. On the "
                    f"{self.provider.capabilities.provider} provider, file_ids are 'cfile_...' ids of files in "
                    "your other containers.",
                    param="file_ids",
                )
        return copies, upstream

    async def _locate(self, container_ids: list[str], file_id: str) -> str | None:
        """Which of ``container_ids`` holds ``file_id`` (None when none does)."""
        for container_id in container_ids:
            try:
                await self.provider.get_file(container_id, file_id)
            except (FileNotFound, ContainerExpired, ContainerNotFound):
                continue
            return container_id
        return None

    async def copy_file(self, owner: str, file_id: str, container_id: str) -> ContainerFile:
        """Copy the caller's file ``file_id`` (in any of its live containers) into ``container_id``.

        The copy keeps the source's path; quotas apply as for an upload. Raises ``NotFound`` when
        no live container of the caller holds the file.
        """
        self._call(owner)
        self._own(owner, container_id)
        _check_id(file_id, "file")
        audit.note_file(file_id)
        live = [c.container_id for c in self.store.live(owner)]
        # The destination first: copying within a container is the common case.
        ordered = [container_id, *(c for c in live if c != container_id)]
        source = await self._locate(ordered, file_id)
        if source is None:
            raise NotFound(
                f"File {file_id} is not in any of your live containers.",
                hint=Hint(
                    mcp="Pass the id of a file listed by file_list.",
                    rest="Pass the id of a file listed by GET /v1/containers/{container_id}/files.",
                ),
                param="file_id",
            )
        approved, approve = self._approver(owner, container_id)
        try:
            copied = await self.provider.copy_file(source, file_id, container_id, approve=approve)
        except BaseException as exc:
            self._rollback(owner, container_id, approved)
            self._guard_expiry(container_id, exc)
            raise
        await self.changes.publish(FilesChanged(container_id, owner, (copied.id,)))
        return copied

    async def list_containers(self, owner: str, params: ListParams) -> Page[Container]:
        """The caller's containers (expired ones too), newest first by default.

        Read from the store, as the operations and the provider's expiry reports last left them:
        O(page) store work and no provider request, so listing never refreshes a container's
        activity (``last_active_at`` and ``expires_at`` are as of the last operation that saw it).
        """
        self._call(owner)
        rows, has_more = self.store.page(
            owner, limit=params.limit, order=params.order, after=params.after, name=params.name
        )
        return Page[Container].of([self._view(row) for row in rows], has_more)

    async def get_container(self, owner: str, container_id: str) -> Container:
        self._call(owner)
        self._own(owner, container_id)
        try:
            return self._seen(await self.provider.get_container(container_id))
        except ContainerNotFound as exc:
            self._guard_expiry(container_id, exc)
            raise

    async def delete_container(self, owner: str, container_id: str) -> ContainerDeleted:
        self._call(owner)
        self._own(owner, container_id)
        try:
            deleted = await self.provider.delete_container(container_id)
        except ContainerNotFound:
            self.store.forget(container_id)
            raise
        self.store.forget(container_id)
        await self.changes.publish(FilesChanged(container_id, owner, whole_container=True))
        return deleted

    # --- files -----------------------------------------------------------------------------

    async def create_file(self, owner: str, container_id: str, path: str, upload: Upload) -> ContainerFile:
        """Store ``upload`` at ``path`` (under /mnt/data), replacing any file there.

        Quotas are checked before the file becomes visible; over a limit, nothing is stored.
        """
        self._call(owner)
        self._own(owner, container_id)
        normalized = normalize_path(path)
        if upload.size is not None and upload.size > self.limits.max_file_bytes:
            raise FileTooLarge.over(self.limits.max_file_bytes, upload.size)
        approved, approve = self._approver(owner, container_id)
        try:
            made = await self.provider.create_file(
                container_id, normalized, upload, max_bytes=self.limits.max_file_bytes, approve=approve
            )
        except BaseException as exc:
            self._rollback(owner, container_id, approved)
            self._guard_expiry(container_id, exc)
            raise
        audit.note_file(made.id)
        audit.note_bytes_in(made.bytes or 0)
        # A replaced file gets a new id, and the old one's is not known here: every file of the
        # container may have changed for whoever watches it.
        replaced = any(change.changed for change in approved)
        await self.changes.publish(FilesChanged(container_id, owner, (made.id,), whole_container=replaced))
        return made

    async def list_files(self, owner: str, container_id: str, params: ListParams) -> Page[ContainerFile]:
        self._call(owner)
        self._own(owner, container_id)
        try:
            return await self.provider.list_files(container_id, params)
        except (ContainerExpired, ContainerNotFound) as exc:
            self._guard_expiry(container_id, exc)
            raise

    async def get_file(self, owner: str, container_id: str, file_id: str) -> ContainerFile:
        self._call(owner)
        self._own(owner, container_id)
        _check_id(file_id, "file")
        audit.note_file(file_id)
        try:
            return await self.provider.get_file(container_id, file_id)
        except (ContainerExpired, ContainerNotFound) as exc:
            self._guard_expiry(container_id, exc)
            raise

    async def delete_file(self, owner: str, container_id: str, file_id: str) -> FileDeleted:
        self._call(owner)
        self._own(owner, container_id)
        _check_id(file_id, "file")
        audit.note_file(file_id)
        approved, approve = self._approver(owner, container_id)
        try:
            gone = await self.provider.delete_file(container_id, file_id, approve=approve)
        except BaseException as exc:
            self._rollback(owner, container_id, approved)
            self._guard_expiry(container_id, exc)
            raise
        await self.changes.publish(FilesChanged(container_id, owner, (file_id,)))
        return gone

    async def open_file(
        self, owner: str, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> tuple[ContainerFile, AsyncGenerator[bytes, None]]:
        """The file's metadata and an iterator over its bytes from ``offset`` (at most ``length``).

        Close the iterator (``aclose``) when stopping early.
        """
        if offset < 0:
            raise InvalidRequest("offset must be 0 or more.", param="offset")
        if length is not None and length < 0:
            raise InvalidRequest("length must be 0 or more.", param="length")
        meta = await self.get_file(owner, container_id, file_id)
        return meta, _counted(self.provider.read_file(container_id, file_id, offset=offset, length=length))

    async def read_bytes(
        self, owner: str, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> tuple[ContainerFile, bytes]:
        """``open_file``, collected into memory (callers bound ``length``)."""
        meta, chunks = await self.open_file(owner, container_id, file_id, offset=offset, length=length)
        parts: list[bytes] = []
        async with aclosing(chunks):
            async for chunk in chunks:
                parts.append(chunk)
        return meta, b"".join(parts)

    async def file_index(
        self, owner: str, *, after: tuple[int, str, str] | None, limit: int
    ) -> tuple[list[ContainerFile], tuple[int, str, str] | None]:
        """Files across the caller's live containers, oldest container first, paged.

        ``after`` is the (container created_at, container id, file id) cursor returned by the
        previous page; the returned cursor is None on the last page. The cursor is a position in
        that order, not a reference: when its container is gone by the next page, paging goes on
        with the next container. Counts as one call.
        """
        self._call(owner)
        out: list[ContainerFile] = []
        rows = self.store.live(owner)
        if after is not None:
            position = (after[0], after[1])
            rows = [r for r in rows if (r.created_at, r.container_id) >= position]
        page_more = False
        for i, row in enumerate(rows):
            at_cursor = after is not None and i == 0 and row.container_id == after[1]
            file_after = after[2] if (after is not None and at_cursor) else None
            while len(out) < limit:
                try:
                    page = await self.provider.list_files(
                        row.container_id, ListParams(limit=min(100, limit - len(out)), order="asc", after=file_after)
                    )
                except (ContainerExpired, ContainerNotFound) as exc:
                    self._guard_expiry(row.container_id, exc)
                    page_more = False
                    break
                out.extend(page.data)
                page_more = page.has_more
                if not page.has_more or not page.data:
                    break
                file_after = page.data[-1].id
            if len(out) >= limit:
                more = page_more or i + 1 < len(rows)
                last = out[-1]
                return out, ((row.created_at, last.container_id, last.id) if more else None)
        return out, None

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        owner: str,
        container_id: str,
        request: ExecRequest,
        *,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Run a command in the caller's container; its file changes count against the quotas.

        Raises ``Unsupported`` when the provider cannot run commands.
        """
        self._call(owner)
        self._own(owner, container_id)
        caps = self.provider.capabilities
        if not caps.exec:
            raise Unsupported(
                f"The {caps.provider} provider cannot run commands: "
                f"{caps.exec_unavailable_reason or 'it has no exec capability'}."
            )
        approved, approve = self._approver(owner, container_id)
        try:
            result = await self.provider.exec(container_id, request, approve=approve, progress=progress)
        except BaseException as exc:
            self._rollback(owner, container_id, approved)
            self._guard_expiry(container_id, exc)
            raise
        audit.note_exec(result.exit_code, result.duration_ms / 1000)
        if result.files_created or result.files_changed or result.files_deleted:
            touched = tuple(f.id for f in (*result.files_created, *result.files_changed))
            # Deleted files are named by path only, and a changed one may have a new id: the whole
            # container may have changed.
            whole = bool(result.files_deleted or result.files_changed)
            change = FilesChanged(container_id, owner, touched, whole_container=whole)
            await self.changes.publish(change)
        return result

    # --- usage -----------------------------------------------------------------------------

    async def usage(self, owner: str) -> SessionUsage:
        """This caller's usage against every quota, from the store.

        The provider is asked only about containers whose recorded activity says they may have
        expired (``reconcile``): none while every container is in its time, and at most once
        per expiry period per container, so polling usage keeps no container alive.
        """
        self._call(owner)
        await self.reconcile(owner)
        u = self.store.usage(owner, self._clock())
        lim = self.limits
        return SessionUsage(
            containers=QuotaUsage(used=u.containers, limit=lim.max_containers, setting="CONTAINER_MCP_MAX_CONTAINERS"),
            stored_bytes=QuotaUsage(
                used=u.bytes, limit=lim.max_session_bytes, setting="CONTAINER_MCP_MAX_SESSION_BYTES"
            ),
            calls_per_minute=QuotaUsage(
                used=u.calls_last_minute,
                limit=lim.max_calls_per_minute,
                setting="CONTAINER_MCP_MAX_CALLS_PER_MINUTE",
            ),
            files=u.files,
            max_files_per_container=lim.max_files_per_container,
            max_file_bytes=lim.max_file_bytes,
        )
